"""The dispatcher: committed changes, in change-log order, out to the sockets that may see them.

The broker only wakes it. It reads the change log (``Change.id > high-water mark``, in id
order), renders each changed order that a socket here may see once per language, encodes
one frame, and hands the same bytes to every such socket. The work is its own: never in the
committing request (it would answer only after every socket's frame was rendered) nor in the
broker's subscriber.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import UTC
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from waybill import observe
from waybill.models import AuthSession, Change, Order
from waybill.models.types import utcnow
from waybill.orders import render_orders
from waybill.realtime.registry import Registry
from waybill.realtime.transport import json_bytes, updated_frame

log = logging.getLogger(__name__)

DISPATCH_CHUNK = 200  # changes per dispatcher turn; the loop runs others between turns


class Renderer:
    """Each order as the JSON of ``GET /api/me/orders/{id}`` / ``/api/track/<token>``."""

    def __init__(self, *, base_url: str, secret_key: str) -> None:
        self.base_url = base_url
        self.secret_key = secret_key  # opens tracking tokens for the links

    def __call__(self, session: Session, orders: list[Order], language: str) -> dict[int, bytes]:
        out = render_orders(
            session,
            orders,
            base_url=self.base_url,
            secret_key=self.secret_key,
            language=language,
        )
        return {o.id: json_bytes(o.model_dump(mode="json")) for o in out}


class Dispatcher:
    """Moves the registry's high-water mark along the change log, one chunk a turn."""

    def __init__(
        self,
        *,
        engine: Engine,
        registry: Registry,
        render: Renderer,
        poll_interval: float,
        gap_grace: float,
    ) -> None:
        self.engine = engine
        self.registry = registry
        self.render = render
        self.poll_interval = poll_interval
        self.gap_grace = gap_grace
        self._gaps: dict[int, float] = {}
        self._wake = threading.Event()

    def start_from_latest(self) -> None:
        """Sockets see changes from now on; older ones only by resuming."""
        with Session(self.engine) as session:
            latest = select(sa.func.coalesce(sa.func.max(Change.id), 0))
            self.registry.hwm = int(session.exec(latest).one())

    def wake(self) -> None:
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        while not stop.is_set():
            self._wake.wait(0.05 if self._gaps else self.poll_interval)
            self._wake.clear()
            if stop.is_set():
                return
            self.registry.keep_gc_cheap()
            try:
                while self.dispatch_once():
                    time.sleep(0)  # a long backlog: let requests and sockets run between chunks
            except Exception:
                log.exception("live update dispatch failed; retrying")
                stop.wait(0.5)

    def dispatch_once(self, limit: int = DISPATCH_CHUNK) -> bool:
        """Hand the next committed changes to the sockets; True when there may be more.

        Only the dispatcher runs this. The change log is read and the orders are rendered
        outside the registry lock (sockets open, close and resume meanwhile); the lock is held
        only to see which languages are wanted and to queue the frames."""
        registry = self.registry
        with Session(self.engine) as session:
            rows = session.exec(
                select(Change.id, Change.order_id, Change.customer_id, Change.created_at)
                .where(Change.id > registry.hwm)
                .order_by(Change.id)  # type: ignore[arg-type]
                .limit(limit)
            ).all()
            rows = self._without_gaps(list(rows))
            if not rows:
                return False
            owner = {order_id: customer_id for _, order_id, customer_id, _ in rows}
            signed_out = self._signed_out(session, set(owner.values()))
        if signed_out:  # closed before any of these changes goes out to them
            registry.close_sessions(signed_out)
        with registry.lock:
            wanted = self._wanted(owner)
        bodies = self._render_wanted(wanted)
        # A socket that opened while the orders were rendered may want another language:
        # render what is missing and look again (bounded: a second pass rarely finds any).
        for attempt in range(3):
            with registry.lock:
                missing = self._deliver(rows, bodies, final=attempt == 2)
                if not missing:
                    registry.hwm = rows[-1][0]
                    break
            bodies.update(self._render_wanted(missing))
        now = utcnow()
        for row in rows:
            if row[3] is not None:
                at = row[3] if row[3].tzinfo else row[3].replace(tzinfo=UTC)
                observe.DISPATCH_LAG.observe(max((now - at).total_seconds(), 0.0))
        return len(rows) == limit

    def _signed_out(self, session: Session, customers: set[int]) -> set[int]:
        """The revoked sign-ins among these customers' sockets here: they are closed before any
        of these changes goes out to them.

        A sign-out closes its sockets on other workers by its own broker message, which can
        arrive after a change committed just after the sign-out has been dispatched here. Read
        after the change rows (the same snapshot on SQLite, a later statement on PostgreSQL),
        every sign-out committed before these changes is seen, so no signed-out socket is given
        a change that came after its sign-out."""
        with self.registry.lock:
            watched = {
                conn.scope.session_id
                for customer_id in customers
                for conn in self.registry.by_customer.get(customer_id, ())
                if conn.scope.session_id is not None and not conn.closing
            }
        if not watched:
            return set()
        return set(
            session.exec(
                select(AuthSession.id).where(
                    AuthSession.id.in_(sorted(watched)),  # type: ignore[union-attr]
                    AuthSession.revoked_at.is_not(None),  # type: ignore[union-attr]
                )
            )
        )

    def _wanted(self, owner: dict[int, int]) -> dict[str, set[int]]:
        """Which changed orders a socket here may see, by the language it reads them in."""
        by_customer, by_order = self.registry.by_customer, self.registry.by_order
        wanted: dict[str, set[int]] = {}
        for order_id, customer_id in owner.items():
            for conn in by_customer.get(customer_id, ()):
                wanted.setdefault(conn.scope.language, set()).add(order_id)
            if order_id in by_order:
                wanted.setdefault("en", set()).add(order_id)
        return wanted

    def _deliver(
        self, rows: list[Any], bodies: dict[tuple[int, str], bytes], *, final: bool
    ) -> dict[str, set[int]]:
        """Queue one frame per change, in change order (an order changed twice in one chunk
        was rendered once, and both frames carry its current state). Unless ``final``, nothing
        goes out while any wanted body is missing: the missing ones are returned instead."""
        by_customer, by_order = self.registry.by_customer, self.registry.by_order
        missing: dict[str, set[int]] = {}
        for _change_id, order_id, customer_id, *_ in rows:
            for conn in by_customer.get(customer_id, ()):
                if (order_id, conn.scope.language) not in bodies:
                    missing.setdefault(conn.scope.language, set()).add(order_id)
            if order_id in by_order and (order_id, "en") not in bodies:
                missing.setdefault("en", set()).add(order_id)
        if missing and not final:
            return missing
        for change_id, order_id, customer_id, *_ in rows:
            frames: dict[str, bytes] = {}
            for conn in list(by_customer.get(customer_id, ())):
                lang = conn.scope.language
                if lang not in frames and (order_id, lang) in bodies:
                    frames[lang] = updated_frame(change_id, bodies[(order_id, lang)])
                if lang in frames:
                    conn.deliver(change_id, frames[lang])
            track = by_order.get(order_id)
            if track and (order_id, "en") in bodies:
                frame = frames.get("en") or updated_frame(change_id, bodies[(order_id, "en")])
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
                rendered = self.render(session, [orders[i] for i in group if i in orders], lang)
                bodies.update(((order_id, lang), body) for order_id, body in rendered.items())
        return bodies

    def _without_gaps(self, rows: list[Any]) -> list[Any]:
        """The rows up to the first id still missing (another transaction may commit it).

        On PostgreSQL ids are taken before commit, so a later id can be visible before an
        earlier one; a gap left by a rollback is skipped after ``gap_grace`` seconds.
        SQLite commits in id order and never waits here.
        """
        now = time.monotonic()
        expected = self.registry.hwm + 1
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
