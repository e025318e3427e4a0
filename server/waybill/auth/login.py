"""Email sign-in: a one-time link and a 6-digit code, 15 minutes, single use, stored hashed."""

from __future__ import annotations

import logging
import os
import queue
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Generic, TypeVar

from sqlmodel import Session, select

from waybill.auth.tokens import digest, keyed_digest, new_token, same
from waybill.models import Customer, LoginToken, utcnow

LIFETIME = timedelta(minutes=15)
MAX_CODE_ATTEMPTS = 5
QUEUE_SIZE = 10_000  # sign-in requests waiting for the worker, at most, in each process
# How long after its hand-over a job waits to start: the answer to its request is out by then,
# so that answer never shares the CPU (or the GIL) with the job, whose length depends on the
# address. A burst waits once, not once per job.
HANDOFF_DELAY = 0.05

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True)
class IssuedLogin:
    link_token: str
    code: str


def normalise_email(email: str) -> str:
    return email.strip().lower()


def find_customer(session: Session, email: str) -> Customer | None:
    return session.exec(select(Customer).where(Customer.email == normalise_email(email))).first()


def issue(*, session: Session, customer: Customer, secret: str) -> IssuedLogin:
    link_token = new_token(32)
    code = f"{secrets.randbelow(1_000_000):06d}"
    login = LoginToken(
        customer_id=customer.id,  # type: ignore[arg-type]
        link_hash=digest(link_token),
        code_hash="",
        expires_at=utcnow() + LIFETIME,
    )
    session.add(login)
    session.flush()
    login.code_hash = keyed_digest(secret, str(login.id), code)
    session.add(login)
    return IssuedLogin(link_token=link_token, code=code)


def _usable(login: LoginToken | None) -> bool:
    return login is not None and login.used_at is None and login.expires_at > utcnow()


def peek_link(*, session: Session, token: str) -> LoginToken | None:
    """The link's login if it can still be used; consumes nothing (mail scanners open links)."""
    login = session.exec(select(LoginToken).where(LoginToken.link_hash == digest(token))).first()
    return login if _usable(login) else None


def consume_link(*, session: Session, token: str) -> Customer | None:
    login = peek_link(session=session, token=token)
    if login is None:
        return None
    login.used_at = utcnow()
    session.add(login)
    return session.get(Customer, login.customer_id)


def consume_code(*, session: Session, email: str, code: str, secret: str) -> Customer | None:
    """Check a typed code against the address's live codes; five wrong tries void a code."""
    customer = find_customer(session, email)
    if customer is None:
        return None
    logins = session.exec(
        select(LoginToken)
        .where(LoginToken.customer_id == customer.id, LoginToken.used_at.is_(None))  # type: ignore[union-attr]
        .where(LoginToken.expires_at > utcnow())
    ).all()
    now = utcnow()
    for login in logins:
        if login.attempts >= MAX_CODE_ATTEMPTS:
            continue
        if same(keyed_digest(secret, str(login.id), code), login.code_hash):
            login.used_at = now
            session.add(login)
            return customer
    for login in logins:
        login.attempts += 1
        if login.attempts >= MAX_CODE_ATTEMPTS:
            login.used_at = now
        session.add(login)
    return None


class BackgroundQueue(Generic[T]):
    """Work handed over by a request and done after its answer, by one thread per process.

    Sign-in puts only the address here, so the request does the same work, and takes as long,
    whether or not the address is a customer's; the worker looks the customer up, issues the
    code and sends the mail, each job ``delay`` seconds after its hand-over at the earliest.
    Bounded: a full queue refuses (``put`` is False) rather than grow without end. In memory:
    what waits when the process stops is lost, and the customer asks again. The thread starts
    on first use, and again in a process forked from this one; under gevent it is a greenlet.
    """

    def __init__(
        self,
        work: Callable[[T], None],
        *,
        name: str,
        maxsize: int = QUEUE_SIZE,
        delay: float = HANDOFF_DELAY,
    ) -> None:
        self._work, self._name, self._maxsize, self._delay = work, name, maxsize, delay
        self._guard = threading.Lock()
        self._pid: int | None = None
        self._queue: queue.Queue[tuple[float, T]] = queue.Queue(maxsize)

    def put(self, item: T) -> bool:
        """Hand ``item`` to the worker; False, without waiting, when the queue is full."""
        try:
            self._running().put_nowait((time.monotonic() + self._delay, item))
        except queue.Full:
            return False
        return True

    def wait_idle(self, timeout: float) -> bool:
        """Wait until everything handed over so far is done (tests); False on timeout."""
        deadline = time.monotonic() + timeout
        q = self._queue
        with q.all_tasks_done:
            while q.unfinished_tasks:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                q.all_tasks_done.wait(left)
        return True

    def _running(self) -> queue.Queue[tuple[float, T]]:
        pid = os.getpid()
        if self._pid != pid:
            with self._guard:
                if self._pid != pid:
                    # A forked child inherits the parent's queue but not its thread: start
                    # afresh (what the parent had queued, the parent still works off).
                    self._queue = queue.Queue(self._maxsize)
                    thread = threading.Thread(
                        target=self._run, args=(self._queue,), name=self._name, daemon=True
                    )
                    thread.start()
                    self._pid = pid
        return self._queue

    def _run(self, q: queue.Queue[tuple[float, T]]) -> None:
        while True:
            due, item = q.get()
            try:
                wait = due - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                self._work(item)
            except Exception:
                log.exception("%s: a background job failed", self._name)
            finally:
                q.task_done()
