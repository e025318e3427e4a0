"""Platform webhooks as a carrier aggregator sends them, beside the plain events API, in one run.

Every webhook is an AfterShip ``tracking_update`` (the most common aggregator), signed with
the merchant's secret (``aftership-hmac-sha256``, base64 HMAC-SHA256 of the raw body), and
carries the parcel's whole history up to its newest scan, as AfterShip sends it: the first
webhook of a parcel has one checkpoint (in transit), the next two (and out for delivery), the
last three (and delivered). So each webhook adds exactly one new, status-changing event and
the rest of its history is deduplicated, and each order's customer has the default
notification preferences (out for delivery and delivered queue an email each). Measured on a
real ``waybill serve``, in the same run, side by side:

1. **Events API**: single ``POST /api/v1/shipments/{id}/events`` from 16 keep-alive clients,
   flat out (the same client and event mix as ``bench/ingest.py``).
2. **Webhooks, flat out**: ``POST /webhooks/aftership/{merchant}`` from 16 clients: answered
   webhooks/s (each verified, recorded, answered 202 and then applied), p50/p99 of the answer,
   and once the last one is applied, applied webhooks/s over the whole phase.
3. **A burst**: 1,000 webhooks for one merchant, 100 connections at once (a platform's retry
   storm): the slowest answer (goal: every one within 1 s), and whether every event arrived
   (tracking events recorded == webhooks accepted; receipts left unapplied).

SQLite with one worker on the defaults; PostgreSQL with two workers and Redis when reachable
(``BENCH_POSTGRES_URL`` / ``WAYBILL_TEST_POSTGRES_URL``, ``BENCH_REDIS_URL``). The full run, per
database: a 0.5 s warm-up of each kind, 3 s of events API and 3 s of webhooks flat out,
each waited for until applied, then the burst of 1,000; about 100 s here. (The flat phases
were 10 s: shortened so that ``make bench`` runs everything in under 10 minutes; the same
clients, payloads and burst.) ``BENCH_QUICK=1`` shortens the phases; ``BENCH_PROFILE=DIR``
records each worker with py-spy during the burst (raw folded stacks). The last line printed
is one JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import sys
import tempfile
import time
from collections import deque
from datetime import timedelta
from pathlib import Path
from typing import Any

from ingest import (  # the world, server and client of the ingest benchmark
    BASE_TIME,
    CLIENTS,
    HOST,
    STAGES,
    Client,
    Event,
    Parcel,
    Phase,
    Profiler,
    Server,
    Stream,
    World,
    count,
    cpu_seconds,
    iso,
    make_postgres,
    make_sqlite,
    postgres_reachable,
    prepare,
    run_single,
    say,
    seed,
)

QUICK = os.environ.get("BENCH_QUICK") == "1"
FLAT_S = 2.0 if QUICK else 3.0
WARM_S = 0.5
BURST = 1000  # webhooks, as the issue names it
BURST_CONNECTIONS = 100
APPLY_CAP_S = 60.0  # at most, for the last queued webhook to be applied
ORDERS = 1200 if QUICK else 4000  # per phase's pool, seeded up front
WEBHOOK_SECRET = "bench-aftership-webhook-secret"
GOALS = {"burst_slowest_answer_ms": 1000, "lost_events": 0}

TAGS = {
    "in_transit": ("InTransit", "InTransit_001", "Arrived at the sort facility"),
    "out_for_delivery": ("OutForDelivery", "OutForDelivery_001", "On the van for delivery"),
    "delivered": ("Delivered", "Delivered_001", "Delivered, left at the front door"),
}


def aftership_body(ev: Event) -> bytes:
    """The parcel's AfterShip tracking with its history up to ``ev``'s stage."""
    stage = STAGES.index(ev.status)
    checkpoints = []
    for k in range(stage + 1):
        tag, subtag, message = TAGS[STAGES[k]]
        checkpoints.append(
            {
                "slug": "dhl",
                "tag": tag,
                "subtag": subtag,
                "message": message,
                "checkpoint_time": iso(BASE_TIME + timedelta(hours=k + 1)),
                "city": "Leipzig",
                "country_iso3": "DEU",
            }
        )
    tag, subtag, _ = TAGS[ev.status]
    payload = {
        "event": "tracking_update",
        "event_id": ev.event_id,
        "ts": int(time.time()),
        "msg": {
            "id": f"trk-{ev.parcel.shipment_id}",
            "tracking_number": ev.parcel.tracking_number,
            "slug": "dhl",
            "tag": tag,
            "subtag": subtag,
            "checkpoints": checkpoints,
        },
    }
    return json.dumps(payload, separators=(",", ":")).encode()


def signature(body: bytes) -> str:
    digest = hmac.new(WEBHOOK_SECRET.encode(), body, hashlib.sha256).digest()
    return base64.b64encode(digest).decode()


class Hooks:
    """Posts signed webhooks for parcels of merchant ``merchant_ids[parcel.key]``."""

    def __init__(self, client: Client, merchant_ids: list[str]) -> None:
        self.client = client
        self.merchant_ids = merchant_ids

    async def post(self, ev: Event) -> tuple[int, bytes]:
        body = aftership_body(ev)
        url = f"{self.client.base}/webhooks/aftership/{self.merchant_ids[ev.parcel.key]}"
        headers = {"Content-Type": "application/json", "aftership-hmac-sha256": signature(body)}
        try:
            async with self.client.session.post(url, data=body, headers=headers) as r:
                return r.status, await r.read()
        except self.client.aiohttp.ClientError as exc:
            return 599, repr(exc).encode()


def db_counts(world: World) -> dict[str, int]:
    import sqlalchemy as sa

    engine = world.engine()
    try:
        with engine.connect() as conn:
            events = conn.execute(sa.text("SELECT count(*) FROM tracking_event")).scalar_one()
            states = dict(
                conn.execute(
                    sa.text("SELECT state, count(*) FROM webhook_receipt GROUP BY state")
                ).all()
            )
    finally:
        engine.dispose()
    return {"events": int(events), **{f"receipts_{k}": int(v) for k, v in states.items()}}


async def wait_applied(world: World, cap: float) -> tuple[float, int]:
    """Seconds until no receipt is left queued (at most ``cap``), and how many still are."""
    started = time.perf_counter()
    while True:
        queued = db_counts(world).get("receipts_queued", 0)
        if not queued or time.perf_counter() - started > cap:
            return time.perf_counter() - started, queued
        await asyncio.sleep(0.1)


async def connect_integrations(client: Client, world: World) -> None:
    for key in range(len(world.keys)):
        status, data = await client.request(
            "PUT", "/api/v1/integrations/aftership", key, {"secret": WEBHOOK_SECRET}
        )
        if status not in (200, 201):
            raise RuntimeError(f"connecting AfterShip answered {status}: {data[:200]!r}")


async def hooks_flat(
    hooks: Hooks, streams: list[Stream], phase: Phase, seconds: float, pids: list[int]
) -> None:
    cpu0, scpu0 = time.process_time(), cpu_seconds(pids)
    start = time.perf_counter()
    end = start + seconds

    async def one(stream: Stream) -> None:
        while time.perf_counter() < end:
            ev = stream.next()
            if ev is None:
                phase.exhausted = True
                return
            t0 = time.perf_counter()
            status, data = await hooks.post(ev)
            phase.latencies.append(time.perf_counter() - t0)
            count(phase, status, data, ok=(202,))

    await asyncio.gather(*(one(s) for s in streams))
    phase.seconds = time.perf_counter() - start
    phase.client_cpu = time.process_time() - cpu0
    phase.server_cpu = cpu_seconds(pids) - scpu0


async def burst(hooks: Hooks, parcels: list[Parcel], phase: Phase) -> None:
    """BURST webhooks at once over BURST_CONNECTIONS connections; each a new scan."""
    queue: deque[Event] = deque()
    for i, parcel in enumerate(parcels):
        for stage, status in enumerate(STAGES):
            queue.append(
                Event(parcel, status, BASE_TIME + timedelta(hours=stage + 1), f"burst-{i}-{stage}")
            )
            if len(queue) == BURST:
                break
        if len(queue) == BURST:
            break
    # the stages of one parcel in order, so each webhook carries one scan more than the last
    lanes: list[deque[Event]] = [deque() for _ in range(BURST_CONNECTIONS)]
    for ev in queue:
        lanes[ev.parcel.shipment_id % BURST_CONNECTIONS].append(ev)
    start = time.perf_counter()

    async def lane(events: deque[Event]) -> None:
        while events:
            ev = events.popleft()
            t0 = time.perf_counter()
            status, data = await hooks.post(ev)
            phase.latencies.append(time.perf_counter() - t0)
            count(phase, status, data, ok=(202,))

    await asyncio.gather(*(lane(events) for events in lanes))
    phase.seconds = time.perf_counter() - start


async def http_phases(
    world: World, server: Server, burst_pool: list[Parcel], out: dict[str, Any]
) -> None:
    client = Client(server.port, world.keys, connections=BURST_CONNECTIONS + CLIENTS)
    hooks = Hooks(client, world.merchant_ids)
    try:
        await connect_integrations(client, world)
        events_pool = deque(list(world.pool)[0::2])
        hooks_pool = deque(list(world.pool)[1::2])

        warm = Phase("warm-up")
        await run_single(client, [Stream(events_pool) for _ in range(CLIENTS)], warm, WARM_S, [])
        await hooks_flat(hooks, [Stream(hooks_pool) for _ in range(CLIENTS)], warm, WARM_S, [])
        await wait_applied(world, APPLY_CAP_S)

        api = Phase("events API, flat out")
        await run_single(
            client, [Stream(events_pool) for _ in range(CLIENTS)], api, FLAT_S, server.workers
        )
        out["events_api"] = api.row()
        say(f"   events API: {api.rate:.0f} events/s")

        before = db_counts(world)
        flat = Phase("webhooks, flat out")
        await hooks_flat(
            hooks, [Stream(hooks_pool) for _ in range(CLIENTS)], flat, FLAT_S, server.workers
        )
        waited, left = await wait_applied(world, APPLY_CAP_S)
        after = db_counts(world)
        out["webhooks"] = {
            **flat.row(),
            "applied_per_s": round(flat.ok / (flat.seconds + waited), 1),
            "apply_lag_s": round(waited, 2),
            "left_queued": left,
            "lost_events": flat.ok - (after["events"] - before["events"]),
        }
        say(
            f"   webhooks: {flat.rate:.0f} answered/s, {out['webhooks']['applied_per_s']}/s applied"
        )

        before = db_counts(world)
        storm = Phase(f"burst of {BURST} webhooks, {BURST_CONNECTIONS} at once")
        spy = Profiler(f"{world.kind}-burst", server.workers, 8.0)
        await burst(hooks, list(burst_pool), storm)
        spy.wait()
        waited, left = await wait_applied(world, APPLY_CAP_S)
        after = db_counts(world)
        out["burst"] = {
            **storm.row(),
            "applied_within_s": round(storm.seconds + waited, 2),
            "left_queued": left,
            "lost_events": storm.ok - (after["events"] - before["events"]),
        }
        say(
            f"   burst: slowest answer {out['burst']['max_ms']} ms, "
            f"lost {out['burst']['lost_events']}"
        )
    finally:
        await client.close()


def run_world(world: World, tmp: Path) -> dict[str, Any]:
    out: dict[str, Any] = {"label": world.label, "workers": world.workers}
    prepare(world)
    took = seed(world, ORDERS)
    mine: deque[Parcel] = deque()  # the burst is one merchant's, as one platform sends it
    took += seed(world, -(-BURST // len(STAGES)), merchant=0, pool=mine)
    say(f"-- {world.label}: seeded {world.seeded} orders in {took:.1f} s")
    server = Server(world, tmp / f"{world.kind}-webhooks.log")
    try:
        server.wait_ready()
        asyncio.run(http_phases(world, server, list(mine), out))
    finally:
        server.stop()
    return out


def report(results: dict[str, Any]) -> dict[str, Any]:
    print()
    print(
        f"{'':44} {'per s':>8} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8} {'errors':>7} {'lost':>5}"
    )
    figures: dict[str, Any] = {}
    ok = True
    for kind, res in results.items():
        if "skipped" in res:
            print(f"{res.get('label', kind)}: skipped ({res['skipped']})")
            continue
        print(res["label"])
        rows = [("events API, flat out", res["events_api"], "events_per_s", "")]
        rows.append(
            ("webhooks, answered (verified + recorded)", res["webhooks"], "events_per_s", "")
        )
        rows.append(("webhooks, applied", res["webhooks"], "applied_per_s", ""))
        rows.append(
            (f"burst of {BURST}, {BURST_CONNECTIONS} at once", res["burst"], "events_per_s", "")
        )
        for name, row, rate, _ in rows:
            lost = row.get("lost_events", "")
            print(
                f"  {name:42} {row[rate]:8.0f} {row['p50_ms']:8.1f} {row['p99_ms']:8.1f} "
                f"{row['max_ms'] or 0:8.1f} {row['errors']:7d} {lost!s:>5}"
            )
        api, hooks, storm = res["events_api"], res["webhooks"], res["burst"]
        ratio = hooks["events_per_s"] / api["events_per_s"] if api["events_per_s"] else 0
        burst_ok = (
            storm["errors"] == 0 and (storm["max_ms"] or 0) <= GOALS["burst_slowest_answer_ms"]
        )
        lost_ok = storm["lost_events"] == 0 and hooks["lost_events"] == 0
        lost_ok = lost_ok and not storm["left_queued"] and not hooks["left_queued"]
        print(
            f"  webhooks/s against events/s: {ratio:.2f}; burst answered within 1 s: "
            f"{'ok' if burst_ok else 'MISSED'}; no lost event: {'ok' if lost_ok else 'MISSED'}; "
            f"all {BURST} applied {storm['applied_within_s']} s after the first"
        )
        ok = ok and burst_ok and lost_ok
        figures[kind] = {
            "events_per_s": api["events_per_s"],
            "webhooks_answered_per_s": hooks["events_per_s"],
            "webhooks_applied_per_s": hooks["applied_per_s"],
            "webhook_p99_ms": hooks["p99_ms"],
            "burst_slowest_answer_ms": storm["max_ms"],
            "burst_p99_ms": storm["p99_ms"],
            "burst_applied_within_s": storm["applied_within_s"],
            "lost_events": storm["lost_events"] + hooks["lost_events"],
            "errors": storm["errors"] + hooks["errors"],
        }
    return {"figures": figures, "ok": ok}


def main() -> None:
    started = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="waybill-bench-webhooks-"))
    results: dict[str, Any] = {}
    worlds: list[World] = []
    try:
        sqlite_world = make_sqlite(tmp)
        worlds.append(sqlite_world)
        results["sqlite"] = run_world(sqlite_world, tmp)
        why = postgres_reachable()
        if why:
            results["postgresql"] = {"label": "PostgreSQL", "skipped": why}
        else:
            pg = make_postgres(tmp, prefix="bench_webhooks")
            worlds.append(pg)
            results["postgresql"] = run_world(pg, tmp)
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
    summary = report(results)
    print(f"\nrun took {time.perf_counter() - started:.0f} s on {HOST}")
    print(
        json.dumps(
            {
                "bench": "webhooks",
                "quick": QUICK,
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
