"""Orders, their shipments, tracking events and the change log; what a merchant sends about
them (``…Create``) and the JSON every reader gets (``…Public``).

The tables keep their own column definitions (the migrations are the schema); the inputs
and outputs share a base per entity where they share fields."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import AwareDatetime, StringConstraints, ValidationInfo, field_validator
from sqlmodel import JSON, Column, Field, SQLModel

from waybill.models.customers import CustomerIn, CustomerPublic
from waybill.models.merchants import MerchantPublic
from waybill.models.types import (
    Instant,
    StatusName,
    Strict,
    Text100,
    Text200,
    UTCDateTime,
    created,
    ts,
)


class Order(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("merchant_id", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True, max_length=40)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    external_id: str = Field(max_length=200)
    # What this order's merchant said about its customer: shown to that merchant alone, never
    # to another; the customer's own saved settings win over it everywhere else.
    customer_name: str | None = Field(default=None, max_length=200)
    customer_locale: str | None = Field(default=None, max_length=35)
    customer_timezone: str | None = Field(default=None, max_length=64)
    # sealed with the server key (auth.tokens): only the server opens it, to build the link
    tracking_token_sealed: str = Field(max_length=200)
    tracking_token_hash: str = Field(unique=True, max_length=64)
    status: str = Field(default="confirmed", max_length=32)
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    request_hash: str = Field(max_length=64)  # of the creating body, for idempotent retries
    placed_at: datetime | None = ts(nullable=True)
    # the latest date its shipments' merchants or carriers gave (see tracking.events)
    estimated_delivery: datetime | None = ts(nullable=True)
    # Waybill's own window (waybill.eta), dates in the customer's zone; set with each event
    eta_earliest: date | None = None
    eta_latest: date | None = None  # the "arrives by"
    eta_most_likely: date | None = None
    eta_updated_at: datetime | None = ts(nullable=True)
    created_at: datetime = created()
    updated_at: datetime = created()


class Shipment(SQLModel, table=True):
    __table_args__ = (
        # One parcel per carrier and number in an order: a retried POST finds it, and two at
        # once cannot both insert. Led by the number, it also finds the parcel in any order.
        sa.Index("uq_shipment_number", "tracking_number", "carrier_key", "order_id", unique=True),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    carrier: str = Field(max_length=100)
    # carrier_key_of(carrier), set on every write (casefolding can lengthen a name threefold)
    carrier_key: str = Field(max_length=300)
    tracking_number: str = Field(max_length=100)
    service: str | None = Field(default=None, max_length=100)
    status: str = Field(default="shipped", max_length=32)
    estimated_delivery: datetime | None = ts(nullable=True)  # as its merchant or carrier gave it
    estimated_delivery_source: str | None = Field(default=None, max_length=10)  # merchant|carrier
    estimated_delivery_updated_at: datetime | None = ts(nullable=True)
    # Until when the parcel waits at its pickup point: set by the newest available_for_pickup
    # event that says so, cleared once the parcel moves on (see ingest._pickup_until).
    pickup_until: datetime | None = ts(nullable=True)
    created_at: datetime = created()

    @staticmethod
    def carrier_key_of(carrier: str) -> str:
        """What makes two spellings of a carrier one carrier: "DHL", "dhl" and "Dhl" are one."""
        return carrier.casefold()


@sa.event.listens_for(Shipment, "before_insert")
@sa.event.listens_for(Shipment, "before_update")
def _keep_carrier_key(mapper: Any, connection: Any, shipment: Shipment) -> None:
    """The key never falls out of step with the name, whoever writes the row: the unique
    index over it is what keeps a retried shipment from becoming a second parcel."""
    key = Shipment.carrier_key_of(shipment.carrier)
    if shipment.carrier_key != key:
        shipment.carrier_key = key


class TrackingEvent(SQLModel, table=True):
    __tablename__ = "tracking_event"
    __table_args__ = (
        sa.UniqueConstraint("order_id", "dedupe_key"),
        # one timeline, newest first: the latest events and "is this one the newest?" read
        # a few index entries, however long the order's history
        sa.Index("ix_tracking_event_timeline", "order_id", "shipment_id", "occurred_at", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    shipment_id: int | None = Field(default=None, foreign_key="shipment.id", index=True)
    status: str = Field(max_length=32)
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    location: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=500)
    source: str = Field(default="api", max_length=32)
    #: the sender's own word for the status (a platform's "InTransit/InTransit_002"), kept
    source_status: str | None = Field(default=None, max_length=100)
    event_id: str | None = Field(default=None, max_length=200)  # the sender's own id
    dedupe_key: str = Field(max_length=120)
    created_at: datetime = created()


class Change(SQLModel, table=True):
    """The change log: one row per committed change a customer can see. Its id is the cursor."""

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    kind: str = Field(max_length=32)  # order.created, shipment.added, event.recorded, ...
    status_before: str | None = Field(default=None, max_length=32)
    status_after: str = Field(max_length=32)
    created_at: datetime = created()


# --- in -------------------------------------------------------------------------------------


IMAGE_URL = r"^https://[^\s\x00-\x20\x7f-\x9f]+$"


class ItemIn(Strict):
    name: Text200
    quantity: int = Field(ge=1, le=10_000)
    # \S alone differs between Python's and JavaScript's regexes (U+001C-U+001F, U+0085)
    image_url: Annotated[str, StringConstraints(pattern=IMAGE_URL, max_length=2000)] | None = None


class OrderCreate(Strict):
    """A new order."""

    external_id: Text200
    customer: CustomerIn
    items: list[ItemIn] = Field(default_factory=list, max_length=200)
    placed_at: Instant | None = None


SOURCE_STATUS_DOC = (
    "the sender's own word for this status (a carrier's or platform's code), kept with the event"
)


class OrderEventCreate(Strict):
    """A change of the order itself (being prepared, cancelled, ...)."""

    status: StatusName
    occurred_at: Instant | None = None
    event_id: Text200 | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    source_status: Text100 | None = Field(default=None, description=SOURCE_STATUS_DOC)


class ShipmentCreate(Strict):
    """A parcel of the order handed to a carrier."""

    carrier: Text100
    tracking_number: Annotated[
        str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9 ._/-]{1,100}$")
    ]
    service: Text100 | None = None
    estimated_delivery: Instant | None = None


class ShipmentUpdate(Strict):
    """What changes of a shipment: the fields sent, and only those. ``null`` removes the
    estimate or the service; the carrier can be respelled or corrected, never removed, and
    the tracking number never changes (a new number is a new shipment)."""

    carrier: Text100 = None  # type: ignore[assignment]  # left out: kept; null: refused
    service: Text100 | None = None
    estimated_delivery: Instant | None = None


PICKUP_STATUS = "available_for_pickup"
PICKUP_UNTIL_DOC = (
    "Until when the parcel waits at its pickup point (the event's `location`); only with "
    "status `available_for_pickup`, and not before `occurred_at`."
)


def check_pickup_until(value: datetime | None, info: ValidationInfo) -> datetime | None:
    """A pickup deadline belongs to a parcel that waits to be collected, and ends after the
    scan that says so: another status with one, or one before ``occurred_at``, is refused."""
    if value is None:
        return None
    status = info.data.get("status")
    if status is not None and status != PICKUP_STATUS:
        raise ValueError(f"only with status {PICKUP_STATUS}")
    occurred_at = info.data.get("occurred_at")
    if occurred_at is not None and value < occurred_at:
        raise ValueError("must not be before occurred_at")
    return value


class ShipmentEventCreate(Strict):
    """A carrier scan or status change of one shipment."""

    status: StatusName
    occurred_at: Instant
    event_id: Text200 | None = None
    location: Annotated[str, StringConstraints(max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    pickup_until: Instant | None = Field(default=None, description=PICKUP_UNTIL_DOC)
    source_status: Text100 | None = Field(default=None, description=SOURCE_STATUS_DOC)

    @field_validator("pickup_until")
    @classmethod
    def _only_while_waiting(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        return check_pickup_until(value, info)


# --- out ------------------------------------------------------------------------------------


class EventPublic(SQLModel):
    status: StatusName
    status_label: str
    occurred_at: AwareDatetime
    location: str | None
    description: str | None


#: A place in one timeline, as ``events_before`` and ``next_before`` give it: opaque to clients
#: (16 bytes, base64url). Every string of this shape is a cursor, so none made up is refused.
EVENT_CURSOR_PATTERN = r"^[A-Za-z0-9_-]{21}[AQgw]$"
EventCursor = Annotated[str, StringConstraints(pattern=EVENT_CURSOR_PATTERN)]


class EventPage(SQLModel):
    """A page of one timeline's events, oldest first; pages come newest first."""

    events: list[EventPublic]
    next_before: EventCursor | None  # the cursor to the next (older) page; null at the oldest


class EstimatePublic(SQLModel):
    """When it should arrive: a window of dates and the most likely day. Waybill's own
    (``source`` ``waybill``, learned from delivered orders, dates in the customer's zone) or
    the one date a merchant or carrier gave (``merchant``/``carrier``, with that instant as
    ``at``; its dates are that instant's in UTC)."""

    earliest: date
    latest: date  # the "arrives by"
    most_likely: date
    updated_at: AwareDatetime
    source: Literal["waybill", "merchant", "carrier"]
    at: AwareDatetime | None = None


class ShipmentPublic(SQLModel):
    id: int
    carrier: str
    tracking_number: str
    service: str | None
    status: StatusName
    status_label: str
    estimated_delivery: EstimatePublic | None  # the merchant's or carrier's, when one gave it
    # until when it waits at its pickup point, while it does (status available_for_pickup)
    pickup_until: AwareDatetime | None
    events: list[EventPublic]  # the latest EVENTS_SHOWN (50), oldest first
    events_total: int = Field(ge=0)  # how many events this shipment has in all
    events_before: EventCursor | None  # the cursor to the older ones; null when none left out
    events_truncated: bool  # true when events_total > len(events)


class ItemPublic(SQLModel):
    name: str
    quantity: int
    image_url: str | None = None


class PackagesPublic(SQLModel):
    total: int
    delivered: int
    summary: str | None


class OrderPublic(SQLModel):
    """The order."""

    id: int
    external_id: str
    status: StatusName
    status_label: str
    merchant: MerchantPublic
    tracking_url: str
    items: list[ItemPublic]
    packages: PackagesPublic
    shipments: list[ShipmentPublic]
    events: list[EventPublic]  # the order's own events (confirmed, processing, cancelled...)
    events_total: int = Field(ge=0)  # the order's own events: latest 50 above, this many in all
    events_before: EventCursor | None  # the cursor to the older ones; null when none left out
    events_truncated: bool  # true when events_total > len(events)
    # Waybill's window while the order is on its way (null once delivered, returned or
    # cancelled), and beside it the latest date a merchant or carrier gave for its parcels
    estimated_delivery: EstimatePublic | None
    estimated_delivery_given: EstimatePublic | None = None
    placed_at: AwareDatetime | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    cursor: int | None = None  # the change-log cursor of the order's latest change


class MerchantOrderPublic(OrderPublic):
    """The order, as its merchant sees it."""

    customer: CustomerPublic


class MerchantOrderList(SQLModel):
    """A page of the merchant's orders, newest first."""

    orders: list[MerchantOrderPublic]
    next_cursor: str | None


class ShipmentCreated(ShipmentPublic):
    """The shipment."""

    order_id: int


class OrderList(SQLModel):
    """The customer's orders, newest first."""

    orders: list[OrderPublic]
