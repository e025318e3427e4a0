"""The outbox worker: claims due rows, sends them by Web Push or email, records the outcome.

It runs as a background thread inside the server (``settings.run_worker``) or alone through
``waybill worker``. Push messages of a batch go out together from one event loop (hundreds in
flight while the push services take their time to answer); emails go through a small thread
pool meanwhile, sharing SMTP connections (``mail.RelayPool``); the next batch is claimed and
encrypted while the previous one is in flight.
"""

from __future__ import annotations

import itertools
import logging
import os
import smtplib
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, NamedTuple, cast

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from waybill import observe
from waybill.config import Settings
from waybill.db import read_engine
from waybill.models import Customer, Merchant, Order, Shipment, TrackingEvent, utcnow
from waybill.notify import content, mail, outbox, preferences, subscriptions
from waybill.notify.models import OutboxMessage, PushSubscription
from waybill.notify.push_policy import topic_for, ttl_for, urgency_for
from waybill.notify.unsubscribe import unsubscribe_url
from waybill.notify.vapid import load_old_vapid, load_vapid
from waybill.notify.webpush import Outgoing, PushResult, PushSender, Subscription, describe_error
from waybill.orders import tracking_url

log = logging.getLogger("waybill.notify")

#: While a batch's pushes are on their way, those answered are stored this often: a worker
#: that dies mid-batch leaves for sending again only what had no answer yet (and what was
#: answered in its last moment), not the whole batch.
RECORD_EVERY_S = 0.1

MAIL_THREADS = 8  # mails sent at once, and SMTP connections open at most, per worker


def off_the_loop(work: Callable[[], Any]) -> Any:
    """Run CPU-heavy ``work`` (seconds of it) on a native thread when this process runs on
    gevent, so that the event loop keeps answering meanwhile; else right here."""
    try:
        from gevent import get_hub, monkey
    except ImportError:  # pragma: no cover - gevent is a dependency
        return work()
    if not monkey.is_module_patched("threading"):
        return work()
    return get_hub().threadpool.apply(work)


class _OrderColumns(NamedTuple):
    """The order columns a notification needs, read without building an ``Order``."""

    id: int
    external_id: str
    merchant_id: int
    customer_id: int
    tracking_token_sealed: str
    tracking_token_hash: str
    estimated_delivery: Any
    pickup_until: Any  # the latest deadline of its parcels waiting to be collected, if any
    window: Any  # (earliest, latest): Waybill's own estimate, dates in the customer's zone


@dataclass
class _Batch:
    """Claimed rows on their way out."""

    ids: list[int]
    token: str  # the lease owner of these rows
    now: datetime
    rows: list[int]  # the outbox row of each push message, in order
    pushes: Future[list[PushResult]]
    others: list[Future[outbox.Outcome]]
    #: (index into ``rows``, result) of each push as its answer came: appended by the
    #: sender's thread, read by the worker's (a list's append is atomic)
    answered: list[tuple[int, PushResult]] = field(default_factory=list)


class Worker:
    """One outbox worker; ``run_once`` is also what tests and benchmarks drive directly."""

    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        *,
        concurrency: int = 256,
        batch_size: int = 512,
        lease: timedelta = timedelta(minutes=2),
        poll_interval: float = 1.0,
        push_timeout: float = 10.0,
        broker: Any = None,
    ) -> None:
        self.engine, self.settings, self.broker = engine, settings, broker
        self.owner = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.batch_size, self.lease, self.poll_interval = batch_size, lease, poll_interval
        self.sender = PushSender(
            load_vapid(settings),
            settings.vapid_subject,
            timeout=push_timeout,
            pool_size=concurrency,
            old_keys=load_old_vapid(settings),
        )
        self.pool = ThreadPoolExecutor(MAIL_THREADS, thread_name_prefix="waybill-mail")
        # The pool's mails share SMTP connections: one for a batch while the relay keeps up.
        self.relays = mail.RelayPool(settings, size=MAIL_THREADS)
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_cleanup: datetime | None = None
        self._last_inbox: datetime | None = None
        self._last_retrain_check: datetime | None = None
        self._batches = itertools.count(1)

    # --- the loop ----------------------------------------------------------------------------

    def run_once(self, now: datetime | None = None) -> int:
        """Claim one batch of due rows, send them all, record the outcomes; returns the count."""
        batch = self._begin(now or utcnow())
        if batch is None:
            return 0
        self._finish(batch)
        return len(batch.ids)

    def run_until_idle(self, now: datetime | None = None, *, max_batches: int = 1000) -> int:
        """Send everything due. The next batch is claimed and encrypted while the previous one
        is still waiting on the push services."""
        total = 0
        flying: _Batch | None = None
        for _ in range(max_batches):
            # A small first batch gets the sender going while the next, full one is loaded.
            batch = self._begin(now or utcnow(), self.batch_size if flying else 64)
            if flying is not None:
                self._finish(flying)
            if batch is None:
                break
            total += len(batch.ids)
            flying = batch
        else:
            if flying is not None:
                self._finish(flying)
        return total

    def _begin(self, now: datetime, limit: int | None = None) -> _Batch | None:
        token = f"{self.owner}:{next(self._batches)}"  # one per batch: two are in flight
        ids = outbox.claim(
            self.engine,
            owner=token,
            limit=limit or self.batch_size,
            now=now,
            lease=self.lease,
        )
        if not ids:
            return None
        pushes, jobs = self._prepare(token, now)
        answered: list[tuple[int, PushResult]] = []
        return _Batch(
            ids=ids,
            token=token,
            now=now,
            rows=[row_id for row_id, _ in pushes],
            pushes=self.sender.send_many_async(
                [m for _, m in pushes], lambda i, result: answered.append((i, result))
            ),
            others=[self.pool.submit(job) for job in jobs],  # email, meanwhile, on the pool
            answered=answered,
        )

    def _finish(self, batch: _Batch) -> None:
        """Record the batch's outcomes: the pushes answered so far every RECORD_EVERY_S while
        the rest are on their way (a worker killed mid-batch sends again only what was still
        waiting for its answer, or answered in the last moment), the rest at the end."""
        recorded = 0
        while True:
            try:
                results = batch.pushes.result(timeout=RECORD_EVERY_S)
                break
            except TimeoutError:  # still sending: what was answered meanwhile is stored
                recorded = self._record_answered(batch, recorded)
            except Exception as exc:  # the transport itself failed: each message counts a try
                log.exception("push batch failed")
                results = [PushResult("retry", None, None, describe_error(exc))] * len(batch.rows)
                break
        done = {i for i, _ in batch.answered[:recorded]}
        outcomes = [
            self._push_outcome(row_id, r)
            for i, (row_id, r) in enumerate(zip(batch.rows, results, strict=True))
            if i not in done
        ]
        for r in results:
            observe.NOTIFICATIONS.labels("push", r.outcome).inc()
        outcomes += [_outcome_of(f) for f in batch.others]
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            outbox.record(
                session, owner=batch.token, outcomes=outcomes, now=max(batch.now, utcnow())
            )

    def _record_answered(self, batch: _Batch, recorded: int) -> int:
        """Store the outcomes of the pushes answered since the first ``recorded``; returns
        how many are stored now."""
        upto = len(batch.answered)
        if upto == recorded:
            return recorded
        outcomes = [self._push_outcome(batch.rows[i], r) for i, r in batch.answered[recorded:upto]]
        with Session(self.engine, expire_on_commit=False) as session, session.begin():
            outbox.record(
                session,
                owner=batch.token,
                outcomes=outcomes,
                now=max(batch.now, utcnow()),
                whole_batch=False,
            )
        return upto

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
        self.relays.close()  # mails still being sent close theirs when done
        self.sender.close()

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._cleanup()
                self._integrations()
                self._retrain()
                if self.run_until_idle() == 0:
                    self.wake.wait(self.poll_interval)
                    self.wake.clear()
            except Exception:
                log.exception("outbox worker: batch failed; trying again shortly")
                self._stop.wait(self.poll_interval * 5)

    def _integrations(self) -> None:
        """Webhooks a request took but did not apply (its process ended first), and the
        parcels due a poll at their tracking provider: every few seconds."""
        from waybill.integrations import inbox, poll_schedule

        now = utcnow()
        if self._last_inbox and now - self._last_inbox < timedelta(seconds=5):
            return
        self._last_inbox = now
        key = self.settings.secret_key
        try:  # never in the way of the notifications: a failure here is logged, and waits
            inbox.apply_stale(self.engine, server_key=key, broker=self.broker, now=now)
            inbox.release_stranded(self.engine, server_key=key, broker=self.broker, now=now)
            poll_schedule.poll_due(self.engine, self.settings, broker=self.broker, now=now)
        except Exception:
            log.exception("integrations: webhooks or polls failed; trying again shortly")

    def _retrain(self) -> None:
        """Delivery estimates learned again from the delivered orders, once a day (whichever
        worker finds the newest model a day old first; two at once only store two)."""
        from waybill import eta

        now = utcnow()
        if self._last_retrain_check and now - self._last_retrain_check < timedelta(minutes=10):
            return
        self._last_retrain_check = now
        try:
            if eta.due_for_training(self.engine, now=now):
                model = off_the_loop(lambda: eta.learn(self.engine, now=now))
                eta.store(self.engine, model, now=now)
        except Exception:
            log.exception("delivery estimates: training failed; trying again in 10 minutes")

    def _cleanup(self) -> None:
        now = utcnow()
        if self._last_cleanup and now - self._last_cleanup < timedelta(minutes=10):
            return
        self._last_cleanup = now
        from waybill.integrations import inbox

        with Session(self.engine) as session, session.begin():
            subscriptions.expire_anonymous(session, now=now)
            inbox.purge(session, now=now)

    # --- one batch ---------------------------------------------------------------------------

    def _prepare(
        self, token: str, now: datetime
    ) -> tuple[list[tuple[int, Outgoing]], list[Callable[[], outbox.Outcome]]]:
        """Load everything the batch leased to ``token`` needs in one query: the push messages
        to send, and a job for every other row (email, or an outcome known without sending).

        Plain column rows, not ORM objects: building model instances cost more than the
        encryption."""
        Od, M, C, S, X = Order, Merchant, Customer, PushSubscription, OutboxMessage  # noqa: N806
        query = (
            select(
                X.id,
                X.order_id,
                X.destination,
                X.change_id,
                X.channel,
                X.subscription_id,
                X.status,
                Od.id,
                Od.external_id,
                Od.merchant_id,
                Od.customer_id,
                Od.tracking_token_sealed,
                Od.tracking_token_hash,
                Od.estimated_delivery,
                M.name,
                C.id,
                C.preferences,
                C.locale,
                C.timezone,
                S.id,
                S.customer_id,
                S.endpoint,
                S.p256dh,
                S.auth,
                S.language,
                # the words of the newest event that said this status (a carrier's "not at
                # home", a shop's reason for cancelling): the message quotes them
                select(TrackingEvent.description)
                .where(TrackingEvent.order_id == X.order_id, TrackingEvent.status == X.status)
                .order_by(col(TrackingEvent.occurred_at).desc(), col(TrackingEvent.id).desc())
                .limit(1)
                .scalar_subquery(),
                # until when a parcel waits to be collected: the message says so
                select(sa.func.max(Shipment.pickup_until))
                .where(Shipment.order_id == X.order_id)
                .scalar_subquery(),
                Od.eta_earliest,  # Waybill's own window: the message says it
                Od.eta_latest,
                S.vapid_key,
            )
            .select_from(X)
            .outerjoin(Od, col(Od.id) == X.order_id)
            .outerjoin(M, col(M.id) == Od.merchant_id)
            .outerjoin(C, col(C.id) == Od.customer_id)
            .outerjoin(S, col(S.id) == X.subscription_id)
            .where(X.lease_owner == token, X.state == "pending")
        )
        with Session(read_engine(self.engine)) as session:
            joined = session.exec(query).all()  # type: ignore[call-overload]
        rows = [(*r[0:7], r[25]) for r in joined]
        orders = {
            r[7]: _OrderColumns(*r[7:14], r[26], (r[27], r[28]) if r[27] and r[28] else None)
            for r in joined
            if r[7] is not None
        }
        merchants = {r[9]: r[14] for r in joined if r[7] is not None}
        customers = {r[15]: r[15:19] for r in joined if r[15] is not None}
        subs = {r[19]: (*r[19:25], r[29]) for r in joined if r[19] is not None}
        prefs_of: dict[int, preferences.Preferences] = {}

        def prefs_for(customer_id: int) -> preferences.Preferences | None:
            if customer_id not in prefs_of and customer_id in customers:
                _, stored, locale, zone = customers[customer_id]
                prefs_of[customer_id] = preferences.load(stored, language=locale, timezone=zone)
            return prefs_of.get(customer_id)

        jobs: list[Callable[[], outbox.Outcome]] = []
        pushes: list[tuple[int, Outgoing]] = []
        prepare_one = self._prepare_row(orders, merchants, subs, prefs_for, token, now)
        for row in rows:  # ``outbox.claim`` left one per order and destination
            try:
                job = prepare_one(*row)
            except Exception as exc:  # one row that cannot be built fails alone
                log.exception("outbox row %s could not be prepared", row[0])
                jobs.append(_const(outbox.Outcome(row[0], "retry", describe_error(exc))))
                continue
            if isinstance(job, Outgoing):
                pushes.append((row[0], job))
            else:
                jobs.append(job)
        return pushes, jobs

    # (continued from _prepare: what one row becomes)

    def _prepare_row(
        self,
        orders: dict[int, _OrderColumns],
        merchants: dict[int, Any],
        subs: dict[int, Any],
        prefs_for: Callable[[int], preferences.Preferences | None],
        token: str,
        now: datetime,
    ) -> Callable[..., Outgoing | Callable[[], outbox.Outcome]]:
        def prepare_one(
            row_id: int,
            order_id: int,
            destination: str,
            change_id: int,
            channel: str,
            sub_id: int | None,
            status: str,
            note: str | None,
        ) -> Outgoing | Callable[[], outbox.Outcome]:
            order = orders.get(order_id)
            if order is None:
                return _const(outbox.Outcome(row_id, "dropped", "order gone"))
            # An ``Order`` would cost more than the encryption; the link reads only its tokens.
            url = tracking_url(self.settings.base_url, self.settings.secret_key, cast(Order, order))
            facts = content.OrderFacts(
                order_id=order_id,
                number=order.external_id,
                merchant=merchants.get(order.merchant_id, ""),
                status=status,
                url=url,
                estimated_delivery=order.estimated_delivery,
                note=note,
                pickup_until=order.pickup_until,
                window=order.window,
            )
            customer_id = order.customer_id
            prefs = prefs_for(customer_id)
            if channel == "push":
                sub = subs.get(sub_id) if sub_id else None
                if sub is None:
                    return _const(outbox.Outcome(row_id, "dropped", "subscription gone"))
                _, sub_customer, endpoint, p256dh, auth, sub_language, vapid_key = sub
                if sub_customer is not None and prefs is not None:
                    language, zone = prefs.language, prefs.timezone
                else:
                    language, zone = sub_language, "UTC"
                msg = content.message(facts, language=language, now=now, timezone=zone)
                current = self.sender.keys.public_key
                renew = current if vapid_key and vapid_key != current else None
                return Outgoing(
                    Subscription(endpoint, p256dh, auth, vapid_key),
                    content.push_payload(facts, msg, renew_with=renew),
                    ttl_for(status),
                    urgency_for(status),
                    topic_for(order_id),
                )
            if channel == "webhook":
                return self._webhook_job(row_id, token, destination, change_id, order_id)
            if channel == "email" and prefs is not None:
                return self._email_job(row_id, token, destination, customer_id, prefs, facts, now)
            return _const(outbox.Outcome(row_id, "dropped", "no recipient"))

        return prepare_one

    @staticmethod
    def _push_outcome(row_id: int, result: PushResult) -> outbox.Outcome:
        if result.outcome == "rejected":
            log.warning("push service refused row %s: %s %s", row_id, result.status, result.detail)
        detail = f"{result.status} {result.detail}".strip() if result.status else result.detail
        return outbox.Outcome(row_id, result.outcome, detail, result.retry_after)

    def _email_job(
        self,
        row_id: int,
        token: str,
        to: str,
        customer_id: int,
        prefs: preferences.Preferences,
        facts: content.OrderFacts,
        now: datetime,
    ) -> Callable[[], outbox.Outcome]:
        msg = content.message(facts, language=prefs.language, now=now, timezone=prefs.timezone)
        url = unsubscribe_url(self.settings.base_url, self.settings.secret_key, customer_id)
        text, html = content.email_parts(facts, msg, language=prefs.language, unsubscribe_url=url)
        message = mail.build_message(
            self.settings,
            to=to,
            subject=msg.title,
            text=text,
            html=html,
            headers={
                "List-Unsubscribe": f"<{url}>",
                "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            },
        )

        def attempt() -> outbox.Outcome:
            # One of the worker's SMTP connections, shared with the batch's other mails.
            with self.relays.borrow() as relay:
                # Mail waits its turn on the pool and for a connection, and a slow relay can
                # outlast the batch's lease; renew it for this row first, and leave the row
                # alone if another worker took it.
                if not outbox.renew_lease(
                    self.engine, row_id, owner=token, until=utcnow() + self.lease
                ):
                    return outbox.Outcome(row_id, "retry", "lease lost to another worker")
                return deliver(relay)

        def deliver(relay: mail.Relay) -> outbox.Outcome:
            try:
                relay.send(message)  # sent again only if it cannot have been taken already
            except smtplib.SMTPRecipientsRefused as exc:
                return outbox.Outcome(row_id, "rejected", f"recipient refused: {exc}")
            except (smtplib.SMTPException, OSError) as exc:
                code = getattr(exc, "smtp_code", 0) or 0
                kind = "rejected" if 500 <= code < 600 else "retry"
                return outbox.Outcome(row_id, kind, f"{exc.__class__.__name__}: {exc}")
            return outbox.Outcome(row_id, "sent")

        return self._recorded(row_id, token, "mail", attempt)

    def _recorded(
        self, row_id: int, token: str, what: str, attempt: Callable[[], outbox.Outcome]
    ) -> Callable[[], outbox.Outcome]:
        """A job that runs ``attempt`` and records its outcome at once, not with the whole
        batch: a sent mail or webhook must not stay pending (and claimable once the lease runs
        out) while the batch's slower ones go out. One that raises fails alone, and counts a
        try."""

        def send() -> outbox.Outcome:
            try:
                outcome = attempt()
            except Exception as exc:
                log.exception("outbox row %s: %s failed", row_id, what)
                outcome = outbox.Outcome(row_id, "retry", describe_error(exc))
            observe.NOTIFICATIONS.labels(what, outcome.result).inc()
            try:
                outbox.record_one(self.engine, outcome, owner=token, now=utcnow())
            except Exception:  # the batch's own record takes it instead
                log.exception("outbox row %s: could not record the outcome", row_id)
            return outcome

        return send

    def _webhook_job(
        self, row_id: int, token: str, destination: str, change_id: int, order_id: int
    ) -> Callable[[], outbox.Outcome]:
        """The merchant's webhook: the order as the merchant API shows it, when it is sent."""

        def attempt() -> outbox.Outcome:
            from waybill.integrations import outbound
            from waybill.models import Change, WebhookEndpoint
            from waybill.orders import render_orders

            endpoint_id = int(destination.split(":")[1])
            with Session(read_engine(self.engine), expire_on_commit=False) as session:
                endpoint = session.get(WebhookEndpoint, endpoint_id)
                change, order = session.get(Change, change_id), session.get(Order, order_id)
                if endpoint is None or change is None or order is None:
                    return outbox.Outcome(row_id, "dropped", "endpoint or order gone")
                shown = render_orders(
                    session,
                    [order],
                    base_url=self.settings.base_url,
                    secret_key=self.settings.secret_key,
                    merchant_view=True,
                    language="en",
                )[0].model_dump(mode="json")
            shown["status"] = change.status_after  # what this change made it
            body = outbound.payload(change_id, change.created_at, shown, change.status_before)
            if not outbox.renew_lease(
                self.engine, row_id, owner=token, until=utcnow() + self.lease
            ):
                return outbox.Outcome(row_id, "retry", "lease lost to another worker")
            sent = outbound.deliver(
                endpoint,
                body,
                server_key=self.settings.secret_key,
                extra_hosts=self.settings.webhook_endpoint_hosts,
                session=self._http(),
            )
            return outbox.Outcome(row_id, sent.result, sent.detail, sent.retry_after)

        return self._recorded(row_id, token, "webhook", attempt)

    def _http(self) -> Any:
        """This thread's ``requests`` session (connections kept alive per endpoint)."""
        import requests

        local = self.__dict__.setdefault("_http_local", threading.local())
        if not hasattr(local, "session"):
            local.session = requests.Session()
        return local.session


def _const(outcome: outbox.Outcome) -> Callable[[], outbox.Outcome]:
    return lambda: outcome


def _outcome_of(job: Future[outbox.Outcome]) -> outbox.Outcome:
    """A job's outcome; a job that raised anyway is a retry of a row we no longer know: the
    lease expires and the row is claimed again, alone."""
    try:
        return job.result()
    except Exception:
        log.exception("outbox job failed")
        return outbox.Outcome(-1, "retry", "job failed")
