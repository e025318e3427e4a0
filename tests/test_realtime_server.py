"""Live updates through the real thing: ``waybill serve`` under gevent in a subprocess, the
merchant API over HTTP, and WebSocket clients. Every test runs on one worker with the in-process
broker (always), and on two workers with the Redis broker (when WAYBILL_TEST_REDIS_URL is set):
the hub's gevent write path is tested on every machine."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from tests.conftest import Backend
from tests.test_realtime import CLOSED, LiveClient, cursors

WAYBILL = str(Path(sys.executable).with_name("waybill"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ServerProcess:
    """``waybill serve`` on a free port; restartable on the same database and port."""

    def __init__(self, env: dict[str, str], port: int, workers: int = 2) -> None:
        self.env, self.port, self.workers = env, port, workers
        self.base = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = Path(env["WAYBILL_INSTANCE_DIR"]) / "server.log"

    def start(self) -> None:
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [WAYBILL, "serve", "--port", str(self.port), "--workers", str(self.workers)],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError("server exited:\n" + self.log.read_text()[-3000:])
            if len(self.worker_pids()) == self.workers:
                try:
                    if requests.get(f"{self.base}/api/me", timeout=10).status_code == 401:
                        return
                except requests.RequestException:
                    pass
            time.sleep(0.1)
        self.stop()
        raise AssertionError("server did not start:\n" + self.log.read_text()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def worker_pids(self) -> set[int]:
        assert self.proc is not None
        pids = set()
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == self.proc.pid:
                pids.add(int(stat.parent.name))
        return pids

    def worker_of(self, client: LiveClient) -> int | None:
        """The worker process holding the server end of this client's socket."""
        local_port = client.ws.sock.getsockname()[1]
        wanted = f"0100007F:{self.port:04X} 0100007F:{local_port:04X}"
        inode = None
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            parts = line.split()
            if f"{parts[1]} {parts[2]}" == wanted:
                inode = parts[9]
        for pid in self.worker_pids():
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                try:
                    if os.readlink(fd) == f"socket:[{inode}]":
                        return pid
                except OSError:
                    continue
        return None


class Shop:
    """A merchant calling the HTTP API with its key, and customers signing in."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        out = subprocess.run(
            [WAYBILL, "merchant", "create", "Live Shop"],
            env=server.env,
            capture_output=True,
            text=True,
            check=True,
        )
        self.key = json.loads(out.stdout)["api_key"]
        self.n = 0

    def post(self, path: str, body: Any) -> Any:
        r = requests.post(
            f"{self.server.base}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def order(self, email: str, **fields: Any) -> dict[str, Any]:
        self.n += 1
        return self.post(  # type: ignore[no-any-return]
            "/orders", {"external_id": f"LIVE-{self.n}", "customer": {"email": email}, **fields}
        )

    def event(self, order_id: int, status: str) -> dict[str, Any]:
        return self.post(f"/orders/{order_id}/events", {"status": status})  # type: ignore[no-any-return]

    def sign_in(self, email: str) -> str:
        """The session cookie the emailed link sets."""
        out = subprocess.run(
            [WAYBILL, "login-link", email],
            env=self.server.env,
            capture_output=True,
            text=True,
            check=True,
        )
        path = "/auth/link/" + out.stdout.strip().rsplit("/", 1)[1]
        r = requests.post(self.server.base + path, allow_redirects=False, timeout=10)
        assert r.status_code == 303, r.text
        return r.cookies["waybill_session"]


@pytest.fixture(scope="module", params=["memory", pytest.param("redis", marks=pytest.mark.redis)])
def server(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    backend: Backend,
) -> Iterator[ServerProcess]:
    """One server per broker for this module (its tests use customers of their own):
    starting two workers costs seconds."""
    workers = 1
    broker_url = "memory://"
    if request.param == "redis":
        broker_url = os.environ.get("WAYBILL_TEST_REDIS_URL", "")
        if not broker_url:
            pytest.skip("WAYBILL_TEST_REDIS_URL is not set: no Redis to test against")
        workers = 2
    instance_dir = tmp_path_factory.mktemp("live") / "instance"
    with backend.database(instance_dir) as database_url:
        port = _free_port()
        env = {
            **os.environ,
            "WAYBILL_INSTANCE_DIR": str(instance_dir),
            "WAYBILL_DATABASE_URL": database_url,
            "WAYBILL_BROKER_URL": broker_url,
            "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
            "WAYBILL_SECRET_KEY": "live-test-secret-key",
            "WAYBILL_RUN_WORKER": "0",
        }
        proc = ServerProcess(env, port, workers=workers)
        proc.start()
        yield proc
        proc.stop()


@pytest.fixture(scope="module")
def shop(server: ServerProcess) -> Shop:
    return Shop(server)


@pytest.fixture
def connect(server: ServerProcess) -> Iterator[Callable[..., LiveClient]]:
    opened: list[LiveClient] = []

    def open_socket(**options: Any) -> LiveClient:
        opened.append(LiveClient(server.base, **options))
        return opened[-1]

    yield open_socket
    for c in opened:
        c.close()


def test_an_event_reaches_sockets_on_both_workers(
    server: ServerProcess, shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    if server.workers < 2:
        pytest.skip("one worker with the in-process broker: there is no other worker to reach")
    order = shop.order("wanda@example.com")
    cookie = shop.sign_in("wanda@example.com")
    sockets: dict[int, list[LiveClient]] = {}
    for _ in range(40):  # the kernel hands each connection to whichever worker accepts first
        c = connect(cookie=cookie)
        c.hello()
        sockets.setdefault(server.worker_of(c) or 0, []).append(c)
        if len(server.worker_pids() & set(sockets)) == 2:
            break
    assert len(server.worker_pids() & set(sockets)) == 2, "could not reach both workers"

    answered = shop.event(order["id"], "processing")
    for clients in sockets.values():
        for c in clients:
            update = c.updates(1)[0]
            assert update["order"]["status"] == "processing"
            assert update["cursor"] == answered["cursor"]


def test_resume_after_a_disconnect_gets_exactly_the_missed_updates(
    shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    a = shop.order("xavier@example.com")
    b = shop.order("xavier@example.com")
    c = shop.order("xavier@example.com")
    cookie = shop.sign_in("xavier@example.com")
    phone = connect(cookie=cookie)
    phone.hello()
    shop.event(a["id"], "processing")
    last = phone.updates(1)[0]["cursor"]
    phone.close()

    shop.event(b["id"], "processing")
    shop.event(a["id"], "cancelled")
    shop.event(b["id"], "cancelled")
    shop.order("yvonne@example.com")  # someone else's

    again = connect(cookie=cookie)  # may well land on the other worker
    again.hello()
    again.resume(last)
    replay = again.updates(2)
    assert [(m["order"]["id"], m["order"]["status"]) for m in replay] == [
        (a["id"], "cancelled"),
        (b["id"], "cancelled"),
    ]
    live = shop.event(c["id"], "processing")
    nxt = again.updates(1)[0]
    assert (nxt["order"]["id"], nxt["cursor"]) == (c["id"], live["cursor"])
    assert cursors(again.messages) == sorted(set(cursors(again.messages)))


def test_resume_across_a_server_restart(
    server: ServerProcess, shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    order = shop.order("zoe@example.com")
    cookie = shop.sign_in("zoe@example.com")
    phone = connect(cookie=cookie)
    phone.hello()
    shop.event(order["id"], "processing")
    last = phone.updates(1)[0]["cursor"]

    server.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
    assert phone.next_frame() == (CLOSED, 1001)  # "going away": reconnect and resume
    server.proc.wait(timeout=30)  # type: ignore[union-attr]
    server.start()

    shop.event(order["id"], "cancelled")
    again = connect(cookie=cookie)
    again.hello()
    again.resume(last)
    (update,) = again.updates(1)
    assert update["order"]["status"] == "cancelled" and update["cursor"] > last


def test_a_tracking_socket_never_sees_another_order(
    shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    mine = shop.order("ava@example.com")
    other = shop.order("ava@example.com")
    stranger = shop.order("ben@example.com")
    token = mine["tracking_url"].rsplit("/", 1)[1]
    link = connect(track=token)
    link.hello()
    shop.event(other["id"], "processing")
    shop.event(stranger["id"], "processing")
    answered = shop.event(mine["id"], "processing")
    update = link.updates(1)[0]
    # frames arrive in cursor order: anything about the others would have come first
    assert (update["order"]["id"], update["cursor"]) == (mine["id"], answered["cursor"])
    assert "customer" not in update["order"]
    again = connect(track=token)
    again.hello()
    again.resume(0)
    assert [m["order"]["id"] for m in again.updates(1)] == [mine["id"]]
    for socket_ in (link, again):
        seen = {m["order"]["id"] for m in socket_.messages if m["type"] == "order.updated"}
        assert seen == {mine["id"]}


def test_a_socket_without_credentials_gets_nothing(
    shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    order = shop.order("cleo@example.com")
    nobody = connect()
    shop.event(order["id"], "processing")
    assert nobody.next_frame() == (CLOSED, 4401)
    assert nobody.messages == []


def test_a_client_that_stops_reading_does_not_delay_the_others(
    shop: Shop, connect: Callable[..., LiveClient]
) -> None:
    # big orders (about 9 KB each) so that a stalled client's buffers fill quickly
    items = [{"name": f"{i:03d} " + "x" * 190, "quantity": 1} for i in range(45)]
    order = shop.order("dora@example.com", items=items)
    cookie = shop.sign_in("dora@example.com")
    stalled = connect(cookie=cookie, sockopt=((socket.SOL_SOCKET, socket.SO_RCVBUF, 4096),))
    healthy = connect(cookie=cookie)
    # Both sockets are registered (their hello is out) before anything changes; the stalled
    # one reads its hello and then never reads again.
    stalled_hello = stalled.hello()
    start = healthy.hello()
    ship = shop.post(
        f"/orders/{order['id']}/shipments", {"carrier": "DHL", "tracking_number": "1Z"}
    )
    shipped = healthy.updates(1)[0]["cursor"]
    reader = ThreadPoolExecutor(1)
    healthy_got = reader.submit(healthy.updates, 120)  # the healthy phone reads as it comes
    answered = [
        shop.post(
            f"/shipments/{ship['id']}/events",
            {
                "status": "in_transit",
                "occurred_at": f"2026-01-01T10:{i // 60:02d}:{i % 60:02d}Z",
                "location": f"hub {i}",
            },
        )["cursor"]
        for i in range(120)
    ]
    got = healthy_got.result(timeout=60)  # every one, while the other is stuck
    reader.shutdown()
    assert cursors(got) == answered and answered[0] > start

    # the stalled client was cut off with "reconnect and resume", not fed corrupt frames
    frames = []
    while True:
        frame = stalled.next_frame()
        if not isinstance(frame, dict):
            break
        frames.append(frame)
    assert frame[1] == 1013  # "too far behind: reconnect and resume"
    received = cursors(frames)
    everything = [shipped, *answered]
    assert stalled_hello < shipped
    assert received == everything[: len(received)] and len(received) < len(everything)

    # it comes back and resumes from its last cursor: the current state, once
    back = connect(cookie=cookie)
    back.hello()
    back.resume(received[-1] if received else stalled_hello)
    (update,) = back.updates(1)
    assert update["cursor"] == answered[-1]
    assert update["order"]["shipments"][0]["events"][-1]["location"] == "hub 119"
