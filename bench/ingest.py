"""Ingest as a merchant loads it: status-changing shipment events into a real ``waybill serve``.

Every event moves its parcel forward (in_transit -> out_for_delivery -> delivered, with rising
``occurred_at``), so the fold, the change log and the outbox all run: each order's customer
has the default notification preferences, and out_for_delivery and delivered queue an email
each (the in-process outbox worker, on by default, then "sends" them to the log). Measured in
one run, side by side:

1. SQLite, ``waybill serve --workers 1`` on its defaults: single events from 16 keep-alive
   clients (aiohttp in one event loop: it costs the client a fifth of what ``requests`` in
   threads does), flat out (events/s, p50, p99), then paced at half that rate (p99 from the
   moment each event was due, so a queue in the client counts against the server).
2. The same on PostgreSQL with ``--workers 2`` and Redis as the broker.
3. Batches of 500 (``POST /api/v1/events``) on both, when the server has that route (looked
   up in its OpenAPI document, which is built from the URL map); otherwise "not available".
4. The baseline: the same rows (a tracking event and a change-log row per event) inserted
   with the driver alone (sqlite3, psycopg), one transaction per event, from 16 threads.
5. One order with 2,000 events (SQLite): time per event of the first and the last 100, and
   the size of the last POST answer and of ``GET /api/track/<token>``. The events between go
   through the API as well, unless that would take over 20 s at the first ones' pace
   (today each event costs more than the one before): then through batches when there are
   any, else written to the database as the API writes them (see ``long_order``).

Beside each figure its goal from issue 12 and an "ok" flag; a missed goal never fails the run.
The client's own cost is shown (CPU per request, and its ceiling against a server that does
nothing) so that it can be told apart from the server's.

The full run, per database: a 1 s warm-up, 5 s flat out, 5 s paced, batches started within
4 s (at most 40 of 500), the 2,000-event order on SQLite; about 90 s here. (The phases were
10 s, batches 8 s and the long order's API budget 40 s: shortened so that ``make bench`` runs
everything in under 10 minutes, with the same clients, events and goals.)
Environment: ``BENCH_QUICK=1`` shrinks the run to well under a minute (2.5 s phases, one
order of 300 events timed 30 and 30).
``BENCH_POSTGRES_URL`` (else ``WAYBILL_TEST_POSTGRES_URL``, else the local server) and
``BENCH_REDIS_URL``: the PostgreSQL rows are skipped when either cannot be reached; a
throwaway database is created and dropped. ``BENCH_PROFILE=DIR``: py-spy records each server
worker during the flat-out phases (raw folded stacks into DIR; this slows the server a
little). ``BENCH_KEEP=1`` keeps the temporary directory (server logs). The last line printed
is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _procs import children, free_port, stop_server  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

QUICK = os.environ.get("BENCH_QUICK") == "1"
CLIENTS = 16  # concurrent keep-alive connections posting single events
MERCHANTS = 32  # the merchant API is rate-limited per key (6,000/minute): orders spread over
WARM_S = 0.5 if QUICK else 1.0  # not reported: first requests fill caches and pools
FLAT_S = 2.5 if QUICK else 5.0
PACED_S = 2.5 if QUICK else 5.0
BASELINE_S = 1.0 if QUICK else 5.0
CEILING_S = 0.5 if QUICK else 2.0
DRAIN_S = 10.0 if QUICK else 30.0  # at most, for the outbox worker to catch up between phases
#: Orders (one shipment, three events each) seeded per database: enough for the goal rates
#: and then some; a phase that runs out of them ends early and says so.
ORDERS = {"sqlite": 1500 if QUICK else 5000, "postgresql": 1500 if QUICK else 7000}
BATCH = 50 if QUICK else 500  # events per batch
BATCHES = 4 if QUICK else 40  # per database at most, from BATCH_POSTERS connections,
BATCH_S = 1.5 if QUICK else 4.0  # and none started after this long
BATCH_POSTERS = 2  # a batch is large: two in flight keep both workers (PostgreSQL) busy
LONG_EVENTS = 300 if QUICK else 2000  # one order's events
LONG_SAMPLE = 30 if QUICK else 100  # timed at its start and its end
LONG_BUDGET_S = 5.0 if QUICK else 20.0  # for the events between, else see long_order
HOST = "127.0.0.1"
POSTGRES = (
    os.environ.get("BENCH_POSTGRES_URL")
    or os.environ.get("WAYBILL_TEST_POSTGRES_URL")
    or "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)
REDIS = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
PROFILE = os.environ.get("BENCH_PROFILE", "")
SECRET = "bench-ingest-secret-key"
STAGES = ("in_transit", "out_for_delivery", "delivered")

GOALS = {
    "sqlite_events_per_s": 500,
    "postgresql_events_per_s": 1000,
    "batch_events_per_s": 5000,
    "p99_ms_at_half_rate": 50,
    "long_answer_bytes": 64 * 1024,
    "long_growth": 0.20,
}


# --- small helpers ---------------------------------------------------------------------------


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU of these processes so far."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            continue
    return total / tick


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


STARTED = time.perf_counter()


def say(line: str) -> None:
    """A progress line, with the seconds since the start."""
    print(f"[{time.perf_counter() - STARTED:5.1f} s] {line}", flush=True)


def clean_env() -> dict[str, str]:
    """This process's environment without any WAYBILL_* variable: each server gets its own."""
    return {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}


# --- the world: merchants, orders with one shipment each ------------------------------------


@dataclass
class Parcel:
    order_id: int
    shipment_id: int
    customer_id: int
    key: int  # index of the merchant's key
    tracking_number: str


@dataclass
class World:
    kind: str  # "sqlite" | "postgresql"
    label: str
    url: str  # SQLAlchemy URL
    instance: Path
    env: dict[str, str]
    workers: int
    keys: list[str] = field(default_factory=list)
    merchant_ids: list[str] = field(default_factory=list)
    pool: deque[Parcel] = field(default_factory=deque)
    seeded: int = 0
    drop: Callable[[], None] = lambda: None

    def settings(self) -> Any:
        from waybill.config import Settings

        return Settings(
            instance_dir=self.instance, database_url=self.url, secret_key=SECRET
        ).resolved()

    def engine(self) -> Any:
        from waybill.db import create_engine

        return create_engine(self.settings())


def make_sqlite(tmp: Path) -> World:
    instance = tmp / "sqlite"
    url = f"sqlite:///{instance / 'waybill.db'}"
    env = {
        **clean_env(),
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": url,
        "WAYBILL_BROKER_URL": "memory://",
        "WAYBILL_SECRET_KEY": SECRET,
    }
    return World("sqlite", "SQLite, 1 worker", url, instance, env, workers=1)


def postgres_reachable() -> str:
    """'' when PostgreSQL and Redis answer, else why not."""
    import redis
    import sqlalchemy as sa

    try:
        engine = sa.create_engine(POSTGRES)
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure means: skip these rows
        return f"PostgreSQL not reachable ({exc.__class__.__name__})"
    try:
        redis.Redis.from_url(REDIS, socket_connect_timeout=3).ping()
    except Exception as exc:  # noqa: BLE001
        return f"Redis not reachable ({exc.__class__.__name__})"
    return ""


def make_postgres(tmp: Path, prefix: str = "bench_ingest") -> World:
    import sqlalchemy as sa

    name = f"{prefix}_{secrets.token_hex(4)}"
    admin = sa.create_engine(POSTGRES, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = sa.engine.make_url(POSTGRES).set(database=name).render_as_string(hide_password=False)
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url.split("://", 1)[1]
    instance = tmp / "postgresql"
    env = {
        **clean_env(),
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": url,
        "WAYBILL_BROKER_URL": REDIS,
        "WAYBILL_SECRET_KEY": SECRET,
    }
    world = World("postgresql", "PostgreSQL, 2 workers, Redis", url, instance, env, workers=2)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    world.drop = drop
    return world


def prepare(world: World) -> None:
    """Schema, VAPID keys, merchants with an API key each (``create_merchant``)."""
    from waybill.auth.merchant_keys import create_merchant
    from waybill.db import migrate, session_scope
    from waybill.notify.vapid import load_vapid

    settings = world.settings()
    engine = world.engine()
    migrate(engine, secret_key=SECRET)
    load_vapid(settings)  # made once into the instance dir, as `waybill init` does
    with session_scope(engine) as session:
        for i in range(MERCHANTS):
            merchant, key = create_merchant(session=session, name=f"Ingest shop {i}")
            world.keys.append(key)
            world.merchant_ids.append(merchant.id)
    engine.dispose()


def seed(
    world: World,
    count: int,
    *,
    merchant: int | None = None,
    pool: deque[Parcel] | None = None,
    orders_per_customer: int = 1,
) -> float:
    """``count`` more orders (one shipped parcel each, as the API leaves them after
    ``POST /orders`` and ``POST …/shipments``; one customer per ``orders_per_customer``
    consecutive orders), bulk-inserted into ``pool`` (by default the world's), spread over
    every merchant or all of ``merchant``. Returns the seconds."""
    import sqlalchemy as sa

    from waybill.auth.tokens import new_tracking_token
    from waybill.models import Change, Customer, Order, Shipment

    started = time.perf_counter()
    engine = world.engine()
    now = datetime.now(UTC)
    per = orders_per_customer
    assert world.seeded % per == 0, "a customer's orders are seeded together"
    step = max(1, 2000 // per) * per  # a chunk holds whole customers
    pool = world.pool if pool is None else pool

    def key_of(i: int) -> int:
        return i % MERCHANTS if merchant is None else merchant

    try:
        for lo in range(world.seeded, world.seeded + count, step):
            idx = range(lo, min(world.seeded + count, lo + step))
            with engine.begin() as conn:
                people = range(idx.start // per, -(-idx.stop // per))
                by_person = (
                    conn.execute(
                        sa.insert(Customer).returning(Customer.id, sort_by_parameter_order=True),
                        [{"email": f"ingest{c}@bench.example", "created_at": now} for c in people],
                    )
                    .scalars()
                    .all()
                )
                customer_ids = [by_person[i // per - people.start] for i in idx]
                orders = []
                for n, i in enumerate(idx):
                    _, sealed, token_hash = new_tracking_token(SECRET)
                    orders.append(
                        {
                            "merchant_id": world.merchant_ids[key_of(i)],
                            "customer_id": customer_ids[n],
                            "external_id": f"I-{i}",
                            "tracking_token_sealed": sealed,
                            "tracking_token_hash": token_hash,
                            "status": "shipped",
                            "items": [{"name": "Lamp", "quantity": 1}],
                            "request_hash": f"{i:064d}",
                            "created_at": now,
                            "updated_at": now,
                        }
                    )
                order_ids = (
                    conn.execute(
                        sa.insert(Order).returning(Order.id, sort_by_parameter_order=True), orders
                    )
                    .scalars()
                    .all()
                )
                # the case-folded carrier, where the schema keeps one (what the API writes)
                keyed = "carrier_key" in Shipment.__table__.c
                carrier_key = {"carrier_key": "dhl"} if keyed else {}
                shipment_ids = (
                    conn.execute(
                        sa.insert(Shipment).returning(Shipment.id, sort_by_parameter_order=True),
                        [
                            {
                                "order_id": oid,
                                "carrier": "DHL",
                                **carrier_key,
                                "tracking_number": f"JD{i:012d}",
                                "status": "shipped",
                                "created_at": now,
                            }
                            for oid, i in zip(order_ids, idx, strict=True)
                        ],
                    )
                    .scalars()
                    .all()
                )
                changes = []
                for oid, cid in zip(order_ids, customer_ids, strict=True):
                    for kind, before, after in (
                        ("order.created", None, "confirmed"),
                        ("shipment.added", "confirmed", "shipped"),
                    ):
                        changes.append(
                            {
                                "order_id": oid,
                                "customer_id": cid,
                                "kind": kind,
                                "status_before": before,
                                "status_after": after,
                                "created_at": now,
                            }
                        )
                conn.execute(sa.insert(Change), changes)
            for oid, sid, cid, i in zip(order_ids, shipment_ids, customer_ids, idx, strict=True):
                pool.append(Parcel(oid, sid, cid, key_of(i), f"JD{i:012d}"))
        world.seeded += count
    finally:
        engine.dispose()
    return time.perf_counter() - started


async def drain_outbox(world: World, cap: float) -> tuple[float, int]:
    """Wait (at most ``cap`` seconds) until the server's outbox worker has sent every
    notification that is due, so that one phase's backlog does not load the next. Returns the
    seconds waited and the rows still due."""
    import sqlalchemy as sa

    from waybill.notify.models import OutboxMessage

    engine = world.engine()
    started = time.perf_counter()
    try:
        while True:
            with engine.connect() as conn:
                due = conn.execute(
                    sa.select(sa.func.count())
                    .select_from(OutboxMessage)
                    .where(
                        OutboxMessage.state == "pending",
                        OutboxMessage.due_at <= datetime.now(UTC),
                    )
                ).scalar_one()
            if not due or time.perf_counter() - started > cap:
                return time.perf_counter() - started, int(due)
            await asyncio.sleep(0.2)
    finally:
        engine.dispose()


def table_counts(world: World) -> dict[str, int]:
    import sqlalchemy as sa

    engine = world.engine()
    try:
        with engine.connect() as conn:
            return {
                t: int(conn.execute(sa.text(f'SELECT count(*) FROM "{t}"')).scalar() or 0)
                for t in ("tracking_event", "change", "notify_outbox")
            }
    finally:
        engine.dispose()


# --- the event streams -----------------------------------------------------------------------

BASE_TIME = (datetime.now(UTC) - timedelta(days=2)).replace(microsecond=0)
RUN = secrets.token_hex(4)


@dataclass
class Event:
    parcel: Parcel
    status: str
    occurred_at: datetime
    event_id: str
    location: str = "Leipzig hub"

    def body(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "occurred_at": iso(self.occurred_at),
            "event_id": self.event_id,
            "location": self.location,
        }


class Stream:
    """One client's events, as a wavefront over orders taken from the pool: step j sends
    in_transit of its j-th order, out_for_delivery of the one before and delivered of the one
    before that, so the three kinds (and the two that queue notifications) come evenly mixed
    from the first steps on, and a client's events of one order go one after another, never
    two at once."""

    def __init__(self, pool: deque[Parcel]) -> None:
        self.pool = pool
        self.pending: deque[Event] = deque()
        self.moving: deque[tuple[Parcel, int]] = deque()  # (parcel, next stage)

    def next(self) -> Event | None:
        if not self.pending:
            if self.pool:
                self.moving.appendleft((self.pool.popleft(), 0))
            still: deque[tuple[Parcel, int]] = deque()
            for parcel, stage in self.moving:
                self.pending.append(
                    Event(
                        parcel,
                        STAGES[stage],
                        BASE_TIME + timedelta(hours=stage + 1),
                        f"{RUN}-{parcel.shipment_id}-{stage}",
                    )
                )
                if stage + 1 < len(STAGES):
                    still.append((parcel, stage + 1))
            self.moving = still
        return self.pending.popleft() if self.pending else None


# --- the server ------------------------------------------------------------------------------


class Server:
    """``waybill serve`` (or ``argv``, which takes the same ``--port`` and ``--workers``),
    ready when ``ready_path`` answers 200."""

    ready_path = "/api/openapi.json"

    def __init__(self, world: World, log: Path, argv: list[str] | None = None) -> None:
        self.port = free_port()
        self.log = log
        self.proc = subprocess.Popen(
            [
                *(argv or [str(Path(sys.executable).with_name("waybill")), "serve"]),
                "--port",
                str(self.port),
                "--workers",
                str(world.workers),
            ],
            env=world.env,
            cwd=world.instance,  # no stray ./.env
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.workers: list[int] = []
        self.expected = world.workers

    def wait_ready(self) -> None:
        import urllib.request

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"waybill serve exited; see {self.log}")
            workers = children(self.proc.pid)
            if len(workers) >= self.expected:
                try:
                    with urllib.request.urlopen(
                        f"http://{HOST}:{self.port}{self.ready_path}", timeout=5
                    ) as r:
                        if r.status == 200:
                            self.workers = workers
                            return
                except OSError:
                    pass
            time.sleep(0.2)
        raise RuntimeError(f"waybill serve did not start; see {self.log}")

    def stop(self) -> None:
        stop_server(self.proc)


class Profiler:
    """py-spy on each worker for one phase, when BENCH_PROFILE names a directory."""

    def __init__(self, name: str, pids: list[int], seconds: float) -> None:
        self.procs: list[subprocess.Popen[bytes]] = []
        self.files: list[str] = []
        if not PROFILE:
            return
        spy = Path(sys.executable).with_name("py-spy")
        Path(PROFILE).mkdir(parents=True, exist_ok=True)
        for pid in pids:
            out = str(Path(PROFILE) / f"{name}-{pid}.txt")
            self.files.append(out)
            self.procs.append(
                subprocess.Popen(
                    [str(spy), "record", "-o", out, "-f", "raw", "--pid", str(pid)]
                    + ["--duration", str(max(1, int(seconds)))],
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )

    def wait(self) -> None:
        for p in self.procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


# --- the client ------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    target: float | None = None  # events/s; None: flat out
    sent: int = 0
    ok: int = 0
    duplicates: int = 0
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0
    answer_bytes: int = 0
    client_cpu: float = 0.0
    server_cpu: float = 0.0
    exhausted: bool = False

    @property
    def events(self) -> int:
        return self.ok

    @property
    def rate(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    def row(self) -> dict[str, Any]:
        requests = max(self.sent, 1)
        return {
            "phase": self.name,
            "target_per_s": round(self.target, 1) if self.target else None,
            "events_per_s": round(self.rate, 1),
            "events": self.events,
            "requests": self.sent,
            "errors": self.errors,
            "duplicates": self.duplicates,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "max_ms": ms(max(self.latencies)) if self.latencies else None,
            "seconds": round(self.seconds, 2),
            "answer_bytes": round(self.answer_bytes / requests),
            "client_cpu_us_per_request": round(self.client_cpu / requests * 1e6),
            "client_cores": round(self.client_cpu / self.seconds, 2) if self.seconds else None,
            "server_cpu_us_per_event": round(self.server_cpu / max(self.events, 1) * 1e6),
            "server_cores": round(self.server_cpu / self.seconds, 2) if self.seconds else None,
            "ran_out_of_orders": self.exhausted,
            "error_samples": self.error_samples[:3],
        }


class Client:
    """aiohttp, one session, up to ``connections`` keep-alive connections (by default the
    single-event clients and the batch posters)."""

    def __init__(self, port: int, keys: list[str], connections: int = 0) -> None:
        import aiohttp

        self.aiohttp = aiohttp
        self.base = f"http://{HOST}:{port}"
        limit = connections or CLIENTS + BATCH_POSTERS
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, keepalive_timeout=4),
            timeout=aiohttp.ClientTimeout(total=120),
        )
        self.headers = [
            {"Authorization": f"Bearer {k}", "Content-Type": "application/json"} for k in keys
        ]

    async def request(
        self, method: str, path: str, key: int, body: Any = None
    ) -> tuple[int, bytes]:
        data = json.dumps(body, separators=(",", ":")).encode() if body is not None else None
        for attempt in (1, 2):
            try:
                async with self.session.request(
                    method, self.base + path, data=data, headers=self.headers[key]
                ) as r:
                    return r.status, await r.read()
            except self.aiohttp.ClientConnectionError:
                # an idle keep-alive connection the server closed as we wrote: retried (every
                # event carries its event_id, so a retry of one that went through is a 200)
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    async def post_event(self, ev: Event) -> tuple[int, bytes]:
        return await self.request(
            "POST", f"/api/v1/shipments/{ev.parcel.shipment_id}/events", ev.parcel.key, ev.body()
        )

    async def close(self) -> None:
        await self.session.close()


def count(phase: Phase, status: int, data: bytes, ok: tuple[int, ...] = (201,)) -> None:
    phase.sent += 1
    phase.answer_bytes += len(data)
    if status in ok:
        phase.ok += 1
    elif status == 200:
        phase.duplicates += 1
    else:
        phase.errors += 1
        if len(phase.error_samples) < 3:
            phase.error_samples.append(f"{status} {data[:160].decode(errors='replace')}")


async def run_single(
    client: Client,
    streams: list[Stream],
    phase: Phase,
    seconds: float,
    server_pids: list[int],
) -> Phase:
    """Flat out (``phase.target`` None) or paced: event i is due at start + i/target, and its
    latency counts from then (a client that falls behind makes the server look slower)."""
    cpu0, scpu0 = time.process_time(), cpu_seconds(server_pids)
    start = time.perf_counter()
    end = start + seconds
    total = int(phase.target * seconds) if phase.target else 0
    slot = 0

    async def post(ev: Event) -> tuple[int, bytes]:
        try:
            return await client.post_event(ev)
        except client.aiohttp.ClientError as exc:  # a worker killed mid-request, say
            return 599, f"{exc!r} (see worker_restarts)".encode()

    async def flat(stream: Stream) -> None:
        while time.perf_counter() < end:
            ev = stream.next()
            if ev is None:
                phase.exhausted = True
                return
            t0 = time.perf_counter()
            status, data = await post(ev)
            phase.latencies.append(time.perf_counter() - t0)
            count(phase, status, data)

    async def paced(stream: Stream) -> None:
        nonlocal slot
        assert phase.target
        while slot < total:
            due = start + slot / phase.target
            slot += 1
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ev = stream.next()
            if ev is None:
                phase.exhausted = True
                return
            status, data = await post(ev)
            phase.latencies.append(time.perf_counter() - due)
            count(phase, status, data)

    work = paced if phase.target else flat
    await asyncio.gather(*(work(s) for s in streams))
    phase.seconds = time.perf_counter() - start
    phase.client_cpu = time.process_time() - cpu0
    phase.server_cpu = cpu_seconds(server_pids) - scpu0
    return phase


# --- batches ---------------------------------------------------------------------------------


def _resolve(doc: dict[str, Any], schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[-1]]
    return schema


def _variants(doc: dict[str, Any], schema: dict[str, Any]) -> list[dict[str, Any]]:
    schema = _resolve(doc, schema)
    for key in ("oneOf", "anyOf"):
        if key in schema:
            return [v for s in schema[key] for v in _variants(doc, s)]
    return [schema]


def batch_builder(doc: dict[str, Any]) -> tuple[Callable[[list[Event]], Any] | None, str]:
    """From the OpenAPI document: a function making the body of a batch, or why there is none.
    The body is read from the route's schema (an array, or an object with one array property)
    rather than assumed; items name the shipment by ``shipment_id`` where the item schema has
    it or says nothing (free-form objects checked one by one by the server), else by
    ``carrier`` + ``tracking_number``. ``probe_batches`` then tries one."""
    op = doc.get("paths", {}).get("/api/v1/events", {}).get("post")
    if op is None:
        return None, "no POST /api/v1/events in the OpenAPI document"
    body = op.get("requestBody", {}).get("content", {}).get("application/json", {})
    top = _resolve(doc, body.get("schema", {}))
    wrap: str | None = None
    if top.get("type") == "array":
        items = top.get("items", {})
    else:
        arrays = [
            (name, _resolve(doc, s))
            for name, s in top.get("properties", {}).items()
            if _resolve(doc, s).get("type") == "array"
        ]
        if len(arrays) != 1:
            return None, "cannot tell the list of events in the body's schema"
        wrap, array = arrays[0]
        items = array.get("items", {})
    props: set[str] = set()
    for variant in _variants(doc, items):
        props |= set(variant.get("properties", {}))
    if props and "shipment_id" not in props and not {"carrier", "tracking_number"} <= props:
        return None, "the item schema names no shipment (shipment_id, carrier + tracking_number)"
    by_id = not props or "shipment_id" in props

    def item(ev: Event) -> dict[str, Any]:
        out: dict[str, Any] = ev.body()
        if by_id:
            out["shipment_id"] = ev.parcel.shipment_id
        else:
            out["carrier"], out["tracking_number"] = "DHL", ev.parcel.tracking_number
        return {k: v for k, v in out.items() if not props or k in props}

    def make(events: list[Event]) -> Any:
        items = [item(e) for e in events]
        return {wrap: items} if wrap else items

    return make, ""


def per_event_outcomes(data: bytes) -> tuple[int, int]:
    """(recorded, failed) from a batch answer's per-event results, when it has a list of them
    with a numeric status; (-1, -1) when it cannot be read."""
    try:
        answer = json.loads(data)
    except ValueError:
        return -1, -1
    if isinstance(answer, list):
        lists = [answer]
    elif isinstance(answer, dict):
        lists = [v for v in answer.values() if isinstance(v, list)]
    else:
        lists = []
    for results in lists:
        codes = [r.get("status") for r in results if isinstance(r, dict)]
        if codes and all(isinstance(c, int) for c in codes):
            return sum(c in (200, 201) for c in codes), sum(c not in (200, 201) for c in codes)
    return -1, -1


async def probe_batches(
    client: Client, stream: Stream
) -> tuple[Callable[[list[Event]], Any] | None, str]:
    """The batch body, if the server has the route and records one event sent through it."""
    status, data = await client.request("GET", "/api/openapi.json", 0)
    if status != 200:
        return None, f"GET /api/openapi.json answered {status}"
    make, why = batch_builder(json.loads(data))
    if make is None:
        # not in the document: ask the route itself, in case it is there without @operation
        status, data = await client.request("POST", "/api/v1/events", 0, {"events": []})
        if status in (404, 405):
            return None, f"{why} (POST answers {status})"
        return None, f"{why}; POST /api/v1/events answered {status}: cannot build its body"
    ev = stream.next()
    assert ev is not None
    status, data = await client.request("POST", "/api/v1/events", ev.parcel.key, make([ev]))
    good, _ = per_event_outcomes(data)
    if not 200 <= status < 300 or good == 0:
        return None, f"a batch of one answered {status}: {data[:120].decode(errors='replace')}"
    return make, ""


async def run_batches(
    client: Client,
    streams: list[Stream],
    make: Callable[[list[Event]], Any],
    server_pids: list[int],
    batches: int,
    seconds: float,
) -> Phase:
    """Each poster sends its own merchant's orders (a batch is sent with one key), batch after
    batch, so one order's events never are in two batches in flight at once: its share of
    ``batches``, none started after ``seconds`` (one in flight is waited for)."""
    phase = Phase(f"batches of {BATCH}")
    cpu0, scpu0 = time.process_time(), cpu_seconds(server_pids)
    start = time.perf_counter()
    recorded = 0

    def failed(n: int, why: str) -> None:
        phase.errors += n
        if len(phase.error_samples) < 3:
            phase.error_samples.append(why)

    async def poster(stream: Stream) -> None:
        nonlocal recorded
        for _ in range(batches // len(streams)):
            if time.perf_counter() > start + seconds:
                return
            events = [e for e in (stream.next() for _ in range(BATCH)) if e is not None]
            if len(events) < BATCH:
                phase.exhausted = True
                if not events:
                    return
            t0 = time.perf_counter()
            try:
                status, data = await client.request(
                    "POST", "/api/v1/events", events[0].parcel.key, make(events)
                )
            except client.aiohttp.ClientError as exc:
                failed(len(events), f"{exc!r:.160} (see worker_restarts)")
                phase.sent += 1
                continue
            phase.latencies.append(time.perf_counter() - t0)
            phase.sent += 1
            phase.answer_bytes += len(data)
            good, bad = per_event_outcomes(data)
            if 200 <= status < 300:
                recorded += good if good >= 0 else len(events)
                if bad > 0:
                    failed(bad, f"{bad} events refused: {data[:160].decode(errors='replace')}")
            else:
                failed(len(events), f"{status} {data[:160].decode(errors='replace')}")

    await asyncio.gather(*(poster(s) for s in streams))
    phase.seconds = time.perf_counter() - start
    phase.client_cpu = time.process_time() - cpu0
    phase.server_cpu = cpu_seconds(server_pids) - scpu0
    phase.ok = recorded  # events, not requests
    return phase


# --- one order with many events -------------------------------------------------------------


def long_event(parcel: Parcel, i: int) -> Event:
    """The i-th scan of the long journey: in transit, at one sorting centre after another."""
    return Event(
        parcel,
        "in_transit",
        BASE_TIME + timedelta(minutes=i + 1),
        f"{RUN}-long-{i}",
        location=f"Sorting centre {i}",
    )


def fill_directly(world: World, parcel: Parcel, first: int, count: int) -> None:
    """Events first..first+count-1 of the long order written as ``POST …/events`` writes an
    in_transit scan that changes no status: a tracking_event row (its dedupe key made by the
    app's own function) and a change-log row; no outbox row (nothing to tell)."""
    import sqlalchemy as sa

    from waybill.models import Change, TrackingEvent
    from waybill.tracking.events import dedupe_key

    now = datetime.now(UTC)
    events, changes = [], []
    for i in range(first, first + count):
        ev = long_event(parcel, i)
        events.append(
            {
                "order_id": parcel.order_id,
                "shipment_id": parcel.shipment_id,
                "status": ev.status,
                "occurred_at": ev.occurred_at,
                "location": ev.location,
                "source": "api",
                "event_id": ev.event_id,
                "dedupe_key": dedupe_key(
                    shipment_id=parcel.shipment_id,
                    status=ev.status,
                    occurred_at=ev.occurred_at,
                    event_id=ev.event_id,
                    location=ev.location,
                    description=None,
                ),
                "created_at": now,
            }
        )
        changes.append(
            {
                "order_id": parcel.order_id,
                "customer_id": parcel.customer_id,
                "kind": "event.recorded",
                "status_before": "in_transit",
                "status_after": "in_transit",
                "created_at": now,
            }
        )
    engine = world.engine()
    try:
        with engine.begin() as conn:
            conn.execute(sa.insert(TrackingEvent), events)
            conn.execute(sa.insert(Change), changes)
    finally:
        engine.dispose()


async def long_order(
    client: Client,
    world: World,
    make: Callable[[list[Event]], Any] | None,
    batch_rate: float,
    server_pids: list[int],
) -> dict[str, Any]:
    """One order, one parcel, LONG_EVENTS in_transit scans from one client, one after another.
    The first and the last LONG_SAMPLE always go through ``POST …/events`` and are timed. The
    ones between go through it too when that takes under LONG_BUDGET_S at the first events'
    pace; otherwise (today's cost grows with every event) through ``POST /api/v1/events`` in
    batches when they would, at the measured batch rate, else straight into the database as
    the API writes them: what the last events are measured against (the order's history) is
    the same either way."""
    import sqlalchemy as sa

    from waybill.models import Order

    status, data = await client.request(
        "POST",
        "/api/v1/orders",
        0,
        {
            "external_id": f"LONG-{RUN}",
            "customer": {"email": f"long-{RUN}@bench.example"},
            "items": [{"name": "Lamp", "quantity": 1}],
        },
    )
    if status != 201:
        raise RuntimeError(f"POST /api/v1/orders answered {status}: {data[:200]!r}")
    order = json.loads(data)
    tracking_number = f"LONG{RUN}"
    status, data = await client.request(
        "POST",
        f"/api/v1/orders/{order['id']}/shipments",
        0,
        {"carrier": "DHL", "tracking_number": tracking_number},
    )
    if status != 201:
        raise RuntimeError(f"POST …/shipments answered {status}: {data[:200]!r}")
    engine = world.engine()
    try:
        with engine.connect() as conn:
            customer_id = conn.execute(
                sa.select(Order.customer_id).where(Order.id == order["id"])
            ).scalar_one()
    finally:
        engine.dispose()
    parcel = Parcel(order["id"], json.loads(data)["id"], customer_id, 0, tracking_number)
    token = order["tracking_url"].rsplit("/t/", 1)[1]
    times: list[float] = []
    errors = 0
    last = b""

    async def post(i: int) -> None:
        nonlocal errors, last
        t0 = time.perf_counter()
        status, last = await client.post_event(long_event(parcel, i))
        times.append(time.perf_counter() - t0)
        errors += status != 201

    scpu0 = cpu_seconds(server_pids)
    started = time.perf_counter()
    middle = range(LONG_SAMPLE, LONG_EVENTS - LONG_SAMPLE)
    for i in range(LONG_SAMPLE):
        await post(i)
    first = list(times)
    projected = sum(first) / len(first) * len(middle)
    via = "api"
    if projected > LONG_BUDGET_S and make and len(middle) / max(batch_rate, 1) < LONG_BUDGET_S:
        via = "batches"
        for lo in range(middle.start, middle.stop, BATCH):
            events = [long_event(parcel, i) for i in range(lo, min(lo + BATCH, middle.stop))]
            status, data = await client.request("POST", "/api/v1/events", 0, make(events))
            good, _ = per_event_outcomes(data)
            errors += len(events) - good if 200 <= status < 300 and good >= 0 else len(events)
    elif projected > LONG_BUDGET_S:
        via = "database"
        try:
            fill_directly(world, parcel, middle.start, len(middle))
        except Exception as exc:  # noqa: BLE001 - the schema moved on: go the long way
            say(f"   (writing the middle events directly failed: {exc!r:.120}; posting them)")
            via = "api"
    if via == "api":
        for i in middle:
            await post(i)
    final_from = len(times)
    for i in range(LONG_EVENTS - LONG_SAMPLE, LONG_EVENTS):
        await post(i)
    total_s = time.perf_counter() - started
    server_cpu = cpu_seconds(server_pids) - scpu0
    status, tracked = await client.request("GET", f"/api/track/{token}", 0)
    final = times[final_from:]
    first_mean, last_mean = sum(first) / len(first), sum(final) / len(final)
    return {
        "events": LONG_EVENTS,
        "sample": LONG_SAMPLE,
        "middle_via": via,
        "projected_middle_s": round(projected, 1),
        "errors": errors,
        "seconds": round(total_s, 1),
        "server_cpu_s": round(server_cpu, 1),
        "first_ms_per_event": ms(first_mean),
        "last_ms_per_event": ms(last_mean),
        "first_p50_ms": ms(percentile(first, 50)),
        "last_p50_ms": ms(percentile(final, 50)),
        "growth": round(last_mean / first_mean, 2),
        "last_answer_bytes": len(last),
        "track_answer_bytes": len(tracked) if status == 200 else None,
        "track_status": status,
    }


# --- the baseline: the driver alone ----------------------------------------------------------


def baseline(world: World, parcels: list[Parcel]) -> dict[str, Any]:
    """A tracking-event row and a change-log row per event, one transaction each, from
    CLIENTS threads, with sqlite3 or psycopg alone. On SQLite the threads take one lock
    around each write transaction, as the app's own process write lock does (SQLite's busy
    handler would otherwise sleep them in steps of milliseconds)."""
    db_lock = threading.Lock()
    latencies: list[list[float]] = [[] for _ in range(CLIENTS)]
    errors = [0]
    stop_at = [0.0]
    go = threading.Barrier(CLIENTS + 1)
    now = datetime.now(UTC)
    if world.kind == "sqlite":
        import sqlite3

        path = world.url.split("sqlite:///", 1)[1]

        def connect() -> Any:
            conn = sqlite3.connect(path, timeout=30, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA foreign_keys=ON")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            return conn

        stamp = now.strftime("%Y-%m-%d %H:%M:%S.%f")
        te_sql = (
            "INSERT INTO tracking_event (order_id, shipment_id, status, occurred_at, location,"
            " description, source, event_id, dedupe_key, created_at)"
            " VALUES (?, ?, ?, ?, ?, NULL, 'api', ?, ?, ?)"
        )
        ch_sql = (
            'INSERT INTO "change" (order_id, customer_id, kind, status_before, status_after,'
            " created_at) VALUES (?, ?, 'event.recorded', ?, ?, ?)"
        )

        def one(conn: Any, p: Parcel, n: int, t: int) -> None:
            status, before = STAGES[n % 3], ("shipped", *STAGES)[n % 3]
            with db_lock:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    conn.execute(
                        te_sql,
                        (
                            p.order_id,
                            p.shipment_id,
                            status,
                            stamp,
                            "Leipzig hub",
                            f"b{t}-{n}",
                            f"s{p.shipment_id}:base:{t}-{n}",
                            stamp,
                        ),
                    )
                    conn.execute(ch_sql, (p.order_id, p.customer_id, before, status, stamp))
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise

        driver = "sqlite3"
    else:
        import psycopg

        dsn = world.url.replace("postgresql+psycopg://", "postgresql://", 1)

        def connect() -> Any:
            return psycopg.connect(dsn)

        te_sql = (
            "INSERT INTO tracking_event (order_id, shipment_id, status, occurred_at, location,"
            " description, source, event_id, dedupe_key, created_at)"
            " VALUES (%s, %s, %s, %s, %s, NULL, 'api', %s, %s, %s)"
        )
        ch_sql = (
            'INSERT INTO "change" (order_id, customer_id, kind, status_before, status_after,'
            " created_at) VALUES (%s, %s, 'event.recorded', %s, %s, %s)"
        )

        def one(conn: Any, p: Parcel, n: int, t: int) -> None:
            status, before = STAGES[n % 3], ("shipped", *STAGES)[n % 3]
            with conn.cursor() as cur:
                cur.execute(
                    te_sql,
                    (
                        p.order_id,
                        p.shipment_id,
                        status,
                        now,
                        "Leipzig hub",
                        f"b{t}-{n}",
                        f"s{p.shipment_id}:base:{t}-{n}",
                        now,
                    ),
                )
                cur.execute(ch_sql, (p.order_id, p.customer_id, before, status, now))
            conn.commit()

        driver = "psycopg"

    def thread(t: int) -> None:
        conn = connect()
        try:
            go.wait()
            n = 0
            while time.perf_counter() < stop_at[0]:
                p = parcels[(t * 7919 + n) % len(parcels)]
                t0 = time.perf_counter()
                try:
                    one(conn, p, n, t)
                except Exception:  # noqa: BLE001 - counted, shown in the row
                    errors[0] += 1
                latencies[t].append(time.perf_counter() - t0)
                n += 1
        finally:
            conn.close()

    threads = [threading.Thread(target=thread, args=(t,)) for t in range(CLIENTS)]
    for th in threads:
        th.start()
    stop_at[0] = time.perf_counter() + BASELINE_S + 60  # until everyone is connected
    go.wait()
    start = time.perf_counter()
    stop_at[0] = start + BASELINE_S
    for th in threads:
        th.join()
    seconds = time.perf_counter() - start
    flat = [x for per in latencies for x in per]
    return {
        "driver": driver,
        "events_per_s": round((len(flat) - errors[0]) / seconds, 1),
        "events": len(flat),
        "errors": errors[0],
        "p50_ms": ms(percentile(flat, 50)),
        "p99_ms": ms(percentile(flat, 99)),
    }


# --- the client's own ceiling -----------------------------------------------------------------


def null_server(port: int) -> None:
    """Answers every request at once with 201 and a body the size of an event's answer."""
    body = b'{"id":1,' + b'"x":"' + b"x" * 1900 + b'"}'
    answer = (
        b"HTTP/1.1 201 CREATED\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body
    )

    class Answer(asyncio.Protocol):
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            self.transport = transport
            self.buffer = b""

        def data_received(self, data: bytes) -> None:
            self.buffer += data
            while (end := self.buffer.find(b"\r\n\r\n")) >= 0:
                head = self.buffer[:end].lower()
                at = head.find(b"content-length:")
                length = int(head[at + 15 :].split(b"\r\n", 1)[0]) if at >= 0 else 0
                if len(self.buffer) < end + 4 + length:
                    return
                self.buffer = self.buffer[end + 4 + length :]
                self.transport.write(answer)  # type: ignore[attr-defined]

    async def main() -> None:
        await asyncio.get_running_loop().create_server(Answer, HOST, port, backlog=1024)
        await asyncio.Event().wait()

    asyncio.run(main())


async def client_ceiling() -> dict[str, Any]:
    """The same client, flat out, against a server that does nothing: what it can drive."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, __file__, "--null-server", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        client = Client(port, ["wb_live_null"])
        pool: deque[Parcel] = deque([Parcel(1, 1, 1, 0, "X")] * 500_000)
        streams = [Stream(pool) for _ in range(CLIENTS)]
        phase = await run_single(client, streams, Phase("null server"), CEILING_S, [proc.pid])
        await client.close()
    finally:
        proc.terminate()
        proc.wait(10)
    row = phase.row()
    return {
        "requests_per_s": row["events_per_s"],
        "client_cpu_us_per_request": row["client_cpu_us_per_request"],
        "client_cores": row["client_cores"],
        "p99_ms": row["p99_ms"],
    }


# --- one database, end to end ----------------------------------------------------------------


async def http_phases(world: World, server: Server, out: dict[str, Any]) -> None:
    client = Client(server.port, world.keys)
    pids = server.workers
    try:
        streams = [Stream(world.pool) for _ in range(CLIENTS)]
        before = table_counts(world)
        warm = await run_single(client, streams, Phase("warm-up"), WARM_S, pids)
        profiler = Profiler(f"{world.kind}-flat", pids, min(FLAT_S, 10))
        flat = await run_single(client, streams, Phase("single, flat out"), FLAT_S, pids)
        profiler.wait()
        out["flat"] = flat.row()
        out["profiles"] = profiler.files
        say(
            f"   flat out: {flat.rate:.0f} events/s, p99 {ms(percentile(flat.latencies, 99))} ms",
        )
        waited, left = await drain_outbox(world, DRAIN_S)
        out["outbox_drain_after_flat_s"], out["outbox_due_after_drain"] = round(waited, 1), left
        say(f"   outbox drained in {waited:.1f} s ({left} still due)")
        half = max(flat.rate / 2, 1.0)
        paced = await run_single(
            client, streams, Phase(f"single, paced at {half:.0f}/s", target=half), PACED_S, pids
        )
        out["paced"] = paced.row()
        say(
            f"   paced at {half:.0f}/s: p99 {ms(percentile(paced.latencies, 99))} ms",
        )

        counts = table_counts(world)
        out["recorded_events"] = counts["tracking_event"] - before["tracking_event"]
        out["outbox_rows_per_event"] = round(
            (counts["notify_outbox"] - before["notify_outbox"]) / max(out["recorded_events"], 1),
            2,
        )
        out["answered_201"] = warm.ok + flat.ok + paced.ok

        await drain_outbox(world, DRAIN_S)
        make, why = await probe_batches(client, Stream(world.pool))
        batch_rate = 0.0
        if make is None:
            out["batches"] = {"available": False, "why": why}
            say(f"   batches: not available ({why})")
        else:
            per_poster = (BATCHES // BATCH_POSTERS * BATCH + 2) // 3 + 3
            pools: list[deque[Parcel]] = []
            took = 0.0
            for m in range(BATCH_POSTERS):  # one merchant per poster
                pools.append(deque())
                took += seed(world, per_poster, merchant=m, pool=pools[-1])
            say(f"   batches: seeded {per_poster * BATCH_POSTERS} more orders in {took:.1f} s")
            streams = [Stream(pool) for pool in pools]
            batches = await run_batches(client, streams, make, pids, BATCHES, BATCH_S)
            out["batches"] = {"available": True, **batches.row()}
            batch_rate = batches.rate
            say(f"   batches: {batches.rate:.0f} events/s, p99 {batches.row()['p99_ms']} ms")

        if world.kind == "sqlite":
            await drain_outbox(world, DRAIN_S)
            say(f"   one order, {LONG_EVENTS} events ...")
            out["long_order"] = long = await long_order(client, world, make, batch_rate, pids)
            say(
                f"   one order: {long['first_ms_per_event']} -> {long['last_ms_per_event']} ms "
                f"per event (events between via {long['middle_via']})"
            )
    finally:
        await client.close()


def run_world(world: World, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"label": world.label, "workers": world.workers}
    prepare(world)
    took = seed(world, ORDERS[world.kind])
    say(f"-- {world.label}: seeded {ORDERS[world.kind]} orders in {took:.1f} s")
    baseline_parcels = list(world.pool)[:5000]
    server = Server(world, tmp / f"{world.kind}-server.log")
    try:
        server.wait_ready()
        say(f"   waybill serve up: {len(server.workers)} worker(s), pids {server.workers}")
        time.sleep(0.5)
        asyncio.run(http_phases(world, server, out))
    finally:
        server.stop()
        out["server_log"] = log_findings(server.log, world.workers)
    lg = out["server_log"]
    say(
        f"   waybill serve stopped; its log: {lg['worker_timeouts']} worker timeouts, "
        f"{lg['loop_blocks_over_500ms']} event-loop blocks >= 500 ms"
    )
    out["baseline"] = baseline(world, baseline_parcels)
    say(f"   driver alone: {out['baseline']['events_per_s']:.0f} events/s")
    return out


def log_findings(log: Path, workers: int) -> dict[str, Any]:
    """What the server's log says about the run: workers gunicorn killed for not answering
    its heartbeat (a request that held the gevent loop for 30 s) and booted again, event
    loop blocks the watchdog saw (over ``blocked_loop_warn_ms``, 500 ms), errors logged."""
    import re

    text = log.read_text(errors="replace") if log.exists() else ""
    blocks = [int(m) for m in re.findall(r"event loop blocked for (\d+) ms", text)]
    return {
        "worker_timeouts": text.count("WORKER TIMEOUT"),
        "workers_booted": text.count("Booting worker"),
        "workers_expected": workers,
        "loop_blocks_over_500ms": len(blocks),
        "longest_loop_block_ms": max(blocks, default=0),
        "errors_logged": len(re.findall(r" (?:ERROR|CRITICAL) ", text)),
    }


# --- the report ------------------------------------------------------------------------------


def flag(ok: bool | None) -> str:
    return "-" if ok is None else ("ok" if ok else "MISSED")


NAME_W = 50


def line(
    name: str,
    rate: str = "",
    p50: str = "",
    p99: str = "",
    goal: str = "",
    ok: str = "",
    note: str = "",
) -> None:
    print(f"  {name:{NAME_W}} {rate:>9} {p50:>8} {p99:>8}   {goal:22} {ok:6} {note}".rstrip())


def report(results: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    """The table; returns the figures and the ok flags for the JSON line."""
    figures: dict[str, Any] = {}
    oks: dict[str, bool | None] = {}
    print()
    print(
        "Ingest: status-changing shipment events (in_transit -> out_for_delivery -> delivered), "
        f"default preferences, {CLIENTS} keep-alive clients (aiohttp)"
        f"{'; BENCH_QUICK' if QUICK else ''}"
    )
    print(f"  {'':{NAME_W}} {'events/s':>9} {'p50 ms':>8} {'p99 ms':>8}   {'goal':22}")

    def note(p: dict[str, Any]) -> str:
        parts = []
        if p.get("errors"):
            parts.append(f"{p['errors']} errors")
        if p.get("duplicates"):
            parts.append(f"{p['duplicates']} duplicates")
        if p.get("ran_out_of_orders"):
            parts.append("ran out of orders")
        return "; ".join(parts)

    for kind in ("sqlite", "postgresql"):
        r = results.get(kind)
        goal = GOALS[f"{kind}_events_per_s"]
        half = goal // 2
        print(f"{'SQLite, 1 worker' if kind == 'sqlite' else 'PostgreSQL, 2 workers, Redis'}")
        if r is None or "skipped" in r:
            line(f"not run: {r['skipped'] if r else 'not reached'}")
            oks[f"{kind}_single"] = oks[f"{kind}_p99"] = oks[f"{kind}_batches"] = None
            continue
        flat, paced, base, b = r["flat"], r["paced"], r["baseline"], r["batches"]
        rate_ok = flat["events_per_s"] >= goal
        p99_ok = (
            paced["p99_ms"] < GOALS["p99_ms_at_half_rate"] and paced["events_per_s"] >= 0.95 * half
        )
        oks[f"{kind}_single"], oks[f"{kind}_p99"] = rate_ok, p99_ok
        line(
            "single events, flat out",
            f"{flat['events_per_s']:,.0f}",
            str(flat["p50_ms"]),
            str(flat["p99_ms"]),
            f">= {goal:,}/s",
            flag(rate_ok),
            note(flat),
        )
        line(
            f"single events, paced at {paced['target_per_s']:,.0f}/s (half)",
            f"{paced['events_per_s']:,.0f}",
            str(paced["p50_ms"]),
            str(paced["p99_ms"]),
            f"p99 < 50 ms at {half:,}/s",
            flag(p99_ok),
            note(paced),
        )
        if b.get("available"):
            batch_ok = b["events_per_s"] >= GOALS["batch_events_per_s"]
            oks[f"{kind}_batches"] = batch_ok
            line(
                f"batches of {BATCH} ({BATCH_POSTERS} clients; ms per batch)",
                f"{b['events_per_s']:,.0f}",
                str(b["p50_ms"]),
                str(b["p99_ms"]),
                f">= {GOALS['batch_events_per_s']:,}/s",
                flag(batch_ok),
                note(b),
            )
        else:
            oks[f"{kind}_batches"] = None
            line(
                f"batches of {BATCH}",
                "not available",
                "",
                "",
                f">= {GOALS['batch_events_per_s']:,}/s",
                "-",
                b.get("why", ""),
            )
        line(
            f"driver alone: {base['driver']}, {CLIENTS} threads, 1 tx/event",
            f"{base['events_per_s']:,.0f}",
            str(base["p50_ms"]),
            str(base["p99_ms"]),
            "(baseline)",
            "",
            note(base),
        )
        x_base = flat["events_per_s"] / base["events_per_s"] if base["events_per_s"] else 0.0
        line(
            f"  the app does {x_base:.1%} of the driver's rate; server "
            f"{flat['server_cpu_us_per_event'] / 1000:,.1f} ms CPU/event on "
            f"{flat['server_cores']} cores"
        )
        line(
            f"  {r['outbox_rows_per_event']} outbox rows/event; answers "
            f"{flat['answer_bytes']:,} bytes; {r['recorded_events']:,} events recorded "
            f"({r['answered_201']:,} answered 201)"
        )
        lg = r.get("server_log") or {}
        restarts = lg.get("workers_booted", 0) - lg.get("workers_expected", 0)
        line(
            f"  server log: {lg.get('worker_timeouts', 0)} worker timeouts, {restarts} workers "
            f"booted again, {lg.get('loop_blocks_over_500ms', 0)} event-loop blocks >= 500 ms "
            f"(longest {lg.get('longest_loop_block_ms', 0):,} ms), "
            f"{lg.get('errors_logged', 0)} errors logged"
        )
        figures[kind] = {
            "events_per_s": flat["events_per_s"],
            "p50_ms": flat["p50_ms"],
            "p99_ms": flat["p99_ms"],
            "paced_target_per_s": paced["target_per_s"],
            "paced_events_per_s": paced["events_per_s"],
            "paced_p50_ms": paced["p50_ms"],
            "paced_p99_ms": paced["p99_ms"],
            "batch_events_per_s": b.get("events_per_s") if b.get("available") else None,
            "batch_p50_ms": b.get("p50_ms") if b.get("available") else None,
            "batch_p99_ms": b.get("p99_ms") if b.get("available") else None,
            "baseline_events_per_s": base["events_per_s"],
            "baseline_p50_ms": base["p50_ms"],
            "baseline_p99_ms": base["p99_ms"],
            "x_baseline": round(x_base, 4),
            "server_cpu_us_per_event": flat["server_cpu_us_per_event"],
            "server_cores": flat["server_cores"],
            "client_cpu_us_per_request": flat["client_cpu_us_per_request"],
            "client_cores": flat["client_cores"],
            "answer_bytes": flat["answer_bytes"],
            "outbox_rows_per_event": r["outbox_rows_per_event"],
            "recorded_events": r["recorded_events"],
            "errors": flat["errors"] + paced["errors"],
        }

    long = (results.get("sqlite") or {}).get("long_order")
    print(f"One order with {LONG_EVENTS:,} events (SQLite; in_transit scans, one client)")
    if long:
        biggest = max(long["last_answer_bytes"], long["track_answer_bytes"] or 0)
        size_ok = biggest < GOALS["long_answer_bytes"]
        growth_ok = abs(long["growth"] - 1) <= GOALS["long_growth"]
        oks["long_answer"], oks["long_growth"] = size_ok, growth_ok
        s = LONG_SAMPLE
        line(
            f"first {s} events: ms per event (mean, p50)",
            "",
            str(long["first_ms_per_event"]),
            "",
            "",
            "",
            f"p50 {long['first_p50_ms']}",
        )
        line(
            f"last {s} events: ms per event (mean, p50)",
            "",
            str(long["last_ms_per_event"]),
            "",
            "within ±20% of first",
            flag(growth_ok),
            f"x{long['growth']}; p50 {long['last_p50_ms']}",
        )
        line(
            "last POST answer, bytes",
            f"{long['last_answer_bytes']:,}",
            "",
            "",
            "< 64 KB",
            flag(long["last_answer_bytes"] < GOALS["long_answer_bytes"]),
        )
        line(
            "GET /api/track/<token>, bytes",
            f"{(long['track_answer_bytes'] or 0):,}",
            "",
            "",
            "< 64 KB",
            flag((long["track_answer_bytes"] or 0) < GOALS["long_answer_bytes"]),
        )
        if long["middle_via"] != "api":
            line(
                f"  events {s + 1:,}-{LONG_EVENTS - s:,} went in via {long['middle_via']}: "
                f"through the API ~{long['projected_middle_s']:,.0f} s at the first ones' pace"
            )
        figures["long_order"] = long
    else:
        oks["long_answer"] = oks["long_growth"] = None
        line("not run")

    print("Client (aiohttp, one event loop): its own cost")
    line(
        "against a null server (answers at once)",
        f"{ceiling['requests_per_s']:,.0f}",
        "",
        str(ceiling["p99_ms"]),
        "",
        "",
        f"{ceiling['client_cpu_us_per_request']} us CPU/request",
    )
    for kind in ("sqlite", "postgresql"):
        f = figures.get(kind)
        if f:
            line(
                f"during {kind} flat out",
                "",
                "",
                "",
                "",
                "",
                f"{f['client_cpu_us_per_request']} us CPU/request, {f['client_cores']} cores",
            )
    for kind in ("sqlite", "postgresql"):
        r = results.get(kind) or {}
        for name in ("flat", "paced", "batches"):
            samples = (r.get(name) or {}).get("error_samples")
            if samples:
                print(f"  {kind} {name}: errors, e.g. {samples[0]}")
        if r.get("profiles"):
            print(f"  py-spy ({kind}, flat out): {', '.join(r['profiles'])}")
    figures["client_ceiling"] = ceiling
    return {"figures": figures, "ok": oks}


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--null-server":
        null_server(int(sys.argv[2]))
        return
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="waybill-bench-ingest-"))
    results: dict[str, Any] = {}
    worlds: list[World] = []
    try:
        ceiling = asyncio.run(client_ceiling())
        say(f"-- client ceiling: {ceiling['requests_per_s']:,.0f} requests/s against a null server")
        sqlite_world = make_sqlite(tmp)
        worlds.append(sqlite_world)
        results["sqlite"] = run_world(sqlite_world, tmp)
        why = postgres_reachable()
        if why:
            results["postgresql"] = {"skipped": why}
            say(f"-- PostgreSQL skipped: {why}")
        else:
            pg_world = make_postgres(tmp)
            worlds.append(pg_world)
            results["postgresql"] = run_world(pg_world, tmp)
    finally:
        for w in worlds:
            try:
                w.drop()
            except Exception as exc:  # noqa: BLE001 - say so, and clean the rest
                print(f"could not drop the {w.kind} database: {exc}", file=sys.stderr)
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    summary = report(results, ceiling)
    print()
    print(
        f"run took {time.perf_counter() - started:.0f} s; load average "
        f"{os.getloadavg()[0]:.2f} (the machine is shared)"
    )
    print(
        json.dumps(
            {
                "bench": "ingest",
                "quick": QUICK,
                "clients": CLIENTS,
                "goals": GOALS,
                **summary["figures"],
                "ok": summary["ok"],
                "details": results,
                "seconds": round(time.perf_counter() - started),
            }
        )
    )


if __name__ == "__main__":
    main()
