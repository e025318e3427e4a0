"""What operators and load balancers see: /healthz, /readyz, /metrics, one JSON log line per
request with its id (also on the outbox rows it queued), and no secret in any of them — in the
app, and under the real ``waybill serve`` (prometheus-client's multiprocess mode)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import database_url_of, make_settings
from tests.test_realtime_server import ServerProcess, Shop, _free_port
from tests.utils.factories import MerchantActions
from waybill import close_app, create_app


def log_lines(text: str) -> list[dict[str, Any]]:
    lines = []
    for line in text.splitlines():
        if line.startswith("{") and '"request_id"' in line:
            lines.append(json.loads(line))
    return lines


def test_health_and_readiness(client: FlaskClient) -> None:
    assert client.get("/healthz").get_json() == {"status": "ok"}
    r = client.get("/readyz")
    assert r.status_code == 200 and r.get_json() == {"status": "ready"}


def test_not_ready_on_a_schema_behind_the_code(tmp_path: Path) -> None:
    app = create_app(make_settings(tmp_path))  # an empty database: never migrated
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    body = r.get_json()
    assert body["status"] == "unready"
    assert any("waybill init" in reason for reason in body["reasons"]), body
    app.extensions["waybill.engine"].dispose()


@pytest.mark.redis
def test_not_ready_without_the_broker(instance_dir: Path) -> None:
    app = create_app(make_settings(instance_dir, broker_url="redis://127.0.0.1:1/0"))
    r = app.test_client().get("/readyz")
    assert r.status_code == 503
    assert any("broker" in reason for reason in r.get_json()["reasons"])
    close_app(app)


def test_each_request_is_one_json_line_with_its_id_and_no_token(
    app: Flask, client: FlaskClient, merchant: MerchantActions, capsys: pytest.CaptureFixture[str]
) -> None:
    order = merchant.create_order("secret.shopper@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]
    capsys.readouterr()
    r = client.get(f"/t/{token}", headers={"X-Request-ID": "trace-0123456789"})
    assert r.headers["X-Request-ID"] == "trace-0123456789"
    parcel = merchant.add_shipment(order["id"])
    answer = merchant.client.post(
        f"/api/v1/shipments/{parcel['id']}/events",
        json={"status": "out_for_delivery", "occurred_at": "2026-11-20T08:00:00Z"},
        headers={**merchant.headers, "X-Request-ID": "event-request-0001"},
    )
    assert answer.status_code == 201
    err = capsys.readouterr().err
    lines = log_lines(err)
    page = next(x for x in lines if x["request_id"] == "trace-0123456789")
    assert page["method"] == "GET" and page["status"] == 200
    assert page["path"] == "/t/<token>" and page["route"] == "/t/<token>"
    assert isinstance(page["duration_ms"], float)
    event = next(x for x in lines if x["request_id"] == "event-request-0001")
    assert event["path"] == f"/api/v1/shipments/{parcel['id']}/events" and event["status"] == 201
    assert token not in err and merchant.api_key not in err
    # the notifications that event queued name the request that queued them
    with app.extensions["waybill.engine"].connect() as conn:
        ids = conn.execute(
            sa.text("SELECT DISTINCT request_id FROM notify_outbox WHERE status = :s"),
            {"s": "out_for_delivery"},
        ).scalars()
        assert list(ids) == ["event-request-0001"]
    # one made up by a caller that is not an id is not taken
    r = client.get("/healthz", headers={"X-Request-ID": "no spaces, please"})
    assert re.fullmatch(r"[0-9a-f]{16}", r.headers["X-Request-ID"])


def test_metrics_count_requests_by_route_and_show_the_outbox(
    client: FlaskClient, merchant: MerchantActions
) -> None:
    order = merchant.create_order("metrics.shopper@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]
    client.get(f"/t/{token}")
    parcel = merchant.add_shipment(order["id"])
    merchant.scan(parcel["id"], "out_for_delivery", "2026-11-20T08:00:00Z")
    r = client.get("/metrics")
    assert r.status_code == 200 and r.content_type.startswith("text/plain")
    text = r.get_data(as_text=True)
    assert re.search(
        r'waybill_http_requests_total\{method="POST",route="/api/v1/orders",status="201"\} \d', text
    ), text[:2000]
    assert 'route="/t/<token>"' in text
    assert re.search(r"waybill_event_ingest_seconds_count \d", text)
    due = re.search(r"^waybill_outbox_due (\d+\.\d+)", text, re.M)
    assert due and float(due.group(1)) >= 1  # the out-for-delivery mail (it superseded "shipped")
    assert re.search(r"^waybill_outbox_oldest_due_seconds \d", text, re.M)
    for secret in (token, merchant.api_key, "metrics.shopper@example.com"):
        assert secret not in text


@pytest.fixture
def served(instance_dir: Path) -> Any:
    instance = instance_dir
    port = _free_port()
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")},
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": database_url_of(instance),
        "WAYBILL_BROKER_URL": "memory://",
        "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
        "WAYBILL_SECRET_KEY": "ops-test-secret-key-0123456789",
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    proc = ServerProcess(env, port, workers=1)
    proc.start()
    yield proc
    proc.stop()


def test_the_served_app_logs_json_and_sums_its_workers_metrics(served: ServerProcess) -> None:
    shop = Shop(served)
    order = shop.order("served.shopper@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]
    assert requests.get(f"{served.base}/t/{token}", timeout=10).status_code == 200
    assert requests.get(f"{served.base}/readyz", timeout=10).json() == {"status": "ready"}
    text = requests.get(f"{served.base}/metrics", timeout=10).text
    # multiprocess mode: the worker's counters were written to files and summed on scrape
    assert (Path(served.env["WAYBILL_INSTANCE_DIR"]) / "metrics").is_dir()
    assert re.search(r'waybill_http_requests_total\{[^}]*route="/t/<token>"[^}]*\} 1\.0', text)
    log = served.log.read_text()
    lines = log_lines(log)
    assert any(x["path"] == "/t/<token>" and x["status"] == 200 for x in lines)
    for secret in (token, shop.key, served.env["WAYBILL_SECRET_KEY"]):
        assert secret not in log and secret not in text
