"""The process's webhook applier: answered webhooks are applied here, in the order they came,
by a few background threads (greenlets under the gevent worker): one merchant's webhooks all
in one lane, one at a time; other merchants' beside them (on PostgreSQL an apply mostly waits
on the database, and one lane would apply fewer than the platforms send).

The request that takes a webhook only verifies, records and answers it (a few milliseconds);
applying its history (the fold, the change log, the outbox) costs several times that. Done in
the request, a platform's burst of a thousand retries would hold every connection for its
whole apply and answer late; done here, applying takes one thread's share of the process and
every answer goes out at once. What the queue holds is also in the database (the receipt,
``queued``): a full queue, or a process that ends first, leaves it to the outbox worker's
:func:`waybill.integrations.inbox.apply_stale`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import threading
import time
import zlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

from waybill.integrations import inbox

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from waybill.db import Publisher
    from waybill.integrations.base import Update

log = logging.getLogger(__name__)

#: Receipts waiting at most per lane (each holds its parsed payload, a few kB): beyond this a
#: burst is answered all the same and left to the worker's sweep.
CAPACITY = 5_000
LANES = 4
#: While webhooks keep being answered (one in the last QUIET_S), a lane waits up to
#: ANSWERS_FIRST_S before each apply: a burst is answered first and applied after, and under
#: a load that never lets up a lane still applies one receipt at least this often. (Between
#: webhooks a few a second apart it never waits.)
QUIET_S = 0.01
ANSWERS_FIRST_S = 0.05


class Applier:
    def __init__(
        self,
        engine: Engine,
        *,
        server_key: str,
        broker: Publisher | None = None,
        capacity: int = CAPACITY,
        lanes: int = LANES,
    ) -> None:
        self.engine, self.server_key, self.broker = engine, server_key, broker
        self.capacity, self.lanes = capacity, lanes
        self._queues: list[queue.Queue[tuple[int, list[Update]]]] = []
        self._start = threading.Lock()
        self._pid = 0  # the process whose threads run (a forked worker starts its own)
        self._answering = 0  # webhooks being taken by requests of this process now
        self._last_answer = 0.0  # time.monotonic() when one was last taken
        self._count = threading.Lock()

    @contextlib.contextmanager
    def answering(self) -> Iterator[None]:
        """Around the taking of one webhook: the lanes give way to it, and to the next ones."""
        with self._count:
            self._answering += 1
        try:
            yield
        finally:
            with self._count:
                self._answering -= 1
                self._last_answer = time.monotonic()

    def _busy(self) -> bool:
        return bool(self._answering) or time.monotonic() - self._last_answer < QUIET_S

    def submit(self, receipt_id: int, updates: list[Update], *, merchant_id: str) -> bool:
        """Queue a committed receipt in its merchant's lane; False when that lane is full
        (the worker's sweep takes it)."""
        queues = self._running()
        lane = queues[zlib.crc32(merchant_id.encode()) % len(queues)]
        try:
            lane.put_nowait((receipt_id, updates))
        except queue.Full:
            log.warning("webhook applier full: receipt %s left to the worker's sweep", receipt_id)
            return False
        return True

    def join(self) -> None:
        """Wait until everything submitted so far has been applied (tests, shutdown)."""
        for lane in self._queues:
            lane.join()

    def pending(self) -> int:
        return sum(lane.qsize() for lane in self._queues)

    def _running(self) -> list[queue.Queue[tuple[int, list[Update]]]]:
        if self._pid == os.getpid():
            return self._queues
        with self._start:
            if self._pid != os.getpid():  # first use, or forked with the parent's queues
                self._queues = [queue.Queue(self.capacity) for _ in range(self.lanes)]
                for n, lane in enumerate(self._queues):
                    threading.Thread(
                        target=self._run, args=(lane,), name=f"webhook-applier-{n}", daemon=True
                    ).start()
                self._pid = os.getpid()
        return self._queues

    def _run(self, lane: queue.Queue[tuple[int, list[Update]]]) -> None:
        while True:
            receipt_id, updates = lane.get()
            time.sleep(0)  # under gevent, a turn for every request waiting (get() need not wait)
            give_way = time.monotonic() + ANSWERS_FIRST_S
            while self._busy() and time.monotonic() < give_way:
                time.sleep(0.002)
            try:  # apply_now records a failure on the receipt and never raises
                inbox.apply_now(
                    self.engine,
                    receipt_id,
                    updates,
                    server_key=self.server_key,
                    broker=self.broker,
                )
            except Exception:  # noqa: BLE001 - the thread outlives any one receipt
                log.exception("webhook applier: receipt %s", receipt_id)
            finally:
                lane.task_done()
