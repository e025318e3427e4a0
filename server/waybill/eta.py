"""Waybill's own delivery estimates in the server: the model learned from the database's
delivered orders, what an order tells it, and the window each order shows.

The estimator itself (``tracking.estimate``) is pure; this module feeds it. An order is
re-estimated whenever its timeline moves (``ingest._recompute``): the window is stored on the
order (``eta_*``, dates in the customer's zone), so reading an order costs nothing more.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from functools import lru_cache

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from waybill.db import read_engine
from waybill.models import Customer, EtaModel, Order, Shipment, TrackingEvent
from waybill.models.types import utcnow
from waybill.notify.preferences import zone
from waybill.tracking import estimate as est
from waybill.tracking.statuses import Status, is_terminal

log = logging.getLogger(__name__)

#: How often a process looks for a newer trained model.
RELOAD_EVERY_S = 60.0
#: Orders purchased more recently than this are left out of training: the ones still on their
#: way are the slow ones, and learning only from the fast ones would promise too early.
SETTLE_DAYS = 45
#: How far back training looks.
HISTORY_DAYS = 365
RETRAIN_EVERY = timedelta(days=1)


@dataclass(frozen=True)
class Window:
    earliest: date
    latest: date
    most_likely: date


class _Loaded:
    """The process's model: the newest ``eta_model`` row, looked up at most every minute."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_engine: dict[int, tuple[float, int, est.Model]] = {}

    def get(self, session: Session) -> tuple[int, est.Model]:
        engine = session.get_bind()
        key = id(engine)
        now = time.monotonic()
        hit = self.by_engine.get(key)
        if hit is not None and now - hit[0] < RELOAD_EVERY_S:
            return hit[1], hit[2]
        newest = session.exec(
            select(EtaModel.id).order_by(col(EtaModel.id).desc()).limit(1)
        ).first()
        if hit is not None and hit[1] == (newest or 0):
            self.by_engine[key] = (now, hit[1], hit[2])
            return hit[1], hit[2]
        model = prior()  # no history yet
        if newest is not None:
            row = session.get(EtaModel, newest)
            try:
                model = est.Model.from_json(row.body) if row else model
            except (ValueError, KeyError, TypeError):
                log.exception("eta model %s does not load; estimating without history", newest)
        with self.lock:
            self.by_engine[key] = (now, newest or 0, model)
        return newest or 0, model

    def forget(self) -> None:
        with self.lock:
            self.by_engine.clear()


_loaded = _Loaded()


#: Until the database has delivered orders to learn from: handed over within one to three
#: working days, one to a week in transit, delivered the day it goes out, as parcels of most
#: shops go. Shares of a hundred, for each number of working days.
PRIOR_HANDLING = {1: 50, 2: 35, 3: 15}
PRIOR_TRANSIT = {1: 15, 2: 30, 3: 25, 4: 15, 5: 10, 7: 5}
PRIOR_LAST_MILE = {0: 85, 1: 15}


@lru_cache(maxsize=1)
def prior() -> est.Model:
    """The model used before any training: learned from a made-up history of the shares
    above (so that it is calibrated like a learned one), and replaced by the first training."""
    days = est.DayCount(True)
    records = []
    start = datetime(2026, 1, 5, 10, 0)  # a Monday
    n = 0
    for handling, h_share in PRIOR_HANDLING.items():
        for transit, t_share in PRIOR_TRANSIT.items():
            for last, l_share in PRIOR_LAST_MILE.items():
                for _ in range(max(1, h_share * t_share * l_share // 10_000)):
                    bought = start + timedelta(days=n % 28)
                    n += 1
                    handed = days.add(bought.date(), handling)
                    delivered = days.add(handed, transit)
                    out = delivered - timedelta(days=last)
                    at = datetime.min.time().replace(hour=12)
                    records.append(
                        est.DeliveryRecord(
                            facts=est.OrderFacts(purchased_at=bought),
                            handed_over_at=datetime.combine(handed, at),
                            delivered_at=datetime.combine(delivered, at),
                            out_for_delivery_at=datetime.combine(out, at),
                        )
                    )
    return est.train(records)


@lru_cache(maxsize=8192)
def _window(
    model_key: tuple[int, int],
    merchant_id: str,
    carrier: str | None,
    service: str | None,
    purchased: date,
    stage: str,
    stage_day: date,
) -> Window:
    """One estimate, by everything it depends on (the same facts on the same day: the same
    window), so that a burst of scans costs one estimate per parcel and day."""
    model = _models[model_key]
    facts = est.OrderFacts(
        purchased_at=datetime.combine(purchased, datetime.min.time()),
        seller_id=merchant_id,
        carrier=carrier,
        service=service,
    )
    e = est.estimate(
        model,
        facts,
        now=datetime.combine(stage_day, datetime.min.time()),  # as of the latest news
        stage=stage,
        stage_at=datetime.combine(stage_day, datetime.min.time()),
    )
    return Window(e.earliest, e.latest, e.most_likely)


_models: dict[tuple[int, int], est.Model] = {}


_ZONE_OF = sa.select(col(Customer.timezone)).where(col(Customer.id) == sa.bindparam("customer_id"))
#: When the order reached its status (the latest event reporting it).
_REACHED = sa.select(sa.func.max(col(TrackingEvent.occurred_at))).where(
    col(TrackingEvent.order_id) == sa.bindparam("order_id"),
    col(TrackingEvent.status) == sa.bindparam("status"),
)


def window_for(
    session: Session,
    order: Order,
    shipments: Iterable[Shipment],
    *,
    stage_at: datetime | None = None,
    now: datetime | None = None,
) -> Window | None:
    """The window for ``order`` as it stands (None once it is delivered, returned or
    cancelled): from its status, when it reached it, and the parcel that decides it."""
    if is_terminal(order.status):
        return None
    now = now or utcnow()
    row_id, model = _loaded.get(session)
    model_key = (id(model), row_id)
    _models.setdefault(model_key, model)
    # The customer's own zone wins; a column, not the whole row. Without a flush: the order's
    # new status and its window then go out in one UPDATE, not two.
    held = session.identity_map.get(session.identity_key(Customer, order.customer_id))
    if held is not None:
        saved = held.timezone  # type: ignore[attr-defined]
    else:
        with session.no_autoflush:
            saved = session.execute(_ZONE_OF, {"customer_id": order.customer_id}).scalar()
    local = zone(saved or order.customer_timezone or "UTC")
    # The parcel in the order's status (the order is as far as its least advanced parcel).
    parcel = next((s for s in shipments if s.status == order.status), None)
    parcel = parcel or next(iter(shipments), None)
    if stage_at is None:
        stage_at = session.execute(
            _REACHED, {"order_id": order.id, "status": str(order.status)}
        ).scalar()
    purchased = (order.placed_at or order.created_at or now).astimezone(local).date()
    stage_day = (stage_at or now).astimezone(local).date()
    return _window(
        model_key,
        order.merchant_id,
        parcel.carrier if parcel else None,
        parcel.service if parcel else None,
        purchased,
        str(order.status),
        stage_day,  # the window is as of the latest news: one that passes without any is late
    )


def reestimate(
    session: Session,
    order: Order,
    shipments: Iterable[Shipment],
    *,
    stage_at: datetime | None = None,
    now: datetime | None = None,
) -> bool:
    """Store the order's window; True when its "arrives by" moved (by a day or more) from
    one it had: a revision the customer may choose to hear about."""
    window = window_for(session, order, list(shipments), stage_at=stage_at, now=now)
    if window is None:
        return False
    before = order.eta_latest
    if (order.eta_earliest, order.eta_latest, order.eta_most_likely) == (
        window.earliest,
        window.latest,
        window.most_likely,
    ):
        return False
    order.eta_earliest, order.eta_latest = window.earliest, window.latest
    order.eta_most_likely, order.eta_updated_at = window.most_likely, now or utcnow()
    return before is not None and before != window.latest


# --- training --------------------------------------------------------------------------------


def history(session: Session, *, now: datetime | None = None) -> list[est.DeliveryRecord]:
    """Delivered orders purchased between HISTORY_DAYS and SETTLE_DAYS ago, each with when it
    was handed over (its first shipment or in-transit scan) and delivered."""
    now = now or utcnow()
    purchased = sa.func.coalesce(Order.placed_at, Order.created_at)
    ev = TrackingEvent
    first_scan = (
        select(sa.func.min(ev.occurred_at))
        .where(ev.order_id == Order.id, col(ev.status).in_(("shipped", "in_transit")))
        .scalar_subquery()
    )
    out_for_delivery = (
        select(sa.func.min(ev.occurred_at))
        .where(ev.order_id == Order.id, ev.status == "out_for_delivery")
        .scalar_subquery()
    )
    delivered = (
        select(sa.func.max(ev.occurred_at))
        .where(ev.order_id == Order.id, ev.status == "delivered")
        .scalar_subquery()
    )
    first_parcel = (
        select(Shipment.carrier)
        .where(Shipment.order_id == Order.id)
        .order_by(col(Shipment.id))
        .limit(1)
        .scalar_subquery()
    )
    shipped_at = (
        select(sa.func.min(Shipment.created_at))
        .where(Shipment.order_id == Order.id)
        .scalar_subquery()
    )
    rows = session.execute(
        sa.select(
            Order.merchant_id,
            purchased,
            first_scan,
            shipped_at,
            out_for_delivery,
            delivered,
            first_parcel,
        ).where(
            Order.status == Status.DELIVERED,
            purchased >= now - timedelta(days=HISTORY_DAYS),
            purchased < now - timedelta(days=SETTLE_DAYS),
        )
    ).all()
    records = []
    for merchant_id, bought, scanned, shipped, ofd, done, carrier in rows:
        if bought is None or done is None:
            continue
        handed = min((t for t in (scanned, shipped) if t is not None), default=None)
        records.append(
            est.DeliveryRecord(
                facts=est.OrderFacts(purchased_at=bought, seller_id=merchant_id, carrier=carrier),
                handed_over_at=handed,
                delivered_at=done,
                out_for_delivery_at=ofd,
            )
        )
    return records


def learn(engine: Engine, *, now: datetime | None = None) -> est.Model:
    """Learn from the database's delivered orders (reads only: it may run off the loop)."""
    with Session(read_engine(engine)) as session:
        return est.train(history(session, now=now))


def store(engine: Engine, model: est.Model, *, now: datetime | None = None) -> EtaModel:
    """Keep ``model`` as the newest (used by every process within a minute)."""
    row = EtaModel(trained_at=now or utcnow(), deliveries=model.trained_on, body=model.to_json())
    with Session(engine) as session, session.begin():
        session.add(row)
        session.flush()
        # keep the last few: the newest is used, the others say how it changed
        keep = select(EtaModel.id).order_by(col(EtaModel.id).desc()).limit(5)
        kept = list(session.exec(keep))
        session.execute(sa.delete(EtaModel).where(col(EtaModel.id).not_in(kept)))
        session.refresh(row)
        session.expunge(row)
    _loaded.forget()
    log.info("eta model %s trained on %d delivered orders", row.id, row.deliveries)
    return row


def train(engine: Engine, *, now: datetime | None = None) -> EtaModel:
    return store(engine, learn(engine, now=now), now=now)


def due_for_training(engine: Engine, *, now: datetime | None = None) -> bool:
    now = now or utcnow()
    with Session(read_engine(engine)) as session:
        last = session.exec(select(sa.func.max(EtaModel.trained_at))).first()
    return last is None or now - last >= RETRAIN_EVERY
