"""The SQLite write lock of a process hands itself over in the order writers came: a writer that
has waited (the outbox worker recording what it sent) is never overtaken by a stream of newer
ones (requests), as it was with a plain lock."""

from __future__ import annotations

import threading
import time

from waybill.db import FairLock


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
