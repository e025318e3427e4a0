"""The outbox worker: claims due rows, sends them by Web Push or email, records the outcome.

It runs as a background thread inside the server (``settings.run_worker``) or alone through
``waybill worker``. Sending happens on a pool of threads (greenlets under gevent), so many
requests are in flight at once while the push services take their time to answer.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import os
import smtplib
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta

from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from waybill.config import Settings
from waybill.models import Customer, Merchant, Order, utcnow
from waybill.notify import content, mail, outbox
from waybill.notify.models import OutboxMessage, PushSubscription
from waybill.notify.webpush import (
    PushSender,
    Subscription,
    b64url,
    load_vapid,
    topic_for,
    ttl_for,
    urgency_for,
)

log = logging.getLogger("waybill.notify")


def unsubscribe_token(secret: str, customer_id: int) -> str:
    """A link token that turns one customer's notification emails off (and nothing else)."""
    mac = hmac.new(secret.encode(), f"unsubscribe:{customer_id}".encode(), hashlib.sha256)
    return f"{customer_id}.{b64url(mac.digest()[:18])}"


def read_unsubscribe_token(secret: str, token: str) -> int | None:
    cid, _, _sig = token.partition(".")
    if not cid.isdigit() or len(cid) > 18:
        return None
    expected = unsubscribe_token(secret, int(cid))
    return int(cid) if hmac.compare_digest(expected.encode(), token.encode()) else None


class Worker:
    """One outbox worker; ``run_once`` is also what tests and benchmarks drive directly."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        concurrency: int = 64,
        batch_size: int = 256,
        lease: timedelta = timedelta(minutes=2),
        poll_interval: float = 1.0,
        push_timeout: float = 10.0,
    ) -> None:
        self.engine, self.settings = engine, settings
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.batch_size, self.lease, self.poll_interval = batch_size, lease, poll_interval
        self.sender = PushSender(
            load_vapid(settings), settings.vapid_subject, timeout=push_timeout,
            pool_size=concurrency,
        )
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="waybill-push")
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cleanup: datetime | None = None

    # --- the loop ----------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Claim one batch of due rows, send them all, record the outcomes; returns the count."""
        now = now or utcnow()
        ids = outbox.claim(
            self.engine, owner=self.owner, limit=self.batch_size, now=now, lease=self.lease
        )
        if not ids:
            return 0
        jobs = self._prepare(ids, now)
        outcomes = list(self.pool.map(lambda job: job(), jobs))
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            outbox.record(session, owner=self.owner, outcomes=outcomes, now=max(now, utcnow()))
        return len(ids)

    def run_until_idle(self, now: datetime | None = None, *, max_batches: int = 1000) -> int:
        total = 0
        for _ in range(max_batches):
            n = self.run_once(now)
            total += n
            if n == 0:
                break
        return total

    def start(self) -> Worker:
        self._thread = threading.Thread(target=self._loop, name="waybill-outbox", daemon=True)
        self._thread.start()
        return self

    def notify(self, _message: object = None) -> None:
        """Something was committed: look for due rows now instead of at the next poll."""
        self.wake.set()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self.wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.sender.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._cleanup()
                if self.run_once() == 0:
                    self.wake.wait(self.poll_interval)
                    self.wake.clear()
            except Exception:
                log.exception("outbox worker: batch failed; trying again shortly")
                self._stop.wait(self.poll_interval * 5)

    def _cleanup(self) -> None:
        now = utcnow()
        if self._last_cleanup and now - self._last_cleanup < timedelta(minutes=10):
            return
        self._last_cleanup = now
        with Session(self.engine) as session, session.begin():
            outbox.expire_anonymous(session, now=now)

    # --- one batch ---------------------------------------------------------------------------

    def _prepare(self, ids: list[int], now: datetime) -> list[Callable[[], outbox.Outcome]]:
        """Load everything a batch needs in a few queries, and build one send per row."""
        with Session(self.engine, expire_on_commit=False) as session:
            rows = list(session.exec(select(OutboxMessage).where(col(OutboxMessage.id).in_(ids))))
            orders = {
                o.id: o
                for o in session.exec(
                    select(Order).where(col(Order.id).in_({r.order_id for r in rows}))
                )
            }
            merchants = {
                m.id: m
                for m in session.exec(
                    select(Merchant).where(
                        col(Merchant.id).in_({o.merchant_id for o in orders.values()})
                    )
                )
            }
            customers = {
                c.id: c
                for c in session.exec(
                    select(Customer).where(
                        col(Customer.id).in_({o.customer_id for o in orders.values()})
                    )
                )
            }
            subs = {
                s.id: s
                for s in session.exec(
                    select(PushSubscription).where(
                        col(PushSubscription.id).in_(
                            {r.subscription_id for r in rows if r.subscription_id}
                        )
                    )
                )
            }
        jobs: list[Callable[[], outbox.Outcome]] = []
        # Two statuses of one order for one destination in a batch would race each other to
        # the phone: only the newest goes.
        newest: dict[tuple[int, str], int] = {}
        for row in rows:
            key = (row.order_id, row.destination)
            newest[key] = max(newest.get(key, 0), row.change_id)
        for row in rows:
            if row.change_id < newest[(row.order_id, row.destination)]:
                jobs.append(_const(outbox.Outcome(row.id, "superseded", "a newer status")))  # type: ignore[arg-type]
                continue
            order = orders.get(row.order_id)
            if order is None:
                jobs.append(_const(outbox.Outcome(row.id, "dropped", "order gone")))  # type: ignore[arg-type]
                continue
            customer = customers.get(order.customer_id)
            facts = content.OrderFacts(
                order_id=order.id,  # type: ignore[arg-type]
                number=order.external_id,
                merchant=merchants[order.merchant_id].name,
                status=row.status,
                url=f"{self.settings.base_url}/t/{order.tracking_token}",
                estimated_delivery=order.estimated_delivery,
            )
            if row.channel == "push":
                sub = subs.get(row.subscription_id) if row.subscription_id else None
                if sub is None:
                    jobs.append(_const(outbox.Outcome(row.id, "dropped", "subscription gone")))  # type: ignore[arg-type]
                    continue
                if sub.customer_id is not None and customer is not None:
                    prefs = outbox.customer_preferences(customer)
                    language, zone = prefs.language, prefs.timezone
                else:
                    language, zone = sub.language, "UTC"
                msg = content.message(facts, language=language, now=now, timezone=zone)
                jobs.append(self._push_job(row, sub, facts, msg))
            elif row.channel == "email" and customer is not None:
                jobs.append(self._email_job(row, customer, facts, now))
            else:
                jobs.append(_const(outbox.Outcome(row.id, "dropped", "no recipient")))  # type: ignore[arg-type]
        return jobs

    def _push_job(
        self, row: OutboxMessage, sub: PushSubscription, facts: content.OrderFacts,
        msg: content.Message,
    ) -> Callable[[], outbox.Outcome]:
        payload = content.push_payload(facts, msg)
        target = Subscription(sub.endpoint, sub.p256dh, sub.auth)
        row_id = row.id
        assert row_id is not None

        def send() -> outbox.Outcome:
            try:
                result = self.sender.send(
                    target, payload, ttl=ttl_for(facts.status), urgency=urgency_for(facts.status),
                    topic=topic_for(facts.order_id),
                )
            except Exception as exc:  # a bug or a bad key must not stop the batch
                log.exception("push to subscription %s failed", sub.id)
                return outbox.Outcome(row_id, "retry", f"{exc.__class__.__name__}: {exc}")
            if result.outcome == "rejected":
                log.warning(
                    "push service refused subscription %s with %s: %s",
                    sub.id, result.status, result.detail,
                )
            detail = f"{result.status} {result.detail}".strip() if result.status else result.detail
            return outbox.Outcome(row_id, result.outcome, detail, result.retry_after)

        return send

    def _email_job(
        self, row: OutboxMessage, customer: Customer, facts: content.OrderFacts, now: datetime
    ) -> Callable[[], outbox.Outcome]:
        prefs = outbox.customer_preferences(customer)
        msg = content.message(facts, language=prefs.language, now=now, timezone=prefs.timezone)
        url = (
            f"{self.settings.base_url}/unsubscribe/"
            f"{unsubscribe_token(self.settings.secret_key, customer.id)}"  # type: ignore[arg-type]
        )
        text, html = content.email_parts(facts, msg, language=prefs.language, unsubscribe_url=url)
        message = mail.build_message(
            self.settings,
            to=row.destination,
            subject=msg.title,
            text=text,
            html=html,
            headers={
                "List-Unsubscribe": f"<{url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )
        row_id = row.id
        assert row_id is not None

        def send() -> outbox.Outcome:
            try:
                mail.send(self.settings, message)
            except smtplib.SMTPRecipientsRefused as exc:
                return outbox.Outcome(row_id, "rejected", f"recipient refused: {exc}")
            except (smtplib.SMTPException, OSError) as exc:
                code = getattr(exc, "smtp_code", 0) or 0
                kind = "rejected" if 500 <= code < 600 else "retry"
                return outbox.Outcome(row_id, kind, f"{exc.__class__.__name__}: {exc}")
            return outbox.Outcome(row_id, "sent")

        return send


def _const(outcome: outbox.Outcome) -> Callable[[], outbox.Outcome]:
    return lambda: outcome
