"""The platform adapters: each mapping table row against an expectation written out here, the
signatures, and the published sample payloads (``tests/fixtures/webhooks``) as updates.

The expectation tables below are deliberately not derived from ``integrations.mapping``: a
wrong row there must fail here. Each table is also checked to cover its mapping table
exactly, so a row added without a test fails too."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType
from typing import Any, cast

import pytest
from werkzeug.datastructures import Headers, MultiDict

from waybill.integrations import aftership, easypost, mapping, shippo, shopify, woocommerce
from waybill.integrations.base import (
    Checkpoint,
    LineItem,
    OrderUpsert,
    PayloadError,
    ShipmentUpsert,
    TrackingUpdate,
)

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "whsec_test_5up3r-s3cret"
ADAPTERS = [easypost, shippo, aftership, shopify, woocommerce]


def fixture(platform: str, name: str) -> bytes:
    return (FIXTURES / platform / f"{name}.json").read_bytes()


def headers(**values: str) -> Mapping[str, str]:
    """Headers as the web layer passes them: case-insensitive (``_`` in a name is ``-``)."""
    return cast(
        "Mapping[str, str]",
        Headers([(name.replace("_", "-"), value) for name, value in values.items()]),
    )


def b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def tracking(updates: list[Any]) -> TrackingUpdate:
    assert len(updates) == 1
    assert isinstance(updates[0], TrackingUpdate)
    return updates[0]


def assert_sound_timeline(checkpoints: tuple[Checkpoint, ...]) -> None:
    """Times are aware UTC and oldest first; every checkpoint has its own id."""
    for c in checkpoints:
        assert c.occurred_at.tzinfo is not None
        assert c.occurred_at.utcoffset() == UTC.utcoffset(None)
    times = [c.occurred_at for c in checkpoints]
    assert times == sorted(times)
    ids = [c.event_id for c in checkpoints]
    assert all(ids)
    assert len(set(ids)) == len(ids)


# --- Mapping tables: every row ----------------------------------------------------------------

AFTERSHIP_TAG_EXPECTED = {
    "Pending": "shipped",
    "InfoReceived": "shipped",
    "InTransit": "in_transit",
    "OutForDelivery": "out_for_delivery",
    "AttemptFail": "attempted",
    "Delivered": "delivered",
    "AvailableForPickup": "available_for_pickup",
    "Exception": "exception",
    "Expired": "exception",
}

AFTERSHIP_SUBTAG_EXPECTED = {
    **{f"Pending_00{i}": "shipped" for i in range(1, 7)},
    "InfoReceived_001": "shipped",
    **{f"InTransit_00{i}": "in_transit" for i in range(1, 10)},
    "OutForDelivery_001": "out_for_delivery",
    "OutForDelivery_002": "available_for_pickup",
    "OutForDelivery_003": "out_for_delivery",
    "OutForDelivery_004": "out_for_delivery",
    "AttemptFail_001": "attempted",
    "AttemptFail_002": "attempted",
    "AttemptFail_003": "attempted",
    **{f"Delivered_00{i}": "delivered" for i in range(1, 6)},
    "AvailableForPickup_001": "available_for_pickup",
    **{f"Exception_00{i}": "exception" for i in range(1, 10)},
    "Exception_010": "returned",
    "Exception_011": "returned",
    "Exception_012": "exception",
    "Exception_013": "exception",
    "Exception_016": "exception",
    "Exception_017": "exception",
    "Exception_018": "exception",
    "Expired_001": "exception",
}

EASYPOST_STATUS_EXPECTED = {
    "unknown": "shipped",
    "pre_transit": "shipped",
    "in_transit": "in_transit",
    "out_for_delivery": "out_for_delivery",
    "available_for_pickup": "available_for_pickup",
    "delivered": "delivered",
    "return_to_sender": "returned",
    "failure": "exception",
    "cancelled": "cancelled",
    "canceled": "cancelled",
    "error": "exception",
}

#: With status ``in_transit``: what each detail makes of it.
EASYPOST_DETAIL_EXPECTED = {
    "address_correction": "in_transit",
    "arrived_at_destination": "in_transit",
    "arrived_at_facility": "in_transit",
    "arrived_at_pickup_location": "available_for_pickup",
    "awaiting_information": "in_transit",
    "cancelled": "cancelled",
    "damaged": "exception",
    "delayed": "exception",
    "delivery_exception": "exception",
    "departed_facility": "in_transit",
    "departed_origin_facility": "in_transit",
    "expired": "exception",
    "failure": "exception",
    "held": "exception",
    "in_transit": "in_transit",
    "label_created": "in_transit",
    "lost": "exception",
    "missorted": "exception",
    "out_for_delivery": "out_for_delivery",
    "received_at_destination_facility": "in_transit",
    "received_at_origin_facility": "in_transit",
    "refused": "exception",
    "return": "returned",
    "status_update": "in_transit",
    "transferred_to_destination_carrier": "in_transit",
    "transit_exception": "exception",
    "unknown": "in_transit",
    "weather_delay": "exception",
}

SHIPPO_STATUS_EXPECTED = {
    "PRE_TRANSIT": "shipped",
    "TRANSIT": "in_transit",
    "DELIVERED": "delivered",
    "RETURNED": "returned",
    "FAILURE": "exception",
    "UNKNOWN": "shipped",
}

SHIPPO_SUBSTATUS_EXPECTED = {
    ("PRE_TRANSIT", "information_received"): "shipped",
    ("TRANSIT", "address_issue"): "exception",
    ("TRANSIT", "contact_carrier"): "exception",
    ("TRANSIT", "delayed"): "exception",
    ("TRANSIT", "delivery_attempted"): "attempted",
    ("TRANSIT", "delivery_rescheduled"): "in_transit",
    ("TRANSIT", "delivery_scheduled"): "in_transit",
    ("TRANSIT", "location_inaccessible"): "attempted",
    ("TRANSIT", "notice_left"): "attempted",
    ("TRANSIT", "out_for_delivery"): "out_for_delivery",
    ("TRANSIT", "package_accepted"): "in_transit",
    ("TRANSIT", "package_arrived"): "in_transit",
    ("TRANSIT", "package_damaged"): "exception",
    ("TRANSIT", "package_departed"): "in_transit",
    ("TRANSIT", "package_forwarded"): "in_transit",
    ("TRANSIT", "package_held"): "exception",
    ("TRANSIT", "package_processed"): "in_transit",
    ("TRANSIT", "package_processing"): "in_transit",
    ("TRANSIT", "pickup_available"): "available_for_pickup",
    ("TRANSIT", "reschedule_delivery"): "attempted",
    ("DELIVERED", "delivered"): "delivered",
    ("RETURNED", "return_to_sender"): "returned",
    ("RETURNED", "package_unclaimed"): "returned",
    ("FAILURE", "package_undeliverable"): "exception",
    ("FAILURE", "package_disposed"): "exception",
    ("FAILURE", "package_lost"): "exception",
    ("UNKNOWN", "other"): "shipped",
}

SHOPIFY_EXPECTED = {
    "label_printed": "shipped",
    "label_purchased": "shipped",
    "confirmed": "shipped",
    "carrier_picked_up": "in_transit",
    "in_transit": "in_transit",
    "out_for_delivery": "out_for_delivery",
    "attempted_delivery": "attempted",
    "ready_for_pickup": "available_for_pickup",
    "picked_up": "delivered",
    "delivered": "delivered",
    "delayed": "exception",
    "failure": "exception",
    "buyer_action_required": "exception",
    "ready_for_recipient_pickup": "available_for_pickup",
    "returning_to_sender": "returned",
}

WOOCOMMERCE_EXPECTED: dict[str, str | None] = {
    "pending": None,
    "processing": "processing",
    "on-hold": None,
    "completed": "shipped",
    "cancelled": "cancelled",
    "refunded": "cancelled",
    "failed": None,
    "checkout-draft": None,
}


@pytest.mark.parametrize(
    ("expected", "table"),
    [
        (AFTERSHIP_TAG_EXPECTED, mapping.AFTERSHIP_TAGS),
        (AFTERSHIP_SUBTAG_EXPECTED, mapping.AFTERSHIP_SUBTAGS),
        (EASYPOST_STATUS_EXPECTED, mapping.EASYPOST_STATUSES),
        (EASYPOST_DETAIL_EXPECTED, mapping.EASYPOST_STATUS_DETAILS),
        (SHIPPO_STATUS_EXPECTED, mapping.SHIPPO_STATUSES),
        (SHIPPO_SUBSTATUS_EXPECTED, mapping.SHIPPO_SUBSTATUSES),
        (SHOPIFY_EXPECTED, mapping.SHOPIFY_SHIPMENT_STATUSES),
        (WOOCOMMERCE_EXPECTED, mapping.WOOCOMMERCE_ORDER_STATUSES),
    ],
    ids=["aftership-tags", "aftership-subtags", "easypost", "easypost-details", "shippo",
         "shippo-substatuses", "shopify", "woocommerce"],
)  # fmt: skip
def test_each_table_is_tested_row_for_row(expected: dict[Any, Any], table: dict[Any, Any]) -> None:
    assert set(expected) == set(table)


@pytest.mark.parametrize(("tag", "expected"), AFTERSHIP_TAG_EXPECTED.items())
def test_aftership_tag(tag: str, expected: str) -> None:
    assert mapping.aftership_status(tag) == (expected, True)


@pytest.mark.parametrize(("subtag", "expected"), AFTERSHIP_SUBTAG_EXPECTED.items())
def test_aftership_subtag(subtag: str, expected: str) -> None:
    assert mapping.aftership_status(subtag.partition("_")[0], subtag) == (expected, True)


@pytest.mark.parametrize(("status", "expected"), EASYPOST_STATUS_EXPECTED.items())
def test_easypost_status(status: str, expected: str) -> None:
    assert mapping.easypost_status(status) == (expected, True)


@pytest.mark.parametrize(("detail", "expected"), EASYPOST_DETAIL_EXPECTED.items())
def test_easypost_status_detail(detail: str, expected: str) -> None:
    assert mapping.easypost_status("in_transit", detail) == (expected, True)


def test_easypost_detail_does_not_undo_how_the_journey_ended() -> None:
    # Back at the sender's: "arrived at destination" is the sender's door, not the customer's.
    assert mapping.easypost_status("return_to_sender", "arrived_at_destination") == (
        "returned",
        True,
    )
    assert mapping.easypost_status("delivered", "out_for_delivery") == ("delivered", True)


@pytest.mark.parametrize(("status", "expected"), SHIPPO_STATUS_EXPECTED.items())
def test_shippo_status(status: str, expected: str) -> None:
    assert mapping.shippo_status(status) == (expected, True)


@pytest.mark.parametrize(("pair", "expected"), SHIPPO_SUBSTATUS_EXPECTED.items())
def test_shippo_substatus(pair: tuple[str, str], expected: str) -> None:
    assert mapping.shippo_status(*pair) == (expected, True)


@pytest.mark.parametrize(("value", "expected"), SHOPIFY_EXPECTED.items())
def test_shopify_shipment_status(value: str, expected: str) -> None:
    assert mapping.shopify_shipment_status(value) == (expected, True)


@pytest.mark.parametrize(("value", "expected"), WOOCOMMERCE_EXPECTED.items())
def test_woocommerce_order_status(value: str, expected: str | None) -> None:
    assert mapping.woocommerce_order_status(value) == (expected, True)


# --- Unknown values: mapped safely, and logged ------------------------------------------------


@pytest.mark.parametrize(
    ("call", "expected", "words"),
    [
        (lambda: mapping.aftership_status("Teleported"), "in_transit", "Teleported"),
        (lambda: mapping.aftership_status("Delivered", "Delivered_099"), "delivered",
         "Delivered/Delivered_099"),
        # A subtag of another tag refines nothing.
        (lambda: mapping.aftership_status("InTransit", "Delivered_001"), "in_transit",
         "InTransit/Delivered_001"),
        (lambda: mapping.easypost_status("teleported"), "in_transit", "teleported"),
        (lambda: mapping.easypost_status("out_for_delivery", "hovering"), "out_for_delivery",
         "out_for_delivery/hovering"),
        (lambda: mapping.easypost_status(None), "in_transit", "None"),
        (lambda: mapping.shippo_status("LEVITATING"), "in_transit", "LEVITATING"),
        (lambda: mapping.shippo_status("TRANSIT", "package_teleported"), "in_transit",
         "TRANSIT/package_teleported"),
        # The docs' own sample: DELIVERED with a PRE_TRANSIT substatus stays delivered.
        (lambda: mapping.shippo_status("DELIVERED", "information_received"), "delivered",
         "DELIVERED/information_received"),
        (lambda: mapping.shopify_shipment_status("lost_in_space"), "in_transit", "lost_in_space"),
        (lambda: mapping.woocommerce_order_status("awaiting-shipment"), None,
         "awaiting-shipment"),
    ],
)  # fmt: skip
def test_unknown_value_maps_safely_and_is_logged(
    call: Any, expected: str | None, words: str, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="waybill.integrations.mapping"):
        assert call() == (expected, False)
    [record] = caplog.records
    assert record.levelno == logging.WARNING
    assert words in record.getMessage()


def test_unknown_values_are_logged_with_their_platform(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="waybill.integrations.mapping"):
        mapping.aftership_status("Teleported")
        mapping.easypost_status("teleported")
        mapping.shippo_status("LEVITATING")
        mapping.shopify_shipment_status("lost_in_space")
        mapping.woocommerce_order_status("awaiting-shipment")
    platforms = ["aftership", "easypost", "shippo", "shopify", "woocommerce"]
    assert [p in r.getMessage() for p, r in zip(platforms, caplog.records, strict=True)] == [
        True
    ] * 5


# --- Signatures -------------------------------------------------------------------------------

BODY = b'{"event": "tracking_update", "msg": {"tracking_number": "1Z999"}}'


def easypost_header(secret: str, body: bytes) -> Mapping[str, str]:
    digest = hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()
    return headers(X_Hmac_Signature=f"hmac-sha256-hex={digest}")


def shippo_header(secret: str, body: bytes, ts: int) -> Mapping[str, str]:
    digest = hmac.new(secret.encode(), f"{ts}.".encode() + body, hashlib.sha256).hexdigest()
    return headers(Shippo_Auth_Signature=f"t={ts},v1={digest}")


NOW = 1_700_000_000
SIGNERS: dict[str, Any] = {
    "easypost": easypost_header,
    "aftership": lambda s, b: headers(aftership_hmac_sha256=b64_hmac(s, b)),
    "shopify": lambda s, b: headers(X_Shopify_Hmac_Sha256=b64_hmac(s, b)),
    "woocommerce": lambda s, b: headers(X_WC_Webhook_Signature=b64_hmac(s, b)),
    "shippo": lambda s, b: shippo_header(s, b, NOW),
}
HEADER_NAMES = {
    "easypost": "X-Hmac-Signature",
    "aftership": "aftership-hmac-sha256",
    "shopify": "X-Shopify-Hmac-Sha256",
    "woocommerce": "X-WC-Webhook-Signature",
    "shippo": "Shippo-Auth-Signature",
}


def check(adapter: ModuleType, secret: str, body: bytes, hdrs: Any, query: Any = None) -> bool:
    query = MultiDict() if query is None else query
    if adapter is shippo:
        return bool(shippo.verify(secret, body, hdrs, query, now=NOW))
    return bool(adapter.verify(secret, body, hdrs, query))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_good_signature_verifies(adapter: ModuleType) -> None:
    assert check(adapter, SECRET, BODY, SIGNERS[adapter.PLATFORM](SECRET, BODY))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_header_name_is_case_insensitive(adapter: ModuleType) -> None:
    signed = SIGNERS[adapter.PLATFORM](SECRET, BODY)
    value = signed[HEADER_NAMES[adapter.PLATFORM]]
    assert check(adapter, SECRET, BODY, headers(**{HEADER_NAMES[adapter.PLATFORM].upper(): value}))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_wrong_secret_fails(adapter: ModuleType) -> None:
    assert not check(adapter, "another-secret", BODY, SIGNERS[adapter.PLATFORM](SECRET, BODY))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_tampered_body_fails(adapter: ModuleType) -> None:
    signed = SIGNERS[adapter.PLATFORM](SECRET, BODY)
    assert not check(adapter, SECRET, BODY.replace(b"1Z999", b"1Z998"), signed)


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_missing_header_fails(adapter: ModuleType) -> None:
    assert not check(adapter, SECRET, BODY, headers())


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
def test_empty_secret_never_verifies(adapter: ModuleType) -> None:
    assert not check(adapter, "", BODY, SIGNERS[adapter.PLATFORM]("", BODY))


@pytest.mark.parametrize("adapter", ADAPTERS, ids=lambda a: a.PLATFORM)
@pytest.mark.parametrize(
    "value",
    ["", "garbage", "hmac-sha256-hex=", "t=,v1=", "t=abc,v1=00", "sha256=abcdef", "ü" * 44,
     "t=1700000000", "v1=" + "0" * 64],
)  # fmt: skip
def test_malformed_header_fails_without_raising(adapter: ModuleType, value: str) -> None:
    assert not check(adapter, SECRET, BODY, headers(**{HEADER_NAMES[adapter.PLATFORM]: value}))


def test_easypost_keys_with_the_nfkd_form_of_the_secret() -> None:
    composed = "caf\u00e9-secret"
    key = "cafe\u0301-secret"  # what NFKD makes of it
    digest = hmac.new(key.encode(), BODY, hashlib.sha256).hexdigest()
    signed = headers(X_Hmac_Signature=f"hmac-sha256-hex={digest}")
    assert easypost.verify(composed, BODY, signed, MultiDict())


@pytest.mark.parametrize(
    ("skew", "ok"), [(0, True), (299, True), (-299, True), (301, False), (-301, False)]
)
def test_shippo_refuses_a_timestamp_outside_the_replay_window(skew: int, ok: bool) -> None:
    signed = shippo_header(SECRET, BODY, NOW - skew)  # skew > 0: signed in the past
    assert shippo.verify(SECRET, BODY, signed, MultiDict(), now=NOW) is ok


def test_shippo_accepts_any_of_several_signatures() -> None:
    good = shippo_header(SECRET, BODY, NOW)["Shippo-Auth-Signature"]
    both = good.replace(",v1=", ",v1=" + "0" * 64 + ",v1=")
    assert shippo.verify(SECRET, BODY, headers(Shippo_Auth_Signature=both), {}, now=NOW)


def test_shippo_token_in_the_query() -> None:
    assert shippo.verify(SECRET, BODY, headers(), MultiDict({"token": SECRET}), now=NOW)
    assert not shippo.verify(SECRET, BODY, headers(), MultiDict({"token": "guess"}), now=NOW)
    assert not shippo.verify(SECRET, BODY, headers(), MultiDict({"token": ""}), now=NOW)
    assert not shippo.verify(SECRET, BODY, headers(), MultiDict(), now=NOW)


def test_shippo_with_a_signature_header_the_token_does_not_count() -> None:
    bad = headers(Shippo_Auth_Signature=f"t={NOW},v1={'0' * 64}")
    assert not shippo.verify(SECRET, BODY, bad, MultiDict({"token": SECRET}), now=NOW)


def test_shippo_uses_the_clock_without_now() -> None:
    stale = shippo_header(SECRET, BODY, NOW)  # 2023: long outside the window today
    assert not shippo.verify(SECRET, BODY, stale, MultiDict())


def test_woocommerce_ping_is_accepted_unsigned_and_says_nothing() -> None:
    ping = b"webhook_id=42"
    assert woocommerce.verify(SECRET, ping, headers(), MultiDict())
    assert woocommerce.parse(ping, headers(X_WC_Webhook_Topic="order.created")) == []
    assert woocommerce.parse(ping, headers()) == []
    assert not woocommerce.verify(SECRET, b"webhook_id=42&status=processing", headers(), {})


# --- EasyPost ---------------------------------------------------------------------------------


def test_easypost_delivered_history() -> None:
    update = tracking(easypost.parse(fixture("easypost", "tracker_updated_delivered"), headers()))
    assert update.carrier == "USPS"
    assert update.tracking_number == "9400136897846022215007"
    assert update.service == "First-Class Package Service"
    assert update.estimated_delivery == datetime(2023, 4, 26, tzinfo=UTC)
    assert [c.status for c in update.checkpoints] == [
        "shipped",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert [c.source_status for c in update.checkpoints] == [
        "pre_transit/label_created",
        "in_transit/arrived_at_facility",
        "in_transit/departed_facility",
        "out_for_delivery/out_for_delivery",
        "delivered/arrived_at_destination",
    ]
    first, *_, last = update.checkpoints
    assert first.location is None
    assert last.location == "CHARLESTON, SC, US"
    assert last.description == "Delivered, In/At Mailbox"
    assert last.occurred_at == datetime(2023, 4, 26, 19, 22, 46, tzinfo=UTC)
    assert_sound_timeline(update.checkpoints)


def test_easypost_failure_and_unknown() -> None:
    failed = tracking(easypost.parse(fixture("easypost", "tracker_updated_failure"), headers()))
    assert [c.status for c in failed.checkpoints][-1] == "exception"
    assert failed.checkpoints[-1].source_status == "failure/delivery_exception"
    unknown = tracking(
        easypost.parse(fixture("easypost", "tracker_updated_unknown_status"), headers())
    )
    assert [(c.status, c.source_status) for c in unknown.checkpoints] == [
        ("shipped", "pre_transit/label_created"),
        ("in_transit", "in_transit/hovercraft_transfer"),
        ("in_transit", "teleported"),
    ]


def test_easypost_tracker_created_and_other_events() -> None:
    created = tracking(easypost.parse(fixture("easypost", "tracker_created"), headers()))
    assert len(created.checkpoints) == 1
    assert created.estimated_delivery is None
    assert easypost.parse(fixture("easypost", "batch_updated"), headers()) == []


def test_easypost_ids_are_stable_and_the_same_scan_has_the_same_id() -> None:
    body = fixture("easypost", "tracker_updated_delivered")
    once, again = (tracking(easypost.parse(body, headers())) for _ in range(2))
    assert [c.event_id for c in once.checkpoints] == [c.event_id for c in again.checkpoints]
    # A later payload repeats the history: its first four scans keep their ids.
    event = json.loads(body)
    event["result"]["tracking_details"] = event["result"]["tracking_details"][:4]
    earlier = tracking(easypost.parse(json.dumps(event).encode(), headers()))
    assert [c.event_id for c in earlier.checkpoints] == [c.event_id for c in once.checkpoints[:4]]


def test_easypost_sorts_oldest_first() -> None:
    event = json.loads(fixture("easypost", "tracker_updated_delivered"))
    event["result"]["tracking_details"].reverse()
    update = tracking(easypost.parse(json.dumps(event).encode(), headers()))
    assert update.checkpoints[-1].status == "delivered"
    assert_sound_timeline(update.checkpoints)


# --- Shippo -----------------------------------------------------------------------------------


def test_shippo_delivered_history_with_its_status_repeated() -> None:
    update = tracking(shippo.parse(fixture("shippo", "track_updated_delivered"), headers()))
    assert (update.carrier, update.tracking_number) == ("usps", "9205590164917312751089")
    assert update.service == "Priority Mail"
    assert update.estimated_delivery == datetime(2023, 7, 23, tzinfo=UTC)
    assert [c.status for c in update.checkpoints] == [
        "shipped",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert update.checkpoints[-1].source_status == "DELIVERED/delivered"
    assert update.checkpoints[-1].event_id == "aab1d7c0559d43ccbba4ff8603089e56"
    assert update.checkpoints[-1].location == "Spotsylvania, VA, US"
    assert_sound_timeline(update.checkpoints)


def test_shippo_keeps_action_required() -> None:
    update = tracking(shippo.parse(fixture("shippo", "track_updated_attempted"), headers()))
    # tracking_status repeats the last scan under another object_id: still one checkpoint.
    assert len(update.checkpoints) == 5
    last = update.checkpoints[-1]
    assert last.status == "attempted"
    assert last.source_status == "TRANSIT/delivery_attempted (action required)"
    assert last.description == "Notice Left (No Authorized Recipient Available)"


def test_shippo_failure_only_in_tracking_status() -> None:
    update = tracking(shippo.parse(fixture("shippo", "track_updated_failure"), headers()))
    assert [c.status for c in update.checkpoints] == [
        "shipped",
        "in_transit",
        "in_transit",
        "exception",
    ]
    assert update.checkpoints[-1].source_status == "FAILURE/package_lost (action required)"
    assert update.estimated_delivery is None


def test_shippo_unknown_values_and_other_events(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        update = tracking(
            shippo.parse(fixture("shippo", "track_updated_unknown_status"), headers())
        )
    assert [(c.status, c.source_status) for c in update.checkpoints] == [
        ("shipped", "PRE_TRANSIT/information_received"),
        ("in_transit", "TRANSIT/package_teleported"),
        ("in_transit", "LEVITATING"),
    ]
    assert len(caplog.records) == 2  # the repeated tracking_status is not read twice
    assert shippo.parse(fixture("shippo", "transaction_created"), headers()) == []


def test_shippo_ids_are_stable_and_derived_without_object_id() -> None:
    payload = json.loads(fixture("shippo", "track_updated_delivered"))
    for entry in payload["data"]["tracking_history"]:
        del entry["object_id"]
    del payload["data"]["tracking_status"]["object_id"]
    body = json.dumps(payload).encode()
    once, again = (tracking(shippo.parse(body, headers())) for _ in range(2))
    assert len(once.checkpoints) == 5
    assert [c.event_id for c in once.checkpoints] == [c.event_id for c in again.checkpoints]
    assert_sound_timeline(once.checkpoints)


# --- AfterShip --------------------------------------------------------------------------------


def test_aftership_delivered_history() -> None:
    update = tracking(aftership.parse(fixture("aftership", "tracking_update_delivered"), headers()))
    assert (update.carrier, update.tracking_number) == ("fedex", "111111111111")
    assert update.service == "FedEx Ground"
    assert update.estimated_delivery == datetime(2018, 7, 25, 23, 59, 59, tzinfo=UTC)
    assert [c.status for c in update.checkpoints] == [
        "shipped",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert [c.source_status for c in update.checkpoints] == [
        "InfoReceived/InfoReceived_001",
        "InTransit/InTransit_002",
        "InTransit/InTransit_007",
        "OutForDelivery/OutForDelivery_001",
        "Delivered/Delivered_001",
    ]
    times = [c.occurred_at for c in update.checkpoints]
    assert times[0] == datetime(2018, 7, 23, 6, 21, 39, tzinfo=UTC)  # -05:00 converted
    assert times[1] == datetime(2018, 7, 23, 8, 58, tzinfo=UTC)  # no offset: taken as UTC
    assert update.checkpoints[1].location == "MEMPHIS, TN, USA"
    assert update.checkpoints[-1].description == "Delivered, Left at front door"
    assert_sound_timeline(update.checkpoints)


def test_aftership_attempt_and_return() -> None:
    update = tracking(aftership.parse(fixture("aftership", "tracking_update_exception"), headers()))
    assert [c.status for c in update.checkpoints][-2:] == ["attempted", "returned"]
    assert update.checkpoints[-1].source_status == "Exception/Exception_011"
    # No carrier estimate: AfterShip's own prediction, a date, at midnight UTC.
    assert update.estimated_delivery == datetime(2018, 7, 26, tzinfo=UTC)


def test_aftership_unknown_values_and_other_events() -> None:
    update = tracking(
        aftership.parse(fixture("aftership", "tracking_update_unknown_status"), headers())
    )
    assert [(c.status, c.source_status) for c in update.checkpoints][1:] == [
        ("in_transit", "InTransit/InTransit_099"),
        ("in_transit", "Teleported"),
    ]
    assert update.checkpoints[-1].location == "Somewhere over the rainbow"
    assert aftership.parse(fixture("aftership", "tracking_pending_time"), headers()) == []


def test_aftership_parse_tracking_reads_the_api_object() -> None:
    answer = json.loads(fixture("aftership", "api_get_tracking"))
    update = aftership.parse_tracking(answer["data"]["tracking"])
    assert (update.carrier, update.tracking_number) == ("dhl", "JD014600006281230001")
    assert update.estimated_delivery == datetime(2024, 5, 3, 16, tzinfo=UTC)
    [checkpoint] = update.checkpoints
    assert checkpoint.status == "in_transit"
    assert checkpoint.location == "Leipzig, DEU"
    assert checkpoint.occurred_at == datetime(2024, 5, 2, 7, 41, tzinfo=UTC)


def test_aftership_webhook_and_api_give_the_same_ids() -> None:
    body = fixture("aftership", "tracking_update_delivered")
    from_webhook = tracking(aftership.parse(body, headers()))
    from_api = aftership.parse_tracking(json.loads(body)["msg"])
    assert from_webhook == from_api
    assert [c.event_id for c in from_webhook.checkpoints] == [
        c.event_id for c in tracking(aftership.parse(body, headers())).checkpoints
    ]


# --- Shopify ----------------------------------------------------------------------------------

ORDERS = headers(X_Shopify_Topic="orders/create")
FULFILLMENT_UPDATE = headers(X_Shopify_Topic="fulfillments/update")


def test_shopify_order_create() -> None:
    [order] = shopify.parse(fixture("shopify", "orders_create"), ORDERS)
    assert order == OrderUpsert(
        external_id="820982911946154508",
        email="jon@example.com",
        name="John Smith",
        locale="en-CA",
        items=(LineItem("IPod Nano - 8GB", 1), LineItem("IPod Nano - 8GB - Pink", 2)),
        placed_at=datetime(2022, 1, 1, tzinfo=UTC),
        status=None,
        source_status="paid",
    )


def test_shopify_order_and_fulfillment_share_the_order_id() -> None:
    [order] = shopify.parse(fixture("shopify", "orders_create"), ORDERS)
    [shipment] = shopify.parse(fixture("shopify", "fulfillments_create"), FULFILLMENT_UPDATE)
    assert isinstance(shipment, ShipmentUpsert)
    assert shipment.order_external_id == order.external_id  # type: ignore[union-attr]


def test_shopify_cancelled_order() -> None:
    payload = json.loads(fixture("shopify", "orders_create"))
    payload.update(cancelled_at="2022-01-02T10:00:00-05:00", cancel_reason="customer")
    topic = headers(X_Shopify_Topic="orders/cancelled")
    [order] = shopify.parse(json.dumps(payload).encode(), topic)
    assert isinstance(order, OrderUpsert)
    assert (order.status, order.source_status) == ("cancelled", "cancelled")
    assert order.event_id == "820982911946154508:cancelled"
    assert order.occurred_at == datetime(2022, 1, 2, 15, tzinfo=UTC)


def test_shopify_fulfillment_without_shipment_status_has_no_checkpoint() -> None:
    [shipment] = shopify.parse(
        fixture("shopify", "fulfillments_create"), headers(X_Shopify_Topic="fulfillments/create")
    )
    assert shipment == ShipmentUpsert(
        order_external_id="820982911946154508",
        carrier="UPS",
        tracking_number="1Z2345",
        checkpoints=(),
        email="jon@example.com",
        items=(LineItem("IPod Nano - 8GB", 1),),
    )


@pytest.mark.parametrize(
    ("name", "status", "source", "at"),
    [
        ("fulfillments_update_out_for_delivery", "out_for_delivery", "out_for_delivery",
         datetime(2022, 1, 3, 13, 2, tzinfo=UTC)),
        ("fulfillments_update_delivered", "delivered", "delivered",
         datetime(2022, 1, 3, 20, 47, tzinfo=UTC)),
        ("fulfillments_update_failure", "exception", "failure",
         datetime(2022, 1, 3, 20, 47, tzinfo=UTC)),
        ("fulfillments_update_unknown_status", "in_transit", "lost_in_space",
         datetime(2022, 1, 3, 20, 47, tzinfo=UTC)),
    ],
)  # fmt: skip
def test_shopify_fulfillment_update(name: str, status: str, source: str, at: datetime) -> None:
    body = fixture("shopify", name)
    [shipment] = shopify.parse(body, FULFILLMENT_UPDATE)
    assert isinstance(shipment, ShipmentUpsert)
    [checkpoint] = shipment.checkpoints
    assert (checkpoint.status, checkpoint.source_status, checkpoint.occurred_at) == (
        status,
        source,
        at,
    )
    [again] = shopify.parse(body, FULFILLMENT_UPDATE)
    assert again.checkpoints[0].event_id == checkpoint.event_id  # type: ignore[union-attr]


def test_shopify_same_status_resent_later_is_the_same_event() -> None:
    payload = json.loads(fixture("shopify", "fulfillments_update_out_for_delivery"))
    [first] = shopify.parse(json.dumps(payload).encode(), FULFILLMENT_UPDATE)
    payload["updated_at"] = "2022-01-03T09:00:00-05:00"
    [resent] = shopify.parse(json.dumps(payload).encode(), FULFILLMENT_UPDATE)
    assert first.checkpoints[0].event_id == resent.checkpoints[0].event_id  # type: ignore[union-attr]


def test_shopify_fulfillment_details() -> None:
    payload = json.loads(fixture("shopify", "fulfillments_create"))
    payload.update(tracking_number=None, tracking_numbers=["  1Z9999  "], tracking_company=None)
    [shipment] = shopify.parse(json.dumps(payload).encode(), FULFILLMENT_UPDATE)
    assert isinstance(shipment, ShipmentUpsert)
    assert (shipment.carrier, shipment.tracking_number) == ("Other", "1Z9999")
    payload.update(tracking_numbers=[], status="cancelled")
    assert shopify.parse(json.dumps(payload).encode(), FULFILLMENT_UPDATE) == []
    payload.update(tracking_number="1Z2345")
    [cancelled] = shopify.parse(json.dumps(payload).encode(), FULFILLMENT_UPDATE)
    assert [c.status for c in cancelled.checkpoints] == ["cancelled"]  # type: ignore[union-attr]


def test_shopify_other_topics_and_orders_without_email() -> None:
    body = fixture("shopify", "orders_create")
    assert shopify.parse(body, headers(X_Shopify_Topic="products/update")) == []
    assert shopify.parse(body, headers()) == []
    payload = json.loads(body)
    payload.update(email=None, contact_email=None, customer=None)
    assert shopify.parse(json.dumps(payload).encode(), ORDERS) == []


# --- WooCommerce ------------------------------------------------------------------------------

CREATED = headers(X_WC_Webhook_Topic="order.created")
UPDATED = headers(X_WC_Webhook_Topic="order.updated")


def test_woocommerce_order_created() -> None:
    [order] = woocommerce.parse(fixture("woocommerce", "order_created"), CREATED)
    assert order == OrderUpsert(
        external_id="727",
        email="john.doe@example.com",
        name="John Doe",
        items=(
            LineItem("Woo Single #1", 2),
            LineItem("Ship Your Idea \u2013 Color: Black, Size: M Test", 1),
        ),
        placed_at=datetime(2017, 3, 22, 19, 28, 2, tzinfo=UTC),
        status="processing",
        source_status="processing",
        event_id="727:processing",
        occurred_at=datetime(2017, 3, 22, 19, 28, 8, tzinfo=UTC),
    )


@pytest.mark.parametrize(
    ("name", "status", "event_id"),
    [
        ("order_updated_completed", "shipped", "727:completed"),
        ("order_updated_cancelled", "cancelled", "727:cancelled"),
        ("order_updated_unknown_status", None, None),
    ],
)
def test_woocommerce_order_updated(name: str, status: str | None, event_id: str | None) -> None:
    [order] = woocommerce.parse(fixture("woocommerce", name), UPDATED)
    assert isinstance(order, OrderUpsert)
    assert (order.status, order.event_id) == (status, event_id)
    assert order.source_status == json.loads(fixture("woocommerce", name))["status"]


def test_woocommerce_replayed_status_is_the_same_event() -> None:
    payload = json.loads(fixture("woocommerce", "order_created"))
    [first] = woocommerce.parse(json.dumps(payload).encode(), UPDATED)
    payload["date_modified_gmt"] = "2017-03-23T08:00:00"
    [saved_again] = woocommerce.parse(json.dumps(payload).encode(), UPDATED)
    assert first.event_id == saved_again.event_id  # type: ignore[union-attr]


def test_woocommerce_other_topics_drafts_and_orders_without_email() -> None:
    body = fixture("woocommerce", "order_created")
    assert woocommerce.parse(body, headers(X_WC_Webhook_Topic="product.updated")) == []
    payload = json.loads(body)
    payload["status"] = "checkout-draft"
    assert woocommerce.parse(json.dumps(payload).encode(), CREATED) == []
    payload.update(status="processing", billing={"first_name": "", "email": ""})
    assert woocommerce.parse(json.dumps(payload).encode(), CREATED) == []


# --- Malformed bodies -------------------------------------------------------------------------


def edited(platform: str, name: str, edit: Any) -> bytes:
    payload = json.loads(fixture(platform, name))
    edit(payload)
    return json.dumps(payload).encode()


def _set(path: str, value: Any) -> Any:
    """An edit that sets a dotted path (``a.b.0.c``) in a payload."""

    def edit(payload: Any) -> None:
        *parents, last = path.split(".")
        node = payload
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        if isinstance(node, list):
            node[int(last)] = value
        else:
            node[last] = value

    return edit


def _drop(path: str) -> Any:
    def edit(payload: Any) -> None:
        *parents, last = path.split(".")
        node = payload
        for key in parents:
            node = node[int(key)] if isinstance(node, list) else node[key]
        del node[last]

    return edit


COMMON_BAD = [b"", b"not json", b"\xff\xfe", b"[]", b'"a string"', b"null", b"{"]

MALFORMED: list[tuple[ModuleType, Mapping[str, str], bytes]] = [
    *[(a, h, body) for a, h in [
        (easypost, headers()), (shippo, headers()), (aftership, headers()),
        (shopify, ORDERS), (shopify, FULFILLMENT_UPDATE), (woocommerce, CREATED),
    ] for body in COMMON_BAD],
    (easypost, headers(), b"{}"),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered", _drop("result"))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered", _set("result", []))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_details", {"0": {}}))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_details.0.datetime", 1682013240))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_details.0.datetime", "yesterday"))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _drop("result.tracking_details.1.status"))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_details.1.tracking_location", "HOUSTON"))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_code", "9400<script>"))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _set("result.tracking_code", "A" * 101))),
    (easypost, headers(), edited("easypost", "tracker_updated_delivered",
                                 _drop("result.carrier"))),
    (shippo, headers(), b'{"event": "track_updated"}'),
    (shippo, headers(), edited("shippo", "track_updated_delivered",
                               _set("data.tracking_history", "none"))),
    (shippo, headers(), edited("shippo", "track_updated_delivered",
                               _set("data.tracking_history.0.status_date", None))),
    (shippo, headers(), edited("shippo", "track_updated_delivered",
                               _set("data.tracking_history.0.substatus", "late"))),
    (shippo, headers(), edited("shippo", "track_updated_delivered",
                               _set("data.tracking_status.object_id", ["x"]))),
    (shippo, headers(), edited("shippo", "track_updated_delivered",
                               _set("data.tracking_number", "92055\n90164"))),
    (shippo, headers(), edited("shippo", "track_updated_delivered", _set("data.carrier", 7))),
    (aftership, headers(), b'{"msg": {}}'),
    (aftership, headers(), edited("aftership", "tracking_update_delivered", _drop("msg"))),
    (aftership, headers(), edited("aftership", "tracking_update_delivered",
                                  _set("msg.checkpoints.0.checkpoint_time", "23/07/2018"))),
    (aftership, headers(), edited("aftership", "tracking_update_delivered",
                                  _drop("msg.checkpoints.2.tag"))),
    (aftership, headers(), edited("aftership", "tracking_update_delivered",
                                  _set("msg.checkpoints.2", "Delivered"))),
    (aftership, headers(), edited("aftership", "tracking_update_delivered",
                                  _set("msg.tracking_number", "1111 1111 1111 ✓"))),
    (aftership, headers(), edited("aftership", "tracking_update_delivered", _drop("msg.slug"))),
    (shopify, ORDERS, edited("shopify", "orders_create", _drop("id"))),
    (shopify, ORDERS, edited("shopify", "orders_create", _set("id", True))),
    (shopify, ORDERS, edited("shopify", "orders_create", _set("created_at", "soon"))),
    (shopify, ORDERS, edited("shopify", "orders_create", _set("line_items", {"a": 1}))),
    (shopify, ORDERS, edited("shopify", "orders_create", _set("line_items.0.quantity", "1"))),
    (shopify, ORDERS, edited("shopify", "orders_create", _drop("line_items.0.name"))),
    (shopify, ORDERS, edited("shopify", "orders_create", _set("email", ["jon@example.com"]))),
    (shopify, FULFILLMENT_UPDATE, edited("shopify", "fulfillments_update_delivered",
                                         _drop("order_id"))),
    (shopify, FULFILLMENT_UPDATE, edited("shopify", "fulfillments_update_delivered",
                                         _set("updated_at", None))),
    (shopify, FULFILLMENT_UPDATE, edited("shopify", "fulfillments_update_delivered",
                                         _set("tracking_number", "1Z 2345; DROP"))),
    (shopify, FULFILLMENT_UPDATE, edited("shopify", "fulfillments_update_delivered",
                                         _set("tracking_numbers", "1Z2345"))),
    (woocommerce, CREATED, edited("woocommerce", "order_created", _drop("number"))),
    (woocommerce, CREATED, edited("woocommerce", "order_created", _drop("status"))),
    (woocommerce, CREATED, edited("woocommerce", "order_created", _set("billing", "john"))),
    (woocommerce, CREATED, edited("woocommerce", "order_created",
                                  _set("date_created_gmt", "22 March 2017"))),
    (woocommerce, CREATED, edited("woocommerce", "order_created",
                                  _set("line_items.0.quantity", None))),
    (woocommerce, CREATED, b"webhook_id=42&x=1"),
]  # fmt: skip


@pytest.mark.parametrize(("adapter", "hdrs", "body"), MALFORMED)
def test_malformed_body_is_a_payload_error(
    adapter: ModuleType, hdrs: Mapping[str, str], body: bytes
) -> None:
    with pytest.raises(PayloadError) as raised:
        adapter.parse(body, hdrs)
    assert str(raised.value)


def test_aftership_parse_tracking_refuses_another_shape() -> None:
    with pytest.raises(PayloadError):
        aftership.parse_tracking([])  # type: ignore[arg-type]
    with pytest.raises(PayloadError):
        aftership.parse_tracking({"slug": "dhl"})


def test_an_unparseable_estimate_does_not_cost_the_timeline(
    caplog: pytest.LogCaptureFixture,
) -> None:
    body = edited("easypost", "tracker_updated_delivered", _set("result.est_delivery_date", "?"))
    with caplog.at_level(logging.WARNING):
        update = tracking(easypost.parse(body, headers()))
    assert update.estimated_delivery is None
    assert len(update.checkpoints) == 5
    assert "estimated delivery" in caplog.text


def test_every_adapter_names_its_platform() -> None:
    assert [a.PLATFORM for a in ADAPTERS] == [
        "easypost",
        "shippo",
        "aftership",
        "shopify",
        "woocommerce",
    ]
