"""Live updates end to end: S open sockets (one per signed-in customer) on ``waybill serve``
(one gunicorn gevent worker), while the merchant API takes order events for random customers,
first at 100/s, then at rising rates, then as fast as it goes. Beside it, in the same run, the
baseline (bench/baseline_ws.py: flask-sock broadcast, no database) under the same settings.

Measured per server and S: latency from the POST being answered to the socket receiving the
update (p50/p99), updates lost, sockets dropped, the highest rate held with p99 < 100 ms, and
the worker's RSS per open socket. ``BENCH_QUICK=1`` shrinks everything. The last line printed
is one JSON object.
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
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _procs import children, free_port  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "server"))

QUICK = os.environ.get("BENCH_QUICK") == "1"
SIZES = tuple(
    int(n) for n in os.environ.get("BENCH_SIZES", "300" if QUICK else "1000,10000").split(",")
)
STEADY = (100, 3.0 if QUICK else 10.0)  # events/s, seconds
RAMP = (200, 400) if QUICK else (200, 400, 800)
STEP_SECONDS = 2.0 if QUICK else 5.0
FLAT_OUT_SECONDS = 2.0 if QUICK else 5.0
POSTERS = 32  # keep-alive HTTP connections posting events
MERCHANTS = 16  # the merchant API is rate-limited per key (6,000/minute)
TARGET_P99 = 0.100
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


# --- the world: customers with an order and a signed-in session each ------------------------


@dataclass
class World:
    env: dict[str, str]
    keys: list[str]
    customers: list[tuple[int, str, int]]  # (order id, session cookie, merchant index)


def seed(instance: Path, count: int) -> World:
    from waybill.auth.merchant_keys import create_merchant
    from waybill.auth.tokens import digest, new_token
    from waybill.config import Settings
    from waybill.db import create_engine, migrate, session_scope
    from waybill.ingest import create_order
    from waybill.models import AuthSession, OrderCreate

    env = {
        **os.environ,
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": f"sqlite:///{instance / 'waybill.db'}",
        "WAYBILL_BROKER_URL": "memory://",
        "WAYBILL_SECRET_KEY": "bench-secret-key",
        "WAYBILL_RUN_WORKER": "0",
    }
    settings = Settings.from_env({k: v for k, v in env.items() if k.startswith("WAYBILL_")})
    engine = create_engine(settings)
    migrate(engine)
    keys: list[str] = []
    customers: list[tuple[int, str, int]] = []
    with session_scope(engine) as session:
        merchants = []
        for i in range(MERCHANTS):
            m, key = create_merchant(session=session, name=f"Bench shop {i}")
            merchants.append(m)
            keys.append(key)
    for start in range(0, count, 1000):
        with session_scope(engine) as session:
            for i in range(start, min(count, start + 1000)):
                mi = i % MERCHANTS
                order, _ = create_order(
                    session=session,
                    merchant=merchants[mi],
                    secret_key=settings.secret_key,
                    data=OrderCreate.model_validate(
                        {
                            "external_id": f"B-{i}",
                            "customer": {"email": f"c{i}@bench.example"},
                            "items": [{"name": "Lamp", "quantity": 1}],
                        }
                    ),
                )
                sid = new_token(32)
                session.add(
                    AuthSession(
                        customer_id=order.customer_id, id_hash=digest(sid), csrf_token=new_token(24)
                    )
                )
                customers.append((order.id, sid, mi))  # type: ignore[arg-type]
    engine.dispose()
    return World(env=env, keys=keys, customers=customers)


# --- servers ---------------------------------------------------------------------------------


class Server:
    def __init__(self, kind: str, env: dict[str, str], log: Path) -> None:
        self.kind, self.port = kind, free_port()
        cmd = (
            [str(Path(sys.executable).with_name("waybill")), "serve", "--workers", "1"]
            if kind == "waybill"
            else [sys.executable, str(ROOT / "bench" / "baseline_ws.py")]
        )
        self.proc = subprocess.Popen(
            [*cmd, "--port", str(self.port)],
            env=env,
            stdout=log.open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.worker = 0

    async def ready(self) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.kind} server exited")
            workers = children(self.proc.pid)
            if workers:
                try:
                    status, _ = await Http(self.port).request("GET", "/nothing-here", b"")
                    if status < 500:
                        self.worker = workers[0]
                        return
                except OSError:
                    pass
            await asyncio.sleep(0.2)
        raise RuntimeError(f"{self.kind} server did not start")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Http:
    """One keep-alive HTTP/1.1 connection, just enough for the merchant API."""

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
                self.close()
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None


# --- sockets ---------------------------------------------------------------------------------


@dataclass
class Sockets:
    """S WebSocket clients in one event loop; every update's arrival time by cursor."""

    port: int
    received: dict[int, tuple[float, int]] = field(default_factory=dict)
    hellos: int = 0
    dropped: int = 0
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    writers: list[asyncio.StreamWriter] = field(default_factory=list)
    closing: bool = False

    async def open(self, count: int, path_of: Any, cookie_of: Any) -> float:
        started = time.perf_counter()
        gate = asyncio.Semaphore(200)
        ready = [asyncio.get_running_loop().create_future() for _ in range(count)]
        for i in range(count):
            self.tasks.append(
                asyncio.create_task(self._run(i, path_of(i), cookie_of(i), gate, ready[i]))
            )
        await asyncio.gather(*ready)
        return time.perf_counter() - started

    async def _run(
        self,
        idx: int,
        path: str,
        cookie: str | None,
        gate: asyncio.Semaphore,
        ready: asyncio.Future[None],
    ) -> None:
        async with gate:
            reader, writer = await asyncio.open_connection(HOST, self.port)
            key = base64.b64encode(os.urandom(16)).decode()
            head = (
                f"GET {path} HTTP/1.1\r\nHost: {HOST}:{self.port}\r\nUpgrade: websocket\r\n"
                f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            )
            if cookie:
                head += f"Cookie: waybill_session={cookie}\r\n"
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
        try:
            while True:
                opcode, payload = await self._frame(reader, writer)
                if opcode == 1:
                    now = time.perf_counter()
                    # b'{"type":"order.updated","cursor":123,...'
                    start = payload.find(b'"cursor":') + 9
                    end = payload.find(b",", start)
                    self.received[int(payload[start:end])] = (now, idx)
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


# --- load ------------------------------------------------------------------------------------


@dataclass
class Phase:
    name: str
    target: float | None  # events/s, None = as fast as it goes
    seconds: float
    sent: int = 0
    errors: int = 0
    rate: float = 0.0
    latencies: list[float] = field(default_factory=list)  # POST answered -> frame received
    round_trips: list[float] = field(default_factory=list)  # POST sent -> frame received
    lost: int = 0

    def row(self) -> dict[str, Any]:
        return {
            "phase": self.name,
            "target_per_s": self.target,
            "achieved_per_s": round(self.rate, 1),
            "sent": self.sent,
            "errors": self.errors,
            "p50_ms": round(percentile(self.latencies, 50) * 1000, 2),
            "p99_ms": round(percentile(self.latencies, 99) * 1000, 2),
            "sent_p50_ms": round(percentile(self.round_trips, 50) * 1000, 2),
            "sent_p99_ms": round(percentile(self.round_trips, 99) * 1000, 2),
            "lost": self.lost,
        }


class Load:
    def __init__(self, kind: str, port: int, world: World, count: int, sockets: Sockets) -> None:
        self.kind, self.world, self.count, self.sockets = kind, world, count, sockets
        self.conns = [Http(port) for _ in range(POSTERS)]
        self.event_no = 0
        self.run_id = os.urandom(6).hex()  # event ids are deduplicated per order: never reuse

    async def post_event(
        self, http: Http, phase: Phase, answered: list[tuple[int, int, float, float]]
    ) -> None:
        customer = random.randrange(self.count)
        sent = time.perf_counter()
        self.event_no += 1
        if self.kind == "waybill":
            order_id, _, mi = self.world.customers[customer]
            body = json.dumps(
                {"status": "processing", "event_id": f"{self.run_id}-{self.event_no}"}
            ).encode()
            status, data = await http.request(
                "POST",
                f"/api/v1/orders/{order_id}/events",
                body,
                {"Authorization": f"Bearer {self.world.keys[mi]}"},
            )
        else:
            status, data = await http.request(
                "POST", "/publish", json.dumps({"c": customer}).encode()
            )
        now = time.perf_counter()
        phase.sent += 1
        if status != (201 if self.kind == "waybill" else 200):  # 200 = duplicate: no change
            phase.errors += 1
            return
        answered.append((int(json.loads(data)["cursor"]), customer, sent, now))

    async def run(self, phase: Phase) -> Phase:
        answered: list[tuple[int, int, float, float]] = []
        loop = asyncio.get_running_loop()
        start = loop.time()
        deadline = start + phase.seconds
        queue: asyncio.Queue[int | None] = asyncio.Queue()

        async def paced() -> None:
            assert phase.target is not None
            for i in range(int(phase.target * phase.seconds)):
                delay = start + i / phase.target - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
                queue.put_nowait(i)
            for _ in self.conns:
                queue.put_nowait(None)

        async def poster(http: Http) -> None:
            if phase.target is None:
                while loop.time() < deadline:
                    await self.post_event(http, phase, answered)
                return
            while await queue.get() is not None:
                await self.post_event(http, phase, answered)

        producer = asyncio.create_task(paced()) if phase.target is not None else None
        await asyncio.gather(*(poster(c) for c in self.conns))
        if producer is not None:
            await producer
        phase.rate = phase.sent / max(loop.time() - start, 1e-9)
        # let the last updates arrive (a lost one is one that never does)
        settle = loop.time() + 10.0
        while loop.time() < settle and any(c not in self.sockets.received for c, *_ in answered):
            await asyncio.sleep(0.05)
        for cursor, customer, t_sent, t_answer in answered:
            got = self.sockets.received.get(cursor)
            if got is None or got[1] != customer:
                phase.lost += 1
            else:  # a frame that beats the answer counts as 0
                phase.latencies.append(max(0.0, got[0] - t_answer))
                phase.round_trips.append(got[0] - t_sent)
        return phase

    def close(self) -> None:
        for c in self.conns:
            c.close()


def max_rate(phases: list[Phase], metric: str) -> int:
    """The highest rate held (95 % of target, nothing lost or refused) with p99 < 100 ms."""
    best = 0
    for p in phases:
        if p.errors or p.lost or percentile(getattr(p, metric), 99) >= TARGET_P99:
            continue
        if p.target is None:
            best = max(best, int(p.rate))
        elif p.rate >= 0.95 * p.target:
            best = max(best, int(p.target))
    return best


async def measure(kind: str, count: int, world: World, log: Path) -> dict[str, Any]:
    env = world.env if kind == "waybill" else {**os.environ}
    server = Server(kind, env, log)
    try:
        await server.ready()
        await asyncio.sleep(1.0)
        before = rss_kb(server.worker)
        sockets = Sockets(server.port)
        if kind == "waybill":
            open_s = await sockets.open(count, lambda i: "/ws", lambda i: world.customers[i][1])
        else:
            open_s = await sockets.open(count, lambda i: f"/ws?c={i}", lambda i: None)
        await asyncio.sleep(1.0)
        after = rss_kb(server.worker)
        # the client's own garbage collection must not stall the receipt of frames
        gc.collect()
        gc.freeze()
        gc.disable()
        load = Load(kind, server.port, world, count, sockets)
        await load.run(Phase("warm-up", 50, 2.0))  # first requests fill caches: not reported
        phases = [await load.run(Phase("steady", STEADY[0], STEADY[1]))]
        for rate in RAMP:
            phases.append(await load.run(Phase(f"ramp {rate}/s", rate, STEP_SECONDS)))
        phases.append(await load.run(Phase("flat out", None, FLAT_OUT_SECONDS)))
        load.close()
        sustained = max_rate(phases, "latencies")
        sustained_sent = max_rate(phases, "round_trips")
        result = {
            "server": kind,
            "sockets": count,
            "open_seconds": round(open_s, 1),
            "rss_kb_per_socket": round((after - before) / count, 1),
            "rss_mb": round(after / 1024, 1),
            "dropped": sockets.dropped,
            "load_avg_1m": round(os.getloadavg()[0], 2),  # the machine is shared
            "max_rate_p99_under_100ms": sustained,  # POST answered -> frame
            "max_rate_sent_p99_under_100ms": sustained_sent,  # POST sent -> frame
            "phases": [p.row() for p in phases],
        }
        await sockets.close()
        gc.enable()
        gc.unfreeze()
        return result
    finally:
        server.stop()


def print_table(results: list[dict[str, Any]]) -> None:
    print()
    print(
        f"{'server':9} {'S':>6} {'KB/sock':>8} {'open s':>7} {'dropped':>7} "
        f"{'max/s p99<100ms':>15} {'(sent)':>6} {'load':>5}"
    )
    for r in results:
        print(
            f"{r['server']:9} {r['sockets']:>6} {r['rss_kb_per_socket']:>8} "
            f"{r['open_seconds']:>7} {r['dropped']:>7} {r['max_rate_p99_under_100ms']:>15} "
            f"{r['max_rate_sent_p99_under_100ms']:>6} {r['load_avg_1m']:>5}"
        )
    print()
    print("latency: POST answered -> frame received (p50/p99); POST sent -> frame (sent p50/p99)")
    print(
        f"{'server':9} {'S':>6} {'phase':12} {'target/s':>8} {'got/s':>7} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'sent p50':>8} {'sent p99':>8} {'lost':>5} {'errors':>6}"
    )
    for r in results:
        for p in r["phases"]:
            target = p["target_per_s"] or "max"
            print(
                f"{r['server']:9} {r['sockets']:>6} {p['phase']:12} {target:>8} "
                f"{p['achieved_per_s']:>7} {p['p50_ms']:>7} {p['p99_ms']:>7} "
                f"{p['sent_p50_ms']:>8} {p['sent_p99_ms']:>8} {p['lost']:>5} "
                f"{p['errors']:>6}"
            )
    print()


def main() -> None:
    fds = raise_fd_limit()
    if fds < max(SIZES) + 500:
        print(f"warning: only {fds} file descriptors allowed; large sizes may fail")
    tmp = Path(tempfile.mkdtemp(prefix="waybill-bench-"))
    try:
        t0 = time.perf_counter()
        world = seed(tmp / "instance", max(SIZES))
        print(f"seeded {max(SIZES)} customers in {time.perf_counter() - t0:.1f} s", flush=True)
        results = []
        for count in SIZES:
            for kind in ("waybill", "baseline"):
                print(f"-- {kind}, {count} sockets", flush=True)
                results.append(asyncio.run(measure(kind, count, world, tmp / "server.log")))
        print_table(results)
        print(json.dumps({"bench": "live", "quick": QUICK, "results": results}))
    finally:
        if os.environ.get("BENCH_KEEP") == "1":
            print(f"kept {tmp} (server.log)", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
