"""Nothing freezes: the real ``waybill serve`` as operators run it (SMTP set, push on for every
status, one gevent worker), under hundreds of status-changing events from several merchant
clients at once, with customers' and tracking-link sockets of which some stop reading.

It fails when the worker's event loop was ever blocked for a second or more (the watchdog's
own figures, read from the server's output), when gunicorn killed a worker, or when an update
or a notification is missing. On SQLite and on PostgreSQL.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import database_url_of
from tests.test_realtime import LiveClient
from tests.test_realtime_server import WAYBILL, ServerProcess, Shop, _free_port
from tests.utils.push_service import PushService
from tests.utils.smtp import SMTPServer

CUSTOMERS = 4
ORDERS_EACH = 5
MERCHANT_CLIENTS = 4
# One shipment's scans: every one a change of status, so every one is due to every channel.
ROUTE = [
    "shipped",
    "in_transit",
    "out_for_delivery",
    "attempted",
    "in_transit",
    "exception",
    "in_transit",
    "out_for_delivery",
    "attempted",
    "available_for_pickup",
    "in_transit",
    "out_for_delivery",
    "exception",
    "out_for_delivery",
    "attempted",
    "out_for_delivery",
    "in_transit",
    "out_for_delivery",
    "exception",
    "in_transit",
    "out_for_delivery",
    "attempted",
    "out_for_delivery",
    "delivered",
]
EVERY_STATUS = {
    s: True
    for s in [
        *("confirmed", "processing", "shipped", "in_transit", "out_for_delivery", "delivered"),
        *("attempted", "available_for_pickup", "exception", "returned", "cancelled"),
    ]
}
BLOCK_LIMIT_MS = 1000


@pytest.fixture
def database(instance_dir: Path) -> tuple[Path, str]:
    return instance_dir, database_url_of(instance_dir)


@pytest.fixture
def operated(database: tuple[Path, str]) -> Iterator[tuple[ServerProcess, PushService, Any]]:
    """``waybill serve`` with SMTP and Web Push on, one worker, the in-process outbox worker."""
    instance, url = database
    smtp = SMTPServer().start()
    push = PushService().start()
    port = _free_port()
    env = {
        **os.environ,
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": url,
        "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
        "WAYBILL_SECRET_KEY": "no-freeze-test-secret-key",
        "WAYBILL_SMTP_URL": smtp.url,
        "WAYBILL_PUSH_ENDPOINT_HOSTS": "127.0.0.1:*",
        "WAYBILL_RUN_WORKER": "1",
        "WAYBILL_BLOCKED_LOOP_WARN_MS": "200",  # log anything past 200 ms; fail past 1 s
        "WAYBILL_RATE_LIMITS": "merchant_api_per_key=100000/minute",
    }
    subprocess.run([WAYBILL, "init"], env=env, check=True, capture_output=True)
    server = ServerProcess(env, port, workers=1)
    server.start()
    push.expected_key = requests.get(f"{server.base}/api/push/public-key", timeout=10).json()[
        "public_key"
    ]
    try:
        yield server, push, smtp
    finally:
        server.stop()
        push.stop()
        smtp.stop()


def signed_in(shop: Shop, email: str) -> requests.Session:
    browser = requests.Session()
    browser.cookies.set("waybill_session", shop.sign_in(email))
    browser.headers["X-CSRF-Token"] = browser.get(f"{shop.server.base}/api/me", timeout=10).json()[
        "csrf_token"
    ]
    return browser


def read_until_final(client: LiveClient, orders: set[int], final: str) -> dict[int, list[str]]:
    """Every status each order showed on this socket, until all of them show ``final``."""
    seen: dict[int, list[str]] = {o: [] for o in orders}
    while any(not s or s[-1] != final for s in seen.values()):
        m = client.next_message()
        if m["type"] == "order.updated" and m["order"]["id"] in seen:
            seen[m["order"]["id"]].append(m["order"]["status"])
    return seen


def stalled_socket(server: ServerProcess, **options: Any) -> LiveClient:
    """A phone that reads its hello and then never reads again."""
    client = LiveClient(
        server.base, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),), **options
    )
    client.hello()
    return client


def in_order(received: list[str], sent: list[str]) -> bool:
    """``received`` is a subsequence of ``sent``: nothing older arrived after something newer.
    (A frame that repeats the status it follows is a timeline change: it counts once.)"""
    received = [r for i, r in enumerate(received) if i == 0 or received[i - 1] != r]
    it = iter(sent)
    return all(any(s == r for s in it) for r in received)


def test_serve_never_blocks_its_loop_under_traffic_with_smtp_push_and_stalled_phones(
    operated: tuple[ServerProcess, PushService, SMTPServer],
) -> None:
    server, push, smtp = operated
    shop = Shop(server)
    opened: list[LiveClient] = []
    try:
        _traffic(server, push, smtp, shop, opened)
    finally:
        for client in opened:
            client.ws.close(timeout=0)


def _traffic(
    server: ServerProcess,
    push: PushService,
    smtp: SMTPServer,
    shop: Shop,
    opened: list[LiveClient],
) -> None:

    # Customers with every status on, on both channels, each with a phone subscribed to push.
    customers: dict[str, list[dict[str, Any]]] = {}
    devices: dict[str, Any] = {}
    sockets: list[tuple[LiveClient, set[int]]] = []
    stalled: list[LiveClient] = []
    for c in range(CUSTOMERS):
        email = f"busy{c}@example.com"
        customers[email] = [shop.order(email) for _ in range(ORDERS_EACH)]
        browser = signed_in(shop, email)
        prefs = {
            "channels": {"push": True, "email": True},
            "statuses": EVERY_STATUS,
            "quiet_hours": None,
            "timezone": "UTC",
            "language": "en",
        }
        r = browser.put(f"{server.base}/api/me/preferences", json=prefs, timeout=10)
        assert r.status_code == 200, r.text
        devices[email] = push.subscribe()
        r = browser.post(
            f"{server.base}/api/me/push-subscriptions", json=devices[email].to_json(), timeout=10
        )
        assert r.status_code == 201, r.text
        cookie = browser.cookies["waybill_session"]
        ids = {o["id"] for o in customers[email]}
        healthy = LiveClient(server.base, cookie=cookie, timeout=60)
        opened.append(healthy)
        healthy.hello()
        sockets.append((healthy, ids))
        stalled.append(stalled_socket(server, cookie=cookie))
        opened.append(stalled[-1])
    everything = [o for orders in customers.values() for o in orders]
    for order in everything[::3]:  # some tracking links open too, healthy and stalled
        token = order["tracking_url"].rsplit("/", 1)[1]
        link = LiveClient(server.base, track=token, timeout=60)
        opened.append(link)
        link.hello()
        sockets.append((link, {order["id"]}))
        stalled.append(stalled_socket(server, track=token))
        opened.append(stalled[-1])
    shipments = {
        o["id"]: shop.post(
            f"/orders/{o['id']}/shipments", {"carrier": "DHL", "tracking_number": f"JD{o['id']}"}
        )["id"]
        for o in everything
    }

    readers = ThreadPoolExecutor(len(sockets))
    seen_on = [readers.submit(read_until_final, c, ids, "delivered") for c, ids in sockets]

    def scan_all(order_ids: list[int]) -> int:
        """One merchant client: each of its shipments' scans in order."""
        http = requests.Session()
        posted = 0
        for step, status in enumerate(ROUTE):
            for order_id in order_ids:
                r = http.post(
                    f"{server.base}/api/v1/shipments/{shipments[order_id]}/events",
                    json={
                        "status": status,
                        "occurred_at": f"2026-11-{1 + step // 24:02d}T{step % 24:02d}:00:00Z",
                        "location": f"hub {step}",
                    },
                    headers={"Authorization": f"Bearer {shop.key}"},
                    timeout=20,
                )
                assert r.status_code == 201, r.text
                posted += 1
        return posted

    ids = [o["id"] for o in everything]
    started = time.monotonic()
    with ThreadPoolExecutor(MERCHANT_CLIENTS) as merchants:
        posted = sum(merchants.map(scan_all, [ids[i::MERCHANT_CLIENTS] for i in range(4)]))
    took = time.monotonic() - started
    assert posted == len(everything) * len(ROUTE)

    # Every healthy screen saw every one of its orders reach "delivered", in order.
    for future in seen_on:
        for statuses in future.result(timeout=60).values():
            assert statuses[-1] == "delivered"
            assert in_order(statuses, ROUTE), statuses
    readers.shutdown()

    # Every phone's last push about each order says "delivered"; older never after newer.
    def pushes_of(email: str) -> dict[int, list[str]]:
        out: dict[int, list[str]] = {o["id"]: [] for o in customers[email]}
        for d in push.delivered_to(devices[email]):
            out[d.payload["order_id"]].append(d.payload["status"])
        return out

    def all_told() -> bool:
        return all(
            s and s[-1] == "delivered" for e in customers for s in pushes_of(e).values()
        ) and all(
            any(
                o["external_id"] in str(m["Subject"]) and "delivered" in str(m["Subject"])
                for m in smtp.messages
                if str(m["To"]) == e
            )
            for e, orders in customers.items()
            for o in orders
        )

    deadline = time.monotonic() + 90  # mail and push both: polled, neither wakes the other
    while not all_told() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all_told(), ({e: pushes_of(e) for e in customers}, len(smtp.messages))
    told = time.monotonic() - started
    for email in customers:
        for statuses in pushes_of(email).values():
            assert in_order(statuses, ROUTE), statuses
    assert push.errors == []

    stopping = time.monotonic()
    server.stop()
    stopped = time.monotonic() - stopping
    log = server.log.read_text()
    assert "WORKER TIMEOUT" not in log
    assert log.count("Booting worker") == 1, "gunicorn replaced a worker"
    blocks = [int(ms) for ms in re.findall(r"event loop blocked for (\d+) ms", log)]
    longest = re.findall(r"longest event loop block (\d+) ms", log)
    assert longest, "the worker logged no watchdog summary:\n" + log[-2000:]
    print(
        f"\n{posted} events from {MERCHANT_CLIENTS} clients in {took:.1f} s, all told after "
        f"{told:.1f} s, stopped in {stopped:.1f} s; "
        f"{len(push.deliveries)} pushes, {len(smtp.messages)} mails; "
        f"blocks >= 200 ms: {blocks}; longest block {longest[-1]} ms"
    )
    assert all(ms < BLOCK_LIMIT_MS for ms in blocks), blocks
    assert int(longest[-1]) < BLOCK_LIMIT_MS
