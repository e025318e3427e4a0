"""The customer's signed-in browsers: list them, sign one out, or sign out everywhere.

Signing a browser out also removes the push subscriptions registered from it (signing out
everywhere: all of the customer's) and closes its live sockets at once (``sessions.revoke``,
``sessions.close_sockets``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from flask import Blueprint, Response, g, jsonify, make_response
from pydantic import AwareDatetime, BaseModel
from sqlmodel import select

from waybill.api.spec import operation
from waybill.auth import sessions
from waybill.db import get_session
from waybill.devices import device_label
from waybill.errors import not_found
from waybill.models import AuthSession, utcnow

bp = Blueprint("account_api", __name__, url_prefix="/api/me/sessions")


class SessionPublic(BaseModel):
    id: int
    device: str  # "Chrome on Android", from the browser's user agent
    created_at: AwareDatetime
    last_seen_at: AwareDatetime
    current: bool  # the browser asking


class SessionList(BaseModel):
    """The customer's signed-in browsers, most recently seen first."""

    sessions: list[SessionPublic]


@bp.before_request
def _signed_in() -> None:
    sessions.require_signed_in()


@bp.after_app_request
def _slide_cookie(response: Response) -> Response:
    """A session used within 30 days stays: its cookie's lifetime is renewed on use."""
    sid = g.get("session_seen_sid")
    if sid and g.get("auth_session") is not None and not _sets_session_cookie(response):
        sessions.set_cookie(response, sid)
    return response


def _sets_session_cookie(response: Response) -> bool:
    return any(v.startswith(sessions.COOKIE + "=") for v in response.headers.getlist("Set-Cookie"))


def _active(customer_id: int) -> list[AuthSession]:
    since: datetime = utcnow() - sessions.IDLE_EXPIRY
    return list(
        get_session().exec(
            select(AuthSession)
            .where(AuthSession.customer_id == customer_id)
            .where(AuthSession.revoked_at.is_(None))  # type: ignore[union-attr]
            .where(AuthSession.last_seen_at > since)
            .order_by(AuthSession.last_seen_at.desc(), AuthSession.id.desc())  # type: ignore[attr-defined,union-attr]
        )
    )


@bp.get("")
@operation(
    "The customer's signed-in browsers",
    responses={200: SessionList},
    security="session",
    tag="customer",
)
def list_sessions() -> Any:
    me = sessions.signed_in()
    body = SessionList(
        sessions=[
            SessionPublic(
                id=s.id,  # type: ignore[arg-type]
                device=device_label(s.user_agent),
                created_at=s.created_at,
                last_seen_at=s.last_seen_at,
                current=s.id == me.id,
            )
            for s in _active(me.customer_id)
        ]
    )
    return jsonify(body.model_dump(mode="json"))


@bp.delete("/<int:session_id>")
@operation("Sign one browser out", responses={204: None}, security="session", tag="customer")
def revoke_session(session_id: int) -> Any:
    me = sessions.signed_in()
    target = next((s for s in _active(me.customer_id) if s.id == session_id), None)
    if target is None:
        raise not_found("session")
    db = get_session()
    # its push subscriptions go too, and its sockets close now (not at the next keepalive)
    ended = sessions.revoke(session=db, ended=[target])
    db.commit()
    sessions.close_sockets(ended, customer_id=me.customer_id)
    response = make_response("", 204)
    if target.id == me.id:
        g.auth_session = None
        sessions.clear_cookie(response)
    return response


@bp.delete("")
@operation(
    "Sign out everywhere, this browser too",
    responses={204: None},
    security="session",
    tag="customer",
)
def revoke_all_sessions() -> Any:
    me = sessions.signed_in()
    db = get_session()
    # every push subscription of the account goes too, and every socket closes now
    ended = sessions.revoke(
        session=db, ended=_active(me.customer_id), every_device_of=me.customer_id
    )
    db.commit()
    sessions.close_sockets(ended, customer_id=me.customer_id)
    g.auth_session = None
    response = make_response("", 204)
    sessions.clear_cookie(response)
    return response
