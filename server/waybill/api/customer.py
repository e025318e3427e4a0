"""The signed-in customer's API: ``/api/me`` and their orders."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify
from sqlmodel import select

from waybill.api import events
from waybill.api.access import owned_or_404
from waybill.api.answers import cached_json, order_json_now, rendered_orders
from waybill.api.spec import operation
from waybill.auth import sessions
from waybill.db import get_session
from waybill.models import Me, Order, OrderList, OrderPublic
from waybill.orders import customer_cursor, language_of, order_cursor, saved_language

bp = Blueprint("customer_api", __name__, url_prefix="/api/me")


@bp.before_request
def _signed_in() -> None:
    sessions.require_signed_in()


@bp.get("")
@operation("The signed-in customer", responses={200: Me}, security="session", tag="customer")
def me() -> Any:
    customer = sessions.require_signed_in()
    auth = sessions.signed_in()
    return jsonify(
        Me(
            email=customer.email,
            name=customer.name,
            csrf_token=auth.csrf_token,
            # what they chose in settings wins over what their first order came with
            locale=saved_language(customer),
            timezone=(customer.preferences or {}).get("timezone") or customer.timezone,
        ).model_dump(mode="json")
    )


@bp.get("/orders")
@operation(
    "The customer's orders, newest first",
    responses={200: OrderList},
    security="session",
    tag="customer",
)
def my_orders() -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    language = language_of(customer)

    def render() -> Any:
        orders = list(
            db.exec(
                select(Order).where(Order.customer_id == customer.id).order_by(Order.id.desc())  # type: ignore[union-attr]
            )
        )
        rendered = rendered_orders(orders, language=language)
        return {"orders": [o.model_dump(mode="json") for o in rendered]}

    # Opening the app again is the most frequent request there is, and usually nothing changed.
    key = ("orders", customer.id, language)
    return cached_json(key, customer_cursor(db, customer.id), render)  # type: ignore[arg-type]


@bp.get("/orders/<int:order_id>")
@operation(
    "One of the customer's orders",
    responses={200: OrderPublic},
    security="session",
    tag="customer",
)
def my_order(order_id: int) -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    order = owned_or_404(db, Order, order_id, "order", customer_id=customer.id)
    language = language_of(customer)
    return cached_json(
        ("order", order_id, language),
        order_cursor(db, order_id),
        lambda: order_json_now(order, language=language),
    )


@bp.get("/orders/<int:order_id>/events")
@operation(
    f"One of the customer's orders: {events.SUMMARY}",
    responses=events.RESPONSES,
    security="session",
    tag="customer",
    query=events.ORDER_QUERY,
)
def my_order_events(order_id: int) -> Any:
    customer = sessions.require_signed_in()
    query = events.page_query()
    db = get_session()
    order = owned_or_404(db, Order, order_id, "order", customer_id=customer.id)
    return jsonify(events.events_json(order, query, language=language_of(customer)))
