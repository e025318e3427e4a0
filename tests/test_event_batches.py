"""POST /api/v1/events: many events in one request, each recorded, refused or found seen on
its own, none half-written."""

from __future__ import annotations

from flask import Flask
from flask.testing import FlaskClient

from tests.utils.factories import MerchantActions, make_merchant, row_counts

AT = "2026-12-01T{:02d}:00:00Z"


def test_a_batch_records_each_event_and_answers_for_each(merchant: MerchantActions) -> None:
    order = merchant.create_order()
    first = merchant.add_shipment(order["id"], carrier="DHL", tracking_number="JD0001")
    second = merchant.add_shipment(order["id"])
    r = merchant.post(
        "/events",
        {
            "events": [
                {"shipment_id": first["id"], "status": "in_transit", "occurred_at": AT.format(8)},
                {
                    "carrier": "DHL",
                    "tracking_number": "JD0001",
                    "status": "delivered",
                    "occurred_at": AT.format(11),
                },
                {"shipment_id": second["id"], "status": "delivered", "occurred_at": AT.format(9)},
                {"order_id": order["id"], "status": "processing"},
            ]
        },
    )
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [201, 201, 201, 201]
    assert [x["index"] for x in results] == [0, 1, 2, 3]
    assert results[1]["shipment_id"] == first["id"]
    assert results[-1]["order_status"] == "delivered"
    got = merchant.get(f"/orders/{order['id']}").get_json()
    assert got["status"] == "delivered"
    assert [s["status"] for s in got["shipments"]] == ["delivered", "delivered"]


def test_a_batch_finds_the_shipment_by_carrier_in_any_case(merchant: MerchantActions) -> None:
    order = merchant.create_order()
    shipment = merchant.add_shipment(order["id"], carrier="DHL", tracking_number="JD0002")
    event = {"tracking_number": "JD0002", "status": "in_transit", "occurred_at": AT.format(8)}
    r = merchant.post("/events", {"events": [{**event, "carrier": "dhl"}]})
    assert r.status_code == 200, r.get_json()
    [result] = r.get_json()["results"]
    assert (result["status"], result["shipment_id"]) == (201, shipment["id"])
    got = merchant.get(f"/orders/{order['id']}").get_json()
    assert [s["status"] for s in got["shipments"]] == ["in_transit"]


def test_a_bad_or_foreign_event_fails_alone_and_leaves_nothing(
    app: Flask, client: FlaskClient, merchant: MerchantActions
) -> None:
    order = merchant.create_order()
    ship = merchant.add_shipment(order["id"])
    other = make_merchant(app, client, name="Other Shop")
    theirs = other.add_shipment(other.create_order("them@example.com")["id"])
    before = row_counts(app)
    good = {"shipment_id": ship["id"], "status": "in_transit", "occurred_at": AT.format(8)}
    r = merchant.post(
        "/events",
        {
            "events": [
                {"shipment_id": ship["id"], "status": "teleported", "occurred_at": AT.format(7)},
                {"shipment_id": theirs["id"], "status": "delivered", "occurred_at": AT.format(7)},
                {"shipment_id": ship["id"], "order_id": order["id"], "status": "delivered"},
                good,
                good,  # the same event twice: seen before, nothing changes
            ]
        },
    )
    assert r.status_code == 200
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [422, 404, 422, 201, 200]
    assert "status" in results[0]["error"]["fields"]
    assert results[1]["error"]["code"] == "not_found" and results[1]["order_id"] is None
    after = row_counts(app)
    # one event, one change, its notification rows: nothing of the refused ones
    assert after["tracking_event"] == before["tracking_event"] + 1
    assert after["change"] == before["change"] + 1
    assert other.get(f"/orders/{theirs['order_id']}").get_json()["status"] == "shipped"


def test_a_batch_is_bounded_and_must_hold_events(merchant: MerchantActions) -> None:
    item = {"order_id": 1, "status": "processing"}
    too_many = merchant.post("/events", {"events": [item] * 1001})
    assert too_many.status_code == 413  # as the contract says: over 1,000 items
    assert too_many.get_json()["error"]["code"] == "payload_too_large"
    assert merchant.post("/events", {"events": []}).status_code == 422
    assert merchant.post("/events", {"events": [item], "extra": 1}).status_code == 422


def test_a_batch_needs_the_merchants_key(client: FlaskClient) -> None:
    r = client.post("/api/v1/events", json={"events": [{"order_id": 1, "status": "processing"}]})
    assert r.status_code == 401
