"""A shipment posted again is the same shipment, and PATCH changes one: never a second parcel,
never a status going back, every visible change reaching the order's viewers."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import make_settings
from tests.test_realtime import LiveClient
from tests.test_realtime import connect as connect  # a fixture
from tests.test_realtime import live_server as live_server  # a fixture
from tests.utils.factories import MerchantActions, make_merchant, row_counts
from waybill import close_app, create_app
from waybill.auth.merchant_keys import create_merchant
from waybill.db import alembic_config, create_engine, migrate, session_scope
from waybill.ingest import create_order
from waybill.models import OrderCreate, UTCDateTime
from waybill.tracking.events import dedupe_key

ETA = "2026-12-05T18:00:00Z"
LATER_ETA = "2026-12-07T18:00:00Z"


def patch(merchant: MerchantActions, shipment_id: int, body: Any) -> Any:
    return merchant.client.patch(
        f"/api/v1/shipments/{shipment_id}", json=body, headers=merchant.headers
    )


def out_for_delivery(merchant: MerchantActions, **shipment: Any) -> tuple[dict, dict]:
    """An order whose one parcel (UPS 1Z999) is out for delivery: the order and the parcel."""
    order = merchant.create_order()
    parcel = merchant.add_shipment(order["id"], carrier="UPS", tracking_number="1Z999", **shipment)
    merchant.scan(parcel["id"], "in_transit", "2026-12-03T08:00:00Z", event_id="e1")
    r = merchant.scan(parcel["id"], "out_for_delivery", "2026-12-04T07:00:00Z", event_id="e2")
    assert r.get_json()["status"] == "out_for_delivery"
    return r.get_json(), parcel


def token_of(order: dict[str, Any]) -> str:
    return order["tracking_url"].rsplit("/", 1)[1]


@pytest.fixture
def any_app(app: Flask) -> Flask:
    """The app (on each backend, as every app of the suite)."""
    return app


def at_once(n: int, send: Callable[[int], Any]) -> list[Any]:
    """``send(i)`` from ``n`` threads released together; their answers in thread order."""
    start = threading.Barrier(n)
    answers: list[Any] = [None] * n

    def run(i: int) -> None:
        start.wait()
        answers[i] = send(i)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    return answers


# --- POST /orders/{id}/shipments again ------------------------------------------------------


def test_a_retried_shipment_is_the_same_parcel_and_the_order_stays_out_for_delivery(merchant):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    again = merchant.post(
        f"/orders/{order['id']}/shipments", {"carrier": "ups", "tracking_number": "1Z999"}
    )
    assert again.status_code == 200, again.get_json()
    body = again.get_json()
    assert body["id"] == parcel["id"] and body["order_id"] == order["id"]
    assert body["status"] == "out_for_delivery"
    assert body["carrier"] == "UPS"  # spelled as first sent
    assert body["service"] == "Express"  # not sent again: left as it was
    assert [e["status"] for e in body["events"]] == ["in_transit", "out_for_delivery"]
    now = merchant.get(f"/orders/{order['id']}").get_json()
    assert now["status"] == "out_for_delivery"
    assert [s["id"] for s in now["shipments"]] == [parcel["id"]]
    assert (
        now["packages"]["total"] == 1 and now["packages"]["summary"] == order["packages"]["summary"]
    )
    assert now["cursor"] == order["cursor"]  # nothing changed, so nothing was announced


def test_a_retry_that_sends_a_new_estimate_and_service_updates_the_same_shipment(merchant):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    again = merchant.post(
        f"/orders/{order['id']}/shipments",
        {
            "carrier": "Ups",
            "tracking_number": "1Z999",
            "service": "Saver",
            "estimated_delivery": "2026-12-07T19:00:00+01:00",
        },
    )
    assert again.status_code == 200, again.get_json()
    body = again.get_json()
    assert body["id"] == parcel["id"] and body["status"] == "out_for_delivery"
    assert body["service"] == "Saver"
    assert body["estimated_delivery"]["at"] in (LATER_ETA, "2026-12-07T18:00:00+00:00")
    assert body["estimated_delivery"]["source"] == "merchant"
    now = merchant.get(f"/orders/{order['id']}").get_json()
    assert now["status"] == "out_for_delivery" and len(now["shipments"]) == 1
    assert now["estimated_delivery_given"] == body["estimated_delivery"]
    assert now["cursor"] > order["cursor"]  # a change the customer can see


def test_a_new_tracking_number_or_carrier_is_a_new_parcel(merchant):
    order, parcel = out_for_delivery(merchant)
    other_number = merchant.post(
        f"/orders/{order['id']}/shipments", {"carrier": "UPS", "tracking_number": "1Z998"}
    )
    other_carrier = merchant.post(
        f"/orders/{order['id']}/shipments", {"carrier": "DHL", "tracking_number": "1Z999"}
    )
    assert (other_number.status_code, other_carrier.status_code) == (201, 201)
    now = merchant.get(f"/orders/{order['id']}").get_json()
    assert len(now["shipments"]) == 3 and now["status"] == "shipped"


def test_two_identical_posts_at_once_make_one_shipment(any_app):
    shop = make_merchant(any_app, any_app.test_client())
    for round_ in range(3):
        order = shop.create_order(email=f"twice{round_}@example.com")
        body = {"carrier": "DHL", "tracking_number": f"JD{round_:04d}", "estimated_delivery": ETA}
        answers = at_once(
            4,
            lambda i, order=order, body=body: any_app.test_client().post(
                f"/api/v1/orders/{order['id']}/shipments", json=body, headers=shop.headers
            ),
        )
        assert sorted(r.status_code for r in answers) == [200, 200, 200, 201]
        assert len({r.get_json()["id"] for r in answers}) == 1
        now = shop.get(f"/orders/{order['id']}").get_json()
        assert len(now["shipments"]) == 1 and now["status"] == "shipped"


def test_a_number_another_order_has_is_409_and_writes_nothing(app, merchant):
    first, parcel = out_for_delivery(merchant)
    second = merchant.create_order()
    before = row_counts(app)
    clash = merchant.post(
        f"/orders/{second['id']}/shipments", {"carrier": "ups", "tracking_number": "1Z999"}
    )
    assert clash.status_code == 409
    error = clash.get_json()["error"]
    assert error["code"] == "conflict"
    assert error["fields"] == {
        "tracking_number": f"already shipment {parcel['id']} of order {first['id']}"
    }
    assert row_counts(app) == before
    assert merchant.get(f"/orders/{second['id']}").get_json()["shipments"] == []
    assert merchant.get(f"/orders/{first['id']}").get_json()["status"] == "out_for_delivery"


def test_two_orders_claiming_one_number_at_once_get_one_shipment(any_app):
    shop = make_merchant(any_app, any_app.test_client())
    orders = [shop.create_order(email=f"race{i}@example.com") for i in range(4)]
    answers = at_once(
        4,
        lambda i: any_app.test_client().post(
            f"/api/v1/orders/{orders[i]['id']}/shipments",
            json={"carrier": "DHL" if i % 2 else "dhl", "tracking_number": "RACE1"},
            headers=shop.headers,
        ),
    )
    assert sorted(r.status_code for r in answers) == [201, 409, 409, 409]
    parcels = sum(len(shop.get(f"/orders/{o['id']}").get_json()["shipments"]) for o in orders)
    assert parcels == 1


def test_another_merchant_may_ship_the_same_number(app, client, merchant):
    out_for_delivery(merchant)
    other = make_merchant(app, client, name="Other Shop")
    theirs = other.create_order("them@example.com")
    r = other.post(
        f"/orders/{theirs['id']}/shipments", {"carrier": "UPS", "tracking_number": "1Z999"}
    )
    assert r.status_code == 201 and r.get_json()["status"] == "shipped"


# --- PATCH /shipments/{id} ------------------------------------------------------------------


def test_patch_changes_estimate_service_and_carrier_and_the_order_viewers_see_it(
    merchant, client: FlaskClient, connect: Callable[..., LiveClient]
):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    live = connect(track=token_of(order))
    live.hello()
    r = patch(merchant, parcel["id"], {"estimated_delivery": LATER_ETA})
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["id"] == parcel["id"] and body["order_id"] == order["id"]
    assert body["status"] == "out_for_delivery" and body["service"] == "Express"
    assert body["estimated_delivery"]["at"] in (LATER_ETA, "2026-12-07T18:00:00+00:00")
    assert body["estimated_delivery"]["source"] == "merchant"
    (frame,) = live.updates(1)
    assert frame["order"]["shipments"][0]["estimated_delivery"] == body["estimated_delivery"]
    assert frame["order"]["estimated_delivery_given"] == body["estimated_delivery"]
    assert frame["order"]["estimated_delivery"]["source"] == "waybill"  # ours, beside theirs
    assert frame["order"] == client.get(f"/api/track/{token_of(order)}").get_json()

    r = patch(merchant, parcel["id"], {"carrier": "UPS Freight", "service": "Standard"})
    assert r.status_code == 200, r.get_json()
    assert (r.get_json()["carrier"], r.get_json()["service"]) == ("UPS Freight", "Standard")
    (frame,) = live.updates(1)
    assert frame["order"]["shipments"][0]["carrier"] == "UPS Freight"
    now = merchant.get(f"/orders/{order['id']}").get_json()
    assert now["status"] == "out_for_delivery" and len(now["shipments"]) == 1
    assert [e["status"] for e in now["shipments"][0]["events"]] == [
        "in_transit",
        "out_for_delivery",
    ]
    # the events already recorded stay this parcel's: a scan sent again is seen, not new
    again = merchant.scan(parcel["id"], "out_for_delivery", "2026-12-04T07:00:00Z", event_id="e2")
    assert again.status_code == 200


def test_patch_with_nothing_new_announces_nothing(merchant, connect: Callable[..., LiveClient]):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    live = connect(track=token_of(order))
    live.hello()
    for body in ({}, {"service": "Express"}, {"estimated_delivery": "2026-12-05T19:00:00+01:00"}):
        r = patch(merchant, parcel["id"], body)
        assert r.status_code == 200, (body, r.get_json())
        assert r.get_json()["service"] == "Express"
    merchant.scan(parcel["id"], "delivered", "2026-12-04T12:00:00Z")
    (frame,) = live.updates(1)  # the scan's, with nothing before it
    assert frame["order"]["status"] == "delivered"
    assert merchant.get(f"/orders/{order['id']}").get_json()["cursor"] == frame["cursor"]


def test_patch_null_removes_the_service_and_the_estimate(merchant):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    r = patch(merchant, parcel["id"], {"service": None, "estimated_delivery": None})
    assert r.status_code == 200, r.get_json()
    assert r.get_json()["service"] is None and r.get_json()["estimated_delivery"] is None
    assert r.get_json()["carrier"] == "UPS"


def test_patch_respelling_the_carrier_is_the_same_parcel(merchant):
    order = merchant.create_order()
    parcel = merchant.add_shipment(order["id"], carrier="dhl", tracking_number="JD1")
    r = patch(merchant, parcel["id"], {"carrier": "DHL"})
    assert r.status_code == 200 and r.get_json()["carrier"] == "DHL"
    retry = merchant.post(
        f"/orders/{order['id']}/shipments", {"carrier": "Dhl", "tracking_number": "JD1"}
    )
    assert retry.status_code == 200 and retry.get_json()["id"] == parcel["id"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"tracking_number": "NEW1"}, "tracking_number"),  # a new number is a new shipment
        ({"status": "delivered"}, "status"),  # statuses come from events
        ({"carrier": None}, "carrier"),
        ({"carrier": ""}, "carrier"),
        ({"carrier": "DHL\nExpress"}, "carrier"),
        ({"service": "x" * 101}, "service"),
        ({"estimated_delivery": "2026-12-07T18:00:00"}, "estimated_delivery"),  # no offset
        ({"estimated_delivery": "soon"}, "estimated_delivery"),
    ],
)
def test_patch_refuses_bad_fields_with_422_and_changes_nothing(app, merchant, body, field):
    order, parcel = out_for_delivery(merchant, service="Express", estimated_delivery=ETA)
    before = row_counts(app)
    r = patch(merchant, parcel["id"], body)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    assert row_counts(app) == before
    assert merchant.get(f"/orders/{order['id']}").get_json()["shipments"] == order["shipments"]


def test_patch_needs_a_json_object(merchant):
    order, parcel = out_for_delivery(merchant)
    url = f"/api/v1/shipments/{parcel['id']}"
    plain = merchant.client.patch(url, data="service=x", headers=merchant.headers)
    assert (
        plain.status_code == 415 and plain.get_json()["error"]["code"] == "unsupported_media_type"
    )
    broken = merchant.client.patch(
        url, data="{", headers={**merchant.headers, "Content-Type": "application/json"}
    )
    assert broken.status_code == 400 and broken.get_json()["error"]["code"] == "malformed_json"


def test_patch_of_another_merchants_shipment_answers_as_a_missing_one(app, client, merchant):
    order, parcel = out_for_delivery(merchant, service="Express")
    other = make_merchant(app, client, name="Other Shop")
    before = row_counts(app)
    foreign = patch(other, parcel["id"], {"service": "Stolen"})
    missing = patch(other, 10**9, {"service": "Stolen"})
    assert foreign.status_code == missing.status_code == 404
    assert foreign.get_json() == missing.get_json()
    assert patch(merchant, parcel["id"], {}).status_code == 200
    assert client.patch(f"/api/v1/shipments/{parcel['id']}", json={}).status_code == 401
    assert row_counts(app) == before
    assert merchant.get(f"/orders/{order['id']}").get_json()["shipments"][0]["service"] == "Express"


def test_patch_onto_a_carrier_and_number_another_parcel_has_is_409(app, merchant):
    order = merchant.create_order()
    dhl = merchant.add_shipment(order["id"], carrier="DHL", tracking_number="SAME1")
    ups = merchant.add_shipment(order["id"], carrier="UPS", tracking_number="SAME1")
    elsewhere = merchant.create_order()
    gls = merchant.add_shipment(elsewhere["id"], carrier="GLS", tracking_number="SAME1")
    before = row_counts(app)
    for parcel, onto in ((ups, dhl), (gls, dhl)):
        r = patch(merchant, parcel["id"], {"carrier": "dhl"})
        assert r.status_code == 409, r.get_json()
        assert r.get_json()["error"]["fields"] == {
            "carrier": f"already shipment {onto['id']} of order {order['id']}"
        }
    assert row_counts(app) == before
    carriers = [
        s["carrier"] for s in merchant.get(f"/orders/{order['id']}").get_json()["shipments"]
    ]
    assert carriers == ["DHL", "UPS"]


def test_patch_is_in_the_openapi_document(client):
    doc = client.get("/api/openapi.json").get_json()
    op = doc["paths"]["/api/v1/shipments/{shipment_id}"]["patch"]
    body = op["requestBody"]["content"]["application/json"]["schema"]["$ref"].rsplit("/", 1)[1]
    assert set(doc["components"]["schemas"][body]["properties"]) == {
        "carrier",
        "service",
        "estimated_delivery",
    }
    assert {"200", "404", "409", "422"} <= set(op["responses"])
    post = doc["paths"]["/api/v1/orders/{order_id}/shipments"]["post"]
    assert {"200", "201", "409"} <= set(post["responses"])


# --- migration 0006: the parcels retries duplicated become one again ------------------------


@pytest.fixture
def duplicated(empty_instance: Path) -> Iterator[tuple[Any, Any]]:
    """A database at 0005 holding what the bug left: an order whose parcel, out for delivery,
    was posted again ("ups" for "UPS"); the copy, at "shipped", got one scan of its own and
    one the original has too; the order fell back to "shipped"."""
    settings = make_settings(empty_instance)
    engine = create_engine(settings)
    # The order is made by today's code (it writes today's tables), then the schema goes back
    command.upgrade(alembic_config(engine, settings.secret_key), "head")
    with session_scope(engine) as session:
        shop, key = create_merchant(session=session, name="Old Shop")
        order, _ = create_order(
            session=session,
            merchant=shop,
            data=OrderCreate.model_validate(
                {"external_id": "DUP-1", "customer": {"email": "dup@example.com"}}
            ),
            secret_key=settings.secret_key,
        )
        order_id = order.id
    command.downgrade(alembic_config(engine, settings.secret_key), "0005_timeline_index")
    shipment = sa.table(
        "shipment",
        *(sa.column(c) for c in ("id", "order_id", "carrier", "tracking_number", "status")),
        sa.column("service"),
        sa.column("created_at", UTCDateTime()),
    )
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(
            shipment.insert(),
            [
                {
                    "id": 11,
                    "order_id": order_id,
                    "carrier": "UPS",
                    "tracking_number": "1Z999",
                    "status": "out_for_delivery",
                    "service": None,
                    "created_at": now,
                },
                {
                    "id": 12,
                    "order_id": order_id,
                    "carrier": "ups",
                    "tracking_number": "1Z999",
                    "status": "in_transit",
                    "service": "Saver",
                    "created_at": now,
                },
                {
                    "id": 13,
                    "order_id": order_id,
                    "carrier": "DHL",
                    "tracking_number": "JD1",
                    "status": "delivered",
                    "service": None,
                    "created_at": now,
                },
            ],
        )
        conn.execute(
            sa.text('UPDATE "order" SET status = :s WHERE id = :i'), {"s": "shipped", "i": order_id}
        )
    scans = [
        (11, "in_transit", "2026-12-03T08:00:00+00:00", "e1"),
        (11, "out_for_delivery", "2026-12-04T07:00:00+00:00", "e2"),
        (12, "in_transit", "2026-12-03T08:00:00+00:00", "e1"),  # the same scan, twice
        (12, "in_transit", "2026-12-03T20:00:00+00:00", "e3"),  # only the copy got this
        (13, "delivered", "2026-12-03T10:00:00+00:00", "d1"),
    ]
    # The rows as that schema holds them (today's model has columns it did not).
    event = sa.table(
        "tracking_event",
        *(sa.column(c) for c in ("order_id", "shipment_id", "status", "event_id", "dedupe_key")),
        sa.column("source"),
        sa.column("occurred_at", UTCDateTime()),
        sa.column("created_at", UTCDateTime()),
    )
    rows = []
    for shipment_id, status, at, event_id in scans:
        when = datetime.fromisoformat(at)
        rows.append(
            {
                "order_id": order_id,
                "shipment_id": shipment_id,
                "status": status,
                "occurred_at": when,
                "event_id": event_id,
                "source": "api",
                "created_at": now,
                "dedupe_key": dedupe_key(
                    shipment_id=shipment_id,
                    status=status,
                    occurred_at=when,
                    event_id=event_id,
                    location=None,
                    description=None,
                ),
            }
        )
    with engine.begin() as conn:
        conn.execute(event.insert(), rows)
    yield settings, key
    engine.dispose()


def test_the_migration_makes_duplicated_parcels_one_and_the_status_true_again(duplicated):
    settings, key = duplicated
    engine = create_engine(settings)
    migrate(engine, secret_key=settings.secret_key)
    engine.dispose()
    app = create_app(settings)
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        (order,) = client.get("/api/v1/orders", headers=headers).get_json()["orders"]
        assert order["status"] == "out_for_delivery"
        assert [(s["id"], s["carrier"], s["status"]) for s in order["shipments"]] == [
            (11, "UPS", "out_for_delivery"),
            (13, "DHL", "delivered"),
        ]
        assert order["packages"]["total"] == 2 and order["packages"]["delivered"] == 1
        ups = order["shipments"][0]
        assert ups["service"] == "Saver"  # the latest word any copy had
        assert [(e["status"], e["occurred_at"][:13]) for e in ups["events"]] == [
            ("in_transit", "2026-12-03T08"),
            ("in_transit", "2026-12-03T20"),
            ("out_for_delivery", "2026-12-04T07"),
        ]
        # the merged parcel is the one a retry finds, and its events are its own
        again = client.post(
            f"/api/v1/orders/{order['id']}/shipments",
            json={"carrier": "UPS", "tracking_number": "1Z999"},
            headers=headers,
        )
        assert again.status_code == 200 and again.get_json()["id"] == 11
        seen = client.post(
            "/api/v1/shipments/11/events",
            json={"status": "in_transit", "occurred_at": "2026-12-03T20:00:00Z", "event_id": "e3"},
            headers=headers,
        )
        assert seen.status_code == 200
    finally:
        close_app(app)
