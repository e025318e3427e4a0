"""Customer sessions, stored server-side: the cookie holds a random id, the table its hash.

The CSRF token is derived, never stored: an HMAC of the cookie's id with the server secret.
The database holds only the id's hash, so a copy of it can forge no request.

Ending a sign-in (signing out, signing one device or every device out, or signing in as
someone else on the same browser) also removes the push subscriptions registered through it
and closes its live sockets at once, on every worker.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import timedelta

import sqlalchemy as sa
from flask import Response, after_this_request, current_app, g, request
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, col, select

from waybill.auth.tokens import digest, keyed_digest, keyed_digest_matches, new_token
from waybill.db import get_session, touch
from waybill.errors import ApiError
from waybill.models import AuthSession, Customer, utcnow
from waybill.notify import subscriptions
from waybill.realtime.broker import SESSIONS_ENDED

COOKIE = "waybill_session"
IDLE_EXPIRY = timedelta(days=30)
_SEEN_RESOLUTION = timedelta(minutes=5)
#: Written into ``auth_session.csrf_token`` (kept in the schema for now): the real token is
#: derived from the cookie's id (:func:`csrf_token_for`) and never stored.
NOT_STORED = ""


def csrf_token_for(sid: str) -> str:
    """The CSRF token of the session whose cookie holds ``sid``: HMAC-SHA256 with the server
    secret. It needs the raw id (the database has only its hash) and the secret."""
    secret: str = current_app.config["WAYBILL_SETTINGS"].secret_key
    return keyed_digest(secret, "csrf", sid)


def start(*, session: Session, customer: Customer, response: Response) -> AuthSession:
    """Sign ``customer`` in on this browser: a fresh session id, never a reused one."""
    previous = current()
    # Someone else signing in on this browser: the previous customer's push subscriptions of
    # this device go with their session. The same customer again keeps them.
    end_current(
        session=session,
        forget_device=previous is not None and previous.customer_id != customer.id,
    )
    sid = new_token(32)
    auth = AuthSession(
        customer_id=customer.id,  # type: ignore[arg-type]
        id_hash=digest(sid),
        csrf_token=NOT_STORED,
        user_agent=(request.user_agent.string or "")[:300] or None,
    )
    session.add(auth)
    session.flush()
    set_cookie(response, sid)
    return auth


def set_cookie(response: Response, sid: str) -> None:
    """The cookie lives as long as the session may stay idle; each use pushes it further."""
    settings = current_app.config["WAYBILL_SETTINGS"]
    response.set_cookie(
        COOKIE,
        sid,
        max_age=int(IDLE_EXPIRY.total_seconds()),
        httponly=True,
        samesite="Lax",
        secure=settings.secure_cookies,
        path="/",
    )


def current() -> AuthSession | None:
    """The signed-in session of this request, if any (cached on ``g``).

    Its ``csrf_token`` attribute holds the derived token (set in memory, never written)."""
    if "auth_session" in g:
        return g.auth_session  # type: ignore[no-any-return]
    g.auth_session = None
    sid = request.cookies.get(COOKIE)
    if sid and len(sid) < 100:
        db = get_session()
        # The session and its customer in one read; the customer is kept for the request.
        found = db.exec(
            select(AuthSession, Customer)
            .join(Customer, col(Customer.id) == col(AuthSession.customer_id))
            .where(AuthSession.id_hash == digest(sid))
        ).first()
        auth, g.session_customer = found or (None, None)
        now = utcnow()
        if auth and auth.revoked_at is None and now - auth.last_seen_at < IDLE_EXPIRY:
            if now - auth.last_seen_at > _SEEN_RESOLUTION:
                set_committed_value(auth, "last_seen_at", now)  # written by touch, not flushed
                touch(
                    sa.update(AuthSession).where(AuthSession.id == auth.id).values(last_seen_at=now)
                )
                g.session_seen_sid = sid  # the cookie's lifetime slides too (see api/account.py)
            set_committed_value(auth, "csrf_token", csrf_token_for(sid))  # not flushed either
            g.auth_session = auth
    return g.auth_session  # type: ignore[no-any-return]


def current_customer() -> Customer | None:
    return g.session_customer if current() else None  # type: ignore[no-any-return]


def signed_in() -> AuthSession:
    """This request's sign-in, or the API's 401."""
    auth = current()
    if auth is None:
        raise ApiError(401, "unauthorized", "sign in first")
    return auth


def require_signed_in() -> Customer:
    """The signed-in customer: 401 without a session, 403 for a write without the CSRF token.

    Every cookie-authenticated API (``/api/me/…``, passkeys) guards itself with this, and its
    handlers call it again for the customer (the session is read once per request)."""
    signed_in()
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok():
        raise ApiError(403, "csrf", "send the csrf_token from GET /api/me as X-CSRF-Token")
    customer = current_customer()
    if customer is None:
        raise ApiError(401, "unauthorized", "sign in first")
    return customer


def csrf_ok() -> bool:
    """The request carries the token derived from its own session cookie."""
    sid = request.cookies.get(COOKIE)
    if current() is None or not sid:
        return False
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    secret: str = current_app.config["WAYBILL_SETTINGS"].secret_key
    return bool(sent) and keyed_digest_matches(secret, sent, "csrf", sid)  # an old key's too


# --- ending sign-ins ------------------------------------------------------------------------


def revoke(
    *, session: Session, ended: Iterable[AuthSession], every_device_of: int | None = None
) -> list[int]:
    """End these sign-ins now and forget the push subscriptions registered through them.

    ``every_device_of`` (sign out everywhere): every push subscription of that customer goes.
    Otherwise each ended sign-in's own device's go (see
    :func:`waybill.notify.subscriptions.of_device`). The caller commits, then calls
    :func:`close_sockets` with the returned ids."""

    now = utcnow()
    ids: list[int] = []
    forget: set[int] = set()
    for auth in ended:
        auth.revoked_at = now
        session.add(auth)
        ids.append(auth.id)  # type: ignore[arg-type]
        if every_device_of is None:
            forget |= subscriptions.of_device(
                session,
                auth_session_id=auth.id,  # type: ignore[arg-type]
                customer_id=auth.customer_id,
                user_agent=auth.user_agent,
            )
    if every_device_of is not None:
        forget |= subscriptions.of_customer(session, every_device_of)
    if forget:
        subscriptions.forget_subscriptions(session, forget, now=now)
    return ids


def close_sockets(session_ids: Iterable[int], *, customer_id: int | None = None) -> None:
    """Close (4401) the live sockets of these ended sign-ins at once: this worker's here, and
    every other worker's through the broker. Call it after the revocation is committed, so
    that a socket reconnecting meanwhile is refused. (A worker that misses the broker's
    message still closes them in its next keepalive round, within 25 s.)"""
    ids = sorted(set(session_ids))
    if not ids:
        return
    hub = current_app.extensions.get("waybill.hub")
    if hub is not None:
        hub.close_sessions(ids, customer_id=customer_id)
    broker = current_app.extensions.get("waybill.broker")
    if broker is not None:
        broker.publish({"type": SESSIONS_ENDED, "ids": ids, "customer_id": customer_id})


def end_current(*, session: Session, forget_device: bool = True) -> None:
    """Sign this browser out. Its push subscriptions go unless ``forget_device`` is False
    (the same customer signing in again here keeps them); its sockets close once the request
    has answered (its transaction is committed by then)."""
    auth = current()
    if auth is not None:
        if forget_device:
            ended = revoke(session=session, ended=[auth])
        else:
            auth.revoked_at = utcnow()
            session.add(auth)
            ended = [auth.id]  # type: ignore[list-item]
        customer_id = auth.customer_id

        @after_this_request
        def _close(response: Response) -> Response:
            close_sockets(ended, customer_id=customer_id)
            return response

    g.auth_session = None


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")
