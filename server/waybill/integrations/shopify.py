"""Shopify: orders (``orders/create``, ``orders/updated``, ``orders/cancelled``) and their
fulfillments (``fulfillments/create``, ``fulfillments/update``); the topic is the
``X-Shopify-Topic`` header.

An order is known to Waybill by Shopify's numeric order ``id`` (as text): it is the one
identifier both payloads carry, as the order's ``id`` and as the fulfillment's ``order_id``.
The order's ``name`` ("#1001") and ``order_number`` are for people, and a fulfillment's
``name`` ("#1001.1") is not an order's at all.

https://shopify.dev/docs/api/webhooks (topics orders/*, fulfillments/*),
https://shopify.dev/docs/apps/build/webhooks/subscribe/https#step-5-verify-the-webhook.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from waybill.integrations import mapping as m
from waybill.integrations.base import Checkpoint, OrderUpsert, ShipmentUpsert, Update
from waybill.tracking.statuses import Status

log = logging.getLogger(__name__)

PLATFORM = "shopify"
SIGNATURE_HEADER = "X-Shopify-Hmac-Sha256"
TOPIC_HEADER = "X-Shopify-Topic"
ORDER_TOPICS = frozenset({"orders/create", "orders/updated", "orders/cancelled"})
FULFILLMENT_TOPICS = frozenset({"fulfillments/create", "fulfillments/update"})
#: The carrier of a fulfillment whose shop named none (Shopify's own word for that case).
NO_CARRIER = "Other"


def verify(secret: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """``X-Shopify-Hmac-Sha256: <base64 HMAC-SHA256(secret, body)>``."""
    return m.base64_hmac_matches(secret, body, headers.get(SIGNATURE_HEADER))


def parse(body: bytes, headers: Mapping[str, str]) -> list[Update]:
    """The order or the fulfillment the topic names; other topics are none of ours."""
    topic = headers.get(TOPIC_HEADER)
    if topic in ORDER_TOPICS:
        return _order(m.load_json(body))
    if topic in FULFILLMENT_TOPICS:
        return _fulfillment(m.load_json(body))
    return []


def _order(order: dict[str, Any]) -> list[Update]:
    what = "order"
    external_id = m.need_id(order, "id", what)
    customer = m.get_dict(order, "customer", what) or {}
    email = (
        m.get_str(order, "email", what)
        or m.get_str(order, "contact_email", what)
        or m.get_str(customer, "email", f"{what}.customer")
    )
    if email is None:
        # A till or phone order without an address: a fine order, but no one to tell.
        log.info("shopify order %s has no email; nothing for Waybill to do", external_id)
        return []
    billing = m.get_dict(order, "billing_address", what) or {}
    name = _full_name(customer, f"{what}.customer") or _full_name(
        billing, f"{what}.billing_address"
    )
    cancelled_at = order.get("cancelled_at")
    status = Status.CANCELLED if cancelled_at else None
    return [
        OrderUpsert(
            external_id=external_id,
            email=email,
            name=name,
            locale=m.locale(m.get_str(order, "customer_locale", what)),
            items=m.line_items(m.get_list(order, "line_items", what), f"{what}.line_items"),
            placed_at=m.instant(order.get("created_at"), f"{what}.created_at"),
            status=status,
            source_status="cancelled" if status else m.get_str(order, "financial_status", what),
            event_id=f"{external_id}:{status.value}" if status else None,
            occurred_at=m.instant(cancelled_at, f"{what}.cancelled_at") if status else None,
        )
    ]


def _full_name(person: dict[str, Any], what: str) -> str | None:
    parts = [m.get_str(person, "first_name", what), m.get_str(person, "last_name", what)]
    return " ".join(p for p in parts if p)[:200] or None


def _fulfillment(fulfillment: dict[str, Any]) -> list[Update]:
    what = "fulfillment"
    fulfillment_id = m.need_id(fulfillment, "id", what)
    order_id = m.need_id(fulfillment, "order_id", what)
    numbers = [n for n in m.get_list(fulfillment, "tracking_numbers", what) if isinstance(n, str)]
    raw_number = m.get_str(fulfillment, "tracking_number", what) or next(
        (n for n in numbers if n.strip()), None
    )
    if raw_number is None:
        # Shipped without tracking (local delivery, a letter): no parcel for Waybill to follow.
        log.info("shopify fulfillment %s has no tracking number", fulfillment_id)
        return []
    number = m.tracking_number(raw_number, f"{what}.tracking_number")
    checkpoints = []
    shipment_status = m.get_str(fulfillment, "shipment_status", what)
    if shipment_status is not None:
        mapped, _ = m.shopify_shipment_status(shipment_status)
        checkpoints.append(
            _checkpoint(fulfillment, fulfillment_id, mapped, shipment_status, description=None)
        )
    if m.get_str(fulfillment, "status", what) == "cancelled":
        # The shop took the parcel back before it went: its number no longer stands for one.
        checkpoints.append(
            _checkpoint(
                fulfillment,
                fulfillment_id,
                Status.CANCELLED,
                "cancelled",
                description="Fulfillment cancelled",
            )
        )
    return [
        ShipmentUpsert(
            order_external_id=order_id,
            carrier=m.clip(m.get_str(fulfillment, "tracking_company", what), 100) or NO_CARRIER,
            tracking_number=number,
            checkpoints=m.timeline(checkpoints),
            email=m.get_str(fulfillment, "email", what),
            items=m.line_items(m.get_list(fulfillment, "line_items", what), f"{what}.line_items"),
        )
    ]


def _checkpoint(
    fulfillment: dict[str, Any],
    fulfillment_id: str,
    status: Status,
    source: str,
    *,
    description: str | None,
) -> Checkpoint:
    """A fulfillment's status as a checkpoint at the fulfillment's ``updated_at``. Its id is
    the fulfillment and the status: Shopify resends the fulfillment whenever anything of it
    changes, and the same status sent again is not a new event."""
    return Checkpoint(
        status=status,
        occurred_at=m.instant(fulfillment.get("updated_at"), "fulfillment.updated_at"),
        source_status=source[: m.SOURCE_STATUS_MAX],
        description=description,
        event_id=f"{PLATFORM}:{fulfillment_id}:{source}",
    )
