"""The outbox on PostgreSQL: concurrent claimers never take the same row (SKIP LOCKED)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask

from tests.conftest import make_settings
from tests.utils.factories import make_merchant
from tests.utils.push_service import PushService
from waybill import create_app
from waybill.db import migrate
from waybill.models import utcnow
from waybill.notify import outbox
from waybill.notify.delivery import Worker

pytestmark = pytest.mark.postgres


@pytest.fixture
def pg_app(tmp_path, pg_database: str) -> Iterator[Flask]:  # noqa: F811
    app = create_app(
        make_settings(tmp_path, database_url=pg_database, push_endpoint_hosts=("127.0.0.1:*",))
    )
    migrate(app.extensions["waybill.engine"])
    yield app
    app.extensions["waybill.engine"].dispose()


def test_concurrent_claimers_share_the_rows_without_overlap(pg_app: Flask) -> None:
    push = PushService().start()
    try:
        client = pg_app.test_client()
        merchant = make_merchant(pg_app, client)
        for n in range(12):
            order = merchant.create_order(f"p{n}@example.com")
            token = order["tracking_url"].rsplit("/", 1)[1]
            r = client.post(
                f"/api/track/{token}/push-subscriptions", json=push.subscribe().to_json()
            )
            assert r.status_code == 201
            merchant.add_shipment(order["id"])  # push + email row per order
        engine = pg_app.extensions["waybill.engine"]
        claimed: list[list[int]] = [[] for _ in range(4)]
        start = threading.Barrier(4)

        def claimer(i: int) -> None:
            start.wait()
            while ids := outbox.claim(
                engine, owner=f"w{i}", limit=2, now=utcnow(), lease=timedelta(minutes=1)
            ):
                claimed[i].extend(ids)

        threads = [threading.Thread(target=claimer, args=(i,)) for i in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        everything = [i for ids in claimed for i in ids]
        assert len(everything) == 24 and len(set(everything)) == 24

        # and a worker on PostgreSQL delivers what is due, once
        w = Worker(engine, pg_app.config["WAYBILL_SETTINGS"], concurrency=8)
        try:
            push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
            assert w.run_until_idle(now=utcnow() + timedelta(minutes=2)) == 24
            assert len(push.deliveries) == 12 and push.errors == []
        finally:
            w.stop()
    finally:
        push.stop()
