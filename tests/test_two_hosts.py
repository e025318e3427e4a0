"""Two hosts' worth of processes on one PostgreSQL and one Redis, as a scaled deployment runs:
two ``waybill serve`` (two ports, instance directories of their own, the outbox worker off) and
two ``waybill worker``, sharing only the database, Redis and their environment.

An event posted to one host reaches a socket held by the other and one push, once; a worker
killed mid-batch loses nothing and sends again only what was in flight when it died; Redis
restarted, the sockets catch up and go on.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from cryptography.hazmat.primitives.asymmetric import ec

from tests.conftest import Backend
from tests.test_realtime import LiveClient
from tests.test_realtime_server import WAYBILL, ServerProcess, _free_port
from tests.utils.push_service import BrowserSubscription, PushService, b64url
from tests.utils.redis_server import PrivateRedis

pytestmark = [pytest.mark.postgres, pytest.mark.redis]

LEASE_S = 8  # a killed worker's claimed rows go to the other after this long (> one batch)
PUSH_DELAY_S = 0.4  # the push service holds each request this long before it answers
SENDING = 4  # pushes in flight at once per worker (``waybill worker --concurrency``)


@dataclass
class Cluster:
    hosts: list[ServerProcess]
    workers: list[subprocess.Popen[bytes] | None]
    worker_env: dict[str, str]
    worker_logs: list[Path]
    push: PushService
    redis: PrivateRedis
    engine: sa.Engine
    key: str = ""
    n: int = 0

    def start_worker(self, index: int) -> None:
        with self.worker_logs[index].open("ab") as log:
            self.workers[index] = subprocess.Popen(
                [WAYBILL, "worker", "--processes", "1", "--concurrency", str(SENDING)],
                env=self.worker_env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )

    def post(self, host: int, path: str, body: Any) -> Any:
        r = requests.post(
            f"{self.hosts[host].base}/api/v1{path}",
            json=body,
            headers={"Authorization": f"Bearer {self.key}"},
            timeout=10,
        )
        assert r.status_code in (200, 201), r.text
        return r.json()

    def order(self, host: int) -> dict[str, Any]:
        self.n += 1
        customer = {"email": f"two-hosts-{self.n}@example.com"}
        return self.post(host, "/orders", {"external_id": f"TWO-{self.n}", "customer": customer})  # type: ignore[no-any-return]

    def ship(self, host: int, order: dict[str, Any]) -> dict[str, Any]:
        """A parcel handed to the carrier: the order is "shipped", a notification each."""
        body = {"carrier": "DHL", "tracking_number": f"JJD{order['id']:08d}"}
        return self.post(host, f"/orders/{order['id']}/shipments", body)  # type: ignore[no-any-return]

    def notify_me(self, host: int, order: dict[str, Any]) -> BrowserSubscription:
        """A phone taps "Notify me" on the tracking page, served by ``host``."""
        device = self.push.subscribe()
        base = self.hosts[host].base
        r = requests.post(
            f"{base}/api/track/{token_of(order)}/push-subscriptions",
            json=device.to_json(),
            headers={"Origin": base},
            timeout=10,
        )
        assert r.status_code == 201, r.text
        return device

    def push_states(self, order_ids: list[int]) -> list[str]:
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT state FROM notify_outbox WHERE channel = 'push' AND order_id = ANY(%s)",
                (order_ids,),
            )
            return [r[0] for r in rows]

    def holder_of_pending_pushes(self) -> set[str]:
        """The lease owners (``<pid>-<hex>:<batch>``) of pushes claimed and not yet sent."""
        with self.engine.connect() as conn:
            rows = conn.exec_driver_sql(
                "SELECT DISTINCT lease_owner FROM notify_outbox WHERE channel = 'push'"
                " AND state = 'pending' AND lease_owner IS NOT NULL"
            )
            return {r[0] for r in rows}

    def workers_log(self) -> str:
        return "\n".join(p.read_text(errors="replace")[-2000:] for p in self.worker_logs)


def token_of(order: dict[str, Any]) -> str:
    return str(order["tracking_url"]).rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, postgres_url: str) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("two-hosts")
    redis = PrivateRedis(root)
    redis.start()
    push = PushService(delay=PUSH_DELAY_S).start()
    vapid = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value
    shared = {
        **{k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")},
        "WAYBILL_BROKER_URL": redis.url,
        "WAYBILL_SECRET_KEY": "two-hosts-test-secret-key",
        "WAYBILL_VAPID_PRIVATE_KEY": b64url(vapid.to_bytes(32, "big")),  # one key, every host
        "WAYBILL_PUSH_ENDPOINT_HOSTS": "127.0.0.1:*",
        "WAYBILL_RUN_WORKER": "0",  # the outbox is the workers' alone
        "WAYBILL_OUTBOX_LEASE_SECONDS": str(LEASE_S),
        "WAYBILL_RATE_LIMITS": "merchant_api_per_key=100000/minute",
    }
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    opened = contextlib.ExitStack()  # the database, dropped when the fixture ends
    shared["WAYBILL_DATABASE_URL"] = opened.enter_context(
        Backend.server(postgres_url, admin).database(root / "db", migrated=False)
    )
    engine = sa.create_engine(shared["WAYBILL_DATABASE_URL"])
    hosts: list[ServerProcess] = []
    for name in ("host-a", "host-b"):
        port = _free_port()
        (root / name).mkdir()
        env = {
            **shared,
            "WAYBILL_INSTANCE_DIR": str(root / name),
            "WAYBILL_BASE_URL": f"http://127.0.0.1:{port}",
        }
        done = subprocess.run([WAYBILL, "init"], env=env, capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr  # the second finds the schema current
        hosts.append(ServerProcess(env, port, workers=1))
    (root / "workers").mkdir()
    cluster = Cluster(
        hosts,
        [None, None],
        {
            **shared,
            "WAYBILL_INSTANCE_DIR": str(root / "workers"),
            "WAYBILL_BASE_URL": hosts[0].env["WAYBILL_BASE_URL"],  # behind the balancer
        },
        [root / "workers" / "worker-0.log", root / "workers" / "worker-1.log"],
        push,
        redis,
        engine,
    )
    try:
        for host in hosts:
            host.start()
        cluster.start_worker(0)
        cluster.start_worker(1)
        push.expected_key = requests.get(f"{hosts[1].base}/api/push/public-key", timeout=10).json()[
            "public_key"
        ]
        out = subprocess.run(
            [WAYBILL, "merchant", "create", "Two Hosts Shop"],
            env=hosts[0].env,
            capture_output=True,
            text=True,
            check=True,
        )
        cluster.key = json.loads(out.stdout)["api_key"]
        yield cluster
    finally:
        for worker in cluster.workers:
            if worker is not None and worker.poll() is None:
                worker.send_signal(signal.SIGTERM)
                worker.wait(30)
        for host in hosts:
            host.stop()
        push.stop()
        redis.stop()
        engine.dispose()
        opened.close()
        admin.dispose()


def wait_until(predicate: Any, timeout: float, what: str, found: Any = None) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what}: {found() if found else ''}")
        time.sleep(0.05)


def test_an_event_posted_to_one_host_reaches_a_socket_on_the_other_and_one_push(
    cluster: Cluster,
) -> None:
    order = cluster.order(0)
    device = cluster.notify_me(1, order)
    phone = LiveClient(cluster.hosts[1].base, track=token_of(order))
    try:
        phone.hello()
        shipment = cluster.ship(0, order)
        assert cluster.push.wait_for(lambda: len(cluster.push.delivered_to(device)) == 1, 30)
        cluster.post(
            0,
            f"/shipments/{shipment['id']}/events",
            {"status": "out_for_delivery", "occurred_at": "2026-12-03T08:00:00Z"},
        )
        seen = phone.until_status(order["id"], "out_for_delivery")  # through host B's socket
        assert seen[-1]["order"]["shipments"][0]["status"] == "out_for_delivery"
        wait_until(
            lambda: cluster.push_states([order["id"]]) == ["sent", "sent"],
            30,
            "both pushes recorded as sent:\n" + cluster.workers_log(),
        )
        statuses = [d.payload["status"] for d in cluster.push.delivered_to(device)]
        assert statuses == ["shipped", "out_for_delivery"]  # each once, from two workers
        assert cluster.push.errors == []
    finally:
        phone.close()


def test_a_worker_killed_mid_batch_loses_nothing_and_sends_again_only_what_was_in_flight(
    cluster: Cluster,
) -> None:
    paused = [w for w in cluster.workers if w is not None]
    for worker in paused:  # so that one claim takes the whole batch once they go on
        worker.send_signal(signal.SIGSTOP)
    try:
        orders, devices = [], []
        for _ in range(40):
            order = cluster.order(0)
            devices.append(cluster.notify_me(1, order))
            cluster.ship(1, order)  # a push each
            orders.append(order["id"])
    finally:
        for worker in paused:
            worker.send_signal(signal.SIGCONT)
    mine = {d.id for d in devices}

    def delivered() -> list[Any]:
        with cluster.push.lock:
            return [d for d in cluster.push.deliveries if d.subscription_id in mine]

    wait_until(lambda: len(delivered()) >= 2 * SENDING, 60, "the first pushes of the batch")
    holders = cluster.holder_of_pending_pushes()
    assert holders, "the batch was done before the kill"
    pid = int(next(iter(holders)).split("-", 1)[0])
    index = [w.pid if w else None for w in cluster.workers].index(pid)
    killed = cluster.workers[index]
    assert killed is not None
    killed.send_signal(signal.SIGKILL)  # mid-batch: rows claimed, pushes in flight
    killed_at = time.time()
    killed.wait(10)
    try:
        wait_until(
            lambda: cluster.push_states(orders) == ["sent"] * len(orders),
            60,
            "every push recorded as sent after the kill",
            lambda: f"{sorted(cluster.push_states(orders))}\n{cluster.workers_log()}",
        )
        copies: dict[str, list[float]] = {}
        for d in delivered():
            copies.setdefault(d.subscription_id, []).append(d.received_at)
        assert set(copies) == mine  # nothing lost
        for times in copies.values():
            # Twice only if the first copy was still waiting for its answer at the kill: the
            # killed worker never heard that the push service took it.
            assert len(times) == 1 or (
                len(times) == 2 and min(times) > killed_at - PUSH_DELAY_S - 0.5
            ), times
        assert sum(len(t) - 1 for t in copies.values()) <= SENDING
        assert cluster.push.errors == []
    finally:
        cluster.start_worker(index)


def test_after_redis_restarts_the_sockets_catch_up_and_go_on(cluster: Cluster) -> None:
    order = cluster.order(0)
    shipment = cluster.ship(0, order)
    phone = LiveClient(cluster.hosts[1].base, track=token_of(order))
    try:
        phone.hello()
        for proc in cluster.redis.procs:
            proc.terminate()
            proc.wait(10)
        # While Redis is down the change is committed; its fan-out is lost with Redis.
        cluster.post(
            0,
            f"/shipments/{shipment['id']}/events",
            {"status": "in_transit", "occurred_at": "2026-12-03T07:00:00Z"},
        )
        cluster.redis.start()
        phone.until_status(order["id"], "in_transit")  # caught up from the database
        cluster.post(
            0,
            f"/shipments/{shipment['id']}/events",
            {"status": "delivered", "occurred_at": "2026-12-03T12:00:00Z"},
        )
        phone.until_status(order["id"], "delivered")  # and live again through Redis
    finally:
        phone.close()
