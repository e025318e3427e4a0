"""The older events of an order, a page at a time, for each of its readers.

An order answer (and a socket frame) carries the latest events of each timeline, with
``events_total`` and an ``events_before`` cursor; ``GET …/events?before=<cursor>`` reads on from
there: ``/api/v1/orders/{id}/events`` (the merchant), ``/api/me/orders/{id}/events`` (the
signed-in customer, in ``customer.py``) and ``/api/track/<token>/events`` (a tracking link, in
``track.py``), each with the access rules of the order itself. ``shipment_id=`` picks a
shipment's timeline, none the order's own. Pages come newest first, each oldest first.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any, NamedTuple

from flask import Blueprint, g, jsonify, request

from waybill.api import merchant as merchant_api
from waybill.api.access import owned_or_404
from waybill.api.spec import operation
from waybill.db import MAX_ID, get_session
from waybill.errors import ApiError, not_found
from waybill.models import Order, Shipment
from waybill.models.orders import EVENT_CURSOR_PATTERN, EventPage
from waybill.orders import EVENTS_PAGE_MAX, EVENTS_SHOWN, event_page, parse_event_cursor

#: What the summary of every events route says, so that clients know how pages run.
SUMMARY = (
    "older events of one timeline, a page at a time: the newest page first (follow "
    "next_before for older ones), each page oldest first"
)
#: The query every events route takes (``shipment_id`` where an order has several timelines).
PAGE_QUERY: dict[str, dict[str, Any]] = {
    "before": {"type": "string", "pattern": EVENT_CURSOR_PATTERN},
    "limit": {"type": "integer", "minimum": 1, "maximum": EVENTS_PAGE_MAX, "default": EVENTS_SHOWN},
}
ORDER_QUERY: dict[str, dict[str, Any]] = {
    **PAGE_QUERY,
    "shipment_id": {"type": "integer", "minimum": 1, "maximum": MAX_ID},
}
RESPONSES: dict[int, Any] = {200: EventPage, 422: None}

_DIGITS = re.compile(r"[0-9]{1,19}")


class PageQuery(NamedTuple):
    shipment_id: int | None  # None: the order's own timeline
    before: tuple[datetime, int] | None  # None: from the newest event
    limit: int


def _page_query(names: dict[str, dict[str, Any]]) -> PageQuery:
    """``shipment_id``, ``before`` and ``limit`` of this request: 422 with ``fields`` for a
    value that is not one, or a parameter the route does not take."""
    args = request.args
    fields: dict[str, str] = {
        name or "(no name)": "not a query parameter of this request"
        for name in args
        if name not in names
    }
    limit = EVENTS_SHOWN
    if "limit" in args:
        raw = args["limit"]
        if _DIGITS.fullmatch(raw) and 1 <= int(raw) <= EVENTS_PAGE_MAX:
            limit = int(raw)
        else:
            fields["limit"] = f"a whole number from 1 to {EVENTS_PAGE_MAX}"
    before = None
    if "before" in args:
        before = parse_event_cursor(args["before"])
        if before is None:
            fields["before"] = "not a cursor we gave"
    shipment_id = None
    if "shipment_id" in args and "shipment_id" in names:
        raw = args["shipment_id"]
        if _DIGITS.fullmatch(raw) and 1 <= int(raw) <= MAX_ID:
            shipment_id = int(raw)
        else:
            fields["shipment_id"] = "the id of one of this order's shipments"
    if fields:
        raise ApiError(422, "invalid", "some query parameters are not valid", fields)
    return PageQuery(shipment_id, before, limit)


def page_query() -> PageQuery:
    """The query of an order's events route, checked before the order is looked up: a bad
    query answers 422 whoever's the order is, and so says nothing about it."""
    return _page_query(ORDER_QUERY)


def events_json(order: Order, query: PageQuery, *, language: str = "en") -> Any:
    """The page ``query`` names of ``order``'s timeline, as JSON-ready data; a shipment that is
    not this order's answers 404, as a missing one does."""
    shipment_id, before, limit = query
    db = get_session()
    if shipment_id is not None:
        owned_or_404(db, Shipment, shipment_id, "shipment", order_id=order.id)
    page = event_page(
        db, order, shipment_id=shipment_id, before=before, limit=limit, language=language
    )
    return page.model_dump(mode="json")


# --- the merchant's: its own blueprint, authenticated as the rest of /api/v1 ---------------

merchant_bp = Blueprint("merchant_events_api", __name__, url_prefix="/api/v1")
merchant_bp.before_request(merchant_api._authenticate)


@merchant_bp.get("/orders/<int:order_id>/events")
@operation(
    f"One order's {SUMMARY}",
    responses=RESPONSES,
    security="merchant",
    tag="merchant",
    query=ORDER_QUERY,
)
def merchant_order_events(order_id: int) -> Any:
    query = page_query()
    order = owned_or_404(get_session(), Order, order_id, "order", merchant_id=g.merchant.id)
    return jsonify(events_json(order, query))


@merchant_bp.get("/shipments/<int:shipment_id>/events")
@operation(
    f"One shipment's {SUMMARY}",
    responses=RESPONSES,
    security="merchant",
    tag="merchant",
    query=PAGE_QUERY,
)
def merchant_shipment_events(shipment_id: int) -> Any:
    query = _page_query(PAGE_QUERY)
    db = get_session()
    shipment = owned_or_404(db, Shipment, shipment_id, "shipment")
    order = db.get(Order, shipment.order_id)
    # Another merchant's shipment answers exactly as a missing one: ids reveal nothing.
    if order is None or order.merchant_id != g.merchant.id:
        raise not_found("shipment")
    return jsonify(events_json(order, query._replace(shipment_id=shipment.id)))
