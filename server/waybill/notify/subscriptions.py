"""Push subscriptions: which endpoints we accept, and keeping one row per browser and scope.

Only the known push services over https (plus ``WAYBILL_PUSH_ENDPOINT_HOSTS``) are accepted,
so nobody can make the server POST to an address of their choosing.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from urllib.parse import urlsplit

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, col, select

from waybill.devices import device_label
from waybill.models import utcnow
from waybill.notify.models import PushSubscription
from waybill.notify.webpush import b64url_decode

#: Push services' hosts (a name and every subdomain of it).
KNOWN_PUSH_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera
    "android.googleapis.com",
    "push.services.mozilla.com",  # Firefox (updates.push.services.mozilla.com)
    "push.apple.com",  # Safari (web.push.apple.com)
    "notify.windows.com",  # Edge on Windows (*.notify.windows.com)
)


_URL_CHARACTERS = re.compile(r"[\x21-\x7e]+")
_HOSTNAME = re.compile(r"[a-z0-9.-]+|\[[0-9a-f:.]+\]|[0-9a-f:]+")


def _host_matches(host: str, suffix: str) -> bool:
    return host == suffix or host.endswith("." + suffix)


def endpoint_error(endpoint: str, extra_hosts: Sequence[str]) -> str | None:
    """Why ``endpoint`` is not acceptable, or None when it is."""
    if len(endpoint) > 2048:
        return "is longer than 2048 characters"
    # Checked on the exact string that is stored and sent: urlsplit would quietly strip a
    # leading space or control character, and the sender would then cut a wrong audience.
    if not _URL_CHARACTERS.fullmatch(endpoint):
        return "must be a URL of printable ASCII, without spaces or control characters"
    try:
        parts = urlsplit(endpoint)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return "must be an https URL of a push service"
    if not _HOSTNAME.fullmatch(host):  # no NUL, spaces or escapes for a resolver to cut short
        return "has a host name that is not plain letters, digits, dots and hyphens"
    port = port or (443 if parts.scheme == "https" else 80)
    for pattern in extra_hosts:
        want_host, _, want_port = pattern.rpartition(":")
        if want_host.lower() == host and want_port in ("*", str(port)):
            return None
    if parts.scheme == "https" and any(_host_matches(host, h) for h in KNOWN_PUSH_HOSTS):
        return None
    return "is not on a known push service (FCM, Mozilla, Apple, Windows)"


def key_errors(p256dh: str, auth: str) -> dict[str, str]:
    """Field errors for the keys: a 65-byte uncompressed P-256 point and a 16-byte secret."""
    errors: dict[str, str] = {}
    try:
        raw = b64url_decode(p256dh)
        if len(raw) != 65 or raw[0] != 4:
            raise ValueError("length")
        ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), raw)
    except (ValueError, TypeError):
        errors["keys.p256dh"] = "must be base64url of a 65-byte uncompressed P-256 point"
    try:
        if len(b64url_decode(auth)) != 16:
            raise ValueError("length")
    except (ValueError, TypeError):
        errors["keys.auth"] = "must be base64url of 16 bytes"
    return errors


def endpoint_hash(endpoint: str) -> str:
    return hashlib.sha256(endpoint.encode()).hexdigest()


def save(
    session: Session,
    *,
    scope: str,
    endpoint: str,
    p256dh: str,
    auth: str,
    label: str,
    language: str,
    customer_id: int | None = None,
    order_id: int | None = None,
    auth_session_id: int | None = None,
) -> tuple[PushSubscription, bool]:
    """Store the subscription; the same endpoint again only refreshes its keys (and moves it
    to the sign-in registering it now)."""
    h = endpoint_hash(endpoint)
    sub = session.exec(
        select(PushSubscription).where(
            PushSubscription.scope == scope, PushSubscription.endpoint_hash == h
        )
    ).first()
    created = sub is None
    if sub is None:
        sub = PushSubscription(
            scope=scope,
            endpoint=endpoint,
            endpoint_hash=h,
            customer_id=customer_id,
            order_id=order_id,
            p256dh=p256dh,
            auth=auth,
        )
    sub.p256dh, sub.auth, sub.label, sub.language = p256dh, auth, label[:100], language
    if auth_session_id is not None:
        sub.auth_session_id = auth_session_id
    sub.last_used_at = sub.last_used_at or utcnow()
    session.add(sub)
    session.flush()
    return sub, created


def held_by_other_customers(session: Session, *, customer_id: int, endpoint: str) -> set[int]:
    """Ids of other customers' rows for this endpoint. One endpoint is one browser: whoever
    signed in and turned push on last owns it, so a shared device stops getting the previous
    customer's orders."""
    return {
        sub.id  # type: ignore[misc]
        for sub in session.exec(
            select(PushSubscription).where(
                PushSubscription.endpoint_hash == endpoint_hash(endpoint),
                col(PushSubscription.scope).startswith("customer:"),
                PushSubscription.scope != f"customer:{customer_id}",
            )
        )
    }


def count_in_scope(session: Session, scope: str) -> int:
    return session.exec(
        select(sa.func.count()).select_from(PushSubscription).where(PushSubscription.scope == scope)
    ).one()


def find(session: Session, *, scope: str, endpoint: str) -> PushSubscription | None:
    return session.exec(
        select(PushSubscription).where(
            PushSubscription.scope == scope,
            PushSubscription.endpoint_hash == endpoint_hash(endpoint),
        )
    ).first()


def of_customer(session: Session, customer_id: int) -> set[int]:
    """Ids of every push subscription of the customer's account (not their tracking links')."""
    return {
        i
        for i in session.exec(
            select(PushSubscription.id).where(PushSubscription.scope == f"customer:{customer_id}")
        )
        if i is not None
    }


def of_device(
    session: Session, *, auth_session_id: int, customer_id: int, user_agent: str | None
) -> set[int]:
    """Ids of the customer's push subscriptions registered through the sign-in
    ``auth_session_id``; and, for rows that do not say (registered before that was recorded,
    or through a sign-in that has since ended), those whose device name
    (:func:`waybill.devices.device_label`) is
    that browser's. The second rule errs on the safe side: another device of the same kind
    ("Safari on iPhone") of the same customer may lose its subscription too."""
    from waybill.models import AuthSession

    ended = select(AuthSession.id).where(col(AuthSession.revoked_at).is_not(None))
    return {
        i
        for i in session.exec(
            select(PushSubscription.id).where(
                PushSubscription.scope == f"customer:{customer_id}",
                sa.or_(
                    col(PushSubscription.auth_session_id) == auth_session_id,
                    sa.and_(
                        PushSubscription.label == device_label(user_agent or ""),
                        sa.or_(
                            col(PushSubscription.auth_session_id).is_(None),
                            col(PushSubscription.auth_session_id).in_(ended),
                        ),
                    ),
                ),
            )
        )
        if i is not None
    }
