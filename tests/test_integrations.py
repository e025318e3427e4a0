"""Merchants' platforms and carriers feed Waybill: webhooks in (signed, recorded, applied once),
updates for parcels not known yet, carrier polling, the merchant's own webhook out, and the
email snippet — through the real app, a loopback AfterShip and a loopback receiver."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import subprocess
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.conftest import make_settings
from tests.utils.factories import make_merchant, row_counts
from tests.utils.fake_aftership import FakeAfterShip, sample_checkpoints
from waybill import close_app, create_app
from waybill.api.integrations import applier
from waybill.integrations import poll_schedule
from waybill.notify.delivery import Worker

FIXTURES = Path(__file__).parent / "fixtures" / "webhooks"
SECRET = "whsec-test-0123456789"


def fixture(platform: str, name: str) -> bytes:
    return (FIXTURES / platform / name).read_bytes()


def b64_hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def easypost_signature(secret: str, body: bytes) -> str:
    """EasyPost's ``X-Hmac-Signature``: the hex HMAC-SHA256 of the raw body, prefixed."""
    return "hmac-sha256-hex=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def shippo_signature(secret: str, body: bytes, at: float | None = None) -> str:
    """Shippo's ``Shippo-Auth-Signature``: ``t=<unix ts>,v1=<hex HMAC of "<ts>.<body>">``."""
    stamp = int(time.time() if at is None else at)
    mac = hmac.new(secret.encode(), f"{stamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={stamp},v1={mac}"


def send(
    client: Any,
    merchant: Any,
    platform: str,
    body: bytes,
    *,
    signed: bool = True,
    query: dict[str, str] | None = None,
    **headers: str,
) -> Any:
    """The platform's webhook, signed as the platform signs it (``signed=False``: no signature
    header at all); ``headers`` add to or replace the signature header."""
    signature = {
        "aftership": lambda: {"aftership-hmac-sha256": b64_hmac(SECRET, body)},
        "shopify": lambda: {"X-Shopify-Hmac-Sha256": b64_hmac(SECRET, body)},
        "woocommerce": lambda: {"X-WC-Webhook-Signature": b64_hmac(SECRET, body)},
        "easypost": lambda: {"X-Hmac-Signature": easypost_signature(SECRET, body)},
        "shippo": lambda: {"Shippo-Auth-Signature": shippo_signature(SECRET, body)},
    }[platform]
    answer = client.post(
        f"/webhooks/{platform}/{merchant.merchant_id}",
        data=body,
        query_string=query or {},
        headers={"Content-Type": "application/json", **(signature() if signed else {}), **headers},
    )
    answer.close()  # as a server does once the answer is sent: then it goes to the applier,
    applier(client.application).join()  # and the test looks once the applier is done
    return answer


def connect(merchant: Any, platform: str, **body: Any) -> Any:
    return merchant.client.put(
        f"/api/v1/integrations/{platform}",
        json={"secret": SECRET, **body},
        headers=merchant.headers,
    )


def aftership_update(number: str, slug: str = "fedex", *, delivered: bool = True) -> bytes:
    payload = json.loads(fixture("aftership", "tracking_update_delivered.json"))
    payload["msg"]["tracking_number"] = number
    payload["msg"]["slug"] = slug
    if not delivered:  # the history up to the last scan before delivery
        payload["msg"]["checkpoints"] = [
            c for c in payload["msg"]["checkpoints"] if c.get("tag") != "Delivered"
        ]
        payload["msg"]["tag"] = payload["msg"]["checkpoints"][-1]["tag"]
    return json.dumps(payload).encode()


def easypost_update(number: str, carrier: str = "USPS") -> bytes:
    """EasyPost's tracker.updated Event: the tracker's whole history, up to its delivery."""
    payload = json.loads(fixture("easypost", "tracker_updated_delivered.json"))
    payload["result"]["tracking_code"] = number
    payload["result"]["carrier"] = carrier
    return json.dumps(payload).encode()


def shippo_update(number: str, carrier: str = "usps") -> bytes:
    """Shippo's track_updated: a history up to a missed delivery, its last entry repeated (under
    another object_id) as the track's tracking_status."""
    payload = json.loads(fixture("shippo", "track_updated_attempted.json"))
    payload["data"]["tracking_number"] = number
    payload["data"]["carrier"] = carrier
    return json.dumps(payload).encode()


def kept_words(app: Any, number: str) -> list[str]:
    """The platform's own words for each event of a parcel, oldest first (not in any answer)."""
    with app.extensions["waybill.engine"].connect() as conn:
        return list(
            conn.execute(
                sa.text(
                    "SELECT e.source_status FROM tracking_event e"
                    " JOIN shipment s ON s.id = e.shipment_id"
                    " WHERE s.tracking_number = :number ORDER BY e.occurred_at, e.id"
                ),
                {"number": number},
            ).scalars()
        )


def events_of(merchant: Any, order_id: int) -> list[dict[str, Any]]:
    order = merchant.get(f"/orders/{order_id}").get_json()
    return [e for s in order["shipments"] for e in s["events"]]


def outbox_rows(app: Any) -> int:
    with app.extensions["waybill.engine"].connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM notify_outbox")).scalar_one()


# --- settings ---------------------------------------------------------------------------


def test_connecting_a_platform_gives_the_webhook_url_to_paste(merchant, settings):
    r = connect(merchant, "aftership")
    assert r.status_code == 200
    assert r.get_json() == {
        "platform": "aftership",
        "webhook_url": f"{settings.base_url}/webhooks/aftership/{merchant.merchant_id}",
        "polling": False,
    }
    listed = merchant.get("/integrations").get_json()["integrations"]
    assert [i["platform"] for i in listed] == ["aftership"]


def test_unknown_platform_short_secret_and_api_key_where_nothing_is_polled_are_refused(merchant):
    assert connect(merchant, "ebay").status_code == 404
    r = merchant.client.put(
        "/api/v1/integrations/shopify", json={"secret": "short"}, headers=merchant.headers
    )
    assert r.status_code == 422 and "secret" in r.get_json()["error"]["fields"]
    r = connect(merchant, "shopify", api_key="key-0123456789")
    assert r.status_code == 422 and "api_key" in r.get_json()["error"]["fields"]
    assert (
        merchant.client.put("/api/v1/integrations/shopify", json={"secret": SECRET}).status_code
        == 401
    )


def test_the_secret_is_sealed_at_rest(app, merchant):
    connect(merchant, "shopify")
    with app.extensions["waybill.engine"].connect() as conn:
        stored = conn.execute(sa.text("SELECT secret_sealed FROM integration")).scalar_one()
    assert SECRET not in stored and SECRET.encode() not in base64.urlsafe_b64decode(
        stored[3:] + "=" * (-len(stored[3:]) % 4)
    )


# --- webhooks in --------------------------------------------------------------------------


def test_a_bad_signature_is_refused_and_records_nothing(app, client, merchant):
    connect(merchant, "aftership")
    other = make_merchant(app, client, "Other Shop")
    before = row_counts(app)
    body = aftership_update("111111111111")
    r = client.post(
        f"/webhooks/aftership/{merchant.merchant_id}",
        data=body,
        headers={"aftership-hmac-sha256": b64_hmac("another-secret-000", body)},
    )
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    # unsigned, tampered, and for a merchant that never connected: the same answer
    assert client.post(f"/webhooks/aftership/{merchant.merchant_id}", data=body).status_code == 401
    assert send(client, other, "aftership", body).status_code == 401
    assert row_counts(app) == before


def test_malformed_and_oversized_bodies_are_refused_and_record_nothing(app, client, merchant):
    connect(merchant, "aftership")
    before = row_counts(app)
    assert send(client, merchant, "aftership", b"{not json").status_code == 400
    assert send(client, merchant, "aftership", b'{"msg": 3}').status_code == 400
    assert send(client, merchant, "aftership", b"x" * (300 * 1024)).status_code == 413
    r = send(client, merchant, "aftership", b"\xff\xfe{}")
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed"
    assert row_counts(app) == before


def test_a_tracking_webhook_records_the_whole_history_and_a_replay_nothing(app, client, merchant):
    connect(merchant, "aftership")
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="FedEx", tracking_number="111111111111")
    body = aftership_update("111111111111")
    checkpoints = json.loads(body)["msg"]["checkpoints"]

    r = send(client, merchant, "aftership", body)
    assert r.status_code == 202 and r.get_json()["state"] == "queued"
    events = events_of(merchant, order["id"])
    assert len(events) == len(checkpoints)
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "delivered"
    receipts = merchant.get("/integrations/aftership/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "applied"
    with app.extensions["waybill.engine"].connect() as conn:
        kept = (
            conn.execute(
                sa.text("SELECT source_status FROM tracking_event ORDER BY occurred_at DESC")
            )
            .scalars()
            .all()
        )
    assert kept[0].startswith("Delivered")  # the platform's own words, beside ours

    notified = outbox_rows(app)
    assert send(client, merchant, "aftership", body).status_code == 202  # the platform retries
    assert events_of(merchant, order["id"]) == events
    assert outbox_rows(app) == notified  # nobody is told again


def test_an_easypost_tracker_event_records_its_whole_history_and_a_replay_nothing(
    app, client, merchant
):
    connect(merchant, "easypost")
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="USPS", tracking_number="9400100000000000000001")
    body = easypost_update("9400100000000000000001")
    details = json.loads(body)["result"]["tracking_details"]

    first = send(client, merchant, "easypost", body)
    assert first.status_code == 202 and first.get_json()["state"] == "queued"
    events = events_of(merchant, order["id"])
    assert len(events) == len(details) == 5
    assert [e["status"] for e in events] == [
        "shipped",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "delivered",
    ]
    assert [e["description"] for e in events] == [d["message"] for d in details]
    assert events[-1]["location"] == "CHARLESTON, SC, US"
    shown = merchant.get(f"/orders/{order['id']}").get_json()
    assert shown["status"] == "delivered"  # what the last detail, delivered, maps to
    given = shown["shipments"][0]["estimated_delivery"]
    assert (given["at"], given["latest"], given["source"]) == (
        "2023-04-26T00:00:00Z",
        "2023-04-26",
        "carrier",
    )
    assert shown["shipments"][0]["service"] == "First-Class Package Service"  # the carrier's
    receipts = merchant.get("/integrations/easypost/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "applied"
    assert kept_words(app, "9400100000000000000001") == [
        "pre_transit/label_created",
        "in_transit/arrived_at_facility",
        "in_transit/departed_facility",
        "out_for_delivery/out_for_delivery",
        "delivered/arrived_at_destination",
    ]

    notified = outbox_rows(app)
    again = send(client, merchant, "easypost", body)  # EasyPost retries
    assert again.status_code == first.status_code and again.get_json()["state"] == "queued"
    assert events_of(merchant, order["id"]) == events
    assert outbox_rows(app) == notified

    before = row_counts(app)
    wrong = send(
        client,
        merchant,
        "easypost",
        body,
        **{"X-Hmac-Signature": easypost_signature("another-secret-000", body)},
    )
    assert wrong.status_code == 401 and wrong.get_json()["error"]["code"] == "unauthorized"
    tampered = body.replace(b"Delivered, In/At Mailbox", b"Delivered, To Neighbour")
    signed_for_body = {"X-Hmac-Signature": easypost_signature(SECRET, body)}
    assert send(client, merchant, "easypost", tampered, **signed_for_body).status_code == 401
    assert send(client, merchant, "easypost", body, signed=False).status_code == 401
    bare_hex = {"X-Hmac-Signature": easypost_signature(SECRET, body).split("=", 1)[1]}
    assert send(client, merchant, "easypost", body, **bare_hex).status_code == 401
    assert row_counts(app) == before


def test_a_shippo_track_update_records_its_whole_history_and_a_replay_nothing(
    app, client, merchant
):
    connect(merchant, "shippo")
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="USPS", tracking_number="9205500000000000000001")
    body = shippo_update("9205500000000000000001")
    history = json.loads(body)["data"]["tracking_history"]

    first = send(client, merchant, "shippo", body)
    assert first.status_code == 202 and first.get_json()["state"] == "queued"
    events = events_of(merchant, order["id"])
    # tracking_status repeats the last scan under another id: still one event
    assert len(events) == len(history) == 5
    assert [e["status"] for e in events] == [
        "shipped",
        "in_transit",
        "in_transit",
        "out_for_delivery",
        "attempted",
    ]
    assert [e["description"] for e in events] == [h["status_details"] for h in history]
    shown = merchant.get(f"/orders/{order['id']}").get_json()
    assert shown["status"] == "attempted"  # the last entry: TRANSIT/delivery_attempted
    assert shown["shipments"][0]["estimated_delivery"]["at"] == "2023-07-23T00:00:00Z"
    assert shown["shipments"][0]["estimated_delivery"]["source"] == "carrier"
    assert shown["shipments"][0]["service"] == "Priority Mail"
    receipts = merchant.get("/integrations/shippo/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "applied"
    assert kept_words(app, "9205500000000000000001") == [
        "PRE_TRANSIT/information_received",
        "TRANSIT/package_accepted",
        "TRANSIT/package_departed",
        "TRANSIT/out_for_delivery",
        "TRANSIT/delivery_attempted (action required)",
    ]

    notified = outbox_rows(app)
    again = send(client, merchant, "shippo", body)  # Shippo retries, signed anew
    assert again.status_code == first.status_code and again.get_json()["state"] == "queued"
    # a delivery four minutes old is still inside the replay window
    late = {"Shippo-Auth-Signature": shippo_signature(SECRET, body, at=time.time() - 4 * 60)}
    assert send(client, merchant, "shippo", body, **late).status_code == first.status_code
    assert events_of(merchant, order["id"]) == events
    assert outbox_rows(app) == notified

    before = row_counts(app)
    for at in (time.time() - 10 * 60, time.time() + 10 * 60):  # outside the 5 minutes
        stale = {"Shippo-Auth-Signature": shippo_signature(SECRET, body, at=at)}
        r = send(client, merchant, "shippo", body, **stale)
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    wrong = {"Shippo-Auth-Signature": shippo_signature("another-secret-000", body)}
    assert send(client, merchant, "shippo", body, **wrong).status_code == 401
    tampered = body.replace(b"Notice Left", b"Parcel Left")
    signed_for_body = {"Shippo-Auth-Signature": shippo_signature(SECRET, body)}
    assert send(client, merchant, "shippo", tampered, **signed_for_body).status_code == 401
    assert row_counts(app) == before


def test_shippo_without_hmac_is_authenticated_by_the_token_in_its_url(app, client, merchant):
    """HMAC is opt-in at Shippo: without it, the URL the merchant registered carries the
    secret as ``?token=``."""
    connect(merchant, "shippo")
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="USPS", tracking_number="9205500000000000000002")
    body = shippo_update("9205500000000000000002")

    before = row_counts(app)
    for token in ("another-secret-000", SECRET.upper(), ""):
        r = send(client, merchant, "shippo", body, signed=False, query={"token": token})
        assert r.status_code == 401 and r.get_json()["error"]["code"] == "unauthorized"
    assert send(client, merchant, "shippo", body, signed=False).status_code == 401
    # a request with a signature header is judged by it alone, whatever its token
    bad = {"Shippo-Auth-Signature": shippo_signature("another-secret-000", body)}
    assert send(client, merchant, "shippo", body, query={"token": SECRET}, **bad).status_code == 401
    assert row_counts(app) == before

    r = send(client, merchant, "shippo", body, signed=False, query={"token": SECRET})
    assert r.status_code == 202 and r.get_json()["state"] == "queued"
    assert len(events_of(merchant, order["id"])) == 5
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "attempted"


@pytest.mark.parametrize(
    ("platform", "name", "description"),
    [
        ("easypost", "batch_updated.json", "batch.created"),
        ("easypost", "batch_updated.json", None),
        ("shippo", "transaction_created.json", None),
    ],
)
def test_events_that_are_not_tracking_updates_are_taken_and_record_nothing(
    app, client, merchant, platform, name, description
):
    connect(merchant, platform)
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="USPS", tracking_number="9205590164917312751089")
    payload = json.loads(fixture(platform, name))
    if description:
        payload["description"] = description
    body = json.dumps(payload).encode()
    assert send(client, merchant, platform, body, signed=False).status_code == 401

    before, notified = row_counts(app), outbox_rows(app)
    r = send(client, merchant, platform, body)
    assert r.status_code == 200 and r.get_json()["state"] == "ignored"  # no retries asked for
    receipts = merchant.get(f"/integrations/{platform}/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "ignored" and receipts[0]["applied_at"] is None
    assert events_of(merchant, order["id"]) == []
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "shipped"
    assert outbox_rows(app) == notified
    after = row_counts(app)
    assert {t: n - before[t] for t, n in after.items() if n != before[t]} == {"webhook_receipt": 1}


def test_an_update_for_an_unknown_parcel_is_kept_and_applied_when_it_appears(client, merchant):
    connect(merchant, "aftership")
    r = send(client, merchant, "aftership", aftership_update("999000111", delivered=False))
    assert r.status_code == 202
    receipts = merchant.get("/integrations/aftership/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "held"

    order = merchant.create_order()
    added = merchant.add_shipment(order["id"], carrier="fedex", tracking_number="999000111")
    assert added["status"] == "out_for_delivery"  # the answer already shows what was held
    assert len(added["events"]) >= 2
    assert len(events_of(merchant, order["id"])) >= 2
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "out_for_delivery"
    receipts = merchant.get("/integrations/aftership/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "applied"


def test_shopify_orders_and_fulfilments_make_the_order_and_its_parcel(client, merchant):
    connect(merchant, "shopify")
    order_body = fixture("shopify", "orders_create.json")
    fulfilment = fixture("shopify", "fulfillments_create.json")
    shopify_id = str(json.loads(order_body)["id"])

    # the fulfilment first (webhooks arrive in any order): held until the order exists
    r = send(client, merchant, "shopify", fulfilment, **{"X-Shopify-Topic": "fulfillments/create"})
    assert r.status_code == 202
    r = send(client, merchant, "shopify", order_body, **{"X-Shopify-Topic": "orders/create"})
    assert r.status_code == 202
    found = merchant.get(f"/orders?external_id={shopify_id}").get_json()["orders"]
    assert len(found) == 1
    order = merchant.get(f"/orders/{found[0]['id']}").get_json()
    assert [s["tracking_number"] for s in order["shipments"]] == ["1Z2345"]
    assert order["status"] == "shipped"

    # the same order again changes nothing
    send(client, merchant, "shopify", order_body, **{"X-Shopify-Topic": "orders/create"})
    assert len(merchant.get(f"/orders?external_id={shopify_id}").get_json()["orders"]) == 1


def test_woocommerce_orders_are_made_and_their_status_follows(client, merchant):
    connect(merchant, "woocommerce")
    created = fixture("woocommerce", "order_created.json")
    number = json.loads(created)["number"]
    r = send(client, merchant, "woocommerce", created, **{"X-WC-Webhook-Topic": "order.created"})
    assert r.status_code == 202
    orders = merchant.get(f"/orders?external_id={number}").get_json()["orders"]
    assert len(orders) == 1
    cancelled = json.loads(fixture("woocommerce", "order_updated_cancelled.json"))
    cancelled["number"] = number
    body = json.dumps(cancelled).encode()
    send(client, merchant, "woocommerce", body, **{"X-WC-Webhook-Topic": "order.updated"})
    assert merchant.get(f"/orders/{orders[0]['id']}").get_json()["status"] == "cancelled"
    # the ping WooCommerce sends when the webhook is made: accepted, nothing to apply
    ping = b"webhook_id=42"
    r = send(
        client,
        merchant,
        "woocommerce",
        ping,
        **{"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 200 and r.get_json()["state"] == "ignored"


def test_the_raw_payload_is_kept_for_support(app, client, merchant, settings, monkeypatch):
    connect(merchant, "aftership")
    body = aftership_update("123123123")
    receipt = send(client, merchant, "aftership", body).get_json()["id"]
    env = {
        "WAYBILL_INSTANCE_DIR": str(settings.instance_dir),
        "WAYBILL_DATABASE_URL": settings.database_url,
        "WAYBILL_SECRET_KEY": settings.secret_key,
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "waybill.cli", "webhooks", "show", str(receipt)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    shown = json.loads(out.stdout)
    assert shown["payload"] == json.loads(body) and shown["state"] == "held"


def test_a_receipt_left_queued_is_applied_by_the_worker(app, client, merchant):
    """The request's process died between the answer and applying it."""
    connect(merchant, "aftership")
    order = merchant.create_order()
    merchant.add_shipment(order["id"], carrier="FedEx", tracking_number="555444333")
    engine = app.extensions["waybill.engine"]
    from waybill.integrations import inbox

    with app.app_context():
        monkeypatched = inbox.apply_now
        inbox.apply_now = lambda *a, **k: "queued"  # type: ignore[assignment]
        try:
            send(client, merchant, "aftership", aftership_update("555444333"))
        finally:
            inbox.apply_now = monkeypatched  # type: ignore[assignment]
    assert events_of(merchant, order["id"]) == []
    settings = app.config["WAYBILL_SETTINGS"]
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert inbox.apply_stale(engine, server_key=settings.secret_key, now=later) == 1
    assert len(events_of(merchant, order["id"])) > 0
    assert inbox.apply_stale(engine, server_key=settings.secret_key, now=later) == 0


def test_a_hold_the_new_shipment_did_not_see_is_released_by_the_worker(
    app, client, merchant, monkeypatch
):
    """Two workers at one moment: the shipment is made by a transaction that began before
    the webhook's hold was committed, so making it released nothing."""
    from waybill.api import merchant as merchant_api
    from waybill.integrations import inbox

    connect(merchant, "aftership")
    send(client, merchant, "aftership", aftership_update("777000222", delivered=False))
    with monkeypatch.context() as m:
        m.setattr(merchant_api, "_release_held", lambda shipment: None)
        order = merchant.create_order()
        merchant.add_shipment(order["id"], carrier="FedEx", tracking_number="777000222")
    assert events_of(merchant, order["id"]) == []
    engine, key = app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"].secret_key
    soon = datetime.now(UTC) + timedelta(seconds=5)
    assert inbox.release_stranded(engine, server_key=key, now=soon) == 0  # not stale yet
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert inbox.release_stranded(engine, server_key=key, now=later) == 1
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "out_for_delivery"
    receipts = merchant.get("/integrations/aftership/webhooks").get_json()["webhooks"]
    assert receipts[0]["state"] == "applied"
    assert inbox.release_stranded(engine, server_key=key, now=later) == 0  # released once


def test_webhooks_beyond_what_the_applier_holds_are_answered_and_applied_by_the_sweep(
    app, client, merchant, monkeypatch
):
    """A burst larger than the applier's queue: every webhook is still answered 202, and the
    ones it could not take wait, recorded, for the worker's sweep."""
    from waybill.integrations import applier as applier_module
    from waybill.integrations import inbox

    engine, key = app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"].secret_key
    app.extensions["waybill.webhook_applier"] = applier_module.Applier(
        engine, server_key=key, capacity=1, lanes=1
    )
    gate = threading.Event()
    real_apply = inbox.apply_now

    def slow_apply(*args, **kwargs):
        gate.wait(10)  # the lane is busy with a long apply
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(applier_module.inbox, "apply_now", slow_apply)
    connect(merchant, "aftership")
    orders = []
    for n in range(4):
        order = merchant.create_order()
        merchant.add_shipment(order["id"], carrier="FedEx", tracking_number=f"88800{n}")
        orders.append(order["id"])
    for n in range(4):
        answer = client.post(
            f"/webhooks/aftership/{merchant.merchant_id}",
            data=(body := aftership_update(f"88800{n}")),
            headers={"aftership-hmac-sha256": b64_hmac(SECRET, body)},
        )
        answer.close()
        assert answer.status_code == 202
        while n == 0 and applier(app).pending():  # the lane takes the first and holds it
            time.sleep(0.005)
    gate.set()
    applier(app).join()
    applied = [bool(events_of(merchant, oid)) for oid in orders]
    assert applied[:2] == [True, True] and applied[2:] == [False, False]  # one taken, one queued
    later = datetime.now(UTC) + timedelta(minutes=1)
    assert inbox.apply_stale(engine, server_key=key, now=later) == 2
    assert all(events_of(merchant, oid) for oid in orders)


# --- carrier polling ----------------------------------------------------------------------


@pytest.fixture
def aftership():
    with FakeAfterShip(api_key="merchant-aftership-key") as fake:
        yield fake


def test_polling_records_what_the_provider_knows_and_stops_once_delivered(instance_dir, aftership):
    instance = instance_dir
    settings = make_settings(instance, aftership_api_url=aftership.base_url)
    app = create_app(settings)
    client = app.test_client()
    merchant = make_merchant(app, client)
    try:
        assert connect(merchant, "aftership", api_key="merchant-aftership-key").get_json()[
            "polling"
        ]
        order = merchant.create_order()
        merchant.add_shipment(order["id"], carrier="USPS", tracking_number="9400111202555")
        engine = app.extensions["waybill.engine"]

        # unknown at the provider: registered there, nothing recorded yet
        assert poll_schedule.poll_due(engine, settings) == 1
        assert [r.method for r in aftership.requests][-1] == "POST"
        assert events_of(merchant, order["id"]) == []

        aftership.add_tracking(
            "usps", "9400111202555", checkpoints=sample_checkpoints("usps", delivered=True)
        )
        later = datetime.now(UTC) + timedelta(days=1)
        assert poll_schedule.poll_due(engine, settings, now=later) == 1
        assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "delivered"
        assert len(events_of(merchant, order["id"])) == len(
            sample_checkpoints("usps", delivered=True)
        )
        asked = len(aftership.requests)
        assert poll_schedule.poll_due(engine, settings, now=later + timedelta(days=2)) == 0
        assert len(aftership.requests) == asked  # delivered: never asked again
    finally:
        close_app(app)


# --- the merchant's own webhook -------------------------------------------------------------


class Receiver:
    """A merchant's endpoint on loopback: checks each delivery's signature; can be down."""

    def __init__(self) -> None:
        self.secret = ""
        self.received: list[dict[str, Any]] = []
        self.refusals = 0
        self.down_for = 0
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.down_for > 0:
                    receiver.down_for -= 1
                    receiver.refusals += 1
                    self.send_response(503)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                parts = dict(p.split("=", 1) for p in self.headers["Waybill-Signature"].split(","))
                mac = hmac.new(
                    receiver.secret.encode(), f"{parts['t']}.".encode() + body, hashlib.sha256
                ).hexdigest()
                ok = hmac.compare_digest(mac, parts["v1"])
                if ok:
                    receiver.received.append(json.loads(body))
                self.send_response(200 if ok else 400)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/waybill"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_webhook_urls_must_be_public_https(merchant):
    for url, reason in (
        ("http://example.com/hook", "https"),
        ("https://127.0.0.1/hook", "private"),
        ("https://10.1.2.3/hook", "private"),
        ("https://[::1]/hook", "private"),
        ("https://169.254.169.254/latest", "private"),
    ):
        r = merchant.client.put(
            "/api/v1/webhook-endpoints",
            json={"url": url, "events": ["order.status_changed"]},
            headers=merchant.headers,
        )
        assert r.status_code == 422, url
        assert reason in r.get_json()["error"]["fields"]["url"], url
    r = merchant.client.put(
        "/api/v1/webhook-endpoints",
        json={"url": "https://1.1.1.1/hook", "events": ["order.shipped"]},
        headers=merchant.headers,
    )
    assert r.status_code == 422 and "events" in r.get_json()["error"]["fields"]


def test_status_changes_reach_the_merchants_endpoint_signed_and_once_after_it_was_down(
    instance_dir,
):
    instance = instance_dir
    settings = make_settings(instance, webhook_endpoint_hosts=("127.0.0.1:*",))
    app = create_app(settings)
    client = app.test_client()
    merchant = make_merchant(app, client)
    receiver = Receiver()
    worker = Worker(app.extensions["waybill.engine"], settings)
    try:
        r = merchant.client.put(
            "/api/v1/webhook-endpoints",
            json={"url": receiver.url, "events": ["order.status_changed"]},
            headers=merchant.headers,
        )
        assert r.status_code == 200
        receiver.secret = r.get_json()["secret"]
        assert receiver.secret
        again = merchant.client.put(
            "/api/v1/webhook-endpoints",
            json={"url": receiver.url, "events": ["order.status_changed"]},
            headers=merchant.headers,
        ).get_json()
        assert again["secret"] is None and again["id"] == r.get_json()["id"]  # shown once

        order = merchant.create_order()
        shipment = merchant.add_shipment(order["id"])  # confirmed -> shipped
        receiver.down_for = 2
        worker.run_until_idle()
        assert receiver.received == [] and receiver.refusals == 1
        later = datetime.now(UTC) + timedelta(minutes=5)
        worker.run_until_idle(now=later)  # still down
        merchant.scan(shipment["id"], "in_transit", "2026-12-01T10:00:00Z")
        worker.run_until_idle(now=later + timedelta(minutes=30))
        worker.run_until_idle(now=later + timedelta(minutes=60))
        ids = [d["id"] for d in receiver.received]
        assert len(ids) == len(set(ids)) == 2  # each change once, none lost
        shipped = next(d for d in receiver.received if d["data"]["status"] == "shipped")
        assert shipped["type"] == "order.status_changed"
        assert shipped["data"]["status_before"] == "confirmed"
        assert shipped["data"]["order"]["id"] == order["id"]
        worker.run_until_idle(now=later + timedelta(hours=3))
        assert len(receiver.received) == 2
    finally:
        worker.stop()
        receiver.close()
        close_app(app)


# --- for confirmation emails ------------------------------------------------------------------


def test_the_email_snippet_is_a_button_to_the_tracking_page(client, merchant, app):
    order = merchant.create_order()
    r = merchant.get(f"/orders/{order['id']}/email-snippet")
    assert r.status_code == 200
    snippet = r.get_json()
    assert snippet["tracking_url"] == order["tracking_url"]
    html = snippet["html"]
    assert f'href="{order["tracking_url"]}"' in html and "Track your order" in html
    for unsafe in ("<script", "<style", "<link", "class="):
        assert unsafe not in html
    assert order["tracking_url"] in snippet["text"]
    token_path = order["tracking_url"].split("127.0.0.1:8000", 1)[-1]
    assert client.get(token_path).status_code == 200
    other = make_merchant(app, client, "Other Shop")
    assert other.get(f"/orders/{order['id']}/email-snippet").status_code == 404
