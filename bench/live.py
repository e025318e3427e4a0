"""Live updates as a shopper sees them: S tracking pages open (``GET /ws?track=<token>``, one
socket per order) on ``waybill serve`` (one gunicorn gevent worker, on its defaults: the
in-process outbox worker runs, mail goes to the log), while the merchant API takes
status-changing shipment events from 32 keep-alive clients at 100, 300 and 1,000 events/s.

Each order has one shipped parcel and a customer with the default preferences (seeded with
``bench/ingest.py``'s Core inserts), so an event moves it on (in_transit -> out_for_delivery ->
delivered, with rising ``occurred_at``) and two of the three queue a mail. Each event goes to
a random order that has a step left and no event of its own still on the way, the three kinds
evenly mixed. Beside it, in the same run and under the same load shape, the baseline
(bench/baseline_ws.py: a flask-sock relay, no database, frames padded to Waybill's size).

Measured per server, S and rate: from the POST's start (not its answer) to the frame with the
new status arriving on that order's socket (p50, p99), the POST's own answer time, frames
lost, sockets dropped, the rate actually achieved (a server that cannot keep up with the
offered rate gets fewer events than were offered, and says so), and the worker's RSS per open
socket. The goal (issue 12): p99 < 50 ms at 300 events/s with 5,000 sockets, 0 lost.

The full run: 5,000 sockets on each server, a 1 s warm-up at 50/s, then 5 s at 100/s, 5 s at
300/s and 4 s at 1,000/s; about 80 s here. (The phases were 10, 10 and 8 s: shortened so that
``make bench`` runs everything in under 10 minutes; the same sockets, clients, events and
goal, fewer samples: 1,500 events offered at the goal's 300/s.)

``BENCH_QUICK=1``: 500 sockets, short phases. ``BENCH_SIZES=5000,10000`` picks S.
``BENCH_KEEP=1`` keeps the temporary directory (server logs). The last line printed is one
JSON object.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import os
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from _procs import children, free_port, stop_server  # noqa: E402
from ingest import (  # noqa: E402
    BASE_TIME,
    RUN,
    SECRET,
    STAGES,
    Event,
    Parcel,
    World,
    clean_env,
    cpu_seconds,
    drain_outbox,
    log_findings,
    make_sqlite,
    prepare,
    seed,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZES = tuple(int(n) for n in os.environ.get("BENCH_SIZES", "500" if QUICK else "5000").split(","))
#: (events/s, seconds). Each order has three steps: the phases use at most 6,050 of a
#: 5,000-order run's 15,000 (1,250 of a quick run's 1,500), about a third of them opening
#: an order: a run that still runs out says so.
WARM_UP = (50, 1.0)  # first requests fill caches: not reported
RATES = ((100, 1.5), (300, 1.5), (1000, 0.6)) if QUICK else ((100, 5.0), (300, 5.0), (1000, 4.0))
POSTERS = 32  # keep-alive HTTP connections posting events
SETTLE_S = 10.0  # after a phase's last answer, for its frames (one that never comes is lost)
DRAIN_S = 10.0 if QUICK else 30.0  # at most, for the outbox worker to catch up between phases
GOAL = {"sockets": 5000, "rate": 300, "p99_ms": 50.0, "lost": 0}
HOST = "127.0.0.1"


def raise_fd_limit() -> int:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def percentile(values: list[float], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


# --- the world: orders with a shipped parcel and a tracking link each -----------------------


def tracking_tokens(world: World, parcels: list[Parcel]) -> list[str]:
    """Each parcel's order's tracking token, opened from the row with the server key (the
    seed keeps only the sealed form, as the app does)."""
    import sqlalchemy as sa

    from waybill.auth.tokens import open_tracking_token
    from waybill.models import Order

    engine = world.engine()
    try:
        with engine.connect() as conn:
            rows = {
                oid: (sealed, token_hash)
                for oid, sealed, token_hash in conn.execute(
                    sa.select(Order.id, Order.tracking_token_sealed, Order.tracking_token_hash)
                )
            }
    finally:
        engine.dispose()
    return [open_tracking_token(SECRET, *rows[p.order_id]) for p in parcels]


# --- servers ---------------------------------------------------------------------------------


class Server:
    """``waybill serve --workers 1`` or the baseline, on a free port."""

    def __init__(self, kind: str, world: World, log: Path) -> None:
        self.kind, self.port = kind, free_port()
        if kind == "waybill":
            cmd = [str(Path(sys.executable).with_name("waybill")), "serve", "--workers", "1"]
            env, cwd = world.env, world.instance  # cwd: no stray ./.env
        else:
            cmd = [sys.executable, str(ROOT / "bench" / "baseline_ws.py")]
            env, cwd = clean_env(), ROOT
        self.log = log
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            env=env,
            cwd=cwd,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.worker = 0

    async def ready(self) -> None:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited; see {self.log}")
            workers = children(self.proc.pid)
            if workers:
                try:
                    http = Http(self.port)
                    status, _ = await http.request("GET", "/nothing-here", b"")
                    http.close()
                    if status < 500:
                        self.worker = workers[0]
                        return
                except OSError:
                    pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} server did not start; see {self.log}")

    def stop(self) -> None:
        stop_server(self.proc)


class Http:
    """One keep-alive HTTP/1.1 connection, just enough for the merchant API (cheaper for the
    client than aiohttp, which shares the loop with thousands of sockets here)."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def request(
        self, method: str, path: str, body: bytes, headers: dict[str, str] | None = None
    ) -> tuple[int, bytes]:
        for attempt in (1, 2):
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.open_connection(HOST, self.port)
                head = f"{method} {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\n"
                for k, v in (headers or {}).items():
                    head += f"{k}: {v}\r\n"
                if body:
                    head += f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                self.writer.write(head.encode() + b"\r\n" + body)
                assert self.reader is not None
                status_line = await self.reader.readline()
                if not status_line:
                    raise ConnectionResetError
                status = int(status_line.split()[1])
                length, close = 0, False
                while (line := await self.reader.readline()) not in (b"\r\n", b""):
                    name, _, value = line.decode().partition(":")
                    if name.lower() == "content-length":
                        length = int(value)
                    elif name.lower() == "connection" and "close" in value.lower():
                        close = True
                data = await self.reader.readexactly(length) if length else b""
                if close:
                    self.close()
                return status, data
            except (OSError, asyncio.IncompleteReadError):
                # an idle keep-alive connection the server closed as we wrote: retried once
                # (every event carries its event_id, so a retry of one that went through is a
                # 200 and counts as an error, never as a second change)
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- the load: which order moves next, and what its socket is waiting for ----------------------


@dataclass
class Phase:
    name: str
    target: float
    seconds: float
    offered: int = 0  # events due in the phase
    sent: int = 0
    recorded: int = 0  # answered 201
    errors: int = 0
    error_samples: list[str] = field(default_factory=list)
    exhausted: bool = False
    last_start: float = 0.0  # seconds from the phase's start to its last POST's start
    latencies: list[float] = field(default_factory=list)  # POST start -> frame
    answers: list[float] = field(default_factory=list)  # POST start -> answer
    start_lag: list[float] = field(default_factory=list)  # due -> POST start
    lost: int = 0
    client_cores: float = 0.0  # this process's CPU over the phase's wall clock
    server_cores: float = 0.0  # the server worker's

    @property
    def rate(self) -> float:
        """Events recorded per second of posting (a full phase's events over its time)."""
        return self.recorded / (self.last_start + 1 / self.target) if self.sent else 0.0

    @property
    def kept_up(self) -> bool:
        """Every event due in the phase was posted in its time, and recorded."""
        return self.sent == self.offered and self.recorded == self.sent

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "target_per_s": self.target,
            "achieved_per_s": round(self.rate, 1),
            "kept_up": self.kept_up,
            "offered": self.offered,
            "sent": self.sent,
            "recorded": self.recorded,
            "errors": self.errors,
            "lost": self.lost,
            "p50_ms": ms(percentile(self.latencies, 50)),
            "p99_ms": ms(percentile(self.latencies, 99)),
            "max_ms": ms(max(self.latencies)) if self.latencies else None,
            "answer_p50_ms": ms(percentile(self.answers, 50)),
            "answer_p99_ms": ms(percentile(self.answers, 99)),
            "start_lag_p99_ms": ms(percentile(self.start_lag, 99)),
            "client_cores": round(self.client_cores, 2),
            "server_cores": round(self.server_cores, 2),
            "ran_out_of_orders": self.exhausted,
            "error_samples": self.error_samples[:3],
        }


@dataclass
class Waiting:
    """An event whose frame has not arrived yet on its order's socket."""

    status: str
    stage: int
    started: float
    phase: Phase
    answered: bool = False


class Journeys:
    """The orders' next steps. An event goes to a random order with a step left, from one of
    the stages picked at random (so the three kinds come evenly mixed, as soon as orders have
    moved on), and never to an order whose previous frame is still on the way: that frame
    would otherwise carry the newer status (an order changed twice before the dispatcher's
    turn is rendered once)."""

    def __init__(self, count: int) -> None:
        self.idle: list[list[int]] = [list(range(count)), [], []]
        self.waiting: dict[int, Waiting] = {}

    def take(self) -> tuple[int, int] | None:
        stages = [s for s, pool in enumerate(self.idle) if pool]
        if not stages:
            return None
        stage = random.choice(stages)
        pool = self.idle[stage]
        j = random.randrange(len(pool))
        pool[j], pool[-1] = pool[-1], pool[j]
        return pool.pop(), stage

    def arrived(self, idx: int, status: str, now: float) -> None:
        """A frame on order ``idx``'s socket: the one awaited when it has the new status."""
        w = self.waiting.get(idx)
        if w is None or w.status != status:
            return
        del self.waiting[idx]
        w.phase.latencies.append(now - w.started)
        if w.stage + 1 < len(STAGES):
            self.idle[w.stage + 1].append(idx)


# --- sockets ---------------------------------------------------------------------------------


@dataclass
class Sockets:
    """S WebSocket clients in one event loop; each frame handed to ``journeys``."""

    port: int
    journeys: Journeys
    hellos: int = 0
    dropped: int = 0
    frames: int = 0
    frame_bytes: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closing: bool = False

    async def open(self, paths: list[str]) -> float:
        started = time.perf_counter()
        gate = asyncio.Semaphore(200)
        loop = asyncio.get_running_loop()
        ready = [loop.create_future() for _ in paths]
        for i, path in enumerate(paths):
            self.tasks.append(asyncio.create_task(self._run(i, path, gate, ready[i])))
        await asyncio.gather(*ready)
        return time.perf_counter() - started

    async def _run(
        self, idx: int, path: str, gate: asyncio.Semaphore, ready: asyncio.Future[None]
    ) -> None:
        try:
            async with gate:
                reader, writer = await asyncio.open_connection(HOST, self.port)
                key = base64.b64encode(os.urandom(16)).decode()
                head = (
                    f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
                    f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                    "Sec-WebSocket-Version: 13\r\n"
                )
                writer.write(head.encode() + b"\r\n")
                response = await reader.readuntil(b"\r\n\r\n")
                if not response.startswith(b"HTTP/1.1 101"):
                    raise RuntimeError(f"handshake refused: {response[:80]!r}")
                self.writers.append(writer)
                opcode, payload = await self._frame(reader, writer)
                if opcode != 1 or b'"hello"' not in payload:
                    raise RuntimeError(f"expected hello, got {payload[:80]!r}")
                self.hellos += 1
                ready.set_result(None)
        except BaseException as exc:
            if not ready.done():
                ready.set_exception(exc)
            return
        try:
            while True:
                opcode, payload = await self._frame(reader, writer)
                if opcode == 1:
                    now = time.perf_counter()
                    frame = json.loads(payload)
                    if frame.get("type") == "order.updated":
                        self.frames += 1
                        self.frame_bytes += len(payload)
                        self.journeys.arrived(idx, frame["order"]["status"], now)
                elif opcode == 8:
                    break
        except (asyncio.IncompleteReadError, OSError):
            pass
        if not self.closing:
            self.dropped += 1

    @staticmethod
    async def _frame(
        reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> tuple[int, bytes]:
        while True:
            b0, b1 = await reader.readexactly(2)
            n = b1 & 0x7F
            if n == 126:
                n = int.from_bytes(await reader.readexactly(2), "big")
            elif n == 127:
                n = int.from_bytes(await reader.readexactly(8), "big")
            payload = await reader.readexactly(n)
            opcode = b0 & 0x0F
            if opcode == 9:  # ping: answer with a masked pong
                mask = os.urandom(4)
                masked = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
                writer.write(bytes((0x8A, 0x80 | len(payload))) + mask + masked)
                continue
            return opcode, payload

    async def close(self) -> None:
        self.closing = True
        for w in self.writers:
            w.close()
        for t in self.tasks:
            t.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


class Load:
    """POSTERS keep-alive clients taking the phase's slots: event i is due at start + i/rate
    and posted then or, when every client is still waiting for an answer, as soon as one is
    free; no event is started after the phase's time is up (those are "offered, not sent")."""

    def __init__(
        self,
        kind: str,
        port: int,
        world: World,
        parcels: list[Parcel],
        journeys: Journeys,
        frame_size: int,
        server_pid: int,
    ) -> None:
        self.server_pid = server_pid
        self.kind, self.world, self.parcels, self.journeys = kind, world, parcels, journeys
        self.frame_size = frame_size  # the baseline pads its frames to Waybill's size
        self.conns = [Http(port) for _ in range(POSTERS)]
        self.headers = [{"Authorization": f"Bearer {k}"} for k in world.keys]
        self.phase_start = 0.0  # perf_counter() at the running phase's start

    async def post_event(self, http: Http, phase: Phase, idx: int, stage: int) -> None:
        status_name = STAGES[stage]
        started = time.perf_counter()
        wait = Waiting(status_name, stage, started, phase)
        phase.last_start = max(phase.last_start, started - self.phase_start)
        self.journeys.waiting[idx] = wait  # before sending: the frame may beat the answer
        phase.sent += 1
        if self.kind == "waybill":
            parcel = self.parcels[idx]
            ev = Event(
                parcel,
                status_name,
                BASE_TIME + timedelta(hours=stage + 1),
                f"{RUN}-{parcel.shipment_id}-{stage}",
            )
            path, expect = f"/api/v1/shipments/{parcel.shipment_id}/events", 201
            body, headers = json.dumps(ev.body()).encode(), self.headers[parcel.key]
        else:
            path, expect, headers = "/publish", 200, None
            body = json.dumps({"c": idx, "status": status_name, "size": self.frame_size}).encode()
        try:
            status, data = await http.request("POST", path, body, headers)
        except (OSError, asyncio.IncompleteReadError) as exc:
            status, data = 599, repr(exc).encode()
        now = time.perf_counter()
        phase.answers.append(now - started)
        if status != expect:
            phase.errors += 1
            if len(phase.error_samples) < 3:
                phase.error_samples.append(f"{status} {data[:160].decode(errors='replace')}")
            if self.journeys.waiting.get(idx) is wait:
                del self.journeys.waiting[idx]  # that order is left alone from now on
            return
        phase.recorded += 1
        wait.answered = True

    async def run(self, phase: Phase) -> Phase:
        loop = asyncio.get_running_loop()
        phase.offered = int(phase.target * phase.seconds)
        start = loop.time()
        self.phase_start = time.perf_counter()
        end = start + phase.seconds
        slots = iter(range(phase.offered))
        cpu0, server_cpu0 = time.process_time(), cpu_seconds([self.server_pid])

        async def poster(http: Http) -> None:
            for i in slots:
                due = start + i / phase.target
                now = loop.time()
                if now > end:
                    return
                if due > now:
                    await asyncio.sleep(due - now)
                picked = self.journeys.take()
                if picked is None:
                    phase.exhausted = True
                    return
                phase.start_lag.append(max(0.0, loop.time() - due))
                await self.post_event(http, phase, *picked)

        await asyncio.gather(*(poster(c) for c in self.conns))
        wall = loop.time() - start
        phase.client_cores = (time.process_time() - cpu0) / wall
        phase.server_cores = (cpu_seconds([self.server_pid]) - server_cpu0) / wall
        # let the last frames arrive (a lost one is one that never does)
        settle = loop.time() + SETTLE_S
        while loop.time() < settle and any(
            w.phase is phase for w in self.journeys.waiting.values()
        ):
            await asyncio.sleep(0.05)
        for idx, w in list(self.journeys.waiting.items()):
            if w.phase is phase:
                phase.lost += w.answered
                del self.journeys.waiting[idx]  # never again: its socket missed a frame
        return phase

    def close(self) -> None:
        for c in self.conns:
            c.close()


async def measure(
    kind: str,
    count: int,
    world: World,
    parcels: list[Parcel],
    tokens: list[str],
    log: Path,
    frame_size: int,
) -> dict[str, Any]:
    server = Server(kind, world, log)
    try:
        await server.ready()
        await asyncio.sleep(1.0)
        before = rss_kb(server.worker)
        journeys = Journeys(count)
        sockets = Sockets(server.port, journeys)
        if kind == "waybill":
            paths = [f"/ws?track={tokens[i]}" for i in range(count)]
        else:
            paths = [f"/ws?c={i}" for i in range(count)]
        open_s = await sockets.open(paths)
        await asyncio.sleep(1.0)
        after = rss_kb(server.worker)
        # the client's own garbage collection must not stall the receipt of frames
        gc.collect()
        gc.freeze()
        gc.disable()
        load = Load(kind, server.port, world, parcels, journeys, frame_size, server.worker)
        phases: list[Phase] = []
        drains: list[dict[str, Any]] = []
        try:
            await load.run(Phase("warm-up", *WARM_UP))
            for rate, seconds in RATES:
                if kind == "waybill":  # one phase's mail must not load the next
                    waited, due = await drain_outbox(world, DRAIN_S)
                    drains.append({"before": f"{rate}/s", "waited_s": round(waited, 1), "due": due})
                print(f"   {kind}: {rate} events/s for {seconds} s", flush=True)
                phases.append(await load.run(Phase(f"{rate}/s", rate, seconds)))
        finally:
            load.close()
            gc.enable()
            gc.unfreeze()
        result = {
            "server": kind,
            "sockets": count,
            "open_seconds": round(open_s, 1),
            "rss_kb_per_socket": round((after - before) / count, 1),
            "rss_mb": round(after / 1024, 1),
            "dropped": sockets.dropped,
            "hellos": sockets.hellos,
            "frames": sockets.frames,
            "frame_bytes": round(sockets.frame_bytes / max(sockets.frames, 1)),
            "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared
            "phases": [p.row() for p in phases],
        }
        if kind == "waybill":
            result["outbox_drains"] = drains
        await sockets.close()
        return result
    finally:
        server.stop()
        if kind == "waybill":
            findings = log_findings(server.log, 1)
            print(
                f"   waybill serve stopped; its log: {findings['worker_timeouts']} worker "
                f"timeouts, {findings['loop_blocks_over_500ms']} event-loop blocks >= 500 ms, "
                f"{findings['errors_logged']} errors",
                flush=True,
            )


def goal_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """Issue 12's live goal, on the Waybill row at the goal's size (or the largest run)."""
    rows = [r for r in results if r["server"] == "waybill"]
    if not rows:
        return {"ok": None}
    r = next(
        (r for r in rows if r["sockets"] == GOAL["sockets"]), max(rows, key=lambda r: r["sockets"])
    )
    p = next((p for p in r["phases"] if p["target_per_s"] == GOAL["rate"]), None)
    if p is None:
        return {"ok": None}
    ok = (
        r["sockets"] >= GOAL["sockets"]
        and p["p99_ms"] < GOAL["p99_ms"]
        and p["lost"] == 0
        and r["dropped"] == 0
        and p["kept_up"]
    )
    return {
        "goal": f"p99 < {GOAL['p99_ms']:.0f} ms at {GOAL['rate']}/s with {GOAL['sockets']:,} "
        "sockets, 0 lost",
        "sockets": r["sockets"],
        "p99_ms": p["p99_ms"],
        "lost": p["lost"],
        "dropped": r["dropped"],
        "achieved_per_s": p["achieved_per_s"],
        "ok": ok,
    }


def print_table(results: list[dict[str, Any]], goal: dict[str, Any]) -> None:
    print()
    print(
        "Live: tracking-link sockets, status-changing shipment events from "
        f"{POSTERS} keep-alive clients{' (BENCH_QUICK)' if QUICK else ''}"
    )
    print(
        f"{'server':9} {'S':>6} {'KB/sock':>8} {'open s':>7} {'dropped':>7} "
        f"{'frames':>7} {'bytes/frame':>11} {'load':>5}"
    )
    for r in results:
        print(
            f"{r['server']:9} {r['sockets']:>6} {r['rss_kb_per_socket']:>8} "
            f"{r['open_seconds']:>7} {r['dropped']:>7} {r['frames']:>7} "
            f"{r['frame_bytes']:>11} {r['load_avg_1m']:>5}"
        )
    print()
    print(
        "POST start -> frame on that order's socket (p50/p99/max); POST start -> its answer; "
        "CPU cores used by the server worker / this client"
    )
    print(
        f"{'server':9} {'S':>6} {'target/s':>8} {'got/s':>7} {'p50 ms':>7} {'p99 ms':>7} "
        f"{'max ms':>7} {'answer p99':>10} {'lost':>5} {'errors':>6} {'not sent':>8} "
        f"{'cores s/c':>9}  note"
    )
    for r in results:
        for p in r["phases"]:
            notes = []
            if not p["kept_up"]:
                notes.append("could not keep up with the offered rate")
            if p["ran_out_of_orders"]:
                notes.append("ran out of orders")
            print(
                f"{r['server']:9} {r['sockets']:>6} {p['target_per_s']:>8} "
                f"{p['achieved_per_s']:>7} {p['p50_ms']:>7} {p['p99_ms']:>7} "
                f"{p['max_ms'] if p['max_ms'] is not None else '-':>7} "
                f"{p['answer_p99_ms']:>10} {p['lost']:>5} {p['errors']:>6} "
                f"{p['offered'] - p['sent']:>8} "
                f"{p['server_cores']:>4.2f}/{p['client_cores']:<4.2f}  {'; '.join(notes)}".rstrip()
            )
            if p["error_samples"]:
                print(f"{'':17} errors, e.g. {p['error_samples'][0]}")
    print()
    if goal.get("ok") is not None:
        print(
            f"goal: {goal['goal']}: p99 {goal['p99_ms']} ms with {goal['sockets']:,} sockets at "
            f"{goal['achieved_per_s']}/s, {goal['lost']} lost, {goal['dropped']} dropped: "
            f"{'ok' if goal['ok'] else 'MISSED'}"
        )
    print()


def main() -> None:
    fds = raise_fd_limit()
    if fds < max(SIZES) + 500:
        print(f"warning: only {fds} file descriptors allowed; large sizes may fail")
    tmp = Path(tempfile.mkdtemp(prefix="waybill-bench-live-"))
    try:
        t0 = time.perf_counter()
        world = make_sqlite(tmp)
        prepare(world)
        seed(world, max(SIZES))
        parcels = list(world.pool)
        tokens = tracking_tokens(world, parcels)
        print(f"seeded {max(SIZES)} orders in {time.perf_counter() - t0:.1f} s", flush=True)
        results = []
        for count in SIZES:
            frame_size = 0
            for kind in ("waybill", "baseline"):
                print(f"-- {kind}, {count} sockets", flush=True)
                result = asyncio.run(
                    measure(kind, count, world, parcels, tokens, tmp / f"{kind}.log", frame_size)
                )
                frame_size = frame_size or result["frame_bytes"]
                results.append(result)
            # the next size starts from fresh orders: every order's journey is used once
            if count != SIZES[-1]:
                seed(world, max(SIZES))
                parcels = list(world.pool)[-max(SIZES) :]
                tokens = tracking_tokens(world, parcels)
        goal = goal_of(results)
        print_table(results, goal)
        print(
            json.dumps(
                {
                    "bench": "live",
                    "quick": QUICK,
                    "posters": POSTERS,
                    "goal": goal,
                    "ok": goal.get("ok"),
                    "results": results,
                }
            )
        )
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept {tmp} (server logs)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
