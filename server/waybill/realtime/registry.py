"""Every open socket of this worker process, by what it may see; resume; signed-out sockets.

Resume is answered from the database, so it is right after a restart and on any worker.

Cursor labels: the ``cursor`` of an ``order.updated`` frame is the id of the latest change
of that order that the frame covers, never more than the high-water mark, so the frames of
one socket carry growing cursors and a client that stores the last one can always resume
from it without a gap.
"""

from __future__ import annotations

import gc
import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from waybill import observe
from waybill.auth.sessions import IDLE_EXPIRY
from waybill.models import AuthSession, Change, Order, utcnow
from waybill.realtime.transport import (
    CLOSE_RECONNECT,
    CLOSE_UNAUTHORIZED,
    PING_FRAME,
    Connection,
    hello_frame,
    updated_frame,
)

log = logging.getLogger(__name__)

#: Orders as JSON bytes by id, in one language.
Render = Callable[[Session, list[Order], str], dict[int, bytes]]


@dataclass(frozen=True)
class Scope:
    """What one socket may see: all of a customer's orders, or one order by its token."""

    customer_id: int | None = None
    order_id: int | None = None
    language: str = "en"
    session_id: int | None = None  # the sign-in that opened a customer socket


class Subscriber(Connection):
    """A connection with its scope and its cursor. Called with the registry's lock held."""

    __slots__ = ("scope", "last", "held", "updated")

    def __init__(self, owner: Registry, sock: socket.socket, scope: Scope) -> None:
        super().__init__(owner, sock)
        self.scope = scope
        self.last = 0  # the highest cursor this socket has been given
        self.held: list[tuple[int, bytes]] | None = None  # live frames parked during a resume
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


class Registry:
    """The open sockets, indexed by customer and by tracked order, under one lock."""

    def __init__(
        self, *, engine: Engine, render: Render, max_pending: int, close_grace: float
    ) -> None:
        self.engine = engine
        self.render = render
        self.max_pending = max_pending
        self.close_grace = close_grace
        self.lock = threading.RLock()
        self.by_customer: dict[int, set[Subscriber]] = {}
        self.by_order: dict[int, set[Subscriber]] = {}
        self.count = 0
        self.overflows = 0
        self.hwm = 0  # every change up to here has been handed to the sockets
        self._opened_since_freeze = 0
        self._closed_since_collect = 0
        self._last_freeze = 0.0

    def all(self) -> Iterable[Subscriber]:
        for conns in self.by_customer.values():
            yield from conns
        for conns in self.by_order.values():
            yield from conns

    # opening and closing (lock held)

    def add(self, conn: Subscriber) -> None:
        """Register a socket and greet it with the cursor it starts from."""
        scope = conn.scope
        if scope.customer_id is not None:
            self.by_customer.setdefault(scope.customer_id, set()).add(conn)
        else:
            assert scope.order_id is not None
            self.by_order.setdefault(scope.order_id, set()).add(conn)
        self.count += 1
        observe.SOCKETS.inc()
        self._opened_since_freeze += 1  # the dispatcher freezes them within a second
        conn.last = self.hwm
        conn.write(hello_frame(self.hwm))

    def remove(self, conn: Subscriber) -> None:
        """Forget a socket whose reader has ended."""
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
            observe.SOCKETS.dec()
            self._closed_since_collect += 1
            if not conns:
                del index[key]  # type: ignore[arg-type]
        conn.closed = True
        conn.pending.clear()

    def kill_later(self, conns: list[Subscriber], grace: float | None = None) -> None:
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

    # resume

    def on_message(self, conn: Subscriber, text: bytes) -> None:
        """A client's text message: ``{"type": "resume", "cursor": n}`` is the only one."""
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

    def resume(self, conn: Subscriber, after: int) -> None:
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
            rendered = self.render(session, orders, scope.language)
        return sorted(
            (labels[oid], updated_frame(labels[oid], body)) for oid, body in rendered.items()
        )

    # ending signed-out sockets

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
                else list(self.all())
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
        missed the broker's message (Redis down): within the ping interval."""
        with self.lock:
            watched = {c.scope.session_id for c in self.all() if c.scope.session_id is not None}
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
            for conn in list(self.all()):
                if conn.scope.session_id in ended:
                    conn.close(CLOSE_UNAUTHORIZED, "signed out")
                    closed += 1
        return closed

    # keepalive and memory

    def ping(self) -> None:
        """Ping every socket; one silent since the last ping goes."""
        with self.lock:
            for conn in list(self.all()):
                if not conn.alive:
                    conn.kill()
                else:
                    conn.alive = False
                    conn.write(PING_FRAME)

    def keep_gc_cheap(self) -> None:
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
