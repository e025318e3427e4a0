"""``/ws``: who may open a live socket and what it may see; the hub serves it from there."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from flask import Blueprint, current_app, g, request
from flask_sock import Sock

from waybill.auth import sessions
from waybill.db import get_session
from waybill.orders import language_of, order_by_token
from waybill.realtime import transport
from waybill.realtime.hub import Hub
from waybill.realtime.registry import Scope
from waybill.realtime.transport import CLOSE_NOT_FOUND, CLOSE_UNAUTHORIZED

bp = Blueprint("realtime", __name__)
sock = Sock()


@bp.before_request
def _no_compression() -> None:
    transport.without_compression(request.environ)


def _same_site() -> bool:
    """A cookie-authenticated socket only from our own pages (no cross-site hijacking)."""
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser
    netloc = urlsplit(origin).netloc
    base = urlsplit(current_app.config["WAYBILL_SETTINGS"].base_url).netloc
    return netloc in (request.host, base)


def _authorise() -> tuple[Scope | None, int]:
    """Who may see what, decided before any order data is sent; the DB session is released."""
    try:
        token = request.args.get("track")
        if token is not None:
            order = order_by_token(get_session(), token)
            if order is None:
                return None, CLOSE_NOT_FOUND
            return Scope(order_id=order.id), 0
        if not _same_site():
            return None, CLOSE_UNAUTHORIZED
        customer = sessions.current_customer()
        auth = sessions.current()
        if customer is None or auth is None:
            return None, CLOSE_UNAUTHORIZED
        scope = Scope(customer_id=customer.id, language=language_of(customer), session_id=auth.id)
        return scope, 0
    finally:
        # the socket may stay open for hours: do not keep a pooled connection for it
        db = g.pop("db", None)
        if db is not None:
            db.close()


@sock.route("/ws", bp=bp)
def live(ws: Any) -> None:
    scope, refusal = _authorise()
    hub: Hub = current_app.extensions["waybill.hub"]
    if scope is None:
        reason = "no such order" if refusal == CLOSE_NOT_FOUND else "sign in first"
        transport.refuse(ws, refusal, reason)
        return
    hub.serve(ws, scope)
    transport.closed_by_us(ws)  # the hub has closed it; flask-sock need not
