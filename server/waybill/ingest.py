"""The one place that records a change a customer can see.

Each function works inside the caller's transaction: it writes the event, recomputes the
status with the state machine, and appends a ``Change`` row (the cursor the sockets resume
from). Changes are queued on the session (``db.publish_on_commit``) and reach the broker only
after the commit succeeds.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session, col, select

from waybill import eta, observe
from waybill.auth.login import normalise_email
from waybill.auth.tokens import new_tracking_token
from waybill.db import publish_on_commit
from waybill.models import (
    Change,
    Customer,
    EventBatchItem,
    Merchant,
    Order,
    OrderCreate,
    OrderEventCreate,
    Shipment,
    ShipmentCreate,
    ShipmentEventCreate,
    TrackingEvent,
    utcnow,
)
from waybill.notify import outbox
from waybill.tracking.events import dedupe_key, order_estimate
from waybill.tracking.statuses import (
    Status,
    TimelineEntry,
    fold,
    is_terminal,
    order_status,
    sort_key,
    step,
)

#: The kind of change a parcel's delivery is when the order goes on (see ``_recompute``).
PARCEL_DELIVERED = outbox.PARCEL_DELIVERED
ESTIMATE_REVISED = outbox.ESTIMATE_REVISED


class Conflict(Exception):
    """The same external id was used before with a different body."""


def body_hash(data: OrderCreate) -> str:
    canonical = json.dumps(data.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def upsert_customer(
    *,
    session: Session,
    email: str,
    name: str | None = None,
    locale: str | None = None,
    timezone: str | None = None,
) -> Customer:
    email = normalise_email(email)
    customer = session.exec(select(Customer).where(Customer.email == email)).first()
    if customer is None:
        customer = Customer(email=email, name=name, locale=locale, timezone=timezone)
    else:
        # The first name and locale given stay: another merchant's order never rewrites what
        # a customer (or the merchant who told us first) sees.
        customer.name = customer.name or name
        customer.locale = customer.locale or locale
        customer.timezone = customer.timezone or timezone
    session.add(customer)
    session.flush()
    return customer


def create_order(
    *, session: Session, merchant: Merchant, data: OrderCreate, secret_key: str
) -> tuple[Order, bool]:
    """Create the order, or return the existing one for a retried identical request.

    ``secret_key`` (the server's) seals the tracking token: the row keeps no token it could
    be opened with."""
    fingerprint = body_hash(data)
    existing = session.exec(
        select(Order).where(Order.merchant_id == merchant.id, Order.external_id == data.external_id)
    ).first()
    if existing is not None:
        if existing.request_hash != fingerprint:
            raise Conflict(data.external_id)
        return existing, False
    customer = upsert_customer(
        session=session,
        email=str(data.customer.email),
        name=data.customer.name,
        locale=data.customer.locale,
        timezone=data.customer.timezone,
    )
    _, sealed, token_hash = new_tracking_token(secret_key)
    order = Order(
        merchant_id=merchant.id,
        customer_id=customer.id,  # type: ignore[arg-type]
        external_id=data.external_id,
        customer_name=data.customer.name,
        customer_locale=data.customer.locale,
        customer_timezone=data.customer.timezone,
        tracking_token_sealed=sealed,
        tracking_token_hash=token_hash,
        status=Status.CONFIRMED,
        items=[i.model_dump(exclude_none=True) for i in data.items],
        request_hash=fingerprint,
        placed_at=data.placed_at,
    )
    session.add(order)
    session.flush()
    eta.reestimate(session, order, [], stage_at=order.placed_at or order.created_at)
    _record_change(session, order, "order.created", None)
    return order, True


def _lock(session: Session, order: Order, shipment: Shipment | None = None) -> None:
    """Writers of one order take turns: its row is locked (``FOR UPDATE``) for the rest of the
    transaction and re-read with its shipment, so a status folded from what another writer
    committed meanwhile is never lost. SQLite's writers already take turns (``BEGIN
    IMMEDIATE``)."""
    bind = session.get_bind()
    if bind.dialect.name != "postgresql":
        return
    locked = select(Order).where(Order.id == order.id)
    if shipment is not None:  # re-read in the same statement: one round trip, not two
        locked = (
            select(Order, Shipment)
            .join(Shipment, col(Shipment.order_id) == col(Order.id))
            .where(Order.id == order.id, col(Shipment.id) == shipment.id)
        )
    session.exec(
        locked.with_for_update(of=Order).execution_options(populate_existing=True)  # type: ignore[arg-type]
    ).one()


def add_shipment(*, session: Session, order: Order, data: ShipmentCreate) -> Shipment:
    """The order's shipment with this carrier and number: added, or the one added before
    (see :func:`upsert_shipment`)."""
    return upsert_shipment(session=session, order=order, data=data)[0]


class NumberTaken(Exception):
    """Another shipment of the merchant has this carrier (any case) and tracking number."""

    def __init__(self, shipment: Shipment) -> None:
        super().__init__(f"shipment {shipment.id} of order {shipment.order_id}")
        self.shipment = shipment


def upsert_shipment(
    *, session: Session, order: Order, data: ShipmentCreate
) -> tuple[Shipment, bool]:
    """Add the shipment, and True; or, when the order has one with this carrier (any case)
    and tracking number (a retried request), that one, and False: its status and events as
    they were, its service and estimate changed where ``data`` sends them, its carrier
    spelled as first sent. Raises :class:`NumberTaken` when another order has the parcel."""
    _lock(session, order)
    held = _held_number(session, order, data.carrier, data.tracking_number)
    if held is not None:
        return _sent_again(session, order, held, data)
    shipment = Shipment(
        order_id=order.id,  # type: ignore[arg-type]
        carrier=data.carrier,
        tracking_number=data.tracking_number,
        service=data.service,
        estimated_delivery=data.estimated_delivery,
        estimated_delivery_source="merchant" if data.estimated_delivery else None,
        estimated_delivery_updated_at=utcnow() if data.estimated_delivery else None,
        status=Status.SHIPPED,
    )
    try:
        with session.begin_nested():
            session.add(shipment)
            session.flush()
    except sa.exc.IntegrityError:  # added meanwhile by a writer that took neither lock
        held = _held_number(session, order, data.carrier, data.tracking_number)
        if held is None:
            raise
        return _sent_again(session, order, held, data)
    _recompute(session, order, "shipment.added")
    return shipment, True


def _sent_again(
    session: Session, order: Order, held: Shipment, data: ShipmentCreate
) -> tuple[Shipment, bool]:
    if held.order_id != order.id:
        raise NumberTaken(held)
    given = data.model_dump(include={"service", "estimated_delivery"}, exclude_unset=True)
    _revise(session, order, held, given)
    return held, False


def update_shipment(*, session: Session, shipment: Shipment, changes: dict[str, Any]) -> bool:
    """Set what ``changes`` names (``carrier``, ``service``, ``estimated_delivery``, already
    validated) as one change the order's viewers see; False when nothing differed. Raises
    :class:`NumberTaken` when the new carrier would make it another shipment of the merchant
    (same tracking number)."""
    order = session.get(Order, shipment.order_id)
    assert order is not None
    _lock(session, order, shipment)
    carrier = changes.get("carrier")
    if carrier is not None and Shipment.carrier_key_of(carrier) != shipment.carrier_key:
        taken = _held_number(session, order, carrier, shipment.tracking_number)
        if taken is not None:
            raise NumberTaken(taken)
    return _revise(session, order, shipment, changes)


def _held_number(
    session: Session, order: Order, carrier: str, tracking_number: str
) -> Shipment | None:
    """The merchant's shipment with this carrier (any case) and tracking number, this order's
    first. On PostgreSQL the number stays held until the transaction ends (an advisory lock),
    so that no other order of the merchant adds it meanwhile; SQLite's writers take turns."""
    key = Shipment.carrier_key_of(carrier)
    if session.get_bind().dialect.name == "postgresql":
        name = f"shipment:{order.merchant_id}:{key}:{tracking_number}".encode()
        lock_id = int.from_bytes(hashlib.sha256(name).digest()[:8], "big", signed=True)
        session.connection().execute(sa.select(sa.func.pg_advisory_xact_lock(lock_id)))
    found = session.exec(
        select(Shipment)
        .join(Order, col(Order.id) == col(Shipment.order_id))
        .where(
            Shipment.tracking_number == tracking_number,
            Shipment.carrier_key == key,
            Order.merchant_id == order.merchant_id,
        )
        .order_by(col(Shipment.id))
    ).all()
    return next((s for s in found if s.order_id == order.id), found[0] if found else None)


def _revise(session: Session, order: Order, shipment: Shipment, changes: dict[str, Any]) -> bool:
    """Apply the changes that differ from what the shipment says; log them as one change.
    ``estimated_delivery_source`` says who gave an ``estimated_delivery`` (the merchant, unless
    a carrier's update)."""
    changes = dict(changes)
    source = changes.pop("estimated_delivery_source", "merchant")
    different = {k: v for k, v in changes.items() if getattr(shipment, k) != v}
    if not different:
        return False
    for name, value in different.items():
        setattr(shipment, name, value)
    if "estimated_delivery" in different:
        given = different["estimated_delivery"] is not None
        shipment.estimated_delivery_source = source if given else None
        shipment.estimated_delivery_updated_at = utcnow() if given else None
    session.add(shipment)
    _recompute(session, order, "shipment.updated")
    return True


def record_order_event(
    *, session: Session, order: Order, data: OrderEventCreate, source: str = "api"
) -> bool:
    return _record(
        session,
        order,
        None,
        data.status,
        data.occurred_at or utcnow(),
        data.event_id,
        None,
        data.description,
        source,
        source_status=data.source_status,
    )


def record_shipment_event(
    *,
    session: Session,
    shipment: Shipment,
    data: ShipmentEventCreate,
    order: Order | None = None,
    source: str = "api",
) -> bool:
    """``order``: the shipment's, when the caller has read it already."""
    order = order or session.get(Order, shipment.order_id)
    assert order is not None and order.id == shipment.order_id
    return _record(
        session,
        order,
        shipment,
        data.status,
        data.occurred_at,
        data.event_id,
        data.location,
        data.description,
        source,
        pickup_until=data.pickup_until,
        source_status=data.source_status,
    )


def _record(*args: Any, **kwargs: Any) -> bool:
    """:func:`_record_event`, timed (``waybill_event_ingest_seconds``)."""
    with observe.timed(observe.INGEST):
        return _record_event(*args, **kwargs)


def _near(of_shipment: bool) -> sa.Select[Any]:
    """What one event needs to know of its order's other events (see ``_record_event``):
    built once for each kind of timeline, with bind parameters."""
    in_order = col(TrackingEvent.order_id) == sa.bindparam("order_id")
    timeline = (
        col(TrackingEvent.shipment_id) == sa.bindparam("shipment_id")
        if of_shipment
        else col(TrackingEvent.shipment_id).is_(None)
    )
    return sa.select(
        col(TrackingEvent.dedupe_key),
        col(TrackingEvent.occurred_at),
        col(TrackingEvent.status),
        col(TrackingEvent.shipment_id),
    ).where(
        # The order in each branch, so that each is one index range (SQLite's MULTI-INDEX
        # OR; with the order outside, SQLite read every event of the order instead).
        sa.or_(
            sa.and_(in_order, col(TrackingEvent.dedupe_key) == sa.bindparam("key")),
            sa.and_(in_order, col(TrackingEvent.shipment_id).is_(None)),
            sa.and_(in_order, timeline, col(TrackingEvent.occurred_at) >= sa.bindparam("at")),
        ),
    )


_NEAR_OF_SHIPMENT, _NEAR_OF_ORDER = _near(True), _near(False)


def _record_event(
    session: Session,
    order: Order,
    shipment: Shipment | None,
    status: str,
    occurred_at: datetime,
    event_id: str | None,
    location: str | None,
    description: str | None,
    source: str,
    *,
    pickup_until: datetime | None = None,
    source_status: str | None = None,
) -> bool:
    """Record one event; False when it was seen before (nothing changes then, the pickup
    deadline neither: a carrier that extends it sends a new scan)."""
    _lock(session, order, shipment)
    key = dedupe_key(
        shipment_id=shipment.id if shipment else None,
        status=status,
        occurred_at=occurred_at,
        event_id=event_id,
        location=location,
        description=description,
    )
    entry = TimelineEntry(occurred_at, Status(status), key)
    shipment_id = shipment.id if shipment else None
    # One read answers all three questions: was this event seen before, does it come after
    # every other event of its timeline (then the fold is one step, not the timeline again),
    # and what do the order's own events say (few: the merchant's, not the carriers' scans)?
    near = session.execute(  # (after a flush: a batch's earlier events count)
        _NEAR_OF_SHIPMENT if shipment_id is not None else _NEAR_OF_ORDER,
        {"order_id": order.id, "key": key, "shipment_id": shipment_id, "at": occurred_at},
    ).all()
    if any(k == key for k, _, _, _ in near):
        return False
    comes_last = all(
        sort_key(TimelineEntry(at, Status(st), k)) < sort_key(entry)
        for k, at, st, sid in near
        if sid == shipment_id and at >= occurred_at
    )
    own = [TimelineEntry(at, Status(st), k) for k, at, st, sid in near if sid is None]
    session.add(
        TrackingEvent(
            order_id=order.id,  # type: ignore[arg-type]
            shipment_id=shipment_id,
            status=status,
            occurred_at=occurred_at,
            location=location,
            description=description,
            source=source,
            source_status=source_status,
            event_id=event_id,
            dedupe_key=key,
        )
    )
    parcel_delivered = False
    if shipment is None:
        own.append(entry)
    else:
        folded = (
            step(Status(shipment.status), entry.status)
            if comes_last
            else fold(_timeline(session, order, shipment.id), start=Status.SHIPPED)
            or Status.SHIPPED
        )
        until = _pickup_until(shipment, folded, entry, comes_last, pickup_until)
        if shipment.status != folded or shipment.pickup_until != until:
            parcel_delivered = shipment.status != folded and folded == Status.DELIVERED
            shipment.status = folded
            shipment.pickup_until = until
            session.add(shipment)
    _recompute(
        session,
        order,
        "event.recorded",
        own=own,
        parcel_delivered=parcel_delivered,
        stage=status,  # the status this event reports, and when
        stage_at=occurred_at,
    )
    return True


def _pickup_until(
    shipment: Shipment,
    folded: Status,
    entry: TimelineEntry,
    comes_last: bool,
    given: datetime | None,
) -> datetime | None:
    """Until when the parcel waits to be collected once ``entry`` is recorded: the deadline
    the newest pickup scan gave (a later pickup scan without one keeps it); none once the
    parcel has moved on (collected, returned, back in transit)."""
    if folded != Status.AVAILABLE_FOR_PICKUP:
        return None
    if comes_last and entry.status == Status.AVAILABLE_FOR_PICKUP and given is not None:
        return given
    return shipment.pickup_until


def _in_timeline(shipment_id: int | None) -> Any:
    """The events of one shipment, or the order's own (those of no shipment)."""
    if shipment_id is None:
        return col(TrackingEvent.shipment_id).is_(None)
    return col(TrackingEvent.shipment_id) == shipment_id


def _timeline(session: Session, order: Order, shipment_id: int | None) -> list[TimelineEntry]:
    rows = session.exec(
        select(TrackingEvent.occurred_at, TrackingEvent.status, TrackingEvent.dedupe_key).where(
            TrackingEvent.order_id == order.id, _in_timeline(shipment_id)
        )
    )
    return [TimelineEntry(at, Status(st), key) for at, st, key in rows]


_SHIPMENTS_OF_ORDER = select(Shipment).where(col(Shipment.order_id) == sa.bindparam("order_id"))


def _recompute(
    session: Session,
    order: Order,
    kind: str,
    *,
    own: list[TimelineEntry] | None = None,
    parcel_delivered: bool = False,
    stage: str | None = None,
    stage_at: datetime | None = None,
) -> None:
    """The order's status from its own timeline (``own``, when the caller has read it) and
    its shipments' statuses (each kept current as its events arrive); log the change. A
    parcel delivered while the order goes on (another parcel is on its way) is logged as a
    change of kind ``parcel.delivered``: a moment to tell, whatever the order's status says."""
    shipments = list(session.exec(_SHIPMENTS_OF_ORDER, params={"order_id": order.id}))
    if own is None:
        own = _timeline(session, order, None)
    base = fold(own, start=Status.CONFIRMED)
    before = order.status
    order.status = order_status(base or Status.CONFIRMED, [Status(s.status) for s in shipments])
    order.estimated_delivery = order_estimate(
        (s.estimated_delivery for s in shipments), order.estimated_delivery
    )
    order.updated_at = utcnow()
    moved = eta.reestimate(
        session, order, shipments, stage_at=stage_at if order.status == stage else None
    )
    session.add(order)
    if parcel_delivered and not is_terminal(order.status):
        kind = PARCEL_DELIVERED
    elif moved and order.status == before and kind == "event.recorded":
        kind = ESTIMATE_REVISED  # the same status, a new "arrives by": a change of its own
    _record_change(session, order, kind, before)


def _record_change(session: Session, order: Order, kind: str, before: str | None) -> None:
    change = Change(
        order_id=order.id,  # type: ignore[arg-type]
        customer_id=order.customer_id,
        kind=kind,
        status_before=before,
        status_after=order.status,
    )
    session.add(change)
    session.flush()
    # Notifications are queued in this same transaction: committed together or not at all.
    outbox.enqueue_change(session, change, order)
    publish_on_commit(
        session,
        {
            "cursor": change.id,
            "order_id": order.id,
            "customer_id": order.customer_id,
            "status": order.status,
        },
    )


@dataclass(frozen=True)
class BatchOutcome:
    """What became of one event of a batch: ``recorded``, ``duplicate`` (seen before, or
    recorded by a concurrent request meanwhile) or ``not_found`` (no such order or shipment of
    this merchant)."""

    outcome: str
    order: Order | None = None
    shipment: Shipment | None = None


def record_events(
    *, session: Session, merchant: Merchant, items: Sequence[EventBatchItem], source: str = "api"
) -> list[BatchOutcome]:
    """Record many events in the caller's transaction, each whole or not at all (a savepoint
    each): one that fails leaves the others and nothing of itself behind. Their orders and
    shipments are read in three queries, not one per event."""
    orders = {
        o.id: o
        for o in session.exec(
            select(Order).where(
                col(Order.id).in_({i.order_id for i in items if i.order_id}),
                Order.merchant_id == merchant.id,
            )
        )
    }
    by_id: dict[int, tuple[Shipment, Order]] = {}
    by_number: dict[tuple[str, str], tuple[Shipment, Order]] = {}
    ids = {i.shipment_id for i in items if i.shipment_id}
    numbers = {
        (Shipment.carrier_key_of(i.carrier), i.tracking_number)
        for i in items
        if i.carrier and i.tracking_number
    }
    if ids:
        for shipment, order in session.exec(
            select(Shipment, Order)
            .join(Order, col(Order.id) == col(Shipment.order_id))
            .where(col(Shipment.id).in_(ids), Order.merchant_id == merchant.id)
        ):
            by_id[shipment.id] = (shipment, order)  # type: ignore[index]
    if numbers:
        for shipment, order in session.exec(
            select(Shipment, Order)
            .join(Order, col(Order.id) == col(Shipment.order_id))
            .where(
                sa.tuple_(col(Shipment.carrier_key), col(Shipment.tracking_number)).in_(numbers),
                Order.merchant_id == merchant.id,
            )
            .order_by(col(Shipment.id))
        ):
            by_number[(shipment.carrier_key, shipment.tracking_number)] = (shipment, order)
    outcomes: list[BatchOutcome] = []
    for item in items:
        target = (
            by_id.get(item.shipment_id)
            if item.shipment_id
            else by_number.get((Shipment.carrier_key_of(item.carrier), item.tracking_number))  # type: ignore[arg-type]
            if item.carrier
            else None
        )
        order = target[1] if target else orders.get(item.order_id or 0)
        if order is None:
            outcomes.append(BatchOutcome("not_found"))
            continue
        shipment = target[0] if target else None
        try:
            with session.begin_nested():
                if shipment is not None:
                    done = record_shipment_event(
                        session=session,
                        shipment=shipment,
                        order=order,
                        data=ShipmentEventCreate(**item.model_dump(include=_SHIPMENT_EVENT)),
                        source=source,
                    )
                else:
                    done = record_order_event(
                        session=session,
                        order=order,
                        data=OrderEventCreate(**item.model_dump(include=_ORDER_EVENT)),
                        source=source,
                    )
        except sa.exc.IntegrityError:  # another request recorded the same event meanwhile
            outcomes.append(BatchOutcome("duplicate", order, shipment))
            continue
        outcomes.append(BatchOutcome("recorded" if done else "duplicate", order, shipment))
    return outcomes


_SHIPMENT_EVENT = {
    "status",
    "occurred_at",
    "event_id",
    "location",
    "description",
    "pickup_until",
    "source_status",
}
_ORDER_EVENT = {"status", "occurred_at", "event_id", "description", "source_status"}
