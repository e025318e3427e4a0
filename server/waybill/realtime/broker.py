"""Publish/subscribe for committed changes. ``memory://`` in one process; Redis across many.

A message only says "something was committed": the hub reads what changed from the change
log, so a message lost while Redis restarts costs latency, never an update.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, Any]
Handler = Callable[[Message], None]

CHANNEL = "waybill:changes"
#: Sent to handlers after a lost subscription is back: messages may have been missed meanwhile.
RESUBSCRIBED: Message = {"type": "broker.resubscribed"}
#: ``{"type": SESSIONS_ENDED, "ids": [...], "customer_id": ...}``: these sign-ins are over;
#: every worker closes their sockets at once (``Hub.close_sessions``).
SESSIONS_ENDED = "sessions_ended"


class Broker(Protocol):
    def publish(self, message: Message) -> None: ...
    def subscribe(self, handler: Handler) -> Callable[[], None]: ...
    def close(self) -> None: ...


class _Handlers:
    """The subscribed handlers, called one after another; one failing does not stop the rest."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()

    def add(self, handler: Handler) -> Callable[[], None]:
        with self._lock:
            self._handlers.append(handler)

        def remove() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return remove

    def deliver(self, message: Message) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                log.exception("broker handler failed")

    def clear(self) -> None:
        with self._lock:
            self._handlers.clear()

    def __bool__(self) -> bool:
        return bool(self._handlers)


class MemoryBroker:
    """Delivers each message to every handler in this process, synchronously."""

    def __init__(self) -> None:
        self._handlers = _Handlers()

    def publish(self, message: Message) -> None:
        self._handlers.deliver(message)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        return self._handlers.add(handler)

    def close(self) -> None:
        self._handlers.clear()


class RedisBroker:
    """Redis pub/sub on one channel, shared by every worker on every host.

    The subscription runs in a background thread (a greenlet under gevent) that reconnects
    with backoff and resubscribes when Redis goes away, then tells the handlers with
    :data:`RESUBSCRIBED` so they can catch up on what they missed.
    """

    def __init__(self, url: str, *, channel: str = CHANNEL) -> None:
        import redis

        self.url = url
        self._redis = redis.Redis.from_url(
            url,
            socket_connect_timeout=5,
            socket_timeout=10,
            health_check_interval=15,
            client_name=f"waybill-broker-{os.getpid()}",
        )
        # Pub/sub channels are the whole server's, whatever database a client selected; the
        # channel names the URL's database too, so deployments (or test runs) sharing one
        # Redis on different database numbers hear only their own changes, as they keep
        # only their own keys. Database 0 keeps the plain name.
        db = int(self._redis.connection_pool.connection_kwargs.get("db") or 0)
        self.channel = channel if db == 0 else f"{channel}:db{db}"
        self._handlers = _Handlers()
        self._stop = threading.Event()
        self._listener: threading.Thread | None = None
        self._start_lock = threading.Lock()
        self.subscribed = threading.Event()  # set while the subscription is live

    def ping(self) -> None:
        """Raises when Redis does not answer (``/readyz``)."""
        self._redis.ping()

    def publish(self, message: Message) -> None:
        """Publish after a commit; a broker outage is logged, never raised into the request."""
        import redis

        data = json.dumps(message, separators=(",", ":"))
        for attempt in (1, 2):
            try:
                self._redis.publish(self.channel, data)
                return
            except (redis.ConnectionError, redis.TimeoutError) as exc:
                if attempt == 2:
                    log.warning("could not publish to Redis (%s); subscribers will poll", exc)

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        remove = self._handlers.add(handler)
        with self._start_lock:
            if self._listener is None:
                self._listener = threading.Thread(
                    target=self._listen, name="waybill-redis-subscriber", daemon=True
                )
                self._listener.start()
        return remove

    def _listen(self) -> None:
        import redis

        backoff, lost = 0.1, False
        while not self._stop.is_set():
            pubsub = self._redis.pubsub(ignore_subscribe_messages=True)
            try:
                pubsub.subscribe(self.channel)
                self.subscribed.set()
                if lost:
                    log.info("Redis subscription restored")
                    self._handlers.deliver(dict(RESUBSCRIBED))
                backoff, lost = 0.1, False
                while not self._stop.is_set():
                    msg = pubsub.get_message(timeout=1.0)
                    if msg is not None and msg.get("type") == "message":
                        try:
                            payload = json.loads(msg["data"])
                        except ValueError:
                            log.warning("ignoring a malformed broker message")
                            continue
                        self._handlers.deliver(payload)
            except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
                self.subscribed.clear()
                if self._stop.is_set():
                    break
                if not lost:
                    log.warning("Redis subscription lost (%s); reconnecting", exc)
                lost = True
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 2.0)
            finally:
                with contextlib.suppress(Exception):  # the connection may already be gone
                    pubsub.close()
        self.subscribed.clear()

    def close(self) -> None:
        self._stop.set()
        self._handlers.clear()
        listener = self._listener
        if listener is not None and listener is not threading.current_thread():
            listener.join(timeout=3)
        self._redis.close()


def create_broker(url: str) -> Broker:
    """The broker for ``WAYBILL_BROKER_URL``: ``memory://`` or ``redis://host:port/db``."""
    if url.startswith("memory://"):
        return MemoryBroker()
    if url.startswith(("redis://", "rediss://")):
        return RedisBroker(url)
    raise ValueError(f"unsupported broker URL {url!r}")
