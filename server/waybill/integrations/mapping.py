"""Each platform's words for a parcel's or an order's progress, and Waybill's word for each.

The tables are the reference: one plain dict per platform vocabulary, as the platform
publishes it. A function per platform reads its tables and answers ``(status, known)``. A
value that is in no table is never refused (the platform may add words before we do): it
becomes the nearest status that claims no more than the platform said, and is logged so the
table can grow. The fallbacks:

* a checkpoint whose broad status is known but whose detail is not: the broad status;
* a checkpoint whose broad status is unknown: ``in_transit`` (on its way; neither delivered
  nor an alarm the platform did not raise);
* a shop's order status that is unknown: ``None``, no change.

The second half of the module is what every adapter needs to read a payload: typed field
access that raises ``PayloadError`` (never ``KeyError``/``TypeError``), times as aware UTC,
tracking numbers as Waybill accepts them, and derived event ids.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

from waybill.integrations.base import Checkpoint, LineItem, PayloadError
from waybill.tracking.statuses import Status

log = logging.getLogger(__name__)

#: What a checkpoint becomes when its platform's status is in no table.
UNKNOWN_CHECKPOINT = Status.IN_TRANSIT

Mapped = tuple[Status, bool]

# --- AfterShip: tag, refined by subtag ------------------------------------------------------
# https://www.aftership.com/docs/tracking/enum/delivery-statuses and
# .../enum/delivery-sub-statuses. A subtag is named after its tag ("Exception_011").

AFTERSHIP_TAGS: dict[str, Status] = {
    "Pending": Status.SHIPPED,  # added, no carrier information yet
    "InfoReceived": Status.SHIPPED,  # label created, carrier about to pick up
    "InTransit": Status.IN_TRANSIT,
    "OutForDelivery": Status.OUT_FOR_DELIVERY,
    "AttemptFail": Status.ATTEMPTED,
    "Delivered": Status.DELIVERED,
    "AvailableForPickup": Status.AVAILABLE_FOR_PICKUP,
    "Exception": Status.EXCEPTION,
    "Expired": Status.EXCEPTION,  # no news for 30 days: worth the customer's attention
}

AFTERSHIP_SUBTAGS: dict[str, Status] = {
    "Pending_001": Status.SHIPPED,
    "Pending_002": Status.SHIPPED,
    "Pending_003": Status.SHIPPED,
    "Pending_004": Status.SHIPPED,
    "Pending_005": Status.SHIPPED,
    "Pending_006": Status.SHIPPED,
    "InfoReceived_001": Status.SHIPPED,
    "InTransit_001": Status.IN_TRANSIT,  # on the way
    "InTransit_002": Status.IN_TRANSIT,  # acceptance scan
    "InTransit_003": Status.IN_TRANSIT,  # arrival scan
    "InTransit_004": Status.IN_TRANSIT,  # arrived at destination country
    "InTransit_005": Status.IN_TRANSIT,  # customs clearance completed
    "InTransit_006": Status.IN_TRANSIT,  # customs clearance started
    "InTransit_007": Status.IN_TRANSIT,  # departure scan
    "InTransit_008": Status.IN_TRANSIT,  # problem resolved
    "InTransit_009": Status.IN_TRANSIT,  # forwarded to a different address
    "OutForDelivery_001": Status.OUT_FOR_DELIVERY,
    # Older API versions: "arrived at sorting center and is available for pickup".
    "OutForDelivery_002": Status.AVAILABLE_FOR_PICKUP,
    "OutForDelivery_003": Status.OUT_FOR_DELIVERY,  # customer contacted
    "OutForDelivery_004": Status.OUT_FOR_DELIVERY,  # delivery appointment scheduled
    "AttemptFail_001": Status.ATTEMPTED,
    "AttemptFail_002": Status.ATTEMPTED,  # addressee not available
    "AttemptFail_003": Status.ATTEMPTED,  # business closed
    "Delivered_001": Status.DELIVERED,
    "Delivered_002": Status.DELIVERED,  # picked up by the customer
    "Delivered_003": Status.DELIVERED,  # signed by the customer
    "Delivered_004": Status.DELIVERED,  # delivered, cash collected
    "Delivered_005": Status.DELIVERED,  # delivered to a neighbour
    "AvailableForPickup_001": Status.AVAILABLE_FOR_PICKUP,
    "Exception_001": Status.EXCEPTION,
    "Exception_002": Status.EXCEPTION,  # customer moved
    "Exception_003": Status.EXCEPTION,  # customer refused delivery
    "Exception_004": Status.EXCEPTION,  # delayed: customs
    "Exception_005": Status.EXCEPTION,  # delayed: external factors
    "Exception_006": Status.EXCEPTION,  # held for payment
    "Exception_007": Status.EXCEPTION,  # incorrect address
    "Exception_008": Status.EXCEPTION,  # pickup missed
    "Exception_009": Status.EXCEPTION,  # rejected by carrier
    "Exception_010": Status.RETURNED,  # returning to sender
    "Exception_011": Status.RETURNED,  # returned to sender
    "Exception_012": Status.EXCEPTION,  # damaged
    "Exception_013": Status.EXCEPTION,  # lost
    "Exception_016": Status.EXCEPTION,  # delayed: processing issue
    "Exception_017": Status.EXCEPTION,  # delayed: extreme weather
    "Exception_018": Status.EXCEPTION,  # incorrect or missing documents
    "Expired_001": Status.EXCEPTION,
}


def aftership_status(tag: str | None, subtag: str | None = None) -> Mapped:
    """An AfterShip checkpoint's (or tracking's) tag and subtag in Waybill's words."""
    fine = AFTERSHIP_SUBTAGS.get(subtag) if subtag else None
    if fine is not None and (not tag or str(subtag).partition("_")[0] == tag):
        return fine, True
    broad = AFTERSHIP_TAGS.get(tag) if tag else None
    if broad is not None:
        if subtag:
            return _unknown("aftership", f"{tag}/{subtag}", broad)
        return broad, True
    return _unknown("aftership", f"{tag}/{subtag}" if subtag else str(tag), UNKNOWN_CHECKPOINT)


# --- EasyPost: status, refined by status_detail ---------------------------------------------
# https://docs.easypost.com/docs/trackers. EasyPost publishes no pairing of details with
# statuses, so a detail refines only a status that leaves room for it (below).

EASYPOST_STATUSES: dict[str, Status] = {
    "unknown": Status.SHIPPED,  # no carrier information yet
    "pre_transit": Status.SHIPPED,
    "in_transit": Status.IN_TRANSIT,
    "out_for_delivery": Status.OUT_FOR_DELIVERY,
    "available_for_pickup": Status.AVAILABLE_FOR_PICKUP,
    "delivered": Status.DELIVERED,
    "return_to_sender": Status.RETURNED,
    "failure": Status.EXCEPTION,
    "cancelled": Status.CANCELLED,
    "canceled": Status.CANCELLED,  # the spelling some EasyPost pages use
    "error": Status.EXCEPTION,  # the carrier could not track it: worth a look
}

#: ``None``: the detail says nothing the status does not.
EASYPOST_STATUS_DETAILS: dict[str, Status | None] = {
    "address_correction": None,
    # Which destination (the customer's, or the sender's on the way back) the status says.
    "arrived_at_destination": None,
    "arrived_at_facility": None,
    "arrived_at_pickup_location": Status.AVAILABLE_FOR_PICKUP,
    "awaiting_information": None,
    "cancelled": Status.CANCELLED,
    "damaged": Status.EXCEPTION,
    "delayed": Status.EXCEPTION,
    "delivery_exception": Status.EXCEPTION,
    "departed_facility": None,
    "departed_origin_facility": None,
    "expired": Status.EXCEPTION,
    "failure": Status.EXCEPTION,
    "held": Status.EXCEPTION,
    "in_transit": None,
    "label_created": None,
    "lost": Status.EXCEPTION,
    "missorted": Status.EXCEPTION,
    "out_for_delivery": Status.OUT_FOR_DELIVERY,
    "received_at_destination_facility": None,
    "received_at_origin_facility": None,
    "refused": Status.EXCEPTION,
    "return": Status.RETURNED,
    "status_update": None,
    "transferred_to_destination_carrier": None,
    "transit_exception": Status.EXCEPTION,
    "unknown": None,
    "weather_delay": Status.EXCEPTION,
}

#: The statuses a detail may refine: the others already say how the journey went.
EASYPOST_REFINABLE: frozenset[str] = frozenset(
    {"unknown", "pre_transit", "in_transit", "out_for_delivery", "failure"}
)


def easypost_status(status: str | None, status_detail: str | None = None) -> Mapped:
    """An EasyPost tracking detail's status and status_detail in Waybill's words."""
    broad = EASYPOST_STATUSES.get(status) if status else None
    detail_known = not status_detail or status_detail in EASYPOST_STATUS_DETAILS
    fine = EASYPOST_STATUS_DETAILS.get(status_detail) if status_detail else None
    words = f"{status}/{status_detail}" if status_detail else str(status)
    if broad is None:
        return _unknown("easypost", words, fine or UNKNOWN_CHECKPOINT)
    if fine is not None and status in EASYPOST_REFINABLE:
        return fine, True
    if not detail_known:
        return _unknown("easypost", words, broad)
    return broad, True


# --- Shippo: status, refined by substatus.code ----------------------------------------------
# https://docs.goshippo.com/docs/tracking/tracking. Each substatus belongs to one status; a
# substatus sent with another status (the docs' own sample pairs DELIVERED with
# information_received) refines nothing.

SHIPPO_STATUSES: dict[str, Status] = {
    "PRE_TRANSIT": Status.SHIPPED,
    "TRANSIT": Status.IN_TRANSIT,
    "DELIVERED": Status.DELIVERED,
    "RETURNED": Status.RETURNED,
    "FAILURE": Status.EXCEPTION,
    "UNKNOWN": Status.SHIPPED,  # the carrier does not know the number yet
}

SHIPPO_SUBSTATUSES: dict[tuple[str, str], Status] = {
    ("PRE_TRANSIT", "information_received"): Status.SHIPPED,
    ("TRANSIT", "address_issue"): Status.EXCEPTION,
    ("TRANSIT", "contact_carrier"): Status.EXCEPTION,
    ("TRANSIT", "delayed"): Status.EXCEPTION,
    ("TRANSIT", "delivery_attempted"): Status.ATTEMPTED,
    ("TRANSIT", "delivery_rescheduled"): Status.IN_TRANSIT,
    ("TRANSIT", "delivery_scheduled"): Status.IN_TRANSIT,
    ("TRANSIT", "location_inaccessible"): Status.ATTEMPTED,
    ("TRANSIT", "notice_left"): Status.ATTEMPTED,
    ("TRANSIT", "out_for_delivery"): Status.OUT_FOR_DELIVERY,
    ("TRANSIT", "package_accepted"): Status.IN_TRANSIT,
    ("TRANSIT", "package_arrived"): Status.IN_TRANSIT,
    ("TRANSIT", "package_damaged"): Status.EXCEPTION,
    ("TRANSIT", "package_departed"): Status.IN_TRANSIT,
    ("TRANSIT", "package_forwarded"): Status.IN_TRANSIT,
    ("TRANSIT", "package_held"): Status.EXCEPTION,
    ("TRANSIT", "package_processed"): Status.IN_TRANSIT,
    ("TRANSIT", "package_processing"): Status.IN_TRANSIT,
    ("TRANSIT", "pickup_available"): Status.AVAILABLE_FOR_PICKUP,
    ("TRANSIT", "reschedule_delivery"): Status.ATTEMPTED,
    ("DELIVERED", "delivered"): Status.DELIVERED,
    ("RETURNED", "return_to_sender"): Status.RETURNED,
    ("RETURNED", "package_unclaimed"): Status.RETURNED,
    ("FAILURE", "package_undeliverable"): Status.EXCEPTION,
    ("FAILURE", "package_disposed"): Status.EXCEPTION,
    ("FAILURE", "package_lost"): Status.EXCEPTION,
    ("UNKNOWN", "other"): Status.SHIPPED,
}


def shippo_status(status: str | None, substatus: str | None = None) -> Mapped:
    """A Shippo tracking status and its substatus code in Waybill's words."""
    broad = SHIPPO_STATUSES.get(status) if status else None
    words = f"{status}/{substatus}" if substatus else str(status)
    if broad is None:
        return _unknown("shippo", words, UNKNOWN_CHECKPOINT)
    if not substatus:
        return broad, True
    fine = SHIPPO_SUBSTATUSES.get((str(status), substatus))
    if fine is None:
        return _unknown("shippo", words, broad)
    return fine, True


# --- Shopify: fulfillment shipment_status and fulfillment event status ------------------------
# One vocabulary: https://shopify.dev/docs/api/admin-graphql/latest/enums/FulfillmentEventStatus
# (REST and webhooks spell it in lower case).

SHOPIFY_SHIPMENT_STATUSES: dict[str, Status] = {
    "label_printed": Status.SHIPPED,
    "label_purchased": Status.SHIPPED,
    "confirmed": Status.SHIPPED,  # Shopify's default when it knows nothing more
    "carrier_picked_up": Status.IN_TRANSIT,
    "in_transit": Status.IN_TRANSIT,
    "out_for_delivery": Status.OUT_FOR_DELIVERY,
    "attempted_delivery": Status.ATTEMPTED,
    "ready_for_pickup": Status.AVAILABLE_FOR_PICKUP,
    "picked_up": Status.DELIVERED,  # collected by the customer
    "delivered": Status.DELIVERED,
    "delayed": Status.EXCEPTION,
    "failure": Status.EXCEPTION,
    # Newer (unstable) API versions.
    "buyer_action_required": Status.EXCEPTION,
    "ready_for_recipient_pickup": Status.AVAILABLE_FOR_PICKUP,
    "returning_to_sender": Status.RETURNED,
}


def shopify_shipment_status(value: str | None) -> Mapped:
    """A Shopify fulfillment's ``shipment_status`` (or a fulfillment event's status)."""
    mapped = SHOPIFY_SHIPMENT_STATUSES.get(value) if value else None
    if mapped is None:
        return _unknown("shopify", str(value), UNKNOWN_CHECKPOINT)
    return mapped, True


# --- WooCommerce: order status --------------------------------------------------------------
# https://woocommerce.com/document/managing-orders/order-statuses/. ``None``: the status says
# nothing a customer's order page should show (not paid yet, or paid and unpaid again).

WOOCOMMERCE_ORDER_STATUSES: dict[str, Status | None] = {
    "pending": None,  # awaiting payment
    "processing": Status.PROCESSING,  # paid, being prepared
    "on-hold": None,  # awaiting payment confirmation
    # "Fulfilled": shops mark it at dispatch, so it says shipped, never delivered.
    "completed": Status.SHIPPED,
    "cancelled": Status.CANCELLED,
    "refunded": Status.CANCELLED,
    # Payment failed; the customer may pay again, and cancelled could not be left.
    "failed": None,
    "checkout-draft": None,  # a checkout in progress, not an order yet
}


def woocommerce_order_status(value: str | None) -> tuple[Status | None, bool]:
    """A WooCommerce order status in Waybill's words; ``None`` is no change."""
    if value in WOOCOMMERCE_ORDER_STATUSES:
        return WOOCOMMERCE_ORDER_STATUSES[value], True
    log.warning("unknown woocommerce status %r; recorded without a status change", value)
    return None, False


def _unknown(platform: str, words: str, fallback: Status) -> Mapped:
    log.warning("unknown %s status %r; mapped to %s", platform, words, fallback.value)
    return fallback, False


# --- Reading payloads -----------------------------------------------------------------------

TRACKING_NUMBER = re.compile(r"^[A-Za-z0-9 ._/-]{1,100}$")
#: Text fields are cut to what Waybill keeps (``ShipmentEventCreate``, ``OrderEventCreate``).
SOURCE_STATUS_MAX = 100
DESCRIPTION_MAX = 500
_LOCALE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")


def load_json(body: bytes) -> dict[str, Any]:
    """The body as a JSON object."""
    try:
        data = json.loads(body)
    except (UnicodeDecodeError, ValueError) as exc:
        raise PayloadError(f"the body is not JSON: {exc}") from None
    return as_dict(data, "the body")


def as_dict(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PayloadError(f"{what} is not an object")
    return value


def get_dict(data: Mapping[str, Any], key: str, what: str) -> dict[str, Any] | None:
    """An optional object field: absent or null is None."""
    value = data.get(key)
    return None if value is None else as_dict(value, f"{what}.{key}")


def need_dict(data: Mapping[str, Any], key: str, what: str) -> dict[str, Any]:
    value = get_dict(data, key, what)
    if value is None:
        raise PayloadError(f"{what}.{key} is missing")
    return value


def get_list(data: Mapping[str, Any], key: str, what: str) -> list[Any]:
    """An optional array field: absent or null is empty."""
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        raise PayloadError(f"{what}.{key} is not an array")
    return value


def get_str(data: Mapping[str, Any], key: str, what: str) -> str | None:
    """An optional text field, stripped: absent, null or blank is None."""
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise PayloadError(f"{what}.{key} is not a string")
    return value.strip() or None


def need_str(data: Mapping[str, Any], key: str, what: str) -> str:
    value = get_str(data, key, what)
    if value is None:
        raise PayloadError(f"{what}.{key} is missing")
    return value


def need_id(data: Mapping[str, Any], key: str, what: str) -> str:
    """A platform's id, a number or a string, as text."""
    value = data.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, str) and value.strip():
        return value.strip()
    raise PayloadError(f"{what}.{key} is missing or not an id")


def get_bool(data: Mapping[str, Any], key: str) -> bool:
    return data.get(key) is True


def instant(value: Any, what: str) -> datetime:
    """An ISO 8601 time as aware UTC; a time without an offset is UTC."""
    if not isinstance(value, str) or not value.strip():
        raise PayloadError(f"{what} is missing or not a time")
    try:
        parsed = datetime.fromisoformat(value.strip())
    except ValueError:
        raise PayloadError(f"{what} is not a time: {value!r}") from None
    if parsed.tzinfo is None:
        return parsed.replace(tzinfo=UTC)
    return parsed.astimezone(UTC)


def estimate(value: Any, what: str) -> datetime | None:
    """An estimated delivery: a time or a date (midnight UTC), or None. An estimate that does
    not parse is dropped with a warning: it must not cost the timeline it came with."""
    if value is None or value == "":
        return None
    try:
        return instant(value, what)
    except PayloadError as exc:
        log.warning("estimated delivery ignored: %s", exc)
        return None


def tracking_number(value: Any, what: str) -> str:
    """The tracking number, stripped, as Waybill accepts it."""
    if isinstance(value, int) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise PayloadError(f"{what} is missing or not a string")
    number = value.strip()
    if not TRACKING_NUMBER.match(number):
        raise PayloadError(f"{what} is not a tracking number Waybill accepts: {number[:100]!r}")
    return number


def place(*parts: str | None) -> str | None:
    """A readable "City, State, Country" from the parts present."""
    present = [p.strip() for p in parts if p and p.strip()]
    return ", ".join(present) or None


def clip(value: str | None, limit: int) -> str | None:
    return value[:limit] if value else value


def locale(value: str | None) -> str | None:
    """A locale Waybill can use, or None for one it could not."""
    return value if value and _LOCALE.match(value) else None


def derived_event_id(
    platform: str, number: str, occurred_at: datetime, source_status: str, location: str | None
) -> str:
    """A checkpoint's id from what makes it that checkpoint, for a platform that gives none:
    the same scan in two payloads gets the same id."""
    content = json.dumps(
        [platform, number, occurred_at.astimezone(UTC).isoformat(), source_status, location]
    )
    return f"{platform}:{hashlib.sha256(content.encode()).hexdigest()[:32]}"


def timeline(checkpoints: Iterable[Checkpoint]) -> tuple[Checkpoint, ...]:
    """Oldest first (a stable sort: same-instant checkpoints keep the platform's order), one
    per event id."""
    seen: set[str | None] = set()
    unique = []
    for checkpoint in checkpoints:
        if checkpoint.event_id not in seen:
            seen.add(checkpoint.event_id)
            unique.append(checkpoint)
    return tuple(sorted(unique, key=lambda c: c.occurred_at))


def line_items(
    items: list[Any], what: str, names: Callable[[str], str] | None = None
) -> tuple[LineItem, ...]:
    """Line items with a name and a quantity of one or more (a removed item, quantity 0, is
    not part of the parcel). ``names`` rewrites a name (WooCommerce sends HTML entities)."""
    found = []
    for i, raw in enumerate(items):
        item = as_dict(raw, f"{what}[{i}]")
        name = need_str(item, "name", f"{what}[{i}]")
        quantity = item.get("quantity")
        if not isinstance(quantity, int) or isinstance(quantity, bool):
            raise PayloadError(f"{what}[{i}].quantity is not a whole number")
        if quantity >= 1:
            found.append(LineItem(name=(names(name) if names else name)[:200], quantity=quantity))
    return tuple(found)


def digest_matches(expected: str, given: str | None) -> bool:
    """Whether a signature header carries the expected digest, in constant time; a header
    that is absent or not ASCII does not."""
    if not given:
        return False
    try:
        sent = given.strip().encode("ascii")
    except (AttributeError, UnicodeEncodeError):
        return False
    return hmac.compare_digest(expected.encode("ascii"), sent)


def base64_hmac_matches(secret: str, body: bytes, given: str | None) -> bool:
    """The scheme three platforms share: ``<base64 HMAC-SHA256(secret, raw body)>`` in a
    header, compared in constant time; never raises."""
    try:
        if not secret:
            return False
        digest = hmac.new(secret.encode("utf-8"), body, hashlib.sha256).digest()
        return digest_matches(base64.b64encode(digest).decode("ascii"), given)
    except (AttributeError, TypeError, ValueError):
        return False
