"""Reads as customers load them: signed-in customers opening the app, ``GET /api/me/orders``.

1,000 customers with 10 orders each (one parcel per order, with its scans; seven of each
customer's ten delivered, three on their way) and one signed-in session each, its row made
as ``auth.sessions.start`` makes it. A real ``waybill serve`` is then loaded by 64 keep-alive
connections, each asking for the orders of a random customer (their session cookie), one
request after another, for 10 s, while a separate client moves the parcels on their way
through the merchant API at 100 status-changing events a second (in_transit ->
out_for_delivery -> delivered, rising ``occurred_at``; each event paced from when it was due,
so the achieved rate is shown), so that the reads meet the writes, the change log and the
outbox as they would. Measured in one run, side by side:

1. SQLite, ``waybill serve --workers 1`` on its defaults: requests/s, p50, p99 (a request
   not answered within 2 s is a timeout, counted at 2 s), errors, answer bytes, server CPU
   per request (the events' included), and the events/s the writer achieved with their p99.
2. The same on PostgreSQL with ``--workers 2`` and Redis as the broker.
3. The baseline, after each: bare Flask (``bench/baseline_api.py``) answering the bytes of
   one real answer captured from that server to every request, under the same gunicorn
   gevent settings and worker count, loaded by the same 64 connections for as long.

The goal from issue 12: at least half the baseline's requests/s with p99 < 50 ms, on both;
a missed goal never fails the run. The readers are a small HTTP/1.1 client on asyncio
streams, several times cheaper per request than aiohttp (the writer's client); its own cost,
and its ceiling against a server that answers at once, are shown so that it can be told
apart from the server's (the machine has 2 cores: client and server share them).

The full run: 1 s warm-up, then a 10 s measured phase per server (the baseline's as long),
on both databases; about 80 s here. Issue 12 names 20 s phases: ``BENCH_READ_S=20`` runs those
(kept shorter by default so that ``make bench`` runs everything in under 10 minutes; the same
path, connections and event rate, half the samples).

Environment: ``BENCH_QUICK=1`` (3 s phases), ``BENCH_READ_S`` (seconds of the measured
phases), ``BENCH_POSTGRES_URL`` / ``BENCH_REDIS_URL``, ``BENCH_PROFILE=DIR`` (py-spy records
each server worker during the read phase; the top of the profile, waybill functions by
inclusive share, is printed) and ``BENCH_KEEP=1`` as in ``bench/ingest.py``. The last line
printed is one JSON object.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import ingest
from _procs import free_port
from ingest import (
    HOST,
    PROFILE,
    QUICK,
    Client,
    Parcel,
    Phase,
    Profiler,
    Server,
    Stream,
    World,
    count,
    cpu_seconds,
    log_findings,
    make_postgres,
    make_sqlite,
    ms,
    percentile,
    postgres_reachable,
    prepare,
    say,
    seed,
)

CUSTOMERS = 1000
ORDERS_PER_CUSTOMER = 10
DELIVERED_PER_CUSTOMER = 7  # the rest are on their way: the writer moves those
CONNECTIONS = 64  # readers' keep-alive connections
EVENTS_PER_S = 100  # the writer's pace
#: its connections, each posting its orders' events one after another: enough for 100/s while
#: each waits its turn behind 64 readers (Little: 100/s x 0.64 s)
WRITERS = 64
WARM_S = 0.5 if QUICK else 1.0  # not reported: first requests fill caches and pools
#: the measured phase, and the baseline's as long (issue 12: 20 s)
READ_S = float(os.environ.get("BENCH_READ_S") or (3.0 if QUICK else 10.0))
CEILING_S = 1.0 if QUICK else 3.0
TIMEOUT_S = 2.0  # as wrk's default: a request not answered by then is a timeout
PATH = "/api/me/orders"
GOALS = {"x_baseline": 0.5, "p99_ms": 50}
BENCH = Path(__file__).resolve().parent
#: The seeded history happened before the writer's events (ingest.BASE_TIME + 1 h on).
HISTORY_START = ingest.BASE_TIME - timedelta(days=ORDERS_PER_CUSTOMER + 2)
DELIVERED_SCANS = (
    ("shipped", "Berlin depot", "Handed to the carrier"),
    ("in_transit", "Leipzig hub", "Sorted"),
    ("out_for_delivery", "Munich delivery base", "With the courier"),
    ("delivered", "Munich", "Delivered to the front door"),
)
ON_ITS_WAY_SCANS = (
    ("shipped", "Berlin depot", "Handed to the carrier"),
    ("shipped", "Berlin depot", "Left the depot"),
)


# --- the world: customers with ten orders each, their history, their sessions ---------------


def add_history(world: World, parcels: list[Parcel]) -> list[Parcel]:
    """Each parcel's scans as ``POST …/events`` leaves them: tracking events (dedupe keys by
    the app's own function), the change log, the folded statuses of shipment and order; no
    outbox rows (the notifications of the past went out long ago). Returns the parcels still
    on their way."""
    import sqlalchemy as sa

    from waybill.models import Change, Order, Shipment, TrackingEvent
    from waybill.tracking.events import dedupe_key

    now = datetime.now(UTC)
    engine = world.engine()
    on_its_way: list[Parcel] = []
    step = 2000
    try:
        for lo in range(0, len(parcels), step):
            events: list[dict[str, Any]] = []
            changes: list[dict[str, Any]] = []
            delivered: list[Parcel] = []
            for n, p in enumerate(parcels[lo : lo + step], start=lo):
                done = n % ORDERS_PER_CUSTOMER < DELIVERED_PER_CUSTOMER
                (delivered if done else on_its_way).append(p)
                day = HISTORY_START + timedelta(days=n % ORDERS_PER_CUSTOMER)
                before = "shipped"
                for k, (status, location, description) in enumerate(
                    DELIVERED_SCANS if done else ON_ITS_WAY_SCANS
                ):
                    at = day + timedelta(hours=3 * k)
                    event_id = f"history-{p.shipment_id}-{k}"
                    events.append(
                        {
                            "order_id": p.order_id,
                            "shipment_id": p.shipment_id,
                            "status": status,
                            "occurred_at": at,
                            "location": location,
                            "description": description,
                            "source": "api",
                            "event_id": event_id,
                            "dedupe_key": dedupe_key(
                                shipment_id=p.shipment_id,
                                status=status,
                                occurred_at=at,
                                event_id=event_id,
                                location=location,
                                description=description,
                            ),
                            "created_at": now,
                        }
                    )
                    after = status if done else "shipped"
                    changes.append(
                        {
                            "order_id": p.order_id,
                            "customer_id": p.customer_id,
                            "kind": "event.recorded",
                            "status_before": before,
                            "status_after": after,
                            "created_at": now,
                        }
                    )
                    before = after
            with engine.begin() as conn:
                conn.execute(sa.insert(TrackingEvent), events)
                conn.execute(sa.insert(Change), changes)
                conn.execute(
                    sa.update(Shipment)
                    .where(Shipment.id.in_([p.shipment_id for p in delivered]))  # type: ignore[union-attr]
                    .values(status="delivered")
                )
                conn.execute(
                    sa.update(Order)
                    .where(Order.id.in_([p.order_id for p in delivered]))  # type: ignore[union-attr]
                    .values(status="delivered", updated_at=now)
                )
    finally:
        engine.dispose()
    return on_its_way


def sign_in(world: World, customer_ids: list[int]) -> list[str]:
    """One session per customer, its row as ``auth.sessions.start`` writes it (the id's hash,
    no stored CSRF token); returns the cookies' values."""
    import sqlalchemy as sa

    from waybill.auth.sessions import NOT_STORED
    from waybill.auth.tokens import digest, new_token
    from waybill.models import AuthSession

    now = datetime.now(UTC)
    sids = [new_token(32) for _ in customer_ids]
    engine = world.engine()
    try:
        with engine.begin() as conn:
            conn.execute(
                sa.insert(AuthSession),
                [
                    {
                        "customer_id": cid,
                        "id_hash": digest(sid),
                        "csrf_token": NOT_STORED,
                        "user_agent": "bench/api.py",
                        "created_at": now,
                        "last_seen_at": now,  # seen just now: no write on each read
                    }
                    for cid, sid in zip(customer_ids, sids, strict=True)
                ],
            )
    finally:
        engine.dispose()
    return sids


def populate(world: World) -> list[str]:
    """Schema, merchants, customers, orders, history, sessions; the parcels on their way in
    ``world.pool`` for the writer. Returns the session cookies."""
    prepare(world)
    took = seed(world, CUSTOMERS * ORDERS_PER_CUSTOMER, orders_per_customer=ORDERS_PER_CUSTOMER)
    parcels = list(world.pool)
    t0 = time.perf_counter()
    world.pool = deque(add_history(world, parcels))
    customers = list(dict.fromkeys(p.customer_id for p in parcels))
    sids = sign_in(world, customers)
    say(
        f"-- {world.label}: seeded {len(customers):,} customers x {ORDERS_PER_CUSTOMER} orders "
        f"in {took + time.perf_counter() - t0:.1f} s ({len(world.pool):,} on their way)"
    )
    return sids


# --- the readers: HTTP/1.1 keep-alive on asyncio streams --------------------------------------


@dataclass
class Reads:
    name: str
    requests: int = 0
    ok: int = 0
    errors: int = 0
    timeouts: int = 0
    error_samples: list[str] = field(default_factory=list)
    latencies: list[float] = field(default_factory=list)
    body_bytes: int = 0
    seconds: float = 0.0
    client_cpu: float = 0.0
    server_cpu: float = 0.0

    @property
    def rate(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def failed(self, why: str) -> None:
        self.errors += 1
        if len(self.error_samples) < 3:
            self.error_samples.append(why)

    def row(self) -> dict[str, Any]:
        n = max(self.requests, 1)
        return {
            "phase": self.name,
            "requests_per_s": round(self.rate, 1),
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "timeouts": self.timeouts,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "max_ms": ms(max(self.latencies)) if self.latencies else None,
            "seconds": round(self.seconds, 2),
            "answer_bytes": round(self.body_bytes / max(self.ok, 1)),
            "client_cpu_us_per_request": round(self.client_cpu / n * 1e6),
            "client_cores": round(self.client_cpu / self.seconds, 2) if self.seconds else None,
            "server_cpu_us_per_request": round(self.server_cpu / max(self.ok, 1) * 1e6),
            "server_cores": round(self.server_cpu / self.seconds, 2) if self.seconds else None,
            "error_samples": self.error_samples,
        }


async def answer(reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    """One HTTP/1.1 answer: (status, body, the server keeps the connection open)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    status = int(lines[0].split(b" ", 2)[1])
    headers = {}
    for raw in lines[1:]:
        name, _, value = raw.partition(b":")
        headers[name.strip().lower()] = value.strip().lower()
    if b"content-length" in headers:
        body = await reader.readexactly(int(headers[b"content-length"]))
    elif headers.get(b"transfer-encoding") == b"chunked":
        parts = []
        while size := int((await reader.readuntil(b"\r\n")).split(b";")[0], 16):
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
        await reader.readuntil(b"\r\n")
        body = b"".join(parts)
    else:
        raise ValueError("an answer with neither Content-Length nor chunks")
    return status, body, headers.get(b"connection") != b"close"


async def read_load(
    port: int,
    cookies: list[str],
    reads: Reads,
    seconds: float,
    server_pids: list[int],
    ok: tuple[int, ...] = (200,),
) -> Reads:
    """CONNECTIONS connections, each asking for a random customer's orders, one request after
    another until ``seconds`` are over (closed loop, as wrk does)."""
    requests = [
        (
            f"GET {PATH} HTTP/1.1\r\nHost: {HOST}:{port}\r\nAccept: application/json\r\n"
            f"Cookie: waybill_session={c}\r\n\r\n"
        ).encode()
        for c in cookies
    ]
    cpu0, scpu0 = time.process_time(), cpu_seconds(server_pids)
    start = time.perf_counter()
    end = start + seconds

    async def connection(n: int) -> None:
        rng = random.Random(n)
        stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
        while time.perf_counter() < end:
            t0 = time.perf_counter()
            try:
                async with asyncio.timeout(TIMEOUT_S):
                    if stream is None:
                        stream = await asyncio.open_connection(HOST, port)
                    stream[1].write(rng.choice(requests))
                    status, body, keep = await answer(stream[0])
            except TimeoutError:
                reads.requests += 1
                reads.timeouts += 1
                reads.latencies.append(TIMEOUT_S)
                close(stream)
                stream = None
                continue
            except (
                OSError,
                asyncio.IncompleteReadError,
                asyncio.LimitOverrunError,
                ValueError,
            ) as e:
                reads.requests += 1
                reads.failed(f"{e!r:.160}")
                close(stream)
                stream = None
                await asyncio.sleep(0.01)
                continue
            reads.latencies.append(time.perf_counter() - t0)
            reads.requests += 1
            if status in ok:
                reads.ok += 1
                reads.body_bytes += len(body)
            else:
                reads.failed(f"{status} {body[:160].decode(errors='replace')}")
            if not keep:
                close(stream)
                stream = None
        close(stream)

    await asyncio.gather(*(connection(n) for n in range(CONNECTIONS)))
    reads.seconds = time.perf_counter() - start
    reads.client_cpu = time.process_time() - cpu0
    reads.server_cpu = cpu_seconds(server_pids) - scpu0
    return reads


def close(stream: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None) -> None:
    if stream is not None:
        stream[1].close()


# --- the writer: status-changing events at a steady pace --------------------------------------


async def write_load(client: Client, pool: deque[Parcel], seconds: float) -> Phase:
    """EVENTS_PER_S events through ``POST /api/v1/shipments/<id>/events``: event i is due at
    start + i / rate; its latency counts from when it was due. Each of WRITERS connections
    posts its own orders' events one after another (ingest.Stream), and none starts one once
    ``seconds`` are over: a writer that falls behind sends fewer (the achieved rate shows it)."""
    phase = Phase(f"events paced at {EVENTS_PER_S}/s", target=EVENTS_PER_S)
    streams = [Stream(pool) for _ in range(WRITERS)]
    start = time.perf_counter()
    end = start + seconds
    slot = 0

    async def writer(stream: Stream) -> None:
        nonlocal slot
        while (due := start + slot / EVENTS_PER_S) < end and time.perf_counter() < end:
            slot += 1
            if (delay := due - time.perf_counter()) > 0:
                await asyncio.sleep(delay)
            ev = stream.next()
            if ev is None:
                phase.exhausted = True
                return
            try:
                status, data = await client.post_event(ev)
            except client.aiohttp.ClientError as exc:
                status, data = 599, repr(exc).encode()
            phase.latencies.append(time.perf_counter() - due)
            count(phase, status, data)

    await asyncio.gather(*(writer(s) for s in streams))
    phase.seconds = time.perf_counter() - start
    return phase


# --- one database, end to end ------------------------------------------------------------------


def capture(port: int, sid: str) -> bytes:
    """One real answer, for the baseline to send."""
    req = urllib.request.Request(
        f"http://{HOST}:{port}{PATH}", headers={"Cookie": f"waybill_session={sid}"}
    )
    with urllib.request.urlopen(req, timeout=30) as r:
        body: bytes = r.read()
    orders = json.loads(body)["orders"]
    if len(orders) != ORDERS_PER_CUSTOMER:
        raise RuntimeError(f"{PATH} answered {len(orders)} orders, not {ORDERS_PER_CUSTOMER}")
    return body


async def load_server(world: World, server: Server, sids: list[str], out: dict[str, Any]) -> None:
    pids = server.workers
    client = Client(server.port, world.keys, connections=WRITERS)
    try:
        warm_reads = Reads("warm-up")
        await asyncio.gather(
            read_load(server.port, sids, warm_reads, WARM_S, pids),
            write_load(client, world.pool, WARM_S),
        )
        profiler = Profiler(f"{world.kind}-reads", pids, READ_S)
        reads, events = await asyncio.gather(
            read_load(server.port, sids, Reads("reads"), READ_S, pids),
            write_load(client, world.pool, READ_S),
        )
        profiler.wait()
    finally:
        await client.close()
    out["reads"], out["events"] = reads.row(), events.row()
    out["profiles"] = profiler.files
    say(
        f"   reads: {reads.rate:,.0f} requests/s, p99 {out['reads']['p99_ms']} ms; events "
        f"{events.rate:.0f}/s, p99 {out['events']['p99_ms']} ms"
    )


class BareFlask(Server):
    """``bench/baseline_api.py`` under the gunicorn settings of ``waybill serve``."""

    ready_path = PATH

    def __init__(self, world: World, log: Path, body: Path) -> None:
        argv = [sys.executable, str(BENCH / "baseline_api.py"), "--body", str(body)]
        super().__init__(world, log, argv)


def run_world(world: World, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"label": world.label, "workers": world.workers}
    sids = populate(world)
    server = Server(world, tmp / f"{world.kind}-server.log")
    try:
        server.wait_ready()
        say(f"   waybill serve up: {len(server.workers)} worker(s), pids {server.workers}")
        body = capture(server.port, sids[0])
        asyncio.run(load_server(world, server, sids, out))
    finally:
        server.stop()
        out["server_log"] = log_findings(server.log, world.workers)
    body_file = tmp / f"{world.kind}-answer.json"
    body_file.write_bytes(body)
    out["captured_answer_bytes"] = len(body)
    bare = BareFlask(world, tmp / f"{world.kind}-baseline.log", body_file)
    try:
        bare.wait_ready()
        pids = bare.workers
        asyncio.run(read_load(bare.port, sids, Reads("baseline warm-up"), WARM_S, pids))
        base = asyncio.run(read_load(bare.port, sids, Reads("baseline"), READ_S, pids))
    finally:
        bare.stop()
    out["baseline"] = base.row()
    say(f"   bare Flask: {base.rate:,.0f} requests/s, p99 {out['baseline']['p99_ms']} ms")
    if PROFILE and out["profiles"]:
        out["profile_top"] = profile_top(out["profiles"])
    return out


# --- the client's own ceiling ------------------------------------------------------------------


def client_ceiling() -> dict[str, Any]:
    """The readers against ``ingest``'s null server (answers at once, ~1.9 KB): what they can
    drive on this machine."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(BENCH / "ingest.py"), "--null-server", str(port)])
    try:
        for _ in range(100):
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        reads = asyncio.run(
            read_load(port, ["x"], Reads("null server"), CEILING_S, [proc.pid], ok=(201,))
        )
    finally:
        proc.terminate()
        proc.wait(10)
    row = reads.row()
    return {k: row[k] for k in ("requests_per_s", "p99_ms", "client_cpu_us_per_request")}


# --- the profile -------------------------------------------------------------------------------


def profile_top(files: list[str], n: int = 15) -> dict[str, Any]:
    """From py-spy's raw stacks: the waybill functions by inclusive share of the samples (a
    function counted once per sample however often it recurs), and where the time is spent
    by library (the innermost frame's)."""
    inclusive: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for f in files:
        for line in Path(f).read_text(errors="replace").splitlines():
            stack, _, weight = line.rpartition(" ")
            if not stack or not weight.isdigit():
                continue
            samples = int(weight)
            total += samples
            frames = stack.split(";")
            seen = set()
            for frame in frames:
                name, _, where = frame.partition(" (")
                path = where.rsplit(":", 1)[0]
                if "waybill/" in path and "waybill/serve.py" not in path:
                    seen.add(f"{name} ({path.split('waybill/', 1)[1]})")
            for fn in seen:
                inclusive[fn] += samples
            leaves[library(frames[-1])] += samples
    share = lambda c: round(c / max(total, 1), 3)  # noqa: E731
    return {
        "samples": total,
        "waybill_inclusive": [(fn, share(c)) for fn, c in inclusive.most_common(n)],
        "self_by_library": [(lib, share(c)) for lib, c in leaves.most_common(8)],
    }


def library(frame: str) -> str:
    """The package of a py-spy frame ``name (path:line)``: ``sqlalchemy``, ``waybill``, …"""
    path = frame.partition(" (")[2].rsplit(":", 1)[0]
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1].split("/", 1)[0]
    if "waybill/" in path:
        return "waybill"
    if "/lib/python" in path:
        return "stdlib " + path.rsplit("/", 1)[-1]
    return path.split("/", 1)[0] or "?"


# --- the report --------------------------------------------------------------------------------


def row(
    name: str, rate: str = "", p50: str = "", p99: str = "", goal: str = "", *rest: str
) -> None:
    print(f"  {name:46} {rate:>10} {p50:>8} {p99:>8}   {goal:24} {' '.join(rest)}".rstrip())


def report(results: dict[str, Any], ceiling: dict[str, Any]) -> dict[str, Any]:
    figures: dict[str, Any] = {}
    oks: dict[str, bool | None] = {}
    print()
    print(
        f"Reads: GET {PATH} as {CUSTOMERS:,} signed-in customers x {ORDERS_PER_CUSTOMER} orders, "
        f"{CONNECTIONS} keep-alive connections, {READ_S:.0f} s, while {EVENTS_PER_S} "
        f"status-changing events/s go in{'; BENCH_QUICK' if QUICK else ''}"
    )
    row("", "requests/s", "p50 ms", "p99 ms", "goal")
    for kind in ("sqlite", "postgresql"):
        r = results.get(kind)
        print("SQLite, 1 worker" if kind == "sqlite" else "PostgreSQL, 2 workers, Redis")
        if r is None or "skipped" in r:
            row(f"not run: {r['skipped'] if r else 'not reached'}")
            oks[kind] = None
            continue
        reads, base, events = r["reads"], r["baseline"], r["events"]
        x_base = reads["requests_per_s"] / base["requests_per_s"] if base["requests_per_s"] else 0
        ok = x_base >= GOALS["x_baseline"] and reads["p99_ms"] < GOALS["p99_ms"]
        oks[kind] = ok
        trouble = (
            "; ".join(f"{reads[k]} {k}" for k in ("errors", "timeouts") if reads[k])
            or "no errors or timeouts"
        )
        # timeouts count at TIMEOUT_S: when 1% of requests are, the p99 is at least that
        censored = reads["timeouts"] >= 0.01 * reads["requests"]
        row(
            "waybill serve",
            f"{reads['requests_per_s']:,.0f}",
            str(reads["p50_ms"]),
            (">= " if censored else "") + str(reads["p99_ms"]),
            ">= 50% of bare, p99 < 50",
            "ok" if ok else "MISSED",
            trouble,
        )
        row(
            "bare Flask, same bytes, same gunicorn settings",
            f"{base['requests_per_s']:,.0f}",
            str(base["p50_ms"]),
            str(base["p99_ms"]),
            "(baseline)",
            "",
            f"{base['errors']} errors, {base['timeouts']} timeouts"
            if base["errors"] or base["timeouts"]
            else "",
        )
        row(
            f"  {x_base:.1%} of the baseline's rate; answers {reads['answer_bytes']:,} bytes; "
            f"server {reads['server_cpu_us_per_request'] / 1000:,.2f} ms CPU/request "
            f"(bare {base['server_cpu_us_per_request'] / 1000:,.2f}) on "
            f"{reads['server_cores']} cores"
        )
        row(
            f"  events: {events['events_per_s']:.0f}/s of {EVENTS_PER_S} "
            f"({events['events']:,} recorded, {events['errors']} errors), p50 "
            f"{events['p50_ms']} ms, p99 {events['p99_ms']} ms from when each was due"
            + ("; ran out of orders" if events["ran_out_of_orders"] else "")
        )
        lg = r.get("server_log") or {}
        row(
            f"  server log: {lg.get('worker_timeouts', 0)} worker timeouts, "
            f"{lg.get('loop_blocks_over_500ms', 0)} event-loop blocks >= 500 ms "
            f"(longest {lg.get('longest_loop_block_ms', 0):,} ms), "
            f"{lg.get('errors_logged', 0)} errors logged"
        )
        for name in ("reads", "baseline", "events"):
            samples = r[name].get("error_samples")
            if samples:
                row(f"  {name}: errors, e.g. {samples[0]}")
        figures[kind] = {
            "requests_per_s": reads["requests_per_s"],
            "p50_ms": reads["p50_ms"],
            "p99_ms": reads["p99_ms"],
            "errors": reads["errors"],
            "timeouts": reads["timeouts"],
            "answer_bytes": reads["answer_bytes"],
            "server_cpu_us_per_request": reads["server_cpu_us_per_request"],
            "server_cores": reads["server_cores"],
            "baseline_requests_per_s": base["requests_per_s"],
            "baseline_p50_ms": base["p50_ms"],
            "baseline_p99_ms": base["p99_ms"],
            "baseline_server_cpu_us_per_request": base["server_cpu_us_per_request"],
            "x_baseline": round(x_base, 4),
            "events_per_s": events["events_per_s"],
            "events_p99_ms": events["p99_ms"],
            "event_errors": events["errors"],
            "client_cpu_us_per_request": reads["client_cpu_us_per_request"],
            "client_cores": reads["client_cores"],
        }
    print("Client (asyncio streams, one event loop): its own cost")
    row(
        "against a null server (answers at once)",
        f"{ceiling['requests_per_s']:,.0f}",
        "",
        str(ceiling["p99_ms"]),
        "",
        f"{ceiling['client_cpu_us_per_request']} us CPU/request",
    )
    for kind, f in figures.items():
        row(
            f"during {kind} reads",
            "",
            "",
            "",
            "",
            f"{f['client_cpu_us_per_request']} us CPU/request, {f['client_cores']} cores",
        )
    figures["client_ceiling"] = ceiling
    for kind in ("sqlite", "postgresql"):
        top = (results.get(kind) or {}).get("profile_top")
        if top:
            print(f"Profile ({kind}, read phase, {top['samples']:,} samples): waybill, inclusive")
            for fn, share in top["waybill_inclusive"]:
                print(f"  {share:6.1%}  {fn}")
            libs = ", ".join(f"{lib} {share:.0%}" for lib, share in top["self_by_library"])
            print(f"  self time by library: {libs}")
            print(f"  raw stacks: {', '.join(results[kind]['profiles'])}")
    return {"figures": figures, "ok": oks}


def main() -> None:
    started = time.perf_counter()
    load_before = os.getloadavg()[0]
    tmp = Path(tempfile.mkdtemp(prefix="waybill-bench-api-"))
    results: dict[str, Any] = {}
    worlds: list[World] = []
    try:
        ceiling = client_ceiling()
        say(f"-- client ceiling: {ceiling['requests_per_s']:,.0f} requests/s (null server)")
        sqlite_world = make_sqlite(tmp)
        worlds.append(sqlite_world)
        results["sqlite"] = run_world(sqlite_world, tmp)
        why = postgres_reachable()
        if why:
            results["postgresql"] = {"skipped": why}
            say(f"-- PostgreSQL skipped: {why}")
        else:
            pg_world = make_postgres(tmp, prefix="bench_api")
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
        f"run took {time.perf_counter() - started:.0f} s; load average {load_before:.2f} "
        f"before, {os.getloadavg()[0]:.2f} after (the machine is shared)"
    )
    print(
        json.dumps(
            {
                "bench": "api",
                "quick": QUICK,
                "connections": CONNECTIONS,
                "customers": CUSTOMERS,
                "orders_per_customer": ORDERS_PER_CUSTOMER,
                "events_per_s_target": EVENTS_PER_S,
                "seconds": READ_S,
                "goals": GOALS,
                **summary["figures"],
                "ok": summary["ok"],
                "details": results,
                "took_s": round(time.perf_counter() - started),
                "load_average": [round(load_before, 2), round(os.getloadavg()[0], 2)],
            }
        )
    )


if __name__ == "__main__":
    main()
