"""The SQLite write lock of a process hands itself over in the order writers came: a writer that
has waited (the outbox worker recording what it sent) is never overtaken by a stream of newer
ones (requests), as it was with a plain lock. The PostgreSQL pool hands out its connections
the same way."""

from __future__ import annotations

import sqlite3
import threading
import time

import pytest
import sqlalchemy as sa

from waybill.config import Settings
from waybill.db import FairLock, FairQueuePool, create_engine


def wait_for_waiters(lock: FairLock, n: int) -> None:
    deadline = time.monotonic() + 5
    while len(lock._waiters) < n:  # noqa: SLF001 (the queue is what is under test)
        assert time.monotonic() < deadline, "the waiters never queued"
        time.sleep(0.001)


def test_a_waiting_writer_goes_before_the_holder_asks_again() -> None:
    lock = FairLock()
    order: list[str] = []
    lock.acquire()

    def waiter() -> None:
        with lock:
            order.append("waited")

    t = threading.Thread(target=waiter)
    t.start()
    wait_for_waiters(lock, 1)
    lock.release()
    # The releasing writer asks again at once: with a plain lock it usually wins that race.
    with lock:
        order.append("asked again")
    t.join(5)
    assert order == ["waited", "asked again"]


def test_waiters_go_in_the_order_they_came() -> None:
    lock = FairLock()
    order: list[int] = []
    lock.acquire()
    threads = []
    for n in range(5):

        def writer(n: int = n) -> None:
            with lock:
                order.append(n)

        threads.append(threading.Thread(target=writer))
        threads[-1].start()
        wait_for_waiters(lock, n + 1)
    lock.release()
    for t in threads:
        t.join(5)
    assert order == [0, 1, 2, 3, 4]


def test_it_is_reentrant_and_times_out() -> None:
    lock = FairLock()
    assert lock.acquire() and lock.acquire()  # the same writer, a nested transaction
    got: list[bool] = []
    t = threading.Thread(target=lambda: got.append(lock.acquire(timeout=0.05)))
    t.start()
    t.join(5)
    assert got == [False] and not lock._waiters  # noqa: SLF001 (gave up and left the queue)
    lock.release()
    lock.release()
    assert lock.acquire(blocking=False)  # free again
    lock.release()


def test_a_release_by_another_thread_is_refused() -> None:
    lock = FairLock()
    lock.acquire()
    errors: list[BaseException] = []

    def intruder() -> None:
        try:
            lock.release()
        except RuntimeError as exc:
            errors.append(exc)

    t = threading.Thread(target=intruder)
    t.start()
    t.join(5)
    assert len(errors) == 1
    lock.release()


# --- the PostgreSQL pool hands its connections over the same way ----------------------------


def test_a_request_waiting_for_a_connection_is_not_overtaken_by_newer_ones() -> None:
    """One connection, a request waiting for it: the holder gives it back and asks again at
    once (as keep-alive requests of a burst do); the one that waited gets it first."""
    pool = FairQueuePool(
        lambda: sqlite3.connect(":memory:", check_same_thread=False), pool_size=1, max_overflow=0
    )
    order: list[str] = []
    held = pool.connect()

    def waiter() -> None:
        conn = pool.connect()
        order.append("waited")
        conn.close()

    t = threading.Thread(target=waiter)
    t.start()
    deadline = time.monotonic() + 5
    while not pool._turns._waiters:  # noqa: SLF001 (the queue is what is under test)
        assert time.monotonic() < deadline, "the waiter never queued"
        time.sleep(0.001)
    held.close()
    again = pool.connect()
    order.append("asked again")
    again.close()
    t.join(5)
    assert order == ["waited", "asked again"]


def test_the_pool_still_times_out_and_gives_every_connection_back() -> None:
    pool = FairQueuePool(
        lambda: sqlite3.connect(":memory:", check_same_thread=False),
        pool_size=1,
        max_overflow=1,
        timeout=0.2,
    )
    first, second = pool.connect(), pool.connect()  # the overflow one too
    started = time.monotonic()
    with pytest.raises(sa.exc.TimeoutError):
        pool.connect()
    assert 0.15 < time.monotonic() - started < 3
    first.close()
    second.close()
    for _ in range(5):  # every turn came back: no leak after the timeout
        a, b = pool.connect(), pool.connect()
        a.close()
        b.close()


def test_postgresql_engines_use_the_fair_pool() -> None:
    settings = Settings(
        database_url="postgresql+psycopg://nobody@127.0.0.1:1/none", secret_key="k" * 32
    )
    engine = create_engine(settings)
    assert isinstance(engine.pool, FairQueuePool)
    engine.dispose()
    assert isinstance(engine.pool, FairQueuePool)  # made again by dispose, the same kind
