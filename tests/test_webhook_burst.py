"""A platform's burst against the real server: ``waybill serve`` (gevent, each backend) takes 500
signed AfterShip webhooks from fifty connections at once, in no particular order, and every scan
of every parcel ends up on its order, once. How fast they are answered is measured by
``bench/webhooks.py``, not here."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import requests

from tests.conftest import Backend
from tests.test_realtime_server import WAYBILL, ServerProcess, _free_port

SECRET = "burst-webhook-secret-0123"
PARCELS = 125  # the benchmark sends 1,000; this is about what arrives, not how fast
SCANS = (  # each webhook carries the history up to one of these, as AfterShip sends it
    ("InTransit", "Picked up by the courier"),
    ("InTransit", "Arrived at the sort facility"),
    ("OutForDelivery", "On the van"),
    ("Delivered", "Delivered to the front door"),
)
BURST = PARCELS * len(SCANS)  # 500
CONNECTIONS = 50
T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[Any]:
    instance = tmp_path_factory.mktemp("burst") / "instance"
    with backend.database(instance) as database_url:
        port = _free_port()
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")},
            "WAYBILL_INSTANCE_DIR": str(instance),
            "WAYBILL_DATABASE_URL": database_url,
            "WAYBILL_BROKER_URL": "memory://",
            "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
            "WAYBILL_SECRET_KEY": "burst-test-secret-key",
        }
        proc = ServerProcess(env, port, workers=1)
        proc.start()
        yield proc
        proc.stop()


def body_for(number: str, upto: int) -> bytes:
    checkpoints = [
        {
            "slug": "dhl",
            "tag": tag,
            "message": message,
            "checkpoint_time": (T0 + timedelta(hours=3 * k)).isoformat(),
            "city": "Leipzig",
        }
        for k, (tag, message) in enumerate(SCANS[: upto + 1])
    ]
    payload = {
        "event": "tracking_update",
        "msg": {
            "tracking_number": number,
            "slug": "dhl",
            "tag": SCANS[upto][0],
            "checkpoints": checkpoints,
        },
    }
    return json.dumps(payload).encode()


def signed(body: bytes) -> dict[str, str]:
    digest = hmac.new(SECRET.encode(), body, hashlib.sha256).digest()
    return {"Content-Type": "application/json", "aftership-hmac-sha256": base64.b64encode(digest)}


def test_a_burst_of_webhooks_loses_no_event_and_a_replay_adds_none(
    server: Any,
) -> None:
    made = subprocess.run(
        [WAYBILL, "merchant", "create", "Burst Shop"],
        env=server.env,
        capture_output=True,
        text=True,
        check=True,
    )
    created = json.loads(made.stdout)
    api = requests.Session()
    api.headers["Authorization"] = f"Bearer {created['api_key']}"
    base = f"{server.base}/api/v1"
    r = api.put(f"{base}/integrations/aftership", json={"secret": SECRET}, timeout=10)
    assert r.status_code in (200, 201), r.text
    hook_url = r.json()["webhook_url"].replace(server.env["WAYBILL_BASE_URL"], server.base)

    def make_parcel(i: int) -> tuple[int, str]:
        number = f"BURST{i:07d}"
        order = api.post(
            f"{base}/orders",
            json={"external_id": f"B-{i}", "customer": {"email": f"burst{i}@example.com"}},
            timeout=10,
        )
        assert order.status_code == 201, order.text
        shipment = api.post(
            f"{base}/orders/{order.json()['id']}/shipments",
            json={"carrier": "DHL", "tracking_number": number},
            timeout=10,
        )
        assert shipment.status_code == 201, shipment.text
        return order.json()["id"], number

    with ThreadPoolExecutor(8) as pool:
        parcels = list(pool.map(make_parcel, range(PARCELS)))

    webhooks = [(number, k) for _, number in parcels for k in range(len(SCANS))]
    random.Random(7).shuffle(webhooks)  # platforms promise no order, and retry out of turn
    local = threading.local()

    def post(hook: tuple[str, int]) -> int:
        if not hasattr(local, "session"):
            local.session = requests.Session()
        body = body_for(*hook)
        return local.session.post(hook_url, data=body, headers=signed(body), timeout=30).status_code

    with ThreadPoolExecutor(CONNECTIONS) as pool:
        answers = list(pool.map(post, webhooks))
    assert answers.count(202) == BURST, {s: answers.count(s) for s in set(answers)}

    def timelines() -> dict[int, list[tuple[str, str]]]:
        seen = {}
        for order_id, _ in parcels:
            order = api.get(f"{base}/orders/{order_id}", timeout=10).json()
            seen[order_id] = [
                (e["status"], e["description"] or "") for e in order["shipments"][0]["events"]
            ]
        return seen

    def newest_applied() -> list[dict[str, Any]]:
        """The newest 50 receipts once none of them waits any more (one worker applies in the
        order they came: then every one before them is applied too)."""
        deadline = time.monotonic() + 120
        while True:
            got = api.get(f"{base}/integrations/aftership/webhooks", timeout=10).json()
            newest = got["webhooks"]
            if all(w["state"] != "queued" for w in newest) or time.monotonic() > deadline:
                return newest  # type: ignore[no-any-return]
            time.sleep(0.2)

    assert {w["state"] for w in newest_applied()} == {"applied"}
    want = [
        ("in_transit", "Picked up by the courier"),
        ("in_transit", "Arrived at the sort facility"),
        ("out_for_delivery", "On the van"),
        ("delivered", "Delivered to the front door"),
    ]
    seen = timelines()
    wrong = {oid: ev for oid, ev in seen.items() if [x for x in ev if x[0] != "shipped"] != want}
    example = next(iter(wrong.items()), None)
    assert not wrong, f"{len(wrong)} of {PARCELS} timelines incomplete, e.g. {example}"
    statuses = {api.get(f"{base}/orders/{oid}", timeout=10).json()["status"] for oid, _ in parcels}
    assert statuses == {"delivered"}

    # The platform retries a fifth of the burst: every one taken again, nothing new recorded.
    with ThreadPoolExecutor(CONNECTIONS) as pool:
        again = list(pool.map(post, webhooks[:200]))
    assert again.count(202) == 200
    replays = newest_applied()
    assert {w["state"] for w in replays} == {"applied"}
    assert all(" 0 new of " in w["result"] for w in replays), replays[:3]
    assert timelines() == seen
