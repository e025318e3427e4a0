"""Push subscriptions: which endpoints we accept, and the rules of keeping them.

Only the known push services over https (plus ``WAYBILL_PUSH_ENDPOINT_HOSTS``) are accepted,
so nobody can make the server POST to an address of their choosing. One row per browser and
scope (a customer's account, or one order's "Notify me"); one browser belongs to the customer
who turned push on in it last; an order has a bounded number of anonymous devices, and they
are forgotten 30 days after the order is done.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from datetime import datetime, timedelta
from urllib.parse import urlsplit

import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec
from sqlmodel import Session, col, select

from waybill.devices import device_label
from waybill.errors import ApiError
from waybill.models import AuthSession, utcnow
from waybill.notify.models import OutboxMessage, PushSubscription
from waybill.notify.vapid import b64url_decode
from waybill.tracking.statuses import is_terminal

#: Push services' hosts (a name and every subdomain of it).
KNOWN_PUSH_HOSTS: tuple[str, ...] = (
    "fcm.googleapis.com",  # Chrome, Edge on Android, Opera
    "android.googleapis.com",
    "push.services.mozilla.com",  # Firefox (updates.push.services.mozilla.com)
    "push.apple.com",  # Safari (web.push.apple.com)
    "notify.windows.com",  # Edge on Windows (*.notify.windows.com)
)


#: Anonymous "Notify me" devices one order may have: one status change fans out to each.
MAX_DEVICES_PER_ORDER = 20
#: How long a tracking link's subscription outlives its order reaching a terminal status.
ANONYMOUS_KEEP = timedelta(days=30)

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


def customer_scope(customer_id: int) -> str:
    return f"customer:{customer_id}"


def order_scope(order_id: int) -> str:
    return f"order:{order_id}"


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
    vapid_key: str | None = None,
) -> tuple[PushSubscription, bool]:
    """Store the subscription; the same endpoint again only refreshes its keys (and moves it
    to the sign-in registering it now)."""
    sub = find(session, scope=scope, endpoint=endpoint)
    created = sub is None
    if sub is None:
        sub = PushSubscription(
            scope=scope,
            endpoint=endpoint,
            endpoint_hash=endpoint_hash(endpoint),
            customer_id=customer_id,
            order_id=order_id,
            p256dh=p256dh,
            auth=auth,
        )
    sub.p256dh, sub.auth, sub.label, sub.language = p256dh, auth, label[:100], language
    if vapid_key is not None:  # subscribed again (with another key after a rotation)
        sub.vapid_key = vapid_key
    if auth_session_id is not None:
        sub.auth_session_id = auth_session_id
    sub.last_used_at = sub.last_used_at or utcnow()
    session.add(sub)
    session.flush()
    return sub, created


def subscribe_customer(
    session: Session,
    *,
    customer_id: int,
    endpoint: str,
    p256dh: str,
    auth: str,
    vapid_key: str | None = None,
    label: str,
    language: str,
    auth_session_id: int | None,
    now: datetime,
) -> PushSubscription:
    """Push on for the customer in this browser. One endpoint is one browser: whoever signed
    in and turned push on last owns it, so a shared device stops getting the previous
    customer's orders."""
    others = held_by_other_customers(session, customer_id=customer_id, endpoint=endpoint)
    if others:
        forget_subscriptions(session, others, now=now)
    sub, _ = save(
        session,
        scope=customer_scope(customer_id),
        endpoint=endpoint,
        p256dh=p256dh,
        auth=auth,
        vapid_key=vapid_key,
        label=label,
        language=language,
        customer_id=customer_id,
        auth_session_id=auth_session_id,
    )
    return sub


def follow_order(
    session: Session,
    *,
    order_id: int,
    order_status: str,
    endpoint: str,
    p256dh: str,
    auth: str,
    vapid_key: str | None = None,
    label: str,
    language: str,
    now: datetime,
) -> PushSubscription:
    """A tracking link's "Notify me", no account: at most ``MAX_DEVICES_PER_ORDER`` browsers
    per order (a known one only renews), each kept until ``ANONYMOUS_KEEP`` after the order
    is done; ``429`` for one too many."""
    scope = order_scope(order_id)
    if (
        find(session, scope=scope, endpoint=endpoint) is None
        and count_in_scope(session, scope) >= MAX_DEVICES_PER_ORDER
    ):
        raise ApiError(
            429,
            "too_many_subscriptions",
            f"at most {MAX_DEVICES_PER_ORDER} devices can follow one order without an account",
        )
    sub, _ = save(
        session,
        scope=scope,
        endpoint=endpoint,
        p256dh=p256dh,
        auth=auth,
        vapid_key=vapid_key,
        label=label,
        language=language,
        order_id=order_id,
    )
    if sub.expires_at is None:  # subscribing again does not push the end further out
        sub.expires_at = anonymous_expiry(order_status, now)
        session.add(sub)
    return sub


def anonymous_expiry(status: str, now: datetime) -> datetime | None:
    """When an order's anonymous subscriptions are forgotten, seen from a change to
    ``status`` at ``now``: ``ANONYMOUS_KEEP`` after it became terminal; never while it moves."""
    return now + ANONYMOUS_KEEP if is_terminal(status) else None


def expire_anonymous(session: Session, *, now: datetime) -> int:
    """Forget tracking-link subscriptions whose time is up; returns how many."""
    ids = set(
        i
        for i in session.exec(
            select(PushSubscription.id).where(
                col(PushSubscription.expires_at).is_not(None),
                col(PushSubscription.expires_at) < now,
            )
        )
        if i is not None
    )
    if ids:
        forget_subscriptions(session, ids, now=now)
    return len(ids)


def forget_subscriptions(session: Session, ids: set[int], *, now: datetime) -> None:
    """Delete subscriptions and drop whatever was still waiting for them."""
    session.exec(  # type: ignore[call-overload]
        sa.update(OutboxMessage)
        .where(
            col(OutboxMessage.subscription_id).in_(ids),
            OutboxMessage.state == "pending",
            col(OutboxMessage.lease_until).is_(None),
        )
        .values(state="dropped", done_at=now, last_error="subscription gone")
    )
    session.exec(  # type: ignore[call-overload]
        sa.delete(PushSubscription).where(col(PushSubscription.id).in_(ids))
    )


def forget_endpoint(session: Session, *, scope: str, endpoint: str, now: datetime) -> bool:
    """Forget this browser in this scope (push turned off in it); False if it was not known."""
    sub = find(session, scope=scope, endpoint=endpoint)
    if sub is None:
        return False
    forget_subscriptions(session, {sub.id}, now=now)  # type: ignore[arg-type]
    return True


def held_by_other_customers(session: Session, *, customer_id: int, endpoint: str) -> set[int]:
    """Ids of other customers' rows for this endpoint."""
    return {
        sub.id  # type: ignore[misc]
        for sub in session.exec(
            select(PushSubscription).where(
                PushSubscription.endpoint_hash == endpoint_hash(endpoint),
                col(PushSubscription.scope).startswith("customer:"),
                PushSubscription.scope != customer_scope(customer_id),
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


_IN_SCOPES = (
    select(PushSubscription)
    .where(col(PushSubscription.scope).in_(sa.bindparam("scopes", expanding=True)))
    .order_by(col(PushSubscription.id))
)


def in_scopes(session: Session, scopes: Sequence[str]) -> dict[str, list[PushSubscription]]:
    """The subscriptions of each scope, oldest first, in one read."""
    found: dict[str, list[PushSubscription]] = {scope: [] for scope in scopes}
    for sub in session.exec(_IN_SCOPES, params={"scopes": list(scopes)}):
        found[sub.scope].append(sub)
    return found


def in_scope(session: Session, scope: str) -> list[PushSubscription]:
    """A customer's devices (``customer_scope``) or an order's followers (``order_scope``),
    oldest first."""
    return list(
        session.exec(
            select(PushSubscription)
            .where(PushSubscription.scope == scope)
            .order_by(col(PushSubscription.id))
        )
    )


def of_customer(session: Session, customer_id: int) -> set[int]:
    """Ids of every push subscription of the customer's account (not their tracking links')."""
    return {
        i
        for i in session.exec(
            select(PushSubscription.id).where(PushSubscription.scope == customer_scope(customer_id))
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
    ended = select(AuthSession.id).where(col(AuthSession.revoked_at).is_not(None))
    return {
        i
        for i in session.exec(
            select(PushSubscription.id).where(
                PushSubscription.scope == customer_scope(customer_id),
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


def stamp_vapid_key(session: Session, public_key: str) -> int:
    """Record ``public_key`` as the key of every subscription made before keys were recorded
    (there was only ever one key then): before a rotation, so that they are still signed for
    with it afterwards. Returns how many."""
    result = session.execute(
        sa.update(PushSubscription)
        .where(col(PushSubscription.vapid_key).is_(None))
        .values(vapid_key=public_key)
    )
    return int(result.rowcount or 0)


def count_by_vapid_key(session: Session) -> dict[str | None, int]:
    """How many subscriptions are on each VAPID key (None: not recorded, the current one)."""
    rows = session.execute(
        sa.select(PushSubscription.vapid_key, sa.func.count()).group_by(PushSubscription.vapid_key)
    )
    return {key: int(n) for key, n in rows}
