"""The hub: one worker's live updates, from the broker's wake-up to every open socket.

How one change reaches the screens: the broker wakes the dispatcher (``dispatch``), which
reads the change log and hands one encoded frame to every socket of the registry
(``registry``) that may see it; each socket writes without ever blocking the loop and is read
in its own greenlet (``transport``). The hub starts and stops that work and serves a socket.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Iterable
from typing import Any

from flask import Flask
from sqlalchemy.engine import Engine

from waybill.db import read_engine
from waybill.realtime import transport
from waybill.realtime.broker import SESSIONS_ENDED, Broker, Message
from waybill.realtime.dispatch import Dispatcher, Renderer
from waybill.realtime.registry import Registry, Scope, Subscriber
from waybill.realtime.transport import CLOSE_GOING_AWAY

log = logging.getLogger(__name__)


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
        self.engine = read_engine(engine)
        self.broker = broker
        self.ping_interval = ping_interval
        self.send_buffer = send_buffer
        render = Renderer(base_url=base_url, secret_key=secret_key)
        self.registry = Registry(
            engine=self.engine, render=render, max_pending=max_pending, close_grace=close_grace
        )
        self.dispatcher = Dispatcher(
            engine=self.engine,
            registry=self.registry,
            render=render,
            poll_interval=poll_interval,
            gap_grace=gap_grace,
        )
        self.lock = self.registry.lock
        self._stop = threading.Event()
        self._started = False
        self._shutting_down = False
        self._unsubscribe: Any = None
        self._threads: list[threading.Thread] = []

    # lifecycle

    def start(self) -> None:
        """Start on the first socket, so that apps that never serve one start nothing."""
        with self.lock:
            if self._started:
                return
            self.dispatcher.start_from_latest()
            self._unsubscribe = self.broker.subscribe(self._on_message)
            for target, name in ((self._dispatch_loop, "dispatch"), (self._ping_loop, "ping")):
                thread = threading.Thread(target=target, name=f"waybill-hub-{name}", daemon=True)
                thread.start()
                self._threads.append(thread)
            self._started = True

    def close(self, timeout: float = 5.0) -> None:
        """Stop the background work and wait for it (tests; the process is ending otherwise)."""
        self._stop.set()
        self.dispatcher.wake()
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None
        for thread in self._threads:
            thread.join(timeout)

    def shutdown(
        self, code: int = CLOSE_GOING_AWAY, reason: str = "server restarting", grace: float = 3.0
    ) -> None:
        """Close every socket with ``code`` so that clients reconnect elsewhere and resume."""
        with self.lock:
            self._shutting_down = True
            conns = list(self.registry.all())
            for conn in conns:
                conn.close(code, reason, cut_off=False)
        self.registry.kill_later(conns, grace)

    def _on_message(self, message: Message) -> None:
        """Wake the dispatcher, whose work it is.

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
        self.dispatcher.wake()

    def _dispatch_loop(self) -> None:
        self.dispatcher.run(self._stop)

    def _ping_loop(self) -> None:
        """One ping per socket every ``ping_interval``; a socket silent for a whole round goes."""
        while not self._stop.wait(self.ping_interval):
            try:
                self.close_signed_out()
            except Exception:
                log.exception("could not check the sockets' sessions")
            self.registry.ping()

    # one socket

    def serve(self, ws: Any, scope: Scope) -> None:
        """Run one socket until it closes: hello, then live frames and resumes."""
        self.start()
        conn = Subscriber(
            self.registry, transport.socket_of(ws, send_buffer=self.send_buffer), scope
        )
        with self.lock:
            if self._shutting_down:
                conn.close(CLOSE_GOING_AWAY, "server restarting")
                return
            self.registry.add(conn)
        try:
            transport.read_frames(ws, conn, functools.partial(self.registry.on_message, conn))
        finally:
            with self.lock:
                self.registry.remove(conn)

    def close_sessions(self, session_ids: Iterable[int], *, customer_id: int | None = None) -> int:
        return self.registry.close_sessions(session_ids, customer_id=customer_id)

    def close_signed_out(self) -> int:
        return self.registry.close_signed_out()


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
    transport.configure(app)
    return hub
