"""WooCommerce: ``order.created`` and ``order.updated`` (the ``X-WC-Webhook-Topic`` header),
whose body is the REST API's order.

An order is known to Waybill by its ``number`` (what the shop and its customer call it; the
same as ``id`` unless a plugin numbers orders). A status change's event id is
``"<number>:<status>"``: WooCommerce sends the whole order on every save, and the same status
again is not a new change.

https://woocommerce.github.io/woocommerce-rest-api-docs/#order-properties,
https://woocommerce.com/document/webhooks/.
"""

from __future__ import annotations

import html
import logging
import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from waybill.integrations import mapping as m
from waybill.integrations.base import OrderUpsert, Update

log = logging.getLogger(__name__)

PLATFORM = "woocommerce"
SIGNATURE_HEADER = "X-WC-Webhook-Signature"
TOPIC_HEADER = "X-WC-Webhook-Topic"
ORDER_TOPICS = frozenset({"order.created", "order.updated"})
#: What WooCommerce posts, unsigned and as a form, when a webhook is saved.
_PING = re.compile(rb"webhook_id=\d+")
#: Not an order yet (the block checkout's draft): nothing to show anyone.
_NOT_AN_ORDER = frozenset({"checkout-draft"})


def is_ping(body: bytes) -> bool:
    return _PING.fullmatch(body.strip()) is not None


def verify(secret: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """``X-WC-Webhook-Signature: <base64 HMAC-SHA256(secret, body)>``.

    The ping WooCommerce sends when a webhook is saved carries no signature, and WooCommerce
    refuses to save a webhook whose ping is not answered 200; it is accepted unsigned, which
    is safe because it says nothing (``parse`` gives no update for it)."""
    if secret and is_ping(body):
        return True
    return m.base64_hmac_matches(secret, body, headers.get(SIGNATURE_HEADER))


def parse(body: bytes, headers: Mapping[str, str]) -> list[Update]:
    """An order topic as the order; the ping and other topics are none of ours."""
    if is_ping(body) or headers.get(TOPIC_HEADER) not in ORDER_TOPICS:
        return []
    return _order(m.load_json(body))


def _order(order: dict[str, Any]) -> list[Update]:
    what = "order"
    number = m.need_id(order, "number", what)
    status = m.need_str(order, "status", what)
    if status in _NOT_AN_ORDER:
        return []
    billing = m.get_dict(order, "billing", what) or {}
    email = m.get_str(billing, "email", f"{what}.billing")
    if email is None:
        # An order keyed in by the shop without an address: no one for Waybill to tell.
        log.info("woocommerce order %s has no billing email; nothing for Waybill to do", number)
        return []
    parts = [
        m.get_str(billing, "first_name", f"{what}.billing"),
        m.get_str(billing, "last_name", f"{what}.billing"),
    ]
    mapped, _ = m.woocommerce_order_status(status)
    return [
        OrderUpsert(
            external_id=number,
            email=email,
            name=" ".join(p for p in parts if p)[:200] or None,
            items=m.line_items(
                m.get_list(order, "line_items", what), f"{what}.line_items", names=html.unescape
            ),
            placed_at=_gmt(order, "date_created_gmt"),
            status=mapped,
            source_status=status[: m.SOURCE_STATUS_MAX],
            event_id=f"{number}:{status}" if mapped else None,
            occurred_at=_gmt(order, "date_modified_gmt") if mapped else None,
        )
    ]


def _gmt(order: dict[str, Any], key: str) -> datetime | None:
    """A ``*_gmt`` field: UTC, written without an offset."""
    value = order.get(key)
    return None if value is None else m.instant(value, f"order.{key}")
