"""Email sign-in: a one-time link and a 6-digit code, 15 minutes, single use, stored hashed,
and the mail that carries them, in the customer's language."""

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
from email.message import EmailMessage
from typing import Any, ClassVar, Generic, TypeVar

from flask import Flask, render_template
from sqlmodel import Session, select

from waybill.auth.tokens import digest, keyed_digest, keyed_digest_matches, new_token
from waybill.config import Settings
from waybill.db import session_scope
from waybill.models import Customer, LoginToken, utcnow
from waybill.notify import mail
from waybill.orders import saved_language

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
        if keyed_digest_matches(secret, login.code_hash, str(login.id), code):
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
        BackgroundQueue.every.append(self)

    every: ClassVar[list[BackgroundQueue[Any]]] = []  # the process's queues

    @classmethod
    def wait_all_idle(cls, timeout: float) -> bool:
        """Wait until every queue of the process has done what it was handed (``close_app``:
        a job must not outlive the database it writes to)."""
        deadline = time.monotonic() + timeout
        return all(q.wait_idle(max(0.0, deadline - time.monotonic())) for q in list(cls.every))

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


# --- the sign-in mail ---------------------------------------------------------------------

_MAIL_WORDS: dict[str, dict[str, str]] = {
    "en": {
        "subject": "Your Waybill sign-in code: {code}",
        "intro": "Sign in to Waybill to see all your orders:",
        "button": "Sign in",
        "code": "Or type this code in the app:",
        "note": "The link and the code work once, for 15 minutes. "
        "If you did not ask to sign in, ignore this message.",
    },
    "de": {
        "subject": "Dein Waybill-Anmeldecode: {code}",
        "intro": "Melde dich bei Waybill an, um alle deine Bestellungen zu sehen:",
        "button": "Anmelden",
        "code": "Oder gib diesen Code in der App ein:",
        "note": "Link und Code funktionieren nur einmal und sind 15 Minuten lang gültig. "
        "Wenn du keine Anmeldung angefordert hast, ignoriere diese Nachricht einfach.",
    },
}


def mail_language(customer: Customer, asked_in: str | None) -> str:
    """The customer's own language when they (or their orders) said one, else the asking
    browser's, else English."""
    return saved_language(customer) or (asked_in if asked_in in _MAIL_WORDS else "en")


def sign_in_mail(settings: Settings, to: str, issued: IssuedLogin, language: str) -> EmailMessage:
    """The mail with the link and the code, as plain text and HTML (needs an app context)."""
    lang = language if language in _MAIL_WORDS else "en"
    words = _MAIL_WORDS[lang]
    link = f"{settings.base_url}/auth/link/{issued.link_token}"
    context = {"lang": lang, "words": words, "link": link, "code": issued.code}
    return mail.build_message(
        settings,
        to=to,
        subject=words["subject"].format(code=issued.code),
        text=render_template("mail_sign_in.txt", **context),
        html=render_template("mail_sign_in.html", **context),
    )


@dataclass(frozen=True)
class MailRequest:
    """What a sign-in request hands to the worker: no answer depends on it."""

    app: Flask
    email: str
    language: str | None  # the asking browser's preferred language, if it is one we write


def _mail_sign_in(job: MailRequest) -> None:
    """After the answer: look the address up and, for a customer, issue a code and mail it."""
    settings: Settings = job.app.config["WAYBILL_SETTINGS"]
    with job.app.app_context():
        with session_scope(job.app.extensions["waybill.engine"]) as db:
            customer = find_customer(db, job.email)
            if customer is None:
                return  # nobody to mail, and nothing to tell the asker
            issued = issue(session=db, customer=customer, secret=settings.secret_key)
            to, language = customer.email, mail_language(customer, job.language)
        msg = sign_in_mail(settings, to, issued, language)  # committed first: works once mailed
    mail.send(settings, msg)


# One worker per process; every app of the process (tests make many) shares it.
_sign_in_mails: BackgroundQueue[MailRequest] = BackgroundQueue(_mail_sign_in, name="sign-in-mail")


def request_mail(app: Flask, email: str, language: str | None) -> None:
    """Mail a link and a code to ``email`` if it is a customer's, after the request has answered.

    Whether it is one is found out only by the worker: the request does the same work, and takes
    as long, for every address (no timing oracle)."""
    if not _sign_in_mails.put(MailRequest(app, email, language)):
        log.warning("sign-in mail queue full (%d waiting): one request dropped", QUEUE_SIZE)
