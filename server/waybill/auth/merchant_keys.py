"""Merchant API keys: ``wb_live_…``, shown once, stored as a SHA-256 hash, revocable."""

from __future__ import annotations

import secrets
from collections.abc import Callable
from datetime import timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from waybill.auth.tokens import digest, new_token
from waybill.models import ApiKey, Merchant, utcnow

KEY_PREFIX = "wb_live_"
_LAST_USED_RESOLUTION = timedelta(minutes=1)


def create_merchant(*, session: Session, name: str) -> tuple[Merchant, str]:
    merchant = Merchant(id="mer_" + secrets.token_hex(8), name=name)
    session.add(merchant)
    session.flush()
    return merchant, issue_key(session=session, merchant=merchant)


def issue_key(*, session: Session, merchant: Merchant) -> str:
    """Make a new key for ``merchant`` and return it; this is the only time it is seen."""
    key = KEY_PREFIX + new_token(32)
    session.add(ApiKey(merchant_id=merchant.id, prefix=key[:14], key_hash=digest(key)))
    session.flush()
    return key


#: Built once: every merchant request runs it, and building the statement cost twice what
#: running it does.
_KEY_AND_MERCHANT = (
    select(ApiKey, Merchant)
    .join(Merchant, col(Merchant.id) == col(ApiKey.merchant_id))
    .where(col(ApiKey.key_hash) == sa.bindparam("key_hash"))
)


def authenticate(
    *, session: Session, key: str, touch: Callable[[sa.Executable], None] | None = None
) -> Merchant | None:
    """The key's merchant, or None. ``touch`` records the last-used time (at most once a
    minute) in a transaction of its own; without it the session's transaction does."""
    if not key.startswith(KEY_PREFIX) or len(key) > 200:
        return None
    found = session.exec(_KEY_AND_MERCHANT, params={"key_hash": digest(key)}).first()
    if found is None or found[0].revoked_at is not None:
        return None
    api_key, merchant = found
    now = utcnow()
    if api_key.last_used_at is None or now - api_key.last_used_at > _LAST_USED_RESOLUTION:
        stmt = sa.update(ApiKey).where(ApiKey.id == api_key.id).values(last_used_at=now)
        (touch or session.exec)(stmt)  # type: ignore[operator]
    return merchant


def list_keys(*, session: Session, merchant_id: str) -> list[ApiKey]:
    return list(session.exec(select(ApiKey).where(ApiKey.merchant_id == merchant_id)))


def revoke_key(*, session: Session, merchant_id: str, prefix: str) -> bool:
    keys = [k for k in list_keys(session=session, merchant_id=merchant_id) if k.prefix == prefix]
    for k in keys:
        k.revoked_at = k.revoked_at or utcnow()
        session.add(k)
    return bool(keys)
