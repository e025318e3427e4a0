"""Live updates over /ws, in process with the memory broker (the real-server tests are in
test_realtime_server.py and share the client below)."""

from __future__ import annotations

import contextlib
import json
import os
import queue
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import websocket
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select
from werkzeug.serving import make_server

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.redis_server import PrivateRedis
from waybill import create_app
from waybill.db import migrate, session_scope
from waybill.ingest import record_order_event
from waybill.models import Change, Order, OrderEventCreate
from waybill.realtime.broker import RESUBSCRIBED, RedisBroker

#: ``next_frame`` answers this when the server closed the socket: ("close", code).
CLOSED = "close"


class LiveClient:
    """One ``/ws`` socket; ``messages`` keeps every JSON message received, in order."""

    def __init__(
        self,
        base: str,
        *,
        cookie: str | None = None,
        track: str | None = None,
        timeout: float = 15.0,
        **options: Any,
    ) -> None:
        url = base.replace("http://", "ws://") + "/ws" + (f"?track={track}" if track else "")
        self.ws = websocket.create_connection(
            url, cookie=f"waybill_session={cookie}" if cookie else None, timeout=timeout, **options
        )
        self.messages: list[dict[str, Any]] = []
        self.close_code: int | None = None

    def next_frame(self) -> dict[str, Any] | tuple[str, int | None]:
        """The next JSON message, or ("close", code) once the server closes the socket."""
        while True:
            try:
                opcode, data = self.ws.recv_data(control_frame=True)
            except websocket.WebSocketConnectionClosedException:
                return (CLOSED, self.close_code)
            if opcode == websocket.ABNF.OPCODE_CLOSE:
                self.close_code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else None
                return (CLOSED, self.close_code)
            if opcode == websocket.ABNF.OPCODE_TEXT:
                message = json.loads(data)
                self.messages.append(message)
                return message  # type: ignore[no-any-return]

    def next_message(self) -> dict[str, Any]:
        frame = self.next_frame()
        assert isinstance(frame, dict), f"socket closed with {frame[1]} instead of a message"
        return frame

    def hello(self) -> int:
        message = self.next_message()
        assert message["type"] == "hello", message
        return int(message["cursor"])

    def resume(self, cursor: int) -> None:
        self.ws.send(json.dumps({"type": "resume", "cursor": cursor}))

    def updates(self, n: int) -> list[dict[str, Any]]:
        """The next ``n`` order.updated messages."""
        out = [self.next_message() for _ in range(n)]
        assert all(m["type"] == "order.updated" for m in out), out
        return out

    def until_status(self, order_id: int, status: str) -> list[dict[str, Any]]:
        """Read updates until ``order_id`` shows ``status``; returns every update read."""
        seen = []
        while True:
            m = self.next_message()
            seen.append(m)
            if (
                m["type"] == "order.updated"
                and m["order"]["id"] == order_id
                and m["order"]["status"] == status
            ):
                return seen

    def close(self) -> None:
        with contextlib.suppress(OSError, websocket.WebSocketException):
            self.ws.close(timeout=1)
        self.ws.shutdown()


def cursors(messages: list[dict[str, Any]]) -> list[int]:
    return [m["cursor"] for m in messages if m["type"] == "order.updated"]


# --- in process: the app under a threaded WSGI server, with the memory broker ---------------


@pytest.fixture
def live_server(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}"
    app.extensions["waybill.hub"].close()
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def connect(live_server: str) -> Iterator[Callable[..., LiveClient]]:
    """Open sockets to the live server; every one is closed after the test."""
    opened: list[LiveClient] = []

    def open_socket(**options: Any) -> LiveClient:
        opened.append(LiveClient(live_server, **options))
        return opened[-1]

    yield open_socket
    for c in opened:
        c.close()


def dispatched(app: Flask, timeout: float = 10.0) -> None:
    """Wait until this process's sockets were handed every change written so far: what a
    socket opened afterwards resumes from is all in the database's replay, none in flight."""
    hub = app.extensions["waybill.hub"]
    with Session(app.extensions["waybill.engine"]) as session:
        latest = max(session.exec(select(Change.id)).all(), default=0)
    deadline = time.monotonic() + timeout
    while hub.registry.hwm < latest:
        assert time.monotonic() < deadline, f"dispatched up to {hub.registry.hwm} of {latest}"
        time.sleep(0.01)


def _session_cookie(client: FlaskClient) -> str:
    cookie = client.get_cookie("waybill_session")
    assert cookie is not None
    return cookie.value


def _token(order: dict[str, Any]) -> str:
    return order["tracking_url"].rsplit("/", 1)[1]


def test_session_socket_gets_each_change_shaped_like_the_api(
    connect: Callable[..., LiveClient],
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
) -> None:
    first = merchant.create_order("alice@example.com")
    auth.sign_in("alice@example.com")
    live = connect(cookie=_session_cookie(client))
    start = live.hello()

    shipment = merchant.add_shipment(first["id"])
    merchant.scan(shipment["id"], "in_transit", "2026-01-02T10:00:00Z")
    later = merchant.create_order("alice@example.com")  # created after the socket opened
    merchant.create_order("bob@example.com")  # not hers: never on her socket
    merchant.scan(shipment["id"], "delivered", "2026-01-03T10:00:00Z")

    got = live.updates(4)  # one per change she can see
    assert [m["order"]["id"] for m in got] == [first["id"], first["id"], later["id"], first["id"]]
    assert [m["order"]["status"] for m in got][2:] == ["confirmed", "delivered"]
    assert cursors(got) == sorted(set(cursors(got))) and cursors(got)[0] > start
    # the last frame of an order is what GET /api/me/orders/{id} answers now
    assert got[-1]["order"] == client.get(f"/api/me/orders/{first['id']}").get_json()
    assert got[2]["order"] == client.get(f"/api/me/orders/{later['id']}").get_json()
    live.close()


def test_resume_replays_each_changed_order_once_then_goes_live(
    app: Flask,
    connect: Callable[..., LiveClient],
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
) -> None:
    a = merchant.create_order("carol@example.com")
    b = merchant.create_order("carol@example.com")
    auth.sign_in("carol@example.com")
    live = connect(cookie=_session_cookie(client))
    seen = live.hello()
    ship = merchant.add_shipment(a["id"])
    first = live.updates(1)[0]
    live.close()

    # offline: three changes to a, one to b, a last one to a
    merchant.scan(ship["id"], "in_transit", "2026-01-02T10:00:00Z")
    merchant.post(f"/orders/{b['id']}/events", {"status": "processing"})
    merchant.scan(ship["id"], "out_for_delivery", "2026-01-03T08:00:00Z")
    dispatched(app)  # else the last change may come live, after the replay, as it should

    again = connect(cookie=_session_cookie(client))
    again.hello()
    again.resume(first["cursor"])
    replay = again.updates(2)
    assert [m["order"]["id"] for m in replay] == [b["id"], a["id"]]  # by their last change
    assert [m["order"]["status"] for m in replay] == ["processing", "out_for_delivery"]
    assert cursors(replay)[0] > first["cursor"] and cursors(replay) == sorted(cursors(replay))

    merchant.scan(ship["id"], "delivered", "2026-01-03T12:00:00Z")
    live_one = again.updates(1)[0]
    assert live_one["order"]["status"] == "delivered"
    assert live_one["cursor"] > replay[-1]["cursor"]

    # on this socket a later, older resume never steps the cursors back: it had all that
    again.resume(seen - 1 if seen else 0)
    merchant.post(f"/orders/{b['id']}/events", {"status": "cancelled"})
    (after_old_resume,) = again.updates(1)
    assert after_old_resume["order"]["id"] == b["id"]
    assert after_old_resume["cursor"] > live_one["cursor"]
    again.close()

    # a new socket resuming from before everything: every order of hers once, oldest first
    fresh = connect(cookie=_session_cookie(client))
    fresh.hello()
    fresh.resume(seen - 1 if seen else 0)
    full = fresh.updates(2)
    assert [m["order"]["id"] for m in full] == [a["id"], b["id"]]
    fresh.close()


def test_a_resume_cursor_from_the_future_does_not_mute_the_socket(
    connect: Callable[..., LiveClient],
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
) -> None:
    order = merchant.create_order("erin@example.com")
    auth.sign_in("erin@example.com")
    live = connect(cookie=_session_cookie(client))
    hello = live.hello()
    live.resume(hello + 1000)  # e.g. kept from before the database was restored
    merchant.add_shipment(order["id"])
    (update,) = live.updates(1)
    assert update["order"]["status"] == "shipped" and update["cursor"] > hello


def test_tracking_socket_sees_only_its_order(
    connect: Callable[..., LiveClient], merchant: MerchantActions, client: FlaskClient
) -> None:
    mine = merchant.create_order("dave@example.com")
    other = merchant.create_order("dave@example.com")  # same customer, other order
    live = connect(track=_token(mine))
    live.hello()
    merchant.post(f"/orders/{other['id']}/events", {"status": "processing"})
    merchant.post(f"/orders/{mine['id']}/events", {"status": "processing"})
    merchant.post(f"/orders/{other['id']}/events", {"status": "cancelled"})
    merchant.post(f"/orders/{mine['id']}/events", {"status": "cancelled"})
    got = live.updates(2)
    assert {m["order"]["id"] for m in got} == {mine["id"]}
    assert got[-1]["order"] == client.get(f"/api/track/{_token(mine)}").get_json()
    again = connect(track=_token(mine))
    again.hello()
    again.resume(0)
    assert [m["order"]["id"] for m in again.updates(1)] == [mine["id"]]
    live.close()


def test_socket_without_credentials_is_refused_and_gets_nothing(
    connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    order = merchant.create_order("erin@example.com")
    anonymous = connect()
    assert anonymous.next_frame() == (CLOSED, 4401)
    wrong = connect(track="x" * 43)
    assert wrong.next_frame() == (CLOSED, 4404)
    forged = connect(cookie="not-a-session")
    assert forged.next_frame() == (CLOSED, 4401)
    assert all(m["type"] != "order.updated" for m in anonymous.messages + forged.messages)
    assert order["id"]


def test_cookie_socket_from_another_site_is_refused(
    connect: Callable[..., LiveClient],
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
) -> None:
    merchant.create_order("frank@example.com")
    auth.sign_in("frank@example.com")
    evil = connect(cookie=_session_cookie(client), origin="https://evil.example")
    assert evil.next_frame() == (CLOSED, 4401)


def test_serving_several_workers_with_the_memory_broker_is_refused(instance_dir: Path) -> None:
    env = {
        **os.environ,
        "WAYBILL_INSTANCE_DIR": str(instance_dir),
        "WAYBILL_BROKER_URL": "memory://",
    }
    waybill = str(Path(sys.executable).with_name("waybill"))
    out = subprocess.run(
        [waybill, "serve", "--workers", "2", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode != 0
    assert "WAYBILL_BROKER_URL=redis://" in out.stderr


# --- the Redis broker against a Redis of its own, which the test stops and starts ----------


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[Callable[[], subprocess.Popen[bytes]]]:
    """Start (and restart) a private redis-server on a fixed free port."""
    redis = PrivateRedis(tmp_path)

    def start() -> subprocess.Popen[bytes]:
        return redis.start()

    start.url = redis.url  # type: ignore[attr-defined]
    yield start
    redis.stop()


def test_brokers_on_other_database_numbers_of_one_redis_hear_only_their_own(
    redis_url: str,
) -> None:
    base = redis_url.rsplit("/", 1)[0]
    ours, twin, other = (RedisBroker(f"{base}/{n}") for n in (11, 11, 12))
    heard: dict[str, queue.Queue[dict[str, Any]]] = {"twin": queue.Queue(), "other": queue.Queue()}
    twin.subscribe(heard["twin"].put)
    other.subscribe(heard["other"].put)
    try:
        assert twin.subscribed.wait(10) and other.subscribed.wait(10)
        ours.publish({"cursor": 7})
        assert heard["twin"].get(timeout=10) == {"cursor": 7}  # the same database: one deployment
        other.publish({"cursor": 8})
        assert heard["other"].get(timeout=10) == {"cursor": 8}
        assert heard["twin"].empty() and heard["other"].empty()  # nothing crossed over
    finally:
        for broker in (ours, twin, other):
            broker.close()


def test_redis_broker_resubscribes_after_redis_restarts(
    own_redis: Callable[[], subprocess.Popen[bytes]],
) -> None:
    redis_proc = own_redis()
    broker = RedisBroker(own_redis.url)  # type: ignore[attr-defined]
    received: queue.Queue[dict[str, Any]] = queue.Queue()
    broker.subscribe(received.put)
    try:
        assert broker.subscribed.wait(10)
        broker.publish({"cursor": 1})
        assert received.get(timeout=10) == {"cursor": 1}

        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        broker.publish({"cursor": 2})  # lost with Redis: logged, never raised into the request
        own_redis()

        assert received.get(timeout=20) == RESUBSCRIBED  # "you may have missed some: catch up"
        broker.publish({"cursor": 3})
        assert received.get(timeout=10) == {"cursor": 3}
    finally:
        broker.close()


def test_sockets_catch_up_on_changes_published_while_redis_was_down(
    own_redis: Callable[[], subprocess.Popen[bytes]],
    instance_dir: Path,
) -> None:
    redis_proc = own_redis()
    app = create_app(make_settings(instance_dir, broker_url=own_redis.url))  # type: ignore[attr-defined]
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = app.test_client()
    shop = make_merchant(app, client)
    order = shop.create_order("gina@example.com")
    live = LiveClient(f"http://127.0.0.1:{server.server_port}", track=_token(order))
    try:
        live.hello()
        redis_proc.terminate()
        redis_proc.wait(timeout=10)
        # a change committed meanwhile (here by a background job; the API's rate limiter
        # needs Redis too): its publish fails and is only logged
        with session_scope(app.extensions["waybill.engine"]) as session:
            row = session.get(Order, order["id"])
            assert row is not None
            record_order_event(
                session=session, order=row, data=OrderEventCreate(status="processing")
            )
        update = live.updates(1)[0]  # the hub reads the change log, not just the broker
        assert update["order"]["status"] == "processing"
        own_redis()
    finally:
        live.close()
        app.extensions["waybill.hub"].close()
        app.extensions["waybill.broker"].close()
        server.shutdown()
        server.server_close()
        app.extensions["waybill.engine"].dispose()


# --- keepalive ------------------------------------------------------------------------------


def test_a_client_that_answers_pings_stays_and_a_silent_one_is_dropped(
    app: Flask, connect: Callable[..., LiveClient], live_server: str, merchant: MerchantActions
) -> None:
    app.extensions["waybill.hub"].ping_interval = 1.0  # 25 s in production
    order = merchant.create_order("hana@example.com")
    listening = connect(track=_token(order))  # websocket-client answers pings as it reads
    listening.hello()
    reader = ThreadPoolExecutor(1)
    heard = reader.submit(listening.until_status, order["id"], "processing")
    port = int(live_server.rsplit(":", 1)[1])
    silent = socket.create_connection(("127.0.0.1", port))
    silent.sendall(
        b"GET /ws?track=" + _token(order).encode() + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
    )
    silent.settimeout(20)
    received = b""
    while chunk := silent.recv(65536):  # reads, but never answers a ping
        received += chunk
    silent.close()
    assert b" 101 " in received.split(b"\r\n", 1)[0] and b"\x89\x00" in received  # pinged, then cut

    merchant.post(f"/orders/{order['id']}/events", {"status": "processing"})
    assert heard.result(timeout=20)[-1]["order"]["status"] == "processing"  # still there
    reader.shutdown()


# --- PostgreSQL: ids are taken before commit, and rollbacks leave gaps ----------------------


def test_live_updates_on_postgres_skip_the_gap_a_rollback_leaves(
    pg_database: str, tmp_path: Path
) -> None:
    app = create_app(make_settings(tmp_path, database_url=pg_database))
    migrate(app.extensions["waybill.engine"])
    server = make_server("127.0.0.1", 0, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    client = app.test_client()
    shop = make_merchant(app, client)
    order = shop.create_order("ivan@example.com")
    live = LiveClient(f"http://127.0.0.1:{server.server_port}", track=_token(order))
    try:
        start = live.hello()
        # a change written and rolled back: its id is used up, never committed
        with Session(app.extensions["waybill.engine"]) as session:
            row = session.get(Order, order["id"])
            assert row is not None
            record_order_event(
                session=session, order=row, data=OrderEventCreate(status="processing")
            )
            session.flush()
            session.rollback()
        r = shop.post(f"/orders/{order['id']}/events", {"status": "cancelled"})
        assert r.status_code == 201
        update = live.updates(1)[0]
        assert update["order"]["status"] == "cancelled"
        assert update["cursor"] == r.get_json()["cursor"] > start + 1  # past the gap
        again = LiveClient(f"http://127.0.0.1:{server.server_port}", track=_token(order))
        again.hello()
        again.resume(start)  # from before the gap, on a new socket
        assert [m["order"]["status"] for m in again.updates(1)] == ["cancelled"]
        again.close()
    finally:
        live.close()
        app.extensions["waybill.hub"].close()
        server.shutdown()
        server.server_close()
        app.extensions["waybill.engine"].dispose()


def test_signing_out_everywhere_closes_sockets_already_open(
    app: Flask,
    connect: Callable[..., LiveClient],
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
) -> None:
    order = merchant.create_order("fay@example.com")
    csrf = auth.sign_in("fay@example.com")
    live = connect(cookie=_session_cookie(client))
    live.hello()
    tracking = connect(track=_token(order))  # a tracking link is not a sign-in: it stays
    tracking.hello()
    hub = app.extensions["waybill.hub"]
    assert hub.close_signed_out() == 0  # still signed in: nothing happens

    assert client.delete("/api/me/sessions", headers={"X-CSRF-Token": csrf}).status_code == 204
    assert hub.close_signed_out() == 1  # what the keepalive round does every 25 s
    merchant.add_shipment(order["id"])
    assert live.next_frame() == (CLOSED, 4401)
    assert [m["order"]["status"] for m in tracking.updates(1)] == ["shipped"]
