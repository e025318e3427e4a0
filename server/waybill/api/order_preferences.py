"""One order's notification settings: ``/api/me/orders/<id>/preferences`` (mute it)."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from pydantic import BaseModel, ConfigDict

from waybill.api.access import owned_or_404
from waybill.api.spec import operation, parse_body
from waybill.auth import sessions
from waybill.db import get_session
from waybill.models import Order
from waybill.notify import outbox

bp = Blueprint("order_preferences_api", __name__, url_prefix="/api/me/orders")


class OrderPreferencesBody(BaseModel):
    """This order's notification settings."""

    model_config = ConfigDict(extra="forbid")
    muted: bool


class OrderPreferences(BaseModel):
    """This order's notification settings."""

    order_id: int
    muted: bool


@bp.get("/<int:order_id>/preferences")
@operation(
    "Whether one order is muted",
    responses={200: OrderPreferences},
    security="session",
    tag="notifications",
)
def get_order_preferences(order_id: int) -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    owned_or_404(db, Order, order_id, "order", customer_id=customer.id)
    muted = outbox.is_muted(db, order_id)
    return jsonify(OrderPreferences(order_id=order_id, muted=muted).model_dump())


@bp.put("/<int:order_id>/preferences")
@operation(
    "Mute or unmute one order on every channel",
    body=OrderPreferencesBody,
    responses={200: OrderPreferences},
    security="session",
    tag="notifications",
)
def put_order_preferences(order_id: int) -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    owned_or_404(db, Order, order_id, "order", customer_id=customer.id)
    body = parse_body(OrderPreferencesBody)
    outbox.set_muted(db, customer, order_id, muted=body.muted)
    db.commit()
    return jsonify(OrderPreferences(order_id=order_id, muted=body.muted).model_dump())
