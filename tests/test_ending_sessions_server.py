"""Signing out closes the session's sockets at once on every worker: ``waybill serve`` in a
subprocess, one worker with the in-process broker and two with Redis (the sign-out reaches the
other worker through the broker, not at its next keepalive round 25 s later)."""

from __future__ import annotations

import time
from collections.abc import Callable

import requests

from tests.test_ending_sessions import AT_ONCE, closed_at_once, updates
from tests.test_realtime import LiveClient
from tests.test_realtime_server import ServerProcess, Shop
from tests.test_realtime_server import connect as connect  # fixtures
from tests.test_realtime_server import server as server
from tests.test_realtime_server import shop as shop


def sockets_on_every_worker(
    server: ServerProcess, connect: Callable[..., LiveClient], cookie: str
) -> list[LiveClient]:
    """Sockets of this session until every worker holds one (the kernel picks the worker)."""
    opened: list[LiveClient] = []
    workers: set[int] = set()
    for _ in range(40):
        live = connect(cookie=cookie, timeout=AT_ONCE + 1)
        live.hello()
        opened.append(live)
        workers.add(server.worker_of(live) or 0)
        if server.worker_pids() <= workers:
            return opened
    raise AssertionError(f"could not reach all {server.workers} workers")


def test_signing_out_everywhere_closes_the_sockets_on_every_worker(
    server: ServerProcess, shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    order = shop.order("una@example.com")
    cookie = shop.sign_in("una@example.com")
    opened = sockets_on_every_worker(server, connect, cookie)
    browser = requests.Session()
    browser.cookies.set("waybill_session", cookie)
    csrf = browser.get(f"{server.base}/api/me", timeout=10).json()["csrf_token"]

    started = time.monotonic()
    r = browser.delete(f"{server.base}/api/me/sessions", headers={"X-CSRF-Token": csrf}, timeout=10)
    assert r.status_code == 204
    shop.event(order["id"], "processing")  # right after: no signed-out socket sees it
    for live in opened:
        closed_at_once(live, started)
        assert updates(live) == []


def test_logout_closes_the_sockets_on_every_worker(
    server: ServerProcess, shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    order = shop.order("vera@example.com")
    cookie = shop.sign_in("vera@example.com")
    other = connect(cookie=shop.sign_in("vera@example.com"))  # another device: stays
    other.hello()
    opened = sockets_on_every_worker(server, connect, cookie)

    started = time.monotonic()
    r = requests.post(f"{server.base}/auth/logout", cookies={"waybill_session": cookie}, timeout=10)
    assert r.status_code == 204
    shop.event(order["id"], "processing")
    for live in opened:
        closed_at_once(live, started)
        assert updates(live) == []
    assert [m["order"]["status"] for m in other.updates(1)] == ["processing"]
