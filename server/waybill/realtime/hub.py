"""The WebSocket hub: ``/ws``, live ``order.updated`` frames and resume from the change log.

How one change reaches the screens (per worker process):

* the broker only wakes the hub's dispatcher; the dispatcher reads the change log
  (``Change.id > high-water mark``, in id order), renders each changed order that a socket
  here may see once, encodes one frame, and hands the same bytes to every such socket;
* a socket is a plain greenlet reading its own frames; writes never block the loop: a
  frame goes out with a non-blocking ``send`` and whatever the kernel does not take waits in
  a small per-socket buffer drained by a short-lived writer; a socket whose buffer overflows
  is closed with :data:`CLOSE_RECONNECT` so that it reconnects and resumes;
* resume is answered from the database, so it is right after a restart and on any worker.

Cursor labels: the ``cursor`` of an ``order.updated`` frame is the id of the latest change
of that order that the frame covers, never more than the dispatcher's high-water mark, so
the frames of one socket carry growing cursors and a client that stores the last one can
always resume from it without a gap.
"""

from __future__ import annotations

import contextlib
import gc
import json
import logging
import socket
import struct
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, Flask, current_app, g, request
from flask_sock import Sock
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from wsproto.events import BytesMessage, CloseConnection, Ping, Pong, TextMessage

from waybill.models import Change, Order
from waybill.realtime.broker import SESSIONS_ENDED, Broker, Message

log = logging.getLogger(__name__)

#: Sent when a socket fell too far behind: "reconnect and resume from your last cursor".
CLOSE_RECONNECT = 1013
#: Sent on shutdown (SIGTERM): "going away, reconnect (elsewhere) and resume".
CLOSE_GOING_AWAY = 1001
#: No session cookie, a session that is over, or a cookie from another site's page.
CLOSE_UNAUTHORIZED = 4401
#: ``?track=`` with a token that matches no order.
CLOSE_NOT_FOUND = 4404
CLOSE_TOO_BIG = 1009


PING_FRAME = b"\x89\x00"
MAX_INCOMING = 4096  # a resume message is ~40 bytes
DISPATCH_CHUNK = 200  # changes per dispatcher turn; the loop runs others between turns


bp = Blueprint("realtime", __name__)
sock = Sock()


@dataclass(frozen=True)
class Scope:
    """What one socket may see: all of a customer's orders, or one order by its token."""

    customer_id: int | None = None
    order_id: int | None = None
    language: str = "en"
    session_id: int | None = None  # the sign-in that opened a customer socket


# --- frames ---------------------------------------------------------------------------------


def text_frame(payload: bytes) -> bytes:
    """One unmasked, uncompressed text frame: the same bytes suit every socket."""
    n = len(payload)
    if n < 126:
        return bytes((0x81, n)) + payload
    if n < 65536:
        return struct.pack("!BBH", 0x81, 126, n) + payload
    return struct.pack("!BBQ", 0x81, 127, n) + payload


def close_frame(code: int, reason: str = "") -> bytes:
    payload = struct.pack("!H", code) + reason.encode()[:120]
    return bytes((0x88, len(payload))) + payload


def _json(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def _updated(cursor: int, order: bytes) -> bytes:
    """An ``order.updated`` frame around an order already encoded once for every socket."""
    return text_frame(b'{"type":"order.updated","cursor":%d,"order":%s}' % (cursor, order))


# --- one socket -----------------------------------------------------------------------------


class Connection:
    """One open socket: its scope, its cursor and its bounded pending-write buffer.

    Every method is called with the hub's lock held, except :meth:`_drain` (its own writer).
    """

    __slots__ = (
        "hub",
        "sock",
        "raw",
        "scope",
        "last",
        "held",
        "pending",
        "pending_size",
        "partial",
        "draining",
        "closing",
        "closed",
        "alive",
        "updated",
    )

    def __init__(self, hub: Hub, sock: socket.socket, scope: Scope) -> None:
        self.hub = hub
        self.sock = sock
        # gevent wraps the OS socket; writes go straight to it, flagged not to wait.
        self.raw: socket.socket = getattr(sock, "_sock", sock)
        self.scope = scope
        self.last = 0  # the highest cursor this socket has been given
        self.held: list[tuple[int, bytes]] | None = None  # live frames parked during a resume
        self.pending: deque[bytes | memoryview] = deque()
        self.pending_size = 0
        self.partial = False  # the first pending chunk is the tail of a half-sent frame
        self.draining = False
        self.closing = False  # a close frame is queued: nothing else goes out
        self.closed = False
        self.alive = True  # heard from since the last ping
        self.updated = False  # an order.updated frame has gone out on this socket

    def deliver(self, cursor: int, frame: bytes) -> None:
        if cursor <= self.last or self.closing:
            return
        if self.held is not None:
            self.held.append((cursor, frame))
            return
        self.last = cursor
        self.updated = True
        self.write(frame)

    def write(self, data: bytes) -> None:
        """Queue ``data`` after everything before it; never waits for the client."""
        if self.closed or self.closing:
            return
        if self.pending or self.draining:
            if self.pending_size + len(data) > self.hub.max_pending:
                self.hub.overflows += 1
                self.close(CLOSE_RECONNECT, "too far behind: reconnect and resume", drop=True)
                return
            self.pending.append(data)
            self.pending_size += len(data)
            return
        try:
            sent = self.raw.send(data, socket.MSG_DONTWAIT)
        except BlockingIOError:
            sent = 0
        except OSError:
            self.kill()
            return
        if sent < len(data):
            self.pending.append(memoryview(data)[sent:])
            self.pending_size += len(data) - sent
            self.partial = True
            self._start_drain()

    def close(self, code: int, reason: str, *, drop: bool = False, cut_off: bool = True) -> None:
        """Send a close frame after what is queued (or instead of it, when ``drop``)."""
        if self.closed or self.closing:
            return
        if drop and self.pending:
            # the chunk being written (or half written) must finish, or the stream breaks
            head = self.pending[0] if self.partial or self.draining else None
            self.pending.clear()
            self.pending_size = 0
            if head is not None:
                self.pending.append(head)
                self.pending_size = len(head)
        self.write(close_frame(code, reason))
        self.closing = True
        if cut_off:  # a client that does not read never takes the close frame
            self.hub.kill_later([self])

    def kill(self) -> None:
        """Drop the TCP connection; the reading greenlet then ends and unregisters."""
        if self.closed:
            return
        self.closed = True
        self.pending.clear()
        self.pending_size = 0
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)

    def _start_drain(self) -> None:
        if not self.draining:
            self.draining = True
            threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self) -> None:
        """Write the pending chunks, waiting for the client only in this writer."""
        lock = self.hub.lock
        while True:
            with lock:
                if not self.pending or self.closed:
                    self.draining = False
                    return
                chunk = self.pending[0]
            try:
                sent = self.sock.send(chunk)
            except TimeoutError:
                continue
            except OSError:
                with lock:
                    self.draining = False
                    self.kill()
                return
            with lock:
                if self.closed:
                    self.draining = False
                    return
                self.pending_size -= sent
                if sent == len(chunk):
                    self.pending.popleft()
                    self.partial = False
                else:
                    self.pending[0] = memoryview(chunk)[sent:]
                    self.partial = True


# --- the hub --------------------------------------------------------------------------------


class Hub:
    """Every open socket of this worker process, and the dispatcher that feeds them."""

    def __init__(
        self,
        *,
        engine: Engine,
        broker: Broker,
        base_url: str,
        secret_key: str,
        ping_interval: float = 25.0,
        poll_interval: float = 1.0,
        max_pending: int = 512 * 1024,
        send_buffer: int = 64 * 1024,
        close_grace: float = 30.0,
        gap_grace: float = 0.5,
    ) -> None:
        # reads only: SQLite transactions may begin deferred, beside the writers (WAL)
        self.engine = engine.execution_options(sqlite_begin="DEFERRED")
        self.broker = broker
        self.base_url = base_url
        self.secret_key = secret_key  # opens tracking tokens for the links
        self.ping_interval = ping_interval
        self.poll_interval = poll_interval
        self.max_pending = max_pending
        self.send_buffer = send_buffer
        self.close_grace = close_grace
        self.gap_grace = gap_grace
        self.lock = threading.RLock()
        self.by_customer: dict[int, set[Connection]] = {}
        self.by_order: dict[int, set[Connection]] = {}
        self.count = 0
        self.overflows = 0
        self.hwm = 0  # every change up to here has been handed to the sockets
        self._gaps: dict[int, float] = {}
        self._opened_since_freeze = 0
        self._closed_since_collect = 0
        self._last_freeze = 0.0
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._started = False
        self._shutting_down = False
        self._unsubscribe: Any = None

    # lifecycle

    def start(self) -> None:
        """Start on the first socket, so that apps that never serve one start nothing."""
        with self.lock:
            if self._started:
                return
            with Session(self.engine) as session:
                latest = select(sa.func.coalesce(sa.func.max(Change.id), 0))
                self.hwm = int(session.exec(latest).one())
            self._unsubscribe = self.broker.subscribe(self._on_message)
            for target, name in ((self._dispatch_loop, "dispatch"), (self._ping_loop, "ping")):
                threading.Thread(target=target, name=f"waybill-hub-{name}", daemon=True).start()
            self._started = True

    def close(self) -> None:
        """Stop the background work (tests; the process is ending otherwise)."""
        self._stop.set()
        self._wake.set()
        if self._unsubscribe is not None:
            self._unsubscribe()

    def shutdown(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server restarting", grace: float = 3.0
    ) -> None:
        """Close every socket with ``code`` so that clients reconnect elsewhere and resume."""
        with self.lock:
            self._shutting_down = True
            conns = list(self._all())
            for conn in conns:
                conn.close(code, reason, cut_off=False)
        self.kill_later(conns, grace)

    def _on_message(self, message: Message) -> None:
        """Wake the dispatcher. The work is its own: never in the committing request (it would
        answer only after every socket's frame was rendered) nor in the broker's subscriber.

        A :data:`SESSIONS_ENDED` message (sign-out on any worker) closes those sessions'
        sockets here; that is only a few close frames, so it is done in the subscriber."""
        if message.get("type") == SESSIONS_ENDED:
            try:
                ids = [int(i) for i in message.get("ids") or ()]
                customer = message.get("customer_id")
                customer_id = int(customer) if customer is not None else None
            except (TypeError, ValueError):
                log.warning("ignoring a malformed %s message", SESSIONS_ENDED)
                return
            self.close_sessions(ids, customer_id=customer_id)
            return
        self._wake.set()

    def _all(self) -> Iterable[Connection]:
        for conns in self.by_customer.values():
            yield from conns
        for conns in self.by_order.values():
            yield from conns

    def kill_later(self, conns: list[Connection], grace: float | None = None) -> None:
        """Drop these connections after a grace period unless they have closed by then.

        An overflowed socket holds only its close frame meanwhile, so the grace is long
        enough for a client that resumes reading to learn why it was closed."""

        def kill() -> None:
            with self.lock:
                for conn in conns:
                    conn.kill()

        timer = threading.Timer(self.close_grace if grace is None else grace, kill)
        timer.daemon = True
        timer.start()

    # one socket

    def serve(self, ws: Any, scope: Scope) -> None:
        """Run one socket until it closes: hello, then live frames and resumes."""
        self.start()
        raw_sock = ws.sock
        with contextlib.suppress(OSError):
            raw_sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, self.send_buffer)
        conn = Connection(self, raw_sock, scope)
        with self.lock:
            if self._shutting_down:
                conn.close(CLOSE_GOING_AWAY, "server restarting")
                return
            self._register(conn)
            conn.last = self.hwm
            conn.write(text_frame(_json({"type": "hello", "cursor": self.hwm})))
        try:
            self._read(ws, conn)
        finally:
            with self.lock:
                self._unregister(conn)
                conn.closed = True
                conn.pending.clear()

    def _register(self, conn: Connection) -> None:
        scope = conn.scope
        if scope.customer_id is not None:
            self.by_customer.setdefault(scope.customer_id, set()).add(conn)
        else:
            assert scope.order_id is not None
            self.by_order.setdefault(scope.order_id, set()).add(conn)
        self.count += 1
        self._opened_since_freeze += 1  # the dispatcher freezes them within a second

    def _unregister(self, conn: Connection) -> None:
        scope = conn.scope
        index, key = (
            (self.by_customer, scope.customer_id)
            if scope.customer_id is not None
            else (self.by_order, scope.order_id)
        )
        conns = index.get(key)  # type: ignore[call-overload]
        if conns is not None and conn in conns:
            conns.discard(conn)
            self.count -= 1
            self._closed_since_collect += 1
            if not conns:
                del index[key]  # type: ignore[arg-type]

    def _read(self, ws: Any, conn: Connection) -> None:
        """Read frames in this socket's own greenlet (no reader thread per socket)."""
        from wsproto.utilities import ProtocolError

        wsconn, sock_ = ws.ws, ws.sock
        incoming = bytearray()
        while not conn.closed:
            try:
                data = sock_.recv(4096)
            except OSError:
                return
            if not data:
                return
            conn.alive = True
            try:
                wsconn.receive_data(data)
                events = list(wsconn.events())
            except ProtocolError:
                return
            for event in events:
                if isinstance(event, (TextMessage, BytesMessage)):
                    incoming += event.data if isinstance(event.data, bytes) else event.data.encode()
                    if len(incoming) > MAX_INCOMING:
                        with self.lock:
                            conn.close(CLOSE_TOO_BIG, "message too big")
                        return
                    if event.message_finished:
                        text = bytes(incoming)
                        incoming.clear()
                        if isinstance(event, TextMessage):
                            self._on_client_message(conn, text)
                elif isinstance(event, Ping):
                    with self.lock:
                        conn.write(wsconn.send(event.response()))
                elif isinstance(event, Pong):
                    pass
                elif isinstance(event, CloseConnection):
                    with self.lock:
                        if not conn.closing:
                            conn.write(close_frame(event.code or 1000))
                            conn.closing = True
                    return

    def _on_client_message(self, conn: Connection, text: bytes) -> None:
        try:
            msg = json.loads(text)
        except ValueError:
            return
        if not isinstance(msg, dict) or msg.get("type") != "resume":
            return  # unknown messages are ignored, so clients may grow new ones
        cursor = msg.get("cursor")
        if isinstance(cursor, bool) or not isinstance(cursor, int) or not 0 <= cursor < 2**53:
            return  # not a cursor we ever sent (2**53: the largest a JavaScript client keeps)
        self.resume(conn, cursor)

    def resume(self, conn: Connection, after: int) -> None:
        """Send every visible order that changed after ``after`` once, then carry on live.

        Live frames are parked while the database is read, then those newer than the
        replay are sent: no gap (everything up to the high-water mark is in the replay,
        everything after it is parked) and no duplicate cursor.
        """
        with self.lock:
            if conn.closed or conn.closing:
                return
            conn.held = []
            upto = self.hwm
        try:
            frames = self._replay(conn.scope, min(after, upto), upto)
        except Exception:
            log.exception("resume failed")
            with self.lock:
                conn.held = None
                conn.close(CLOSE_RECONNECT, "resume failed: try again")
            return
        with self.lock:
            held, conn.held = conn.held or [], None
            # A cursor from the future (a database restored from backup) would mute the
            # socket until the log caught up with it: resume from what exists instead. Once
            # updates went out on this socket, never step back: every order whose last change
            # is at or below ``conn.last`` was already sent here in its latest state.
            after = min(after, upto)
            conn.last = max(conn.last, after) if conn.updated else after
            for cursor, frame in frames:
                conn.deliver(cursor, frame)
            for cursor, frame in held:
                conn.deliver(cursor, frame)

    def _replay(self, scope: Scope, after: int, upto: int) -> list[tuple[int, bytes]]:
        last_change = sa.func.max(Change.id)
        query = select(Change.order_id, last_change).where(Change.id > after, Change.id <= upto)
        if scope.customer_id is not None:
            query = query.where(Change.customer_id == scope.customer_id)
        else:
            query = query.where(Change.order_id == scope.order_id)
        with Session(self.engine) as session:
            labels = dict(session.exec(query.group_by(Change.order_id)).all())
            if not labels:
                return []
            orders = list(session.exec(select(Order).where(Order.id.in_(list(labels)))))  # type: ignore[attr-defined]
            rendered = self._render(session, orders, scope.language)
        return sorted((labels[oid], _updated(labels[oid], body)) for oid, body in rendered.items())

    def _render(self, session: Session, orders: list[Order], language: str) -> dict[int, bytes]:
        """Each order as the JSON of ``GET /api/me/orders/{id}`` / ``/api/track/<token>``."""
        from waybill.orders import render_orders

        out = render_orders(
            session,
            orders,
            base_url=self.base_url,
            secret_key=self.secret_key,
            language=language,
        )
        return {o.id: _json(o.model_dump(mode="json")) for o in out}

    # the dispatcher

    def _dispatch_loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(0.05 if self._gaps else self.poll_interval)
            self._wake.clear()
            if self._stop.is_set():
                return
            self._keep_gc_cheap()
            try:
                while self._dispatch_once():
                    time.sleep(0)  # a long backlog: let requests and sockets run between chunks
            except Exception:
                log.exception("live update dispatch failed; retrying")
                self._stop.wait(0.5)

    def _dispatch_once(self, limit: int = DISPATCH_CHUNK) -> bool:
        """Hand the next committed changes to the sockets; True when there may be more.

        Only the dispatcher runs this. The change log is read and the orders are rendered
        outside the registry lock (sockets open, close and resume meanwhile); the lock is held
        only to see which languages are wanted and to queue the frames."""
        with Session(self.engine) as session:
            rows = session.exec(
                select(Change.id, Change.order_id, Change.customer_id)
                .where(Change.id > self.hwm)
                .order_by(Change.id)  # type: ignore[arg-type]
                .limit(limit)
            ).all()
        rows = self._without_gaps(list(rows))
        if not rows:
            return False
        owner = {order_id: customer_id for _, order_id, customer_id in rows}
        with self.lock:
            wanted = self._wanted(owner)
        bodies = self._render_wanted(wanted)
        # A socket that opened while the orders were rendered may want another language:
        # render what is missing and look again (bounded: a second pass rarely finds any).
        for attempt in range(3):
            with self.lock:
                missing = self._deliver(rows, bodies, final=attempt == 2)
                if not missing:
                    self.hwm = rows[-1][0]
                    break
            bodies.update(self._render_wanted(missing))
        return len(rows) == limit

    def _wanted(self, owner: dict[int, int]) -> dict[str, set[int]]:
        """Which changed orders a socket here may see, by the language it reads them in."""
        wanted: dict[str, set[int]] = {}
        for order_id, customer_id in owner.items():
            for conn in self.by_customer.get(customer_id, ()):
                wanted.setdefault(conn.scope.language, set()).add(order_id)
            if order_id in self.by_order:
                wanted.setdefault("en", set()).add(order_id)
        return wanted

    def _deliver(
        self, rows: list[Any], bodies: dict[tuple[int, str], bytes], *, final: bool
    ) -> dict[str, set[int]]:
        """Queue one frame per change, in change order (an order changed twice in one chunk
        was rendered once, and both frames carry its current state). Unless ``final``, nothing
        goes out while any wanted body is missing: the missing ones are returned instead."""
        missing: dict[str, set[int]] = {}
        for _change_id, order_id, customer_id in rows:
            for conn in self.by_customer.get(customer_id, ()):
                if (order_id, conn.scope.language) not in bodies:
                    missing.setdefault(conn.scope.language, set()).add(order_id)
            if order_id in self.by_order and (order_id, "en") not in bodies:
                missing.setdefault("en", set()).add(order_id)
        if missing and not final:
            return missing
        for change_id, order_id, customer_id in rows:
            frames: dict[str, bytes] = {}
            for conn in list(self.by_customer.get(customer_id, ())):
                lang = conn.scope.language
                if lang not in frames and (order_id, lang) in bodies:
                    frames[lang] = _updated(change_id, bodies[(order_id, lang)])
                if lang in frames:
                    conn.deliver(change_id, frames[lang])
            track = self.by_order.get(order_id)
            if track and (order_id, "en") in bodies:
                frame = frames.get("en") or _updated(change_id, bodies[(order_id, "en")])
                for conn in list(track):
                    conn.deliver(change_id, frame)
        return {}

    def _render_wanted(self, wanted: dict[str, set[int]]) -> dict[tuple[int, str], bytes]:
        """Render each wanted order once per language (no lock held: this is the CPU work)."""
        ids = set().union(*wanted.values()) if wanted else set()
        if not ids:
            return {}
        with Session(self.engine) as session:
            orders = {o.id: o for o in session.exec(select(Order).where(Order.id.in_(ids)))}  # type: ignore[attr-defined]
            bodies: dict[tuple[int, str], bytes] = {}
            for lang, group in wanted.items():
                rendered = self._render(session, [orders[i] for i in group if i in orders], lang)
                bodies.update(((order_id, lang), body) for order_id, body in rendered.items())
        return bodies

    def _without_gaps(self, rows: list[Any]) -> list[Any]:
        """The rows up to the first id still missing (another transaction may commit it).

        On PostgreSQL ids are taken before commit, so a later id can be visible before an
        earlier one; a gap left by a rollback is skipped after ``gap_grace`` seconds.
        SQLite commits in id order and never waits here.
        """
        now = time.monotonic()
        expected = self.hwm + 1
        out = []
        for row in rows:
            if row[0] != expected:
                since = self._gaps.setdefault(expected, now)
                if now - since < self.gap_grace:
                    break
                self._gaps.pop(expected, None)
            out.append(row)
            expected = row[0] + 1
        for gap in [k for k in self._gaps if k < expected]:
            del self._gaps[gap]
        return out

    def _keep_gc_cheap(self) -> None:
        """Keep the objects of open sockets out of the cyclic garbage collector's way.

        With 10,000 sockets a full collection walks millions of objects and stalls the
        worker for 0.3-1.3 s (measured), which is every frame's latency. Objects that have
        lived through a socket's opening are moved to the permanent generation (freeze);
        reference counting still frees them when their socket goes. Cyclic garbage frozen
        by the way is reclaimed by one full collection once many sockets have closed.
        """
        now = time.monotonic()
        if self._closed_since_collect > max(1000, self.count // 4):
            self._closed_since_collect = 0
            gc.unfreeze()
            gc.collect()
            gc.freeze()
            self._opened_since_freeze = 0
        elif self._opened_since_freeze and now - self._last_freeze > 1.0:
            self._opened_since_freeze = 0
            self._last_freeze = now
            gc.freeze()

    # keepalive

    def close_sessions(self, session_ids: Iterable[int], *, customer_id: int | None = None) -> int:
        """Close (4401) this worker's sockets of these sign-ins now: signing out, signing a
        device out or signing out everywhere ends what is streaming at once. Whatever was
        queued for them and not yet sent is dropped, and nothing more goes out. With
        ``customer_id`` only that customer's sockets are looked at. Returns how many closed."""
        ended = set(session_ids)
        if not ended:
            return 0
        closed = 0
        with self.lock:
            conns = (
                list(self.by_customer.get(customer_id, ()))
                if customer_id is not None
                else list(self._all())
            )
            for conn in conns:
                if conn.scope.session_id in ended and not (conn.closing or conn.closed):
                    conn.close(CLOSE_UNAUTHORIZED, "signed out", drop=True)
                    closed += 1
        return closed

    def close_signed_out(self) -> int:
        """Close (4401) every socket whose sign-in was revoked or expired since it opened.

        Signing out closes its sockets at once (:meth:`close_sessions`, on every worker through
        the broker); this keepalive round is the backstop for idle expiry and for a worker that
        missed the broker's message (Redis down): within ``ping_interval``."""
        from waybill.auth.sessions import IDLE_EXPIRY
        from waybill.models import AuthSession, utcnow

        with self.lock:
            watched = {c.scope.session_id for c in self._all() if c.scope.session_id is not None}
        if not watched:
            return 0
        cutoff = utcnow() - IDLE_EXPIRY
        with Session(self.engine) as session:
            live = set(
                session.exec(
                    select(AuthSession.id).where(
                        AuthSession.id.in_(watched),  # type: ignore[union-attr]
                        AuthSession.revoked_at.is_(None),  # type: ignore[union-attr]
                        AuthSession.last_seen_at > cutoff,
                    )
                )
            )
        ended = watched - live
        closed = 0
        with self.lock:
            for conn in list(self._all()):
                if conn.scope.session_id in ended:
                    conn.close(CLOSE_UNAUTHORIZED, "signed out")
                    closed += 1
        return closed

    def _ping_loop(self) -> None:
        """One ping per socket every ``ping_interval``; a socket silent for a whole round goes."""
        while not self._stop.wait(self.ping_interval):
            try:
                self.close_signed_out()
            except Exception:
                log.exception("could not check the sockets' sessions")
            with self.lock:
                for conn in list(self._all()):
                    if not conn.alive:
                        conn.kill()
                    else:
                        conn.alive = False
                        conn.write(PING_FRAME)


# --- the endpoint ---------------------------------------------------------------------------


class _NoReaderThread:
    """simple-websocket starts a reader thread per socket; the hub reads in the request's own
    greenlet instead (half the greenlets, no selector per socket)."""

    name = "ws"

    def __init__(self, target: Any = None, **_kwargs: Any) -> None:
        pass

    def start(self) -> None:
        pass


@bp.before_request
def _no_compression() -> None:
    # permessage-deflate would compress per socket; without it one encoded frame fits all.
    request.environ.pop("HTTP_SEC_WEBSOCKET_EXTENSIONS", None)


def _same_site() -> bool:
    """A cookie-authenticated socket only from our own pages (no cross-site hijacking)."""
    origin = request.headers.get("Origin")
    if not origin:
        return True  # not a browser
    netloc = urlsplit(origin).netloc
    base = urlsplit(current_app.config["WAYBILL_SETTINGS"].base_url).netloc
    return netloc in (request.host, base)


def _authorise() -> tuple[Scope | None, int]:
    """Who may see what, decided before any order data is sent; the DB session is released."""
    from waybill.auth import sessions
    from waybill.db import get_session
    from waybill.orders import language_of, order_by_token

    try:
        token = request.args.get("track")
        if token is not None:
            order = order_by_token(get_session(), token)
            if order is None:
                return None, CLOSE_NOT_FOUND
            return Scope(order_id=order.id), 0
        if not _same_site():
            return None, CLOSE_UNAUTHORIZED
        customer = sessions.current_customer()
        auth = sessions.current()
        if customer is None or auth is None:
            return None, CLOSE_UNAUTHORIZED
        scope = Scope(customer_id=customer.id, language=language_of(customer), session_id=auth.id)
        return scope, 0
    finally:
        # the socket may stay open for hours: do not keep a pooled connection for it
        db = g.pop("db", None)
        if db is not None:
            db.close()


@sock.route("/ws", bp=bp)
def live(ws: Any) -> None:
    scope, refusal = _authorise()
    hub: Hub = current_app.extensions["waybill.hub"]
    if scope is None:
        reason = "no such order" if refusal == CLOSE_NOT_FOUND else "sign in first"
        with contextlib.suppress(OSError):
            ws.sock.sendall(close_frame(refusal, reason))
        ws.connected = False
        return
    hub.serve(ws, scope)
    ws.connected = False  # the hub has closed it; flask-sock need not


def init_app(app: Flask) -> Hub:
    """The app's hub (started lazily by the first socket); ``create_app`` registers ``/ws``."""
    settings = app.config["WAYBILL_SETTINGS"]
    hub = Hub(
        engine=app.extensions["waybill.engine"],
        broker=app.extensions["waybill.broker"],
        base_url=settings.base_url,
        secret_key=settings.secret_key,
    )
    app.extensions["waybill.hub"] = hub
    app.config.setdefault("SOCK_SERVER_OPTIONS", {"thread_class": _NoReaderThread})
    return hub
