"""Tracking links: ``/t/<token>`` and ``/api/track/<token>``, no sign-in needed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify

from waybill.api import events
from waybill.api.answers import browser_language, cached_json, order_json_now
from waybill.api.spec import operation
from waybill.db import get_session
from waybill.models import OrderPublic
from waybill.orders import order_cursor, tracked_order

bp = Blueprint("track_api", __name__)


@bp.get("/api/track/<token>")
@operation("One order by its tracking token", responses={200: OrderPublic}, tag="tracking")
def track(token: str) -> Any:
    # No one is signed in: the labels speak the browser's first language we have.
    language = browser_language()
    db = get_session()
    order = tracked_order(db, token)
    return cached_json(
        ("order", order.id, language),
        order_cursor(db, order.id),  # type: ignore[arg-type]
        lambda: order_json_now(order, language=language),
    )


@bp.get("/api/track/<token>/events")
@operation(
    f"One order by its tracking token: {events.SUMMARY}",
    responses=events.RESPONSES,
    tag="tracking",
    query=events.ORDER_QUERY,
)
def track_events(token: str) -> Any:
    query = events.page_query()
    order = tracked_order(get_session(), token)
    return jsonify(events.events_json(order, query, language=browser_language()))
