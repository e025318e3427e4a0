"""Tracking links: ``/t/<token>`` and ``/api/track/<token>``, no sign-in needed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from sqlmodel import Session, select

from waybill.api.errors import not_found
from waybill.api.spec import operation
from waybill.api.views import render_order
from waybill.auth.tokens import digest
from waybill.db import get_session
from waybill.models import Order, OrderPublic

bp = Blueprint("track_api", __name__)


def order_by_token(session: Session, token: str) -> Order | None:
    """Look the order up by the token's hash: timing says nothing about the token."""
    if not 16 <= len(token) <= 64:
        return None
    return session.exec(select(Order).where(Order.tracking_token_hash == digest(token))).first()


def tracked_order(session: Session, token: str) -> Order:
    """The order a tracking link names, or the API's 404."""
    order = order_by_token(session, token)
    if order is None:
        raise not_found("order")
    return order


@bp.get("/api/track/<token>")
@operation("One order by its tracking token", responses={200: OrderPublic}, tag="tracking")
def track(token: str) -> Any:
    db = get_session()
    order = tracked_order(db, token)
    settings = current_app.config["WAYBILL_SETTINGS"]
    rendered = render_order(db, order, base_url=settings.base_url, secret_key=settings.secret_key)
    return jsonify(rendered.model_dump(mode="json"))
