"""The same spine on a real PostgreSQL: migrations, the API, and its constraints."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from flask import Flask

from tests.conftest import make_settings
from tests.utils.factories import make_merchant, row_counts
from waybill import create_app
from waybill.db import migrate


@pytest.fixture
def pg_app(tmp_path, pg_database) -> Iterator[Flask]:
    settings = make_settings(tmp_path, database_url=pg_database)
    app = create_app(settings)
    migrate(app.extensions["waybill.engine"])
    yield app
    app.extensions["waybill.engine"].dispose()


def test_order_lifecycle_on_postgres(pg_app):
    client = pg_app.test_client()
    merchant = make_merchant(pg_app, client)
    order = merchant.create_order(email="PG@Example.com")
    shipment = merchant.add_shipment(order["id"])
    merchant.scan(shipment["id"], "delivered", "2026-11-21T10:00:00+02:00", event_id="d1")
    r = merchant.scan(shipment["id"], "in_transit", "2026-11-20T10:00:00Z")
    body = r.get_json()
    assert body["status"] == "delivered"
    assert body["shipments"][0]["events"][-1]["occurred_at"] in (
        "2026-11-21T08:00:00Z",
        "2026-11-21T08:00:00+00:00",
    )
    before = row_counts(pg_app)
    assert (
        merchant.scan(
            shipment["id"], "delivered", "2026-11-21T10:00:00Z", event_id="d1"
        ).status_code
        == 200
    )
    clash = merchant.post(
        "/orders", {"external_id": order["external_id"], "customer": {"email": "other@example.com"}}
    )
    assert clash.status_code == 409
    assert row_counts(pg_app) == before
    # PostgreSQL refuses NUL in text: it is dropped on the way in, not a 500
    nul = merchant.post("/orders", {"external_id": "N\u0000UL", "customer": {"email": "n@x.de"}})
    assert nul.status_code == 201 and nul.get_json()["external_id"] == "NUL"


def test_concurrent_events_to_one_order_lose_no_update(pg_app):
    """Eight parcels of one order delivered at once, from eight connections: every writer's
    status is folded from the others' committed ones, so the order ends delivered."""
    import threading

    client = pg_app.test_client()
    shop = make_merchant(pg_app, client)
    parcels = 8
    for round_ in range(3):
        order = shop.create_order(email=f"many{round_}@example.com")
        ids = [shop.add_shipment(order["id"])["id"] for _ in range(parcels)]
        start = threading.Barrier(parcels)
        answers: list[int] = []

        def deliver(shipment_id: int, start=start, answers=answers) -> None:  # type: ignore[no-untyped-def]
            own = pg_app.test_client()
            start.wait()
            r = own.post(
                f"/api/v1/shipments/{shipment_id}/events",
                json={"status": "delivered", "occurred_at": "2026-12-01T10:00:00Z"},
                headers=shop.headers,
            )
            answers.append(r.status_code)

        threads = [threading.Thread(target=deliver, args=(i,)) for i in ids]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert answers == [201] * parcels
        got = shop.get(f"/orders/{order['id']}").get_json()
        assert [s["status"] for s in got["shipments"]] == ["delivered"] * parcels
        assert got["status"] == "delivered", got["packages"]
