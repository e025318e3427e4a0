"""The durable outbox: rows written in the transaction of their change, claimed with a lease.

* ``enqueue_change`` runs inside ``ingest``'s transaction, so a notification exists exactly when
  its change is committed; the unique ``dedupe_key`` (change, destination) keeps a retried
  transaction or a replayed event from queueing one twice.
* Quiet hours are a ``due_at`` in the future; a newer status for the same order and destination
  supersedes a held (or backing-off) older one, so one notification per order goes out
  (``supersede_older``, the one place that rule lives).
* ``claim`` leases due rows to one worker: ``FOR UPDATE SKIP LOCKED`` on PostgreSQL; on SQLite
  the engine's ``BEGIN IMMEDIATE`` makes every claim a single writer. A worker that dies leaves
  its lease to run out, and the rows are claimed again.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from waybill.models import Change, Customer, Order, WebhookEndpoint, utcnow
from waybill.notify import preferences
from waybill.notify.models import OrderMute, OutboxMessage, PushSubscription
from waybill.notify.subscriptions import (
    anonymous_expiry,
    customer_scope,
    forget_subscriptions,
    in_scopes,
    order_scope,
)

PUSH_DEADLINE = timedelta(hours=24)
EMAIL_DEADLINE = timedelta(hours=24)
BACKOFF_BASE = 2.0  # seconds
BACKOFF_CAP = 15 * 60.0
MAX_ATTEMPTS = 8  # then the row is dead-lettered (state "dead", with its last error)
#: A merchant's webhook is tried until its deadline: a receiver down for hours still gets it.
WEBHOOK_DEADLINE = timedelta(hours=24)
WEBHOOK_MAX_ATTEMPTS = 200

log = logging.getLogger("waybill.notify")

#: A change of this kind is one parcel delivered while the order goes on: it tells the stage
#: ``partially_delivered``, not the order's status.
PARCEL_DELIVERED = "parcel.delivered"
#: The same status, a new "arrives by" (``eta.reestimate``): for who chose ``estimate_changed``.
ESTIMATE_REVISED = "estimate.revised"


def customer_preferences(customer: Customer) -> preferences.Preferences:
    return preferences.load(
        customer.preferences, language=customer.locale, timezone=customer.timezone
    )


def save_preferences(session: Session, customer: Customer, prefs: preferences.Preferences) -> None:
    """Store the customer's preferences; notifications they hold back follow at once."""
    customer.preferences = prefs.to_dict()
    session.add(customer)
    session.flush()
    reevaluate(session, customer)


def set_muted(session: Session, customer: Customer, order_id: int, *, muted: bool) -> None:
    """Silence one of the customer's orders on every channel, or let it speak again."""
    mute = session.get(OrderMute, order_id)
    if muted and mute is None:
        session.add(OrderMute(order_id=order_id))
    elif not muted and mute is not None:
        session.delete(mute)
    session.flush()
    reevaluate(session, customer)


def is_muted(session: Session, order_id: int) -> bool:
    return session.get(OrderMute, order_id) is not None


def enqueue_change(
    session: Session, change: Change, order: Order, *, now: datetime | None = None
) -> int:
    """Queue what this change means for each destination; returns how many rows were written."""
    stage = {
        PARCEL_DELIVERED: preferences.PARTIALLY_DELIVERED,
        ESTIMATE_REVISED: preferences.ESTIMATE_CHANGED,
    }.get(change.kind, change.status_after)
    if stage == change.status_before:
        return 0  # a second in_transit scan updates the timeline, not the phone
    now = now or utcnow()
    # The customer, whether they muted this order, and the merchant's webhook: one read.
    customer, mute, hook = session.exec(
        _CUSTOMER_MUTE_HOOK,
        params={
            "customer_id": order.customer_id,
            "order_id": order.id,
            "merchant_id": order.merchant_id,
        },
    ).first() or (None, None, None)
    info = preferences.ChangeInfo(order.id, stage, change.status_before, mute is not None)
    request_id = _request_id()
    rows: list[dict[str, Any]] = []
    if hook is not None and change.status_before not in (None, change.status_after):
        # Every status change (not the order's creation: the merchant made it), each its own
        # row (none supersedes another): the merchant's
        # systems keep the whole history, whatever the customer chose to hear.
        row = _row(
            change,
            order,
            change.status_after,
            "webhook",
            f"hook:{hook}:{change.id}",
            None,
            now,
            now,
            request_id,
        )
        row["customer_id"], row["deadline"] = None, now + WEBHOOK_DEADLINE
        rows.append(row)
    written = len(rows)

    # The customer's devices and the order's followers, in one read.
    scopes = in_scopes(session, [customer_scope(order.customer_id), order_scope(order.id)])  # type: ignore[arg-type]
    # A browser the customer turned push on in hears this order by the customer's own
    # preferences, never a second time through a "Notify me" of the same browser.
    customer_endpoints: set[str] = set()
    told: list[dict[str, Any]] = []
    if customer is not None:
        decision = preferences.should_notify(info, customer_preferences(customer), now)
        due = decision.hold_until or now
        own = scopes[customer_scope(order.customer_id)]
        customer_endpoints = {sub.endpoint_hash for sub in own}
        if "push" in decision.channels:
            for sub in own:
                told.append(
                    _row(
                        change, order, stage, "push", f"sub:{sub.id}", sub.id, due, now, request_id
                    )
                )
        if "email" in decision.channels:
            told.append(
                _row(change, order, stage, "email", customer.email, None, due, now, request_id)
            )

    anonymous = scopes[order_scope(order.id)]  # type: ignore[arg-type]
    if anonymous:
        decision = preferences.should_notify(info, preferences.anonymous(), now)
        for sub in anonymous:
            live = sub.expires_at is None or sub.expires_at > now
            if "push" in decision.channels and live and sub.endpoint_hash not in customer_endpoints:
                row = _row(
                    change, order, stage, "push", f"sub:{sub.id}", sub.id, now, now, request_id
                )
                row["customer_id"] = None
                told.append(row)
            sub.expires_at = anonymous_expiry(change.status_after, now)
            session.add(sub)

    if told:
        supersede_older(
            session,
            order_id=order.id,  # type: ignore[arg-type]
            destinations=[row["destination"] for row in told],
            change_id=change.id,  # type: ignore[arg-type]
            now=now,
        )
    rows += told
    if rows:
        # Plain rows in one statement: nothing reads them back as objects in this session.
        session.connection().execute(_INSERT_ROWS, rows)
    return written + len(told)


#: Built once: every change runs it.
_CUSTOMER_MUTE_HOOK = (
    select(
        Customer,
        OrderMute,
        select(WebhookEndpoint.id)
        .where(
            col(WebhookEndpoint.merchant_id) == sa.bindparam("merchant_id"),
            col(WebhookEndpoint.events).contains("order.status_changed"),
        )
        .limit(1)
        .scalar_subquery(),
    )
    .outerjoin(OrderMute, col(OrderMute.order_id) == sa.bindparam("order_id"))
    .where(col(Customer.id) == sa.bindparam("customer_id"))
)
_INSERT_ROWS = sa.insert(OutboxMessage)


def _row(
    change: Change,
    order: Order,
    stage: str,
    channel: str,
    destination: str,
    subscription_id: int | None,
    due: datetime,
    now: datetime,
    request_id: str | None,
) -> dict[str, Any]:
    """One outbox row, every column given (the rows go in together as one statement)."""
    return {
        "dedupe_key": f"{change.id}:{channel}:{destination}"[:120],
        "change_id": change.id,
        "order_id": order.id,
        "customer_id": order.customer_id,
        "channel": channel,
        "destination": destination,
        "subscription_id": subscription_id,
        "status": stage,  # what the message tells: the order's new status, or a partial delivery
        "state": "pending",
        "attempts": 0,
        "due_at": due,
        "deadline": max(due, now) + (PUSH_DEADLINE if channel == "push" else EMAIL_DEADLINE),
        "lease_until": None,
        "lease_owner": None,
        "last_error": None,
        "request_id": request_id,
        "created_at": now,
        "done_at": None,
    }


def _request_id() -> str | None:
    """The id of the request queuing this row (none from the worker or the CLI)."""
    from flask import g, has_request_context

    return g.get("request_id") if has_request_context() else None


def _superseding(waiting: sa.ColumnElement[bool]) -> sa.Update:
    return (
        sa.update(OutboxMessage)
        .where(
            col(OutboxMessage.order_id) == sa.bindparam("of_order"),
            col(OutboxMessage.destination).in_(sa.bindparam("to", expanding=True)),
            col(OutboxMessage.change_id) < sa.bindparam("before_change"),
            col(OutboxMessage.state) == "pending",
            waiting,
        )
        .values(
            state="superseded",
            done_at=sa.bindparam("at"),
            lease_until=None,
            last_error="a newer status",
        )
    )


#: Built once (every change runs one): no statement to build nor cache key to compute each
#: time, and no ORM bookkeeping — no session holds the rows it touches in a state that matters
#: (``enqueue_change`` writes rows of newer changes; ``claim`` reads ids, not rows).
_SUPERSEDE_WAITING = _superseding(
    sa.or_(
        col(OutboxMessage.lease_until).is_(None),
        col(OutboxMessage.lease_until) < sa.bindparam("at"),
    )
)
_SUPERSEDE_IN_BATCH = _superseding(col(OutboxMessage.lease_owner) == sa.bindparam("leased_to"))


def supersede_older(
    session: Session,
    *,
    order_id: int,
    destinations: Sequence[str],
    change_id: int,
    now: datetime,
    batch: str | None = None,
) -> None:
    """Only the latest goes: a notification of the order to one of ``destinations`` about a
    change older than ``change_id`` that has not gone out yet (due, held for quiet hours, or
    backing off) is replaced by it. One in flight is left to finish: ``claim`` holds the newer
    one back until it has, and ``record`` drops the older one should it need another try.

    ``batch``: only the rows leased to that claim (two of one batch would race to the phone);
    the rows another worker holds are never touched, or two claims could wait on each other.
    """
    params: dict[str, object] = {
        "of_order": order_id,
        "to": list(destinations),
        "before_change": change_id,
        "at": now,
    }
    if batch is None:
        session.connection().execute(_SUPERSEDE_WAITING, params)
    else:
        session.connection().execute(_SUPERSEDE_IN_BATCH, {**params, "leased_to": batch})


def reevaluate(session: Session, customer: Customer, *, now: datetime | None = None) -> int:
    """Apply changed preferences or mutes to the customer's waiting rows at once."""
    now = now or utcnow()
    prefs = customer_preferences(customer)
    rows = list(
        session.exec(
            select(OutboxMessage).where(
                OutboxMessage.customer_id == customer.id,
                OutboxMessage.state == "pending",
                OutboxMessage.attempts == 0,
                sa.or_(
                    col(OutboxMessage.lease_until).is_(None),
                    col(OutboxMessage.lease_until) < now,
                ),
            )
        )
    )
    if not rows:
        return 0
    muted = set(
        session.exec(
            select(OrderMute.order_id).where(
                col(OrderMute.order_id).in_({r.order_id for r in rows})
            )
        )
    )
    for row in rows:
        info = preferences.ChangeInfo(row.order_id, row.status, None, row.order_id in muted)
        decision = preferences.should_notify(info, prefs, now)
        if row.channel not in decision.channels:
            row.state, row.done_at, row.last_error = "dropped", now, "preferences changed"
        else:
            row.due_at = decision.hold_until or now
        session.add(row)
    session.flush()
    return len(rows)


def claim(engine: Engine, *, owner: str, limit: int, now: datetime, lease: timedelta) -> list[int]:
    """Lease up to ``limit`` due rows to ``owner`` (a token per batch); returns their ids.
    A row waits while another row of its order and destination is in flight (that one is the
    older: a newer change supersedes every older row not in flight); of two rows of one order
    and destination in the batch, the older is superseded at once.

    One statement: ``UPDATE … WHERE id IN (SELECT … LIMIT n [FOR UPDATE SKIP LOCKED])
    RETURNING id, …`` (and one more for each order and destination claimed twice); the batch
    is then read back by its owner token, without id lists."""
    # (order, destination) pairs with a message in flight: few, and read once (a hashed
    # subplan), never once per candidate row.
    in_flight = select(OutboxMessage.order_id, OutboxMessage.destination).where(
        OutboxMessage.state == "pending",
        col(OutboxMessage.lease_until) >= now,
    )
    due = (
        select(OutboxMessage.id)
        .where(
            OutboxMessage.state == "pending",
            OutboxMessage.due_at <= now,
            sa.or_(
                col(OutboxMessage.lease_until).is_(None),
                col(OutboxMessage.lease_until) < now,
            ),
            # One order, one destination, one message at a time: the phone shows the last
            # one that arrives, so a newer status never overtakes an older one in flight.
            sa.tuple_(col(OutboxMessage.order_id), col(OutboxMessage.destination)).not_in(
                in_flight
            ),
        )
        .order_by(col(OutboxMessage.due_at), col(OutboxMessage.id))
        .limit(limit)
    )
    if engine.dialect.name == "postgresql":
        due = due.with_for_update(skip_locked=True)
    with Session(engine) as session, session.begin():
        claimed = session.exec(  # type: ignore[call-overload]
            sa.update(OutboxMessage)
            .where(col(OutboxMessage.id).in_(due.scalar_subquery()))
            .values(lease_until=now + lease, lease_owner=owner)
            .returning(
                OutboxMessage.id,
                OutboxMessage.order_id,
                OutboxMessage.destination,
                OutboxMessage.change_id,
            )
        ).all()
        newest: dict[tuple[int, str], int] = {}
        shared: set[tuple[int, str]] = set()
        for _, order_id, destination, change_id in claimed:
            key = (order_id, destination)
            if key in newest:
                shared.add(key)
            newest[key] = max(newest.get(key, change_id), change_id)
        for order_id, destination in shared:
            supersede_older(
                session,
                order_id=order_id,
                destinations=[destination],
                change_id=newest[(order_id, destination)],
                now=now,
                batch=owner,
            )
        return [row[0] for row in claimed]


@dataclass(frozen=True)
class Outcome:
    """What became of one claimed row."""

    row_id: int
    result: str  # sent | gone | retry | rejected | dropped
    detail: str = ""
    retry_after: float | None = None


def backoff(attempts: int, retry_after: float | None) -> float:
    """Seconds until the next try: exponential with jitter, never before ``Retry-After``."""
    delay = random.uniform(0.5, 1.0) * min(BACKOFF_CAP, BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return max(delay, retry_after or 0.0)


def record(
    session: Session,
    *,
    owner: str,
    outcomes: Sequence[Outcome],
    now: datetime,
    whole_batch: bool = True,
) -> None:
    """Store what happened to leased rows; a row whose lease was lost is left alone.

    ``whole_batch``: ``outcomes`` are the last of the batch ``owner`` leased, so every row of
    it still pending and not among the others was sent. Otherwise (a part of a batch whose
    other messages are still on their way) only the rows named are touched."""
    if not outcomes:
        return
    # The common case in two statements, addressed by the batch's owner token (the rows keep
    # it as a record of who sent them): every row that went out, and their subscriptions.
    others = [o.row_id for o in outcomes if o.result != "sent"]
    if len(others) < len(outcomes):
        sent = [o.row_id for o in outcomes if o.result == "sent"]
        which = (
            col(OutboxMessage.id).not_in(others) if whole_batch else col(OutboxMessage.id).in_(sent)
        )
        session.exec(  # type: ignore[call-overload]
            sa.update(OutboxMessage)
            .where(OutboxMessage.lease_owner == owner, OutboxMessage.state == "pending", which)
            .values(state="sent", done_at=now, lease_until=None)
        )
        used = select(OutboxMessage.subscription_id).where(
            OutboxMessage.lease_owner == owner, OutboxMessage.state == "sent"
        )
        if not whole_batch:
            used = used.where(col(OutboxMessage.id).in_(sent))
        session.exec(  # type: ignore[call-overload]
            sa.update(PushSubscription)
            .where(col(PushSubscription.id).in_(used.scalar_subquery()))
            .values(last_used_at=now)
        )
        outcomes = [o for o in outcomes if o.result != "sent"]
        if not outcomes:
            return
    rows = {
        r.id: r
        for r in session.exec(
            select(OutboxMessage).where(
                col(OutboxMessage.id).in_([o.row_id for o in outcomes]),
                OutboxMessage.lease_owner == owner,
                OutboxMessage.state == "pending",
            )
        )
    }
    gone: set[int] = set()
    used: set[int] = set()
    for outcome in outcomes:
        row = rows.get(outcome.row_id)
        if row is None:
            continue
        row.lease_until, row.lease_owner = None, None
        row.last_error = outcome.detail[:300] or None
        if outcome.result == "sent":
            row.state, row.done_at = "sent", now
            if row.subscription_id is not None:
                used.add(row.subscription_id)
        elif outcome.result == "retry":
            row.attempts += 1
            due = now + timedelta(seconds=backoff(row.attempts, outcome.retry_after))
            if _has_newer(session, row):
                row.state, row.done_at = "superseded", now  # the newer one goes instead
            elif (
                row.attempts >= (WEBHOOK_MAX_ATTEMPTS if row.channel == "webhook" else MAX_ATTEMPTS)
                or due > row.deadline
            ):
                row.state, row.done_at = "dead", now  # kept, with its error, for the operator
                log.warning(
                    "outbox row %s (%s) dead after %d attempts: %s",
                    row.id,
                    row.channel,
                    row.attempts,
                    row.last_error,
                )
            else:
                row.due_at = due
        elif outcome.result == "gone":
            row.state, row.done_at = "dropped", now
            if row.subscription_id is not None:
                gone.add(row.subscription_id)
        else:  # rejected or dropped: sending again cannot help
            row.state, row.done_at = ("failed" if outcome.result == "rejected" else "dropped"), now
        session.add(row)
    if used:
        session.exec(  # type: ignore[call-overload]
            sa.update(PushSubscription)
            .where(col(PushSubscription.id).in_(used))
            .values(last_used_at=now)
        )
    if gone:
        forget_subscriptions(session, gone, now=now)


def _has_newer(session: Session, row: OutboxMessage) -> bool:
    newer = session.exec(
        select(OutboxMessage.id)
        .where(
            OutboxMessage.order_id == row.order_id,
            OutboxMessage.destination == row.destination,
            col(OutboxMessage.id) > row.id,
            OutboxMessage.state == "pending",
        )
        .limit(1)
    ).first()
    return newer is not None


def dead_letters(session: Session, *, limit: int = 100) -> list[OutboxMessage]:
    """Rows that failed every attempt, newest first: what the operator looks at."""
    return list(
        session.exec(
            select(OutboxMessage)
            .where(OutboxMessage.state == "dead")
            .order_by(col(OutboxMessage.done_at).desc())
            .limit(limit)
        )
    )


def renew_lease(engine: Engine, row_id: int, *, owner: str, until: datetime) -> bool:
    """Extend ``owner``'s lease on one pending row; False when the row is no longer its own."""
    with engine.begin() as conn:
        result = conn.execute(
            sa.update(OutboxMessage)
            .where(
                col(OutboxMessage.id) == row_id,
                col(OutboxMessage.lease_owner) == owner,
                col(OutboxMessage.state) == "pending",
            )
            .values(lease_until=until)
        )
        return bool(result.rowcount)


def record_one(engine: Engine, outcome: Outcome, *, owner: str, now: datetime) -> None:
    """Store one row's outcome at once (``record`` handles a whole batch)."""
    with Session(engine, expire_on_commit=False) as session, session.begin():
        if outcome.result != "sent":
            record(session, owner=owner, outcomes=[outcome], now=now)
            return
        session.exec(  # type: ignore[call-overload]
            sa.update(OutboxMessage)
            .where(
                col(OutboxMessage.id) == outcome.row_id,
                OutboxMessage.lease_owner == owner,
                OutboxMessage.state == "pending",
            )
            .values(state="sent", done_at=now, lease_until=None)
        )
