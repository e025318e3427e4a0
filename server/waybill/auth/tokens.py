"""Random tokens and how they are stored: only as hashes, compared in constant time.

The one token the server must show again, an order's tracking token (its link goes into every
answer, mail and push about the order), is stored sealed: AES-256-GCM under a key derived from
the server's secret key, bound to the token's hash. The database alone opens no tracking page.
"""

from __future__ import annotations

import base64
import binascii
import functools
import hashlib
import hmac
import os
import secrets
from collections.abc import Callable
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from waybill.config import keys_of

if TYPE_CHECKING:
    from waybill.models import Order


def new_token(nbytes: int = 32) -> str:
    """A URL-safe random token of ``nbytes`` random bytes (32 bytes = 256 bits)."""
    return secrets.token_urlsafe(nbytes)


def digest(token: str) -> str:
    """The stored form of a high-entropy token: SHA-256, hex.

    Looking a row up by this digest leaks nothing useful through timing: an attacker can
    not steer which bytes of the digest match.
    """
    return hashlib.sha256(token.encode()).hexdigest()


def keyed_digest(secret: str, *parts: str) -> str:
    """The stored form of a low-entropy secret (a 6-digit code): HMAC with the server key."""
    msg = "\x1f".join(parts).encode()
    return hmac.new(str(secret).encode(), msg, hashlib.sha256).hexdigest()


def same(a: str, b: str) -> bool:
    return hmac.compare_digest(a.encode(), b.encode())


def keyed_digest_matches(secret: str, expected: str, *parts: str) -> bool:
    """Whether ``expected`` is the :func:`keyed_digest` of ``parts`` under any key of ``secret``."""
    return any(same(keyed_digest(key, *parts), expected) for key in keys_of(secret))


# --- tracking tokens: sealed with the server key ------------------------------------------
# Migration 0003 seals the tokens of orders made before it with a copy of this code: a change
# of the format needs a new prefix, and the old one must stay readable.

SEAL_PREFIX = "v1."
_SEAL_INFO = b"waybill tracking token v1"
_NONCE = 12


class SealError(Exception):
    """A sealed tracking token does not open with this server's secret key."""


@functools.lru_cache(maxsize=4)
def _tracking_aead(secret: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SEAL_INFO)
    return AESGCM(key.derive(secret.encode()))


def seal_tracking_token(secret: str, token: str) -> str:
    """The stored form of a tracking token: ``v1.`` + base64url(nonce, ciphertext, tag).

    The token's hash (the lookup column) is the associated data: a sealed value opens only
    beside the hash it was made for."""
    nonce = os.urandom(_NONCE)
    sealed = _tracking_aead(str(secret)).encrypt(nonce, token.encode(), digest(token).encode())
    return SEAL_PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()


def open_tracking_token(secret: str, sealed: str, token_hash: str) -> str:
    """The tracking token sealed in ``sealed``; :class:`SealError` when it does not open."""
    if not sealed.startswith(SEAL_PREFIX):
        raise SealError("not a sealed tracking token")
    plain = _open_any(_tracking_aead, secret, sealed[len(SEAL_PREFIX) :], token_hash)
    if plain is None:
        raise SealError(
            "a tracking token does not open with this secret key (was WAYBILL_SECRET_KEY "
            "changed without the old one in WAYBILL_OLD_SECRET_KEYS?)"
        )
    return plain


def _open_any(aead: Callable[[str], AESGCM], secret: str, body: str, associated: str) -> str | None:
    """``body`` (base64url of nonce, ciphertext and tag) opened with the first key of ``secret``
    that opens it, or None."""
    try:
        raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    except (ValueError, binascii.Error):
        return None
    for key in keys_of(secret):
        try:
            return aead(key).decrypt(raw[:_NONCE], raw[_NONCE:], associated.encode()).decode()
        except (InvalidTag, ValueError):
            continue
    return None


def new_tracking_token(secret: str) -> tuple[str, str, str]:
    """A new order's tracking token: (token, sealed form, hash). Only the last two are stored."""
    token = new_token(24)
    return token, seal_tracking_token(secret, token), digest(token)


def tracking_token(secret: str, order: Order) -> str:
    """The order's tracking token, for its link: opened from the row with the server key."""
    return open_tracking_token(secret, order.tracking_token_sealed, order.tracking_token_hash)


# --- merchants' secrets (webhook signing secrets, provider API keys): sealed the same way ---

_SECRET_PREFIX = "s1."
_SECRET_INFO = b"waybill merchant secret v1"


@functools.lru_cache(maxsize=4)
def _secret_aead(secret: str) -> AESGCM:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_SECRET_INFO)
    return AESGCM(key.derive(secret.encode()))


def seal_secret(server_key: str, value: str, context: str) -> str:
    """A secret Waybill must use again (to check or make a signature), stored so that the
    database alone does not give it away. ``context`` (e.g. ``"integration:<merchant>:shopify"``)
    binds the sealed value to its row: moved to another row, it does not open."""
    nonce = os.urandom(_NONCE)
    sealed = _secret_aead(str(server_key)).encrypt(nonce, value.encode(), context.encode())
    return _SECRET_PREFIX + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()


def open_secret(server_key: str, sealed: str, context: str) -> str:
    """The secret sealed in ``sealed`` for ``context``; :class:`SealError` when it does not open."""
    if not sealed.startswith(_SECRET_PREFIX):
        raise SealError("not a sealed secret")
    plain = _open_any(_secret_aead, server_key, sealed[len(_SECRET_PREFIX) :], context)
    if plain is None:
        raise SealError("a merchant secret does not open with this secret key")
    return plain
