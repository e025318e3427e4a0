"""What every platform adapter turns its platform's webhook into: plain dataclasses, no Flask,
no database. ``integrations.inbox`` applies them through the one ingest path.

An adapter module (``integrations/<platform>.py``) has:

* ``PLATFORM``: its name in URLs (``easypost``, ``shippo``, ``aftership``, ``shopify``,
  ``woocommerce``);
* ``verify(secret, body, headers, query) -> bool``: the platform's own signature over the raw
  body, compared in constant time (``hmac.compare_digest``); never raises;
* ``parse(body, headers) -> list[Update]``: the payload as updates, in the order they should be
  applied; raises ``PayloadError`` for a body that is not the platform's shape (answered 400,
  nothing recorded); a topic it does not handle gives ``[]`` (answered 200, kept for support).

An unknown platform status never refuses a payload: it maps to the nearest safe status (the
mapping tables say which) and the adapter logs it; the platform's own words are kept on every
event as ``source_status``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Protocol


class PayloadError(ValueError):
    """The body is not what this platform sends: the message says what is wrong."""


@dataclass(frozen=True)
class Checkpoint:
    """One event of a parcel's history, in Waybill's words and the platform's."""

    status: str  # a Waybill status (tracking.statuses.Status value)
    occurred_at: datetime  # timezone-aware
    source_status: str  # the platform's own, e.g. "InTransit/InTransit_002", "out_for_delivery"
    location: str | None = None
    description: str | None = None
    #: The platform's id of this checkpoint when it has one; else the adapter derives a stable
    #: one from the checkpoint's content, so a replayed history dedupes to nothing.
    event_id: str | None = None
    pickup_until: datetime | None = None


@dataclass(frozen=True)
class TrackingUpdate:
    """A parcel's status report: its whole history as the platform knows it (oldest first)."""

    carrier: str
    tracking_number: str
    checkpoints: tuple[Checkpoint, ...]
    estimated_delivery: datetime | None = None
    service: str | None = None


@dataclass(frozen=True)
class LineItem:
    name: str
    quantity: int


@dataclass(frozen=True)
class OrderUpsert:
    """A shop's order, created or updated (WooCommerce ``order.*``, Shopify ``orders/*``)."""

    external_id: str
    email: str
    name: str | None = None
    locale: str | None = None
    items: tuple[LineItem, ...] = ()
    placed_at: datetime | None = None
    #: A Waybill order-level status the shop's status maps to (``processing``, ``cancelled``,
    #: ``delivered``, …) or None when the shop's status says nothing new (e.g. pending payment).
    status: str | None = None
    source_status: str | None = None
    #: A stable id for the status change (dedupes replays), e.g. "<order id>:<status>".
    event_id: str | None = None
    occurred_at: datetime | None = None


@dataclass(frozen=True)
class ShipmentUpsert:
    """A shop's fulfilment: a parcel of an order known by its ``external_id``, with what the
    shop knows of its progress (Shopify ``fulfillments/create|update``)."""

    order_external_id: str
    carrier: str
    tracking_number: str
    checkpoints: tuple[Checkpoint, ...] = ()
    service: str | None = None
    estimated_delivery: datetime | None = None
    #: When the shop sends the order's customer with the fulfilment (so the order can be made
    #: if its ``orders/create`` was missed).
    email: str | None = None
    items: tuple[LineItem, ...] = field(default_factory=tuple)


Update = TrackingUpdate | OrderUpsert | ShipmentUpsert


class Adapter(Protocol):
    PLATFORM: str

    def verify(
        self, secret: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]
    ) -> bool: ...

    def parse(self, body: bytes, headers: Mapping[str, str]) -> list[Update]: ...
