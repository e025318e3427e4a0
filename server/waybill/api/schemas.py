"""Request and response models: one source for validation, the OpenAPI document and JSON out."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Literal
from zoneinfo import available_timezones

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    EmailStr,
    Field,
    StringConstraints,
)

from waybill.tracking.statuses import ALL_STATUSES

StatusName = Literal[tuple(s.value for s in ALL_STATUSES)]  # type: ignore[valid-type]
#: One line of text: no control characters, line breaks or line/paragraph separators, so that
#: no value (an order number in a mail's subject, say) can break a line where it is shown; and
#: no bidirectional embedding, override or isolate controls (U+202A-U+202E, U+2066-U+2069),
#: which can make "1042" read as "2401" or hide part of a name.
ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"
Text200 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=ONE_LINE)
]
Text100 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=ONE_LINE)
]
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


def _known_zone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone")
    return value


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES


def _zone_enum(schema: dict[str, object]) -> None:
    schema["enum"] = sorted(_zones())  # so generated clients (and fuzzers) send real zones


TimeZone = Annotated[str, AfterValidator(_known_zone), Field(json_schema_extra=_zone_enum)]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


#: A timestamp with an offset that still exists in UTC (0001-01-01T00:00+05:00 does not).
Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --- requests -------------------------------------------------------------------------------


class CustomerIn(Strict):
    email: Annotated[EmailStr, StringConstraints(max_length=320)]
    name: Text200 | None = None
    locale: Locale | None = None
    timezone: TimeZone | None = None


class ItemIn(Strict):
    name: Text200
    quantity: int = Field(ge=1, le=10_000)
    image_url: (
        Annotated[str, StringConstraints(pattern=r"^https://\S+$", max_length=2000)] | None
    ) = None


class OrderCreate(Strict):
    """A new order."""

    external_id: Text200
    customer: CustomerIn
    items: list[ItemIn] = Field(default_factory=list, max_length=200)
    placed_at: Instant | None = None


class OrderEventCreate(Strict):
    """A change of the order itself (being prepared, cancelled, ...)."""

    status: StatusName
    occurred_at: Instant | None = None
    event_id: Text200 | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None


class ShipmentCreate(Strict):
    """A parcel of the order handed to a carrier."""

    carrier: Text100
    tracking_number: Annotated[
        str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9 ._/-]{1,100}$")
    ]
    service: Text100 | None = None
    estimated_delivery: Instant | None = None


class ShipmentEventCreate(Strict):
    """A carrier scan or status change of one shipment."""

    status: StatusName
    occurred_at: Instant
    event_id: Text200 | None = None
    location: Annotated[str, StringConstraints(max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None


class EmailSignIn(Strict):
    email: Annotated[str, StringConstraints(max_length=320, pattern=r"^[^\x00]*$")]


class CodeSignIn(Strict):
    email: Annotated[str, StringConstraints(max_length=320)]
    code: Annotated[str, StringConstraints(pattern=r"^\s*\d{6}\s*$")]


# --- responses ------------------------------------------------------------------------------


class EventPublic(BaseModel):
    status: StatusName
    status_label: str
    occurred_at: AwareDatetime
    location: str | None
    description: str | None


class ShipmentPublic(BaseModel):
    id: int
    carrier: str
    tracking_number: str
    service: str | None
    status: StatusName
    status_label: str
    estimated_delivery: AwareDatetime | None
    events: list[EventPublic]


class ItemPublic(BaseModel):
    name: str
    quantity: int
    image_url: str | None = None


class PackagesPublic(BaseModel):
    total: int
    delivered: int
    summary: str | None


class MerchantPublic(BaseModel):
    id: str
    name: str


class CustomerPublic(BaseModel):
    email: str
    name: str | None


class OrderPublic(BaseModel):
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
    estimated_delivery: AwareDatetime | None
    placed_at: AwareDatetime | None
    created_at: AwareDatetime
    updated_at: AwareDatetime
    cursor: int | None = None  # the change-log cursor of the order's latest change


class MerchantOrderPublic(OrderPublic):
    """The order, as its merchant sees it."""

    customer: CustomerPublic


class MerchantOrderList(BaseModel):
    """A page of the merchant's orders, newest first."""

    orders: list[MerchantOrderPublic]
    next_cursor: str | None


class ShipmentCreated(ShipmentPublic):
    """The shipment."""

    order_id: int


class OrderList(BaseModel):
    """The customer's orders, newest first."""

    orders: list[OrderPublic]


class Me(BaseModel):
    """The signed-in customer."""

    email: str
    name: str | None
    csrf_token: str
    locale: str | None
    timezone: str | None


class Sent(BaseModel):
    """Accepted."""

    sent: bool


class SignedIn(BaseModel):
    """Signed in."""

    signed_in: bool
    redirect: str
