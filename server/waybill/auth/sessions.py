"""Customer sessions, stored server-side: the cookie holds a random id, the table its hash."""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from flask import Response, current_app, g, request
from sqlalchemy.orm.attributes import set_committed_value
from sqlmodel import Session, select

from waybill.auth.tokens import digest, new_token, same
from waybill.db import get_session, touch
from waybill.models import AuthSession, Customer, utcnow

COOKIE = "waybill_session"
IDLE_EXPIRY = timedelta(days=30)
_SEEN_RESOLUTION = timedelta(minutes=5)


def start(*, session: Session, customer: Customer, response: Response) -> AuthSession:
    """Sign ``customer`` in on this browser: a fresh session id, never a reused one."""
    end_current(session=session)
    sid = new_token(32)
    auth = AuthSession(
        customer_id=customer.id,  # type: ignore[arg-type]
        id_hash=digest(sid),
        csrf_token=new_token(24),
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
    """The signed-in session of this request, if any (cached on ``g``)."""
    if "auth_session" in g:
        return g.auth_session  # type: ignore[no-any-return]
    g.auth_session = None
    sid = request.cookies.get(COOKIE)
    if sid and len(sid) < 100:
        db = get_session()
        auth = db.exec(select(AuthSession).where(AuthSession.id_hash == digest(sid))).first()
        now = utcnow()
        if auth and auth.revoked_at is None and now - auth.last_seen_at < IDLE_EXPIRY:
            if now - auth.last_seen_at > _SEEN_RESOLUTION:
                set_committed_value(auth, "last_seen_at", now)  # written by touch, not flushed
                touch(
                    sa.update(AuthSession).where(AuthSession.id == auth.id).values(last_seen_at=now)
                )
                g.session_seen_sid = sid  # the cookie's lifetime slides too (see api/account.py)
            g.auth_session = auth
    return g.auth_session  # type: ignore[no-any-return]


def current_customer() -> Customer | None:
    auth = current()
    return get_session().get(Customer, auth.customer_id) if auth else None


def require_signed_in() -> Customer:
    """The signed-in customer: 401 without a session, 403 for a write without the CSRF token.

    Every cookie-authenticated API (``/api/me/…``, passkeys) guards itself with this."""
    from waybill.api.errors import ApiError

    if current() is None:
        raise ApiError(401, "unauthorized", "sign in first")
    if request.method not in ("GET", "HEAD", "OPTIONS") and not csrf_ok():
        raise ApiError(403, "csrf", "send the csrf_token from GET /api/me as X-CSRF-Token")
    customer = current_customer()
    if customer is None:
        raise ApiError(401, "unauthorized", "sign in first")
    return customer


def csrf_ok() -> bool:
    auth = current()
    sent = request.headers.get("X-CSRF-Token") or request.form.get("csrf_token") or ""
    return auth is not None and bool(sent) and same(sent, auth.csrf_token)


def end_current(*, session: Session) -> None:
    auth = current()
    if auth is not None:
        auth.revoked_at = utcnow()
        session.add(auth)
    g.auth_session = None


def clear_cookie(response: Response) -> None:
    response.delete_cookie(COOKIE, path="/")
