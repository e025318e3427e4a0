"""Publish/subscribe for committed changes. ``memory://`` in one process; Redis across many."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from typing import Any, Protocol

log = logging.getLogger(__name__)

Message = dict[str, Any]
Handler = Callable[[Message], None]


class Broker(Protocol):
    def publish(self, message: Message) -> None: ...
    def subscribe(self, handler: Handler) -> Callable[[], None]: ...
    def close(self) -> None: ...


class MemoryBroker:
    """Delivers each message to every handler in this process, synchronously."""

    def __init__(self) -> None:
        self._handlers: list[Handler] = []
        self._lock = threading.Lock()

    def publish(self, message: Message) -> None:
        with self._lock:
            handlers = list(self._handlers)
        for handler in handlers:
            try:
                handler(message)
            except Exception:
                log.exception("broker handler failed")

    def subscribe(self, handler: Handler) -> Callable[[], None]:
        with self._lock:
            self._handlers.append(handler)

        def unsubscribe() -> None:
            with self._lock:
                if handler in self._handlers:
                    self._handlers.remove(handler)

        return unsubscribe

    def close(self) -> None:
        with self._lock:
            self._handlers.clear()


def create_broker(url: str) -> Broker:
    if url.startswith("memory://"):
        return MemoryBroker()
    raise ValueError(f"unsupported broker URL {url!r}")
