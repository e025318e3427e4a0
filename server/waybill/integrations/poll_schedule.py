"""Which parcels are asked about at their tracking provider, and when (run by the worker).

A merchant who gave a provider's API key (``PUT /api/v1/integrations/aftership`` with
``api_key``) has each of its shipments polled until the shipment is terminal (delivered,
returned, cancelled): a :class:`CarrierPoll` row per shipment says when next, made the first
time the worker sees the shipment. A due row is leased by moving its time on before the
provider is asked, so two workers never poll one parcel at once; the provider is asked outside
any transaction; what it answers goes through the one ingest path (``inbox.apply``).
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import col, select

from waybill.config import Settings
from waybill.db import Publisher, session_scope
from waybill.integrations import inbox
from waybill.integrations.polling import ProviderError, next_poll_delay, poller_for
from waybill.models import CarrierPoll, Integration, Merchant, Order, Shipment, utcnow
from waybill.tracking.statuses import Status, is_terminal

log = logging.getLogger("waybill.integrations")

#: Parcels asked about per worker turn, at most (the provider's rate limit spaces them).
BATCH = 50
#: A leased row comes due again after this long if its worker died mid-poll.
LEASE = timedelta(minutes=10)


def poll_due(
    engine: Engine,
    settings: Settings,
    *,
    broker: Publisher | None = None,
    now: datetime | None = None,
) -> int:
    """Poll the parcels that are due; returns how many were asked about."""
    now = now or utcnow()
    with session_scope(engine) as session:
        _discover(session, now)
        due_query = (
            select(
                CarrierPoll,
                Integration.api_key_sealed,
                Integration.merchant_id,
                Integration.platform,
            )
            .join(
                Integration,
                sa.and_(
                    col(Integration.merchant_id) == col(CarrierPoll.merchant_id),
                    col(Integration.platform) == col(CarrierPoll.provider),
                ),
            )
            .where(
                col(CarrierPoll.stopped_at).is_(None),
                col(CarrierPoll.next_poll_at) <= now,
                col(Integration.api_key_sealed).is_not(None),
            )
            .order_by(col(CarrierPoll.next_poll_at))
            .limit(BATCH)
        )
        if engine.dialect.name == "postgresql":
            due_query = due_query.with_for_update(of=CarrierPoll, skip_locked=True)  # type: ignore[arg-type]
        due = session.exec(due_query).all()
        jobs = []
        for poll, _sealed, merchant_id, platform in due:
            poll.next_poll_at = now + LEASE  # leased: nobody else asks meanwhile
            session.add(poll)
            integration = Integration(
                merchant_id=merchant_id, platform=platform, secret_sealed="", api_key_sealed=_sealed
            )
            jobs.append(
                (poll.shipment_id, platform, inbox.api_key_of(integration, settings.secret_key))
            )
    pollers: dict[tuple[str, str], Any] = {}
    try:
        for shipment_id, provider, api_key in jobs:
            if not api_key:
                continue
            poller = pollers.get((provider, api_key))
            if poller is None:
                poller = pollers[(provider, api_key)] = poller_for(
                    provider, api_key, base_url=settings.aftership_api_url or None
                )
            _poll_one(engine, settings, poller, shipment_id, broker=broker)
    finally:
        for poller in pollers.values():
            close = getattr(poller, "close", None)
            if close:
                close()
    return len(jobs)


def _discover(session: Any, now: datetime) -> None:
    """A poll row for every shipment, not terminal, of a merchant polling its provider."""
    for provider in inbox.POLLED:
        missing = session.exec(
            select(Shipment.id, Order.merchant_id)
            .join(Order, col(Order.id) == col(Shipment.order_id))
            .join(
                Integration,
                sa.and_(
                    col(Integration.merchant_id) == col(Order.merchant_id),
                    Integration.platform == provider,
                    col(Integration.api_key_sealed).is_not(None),
                ),
            )
            .outerjoin(CarrierPoll, col(CarrierPoll.shipment_id) == col(Shipment.id))
            .where(
                col(CarrierPoll.shipment_id).is_(None),
                col(Shipment.status).not_in([s.value for s in Status if is_terminal(s)]),
            )
            .limit(1000)
        ).all()
        for shipment_id, merchant_id in missing:
            session.add(
                CarrierPoll(
                    shipment_id=shipment_id,
                    merchant_id=merchant_id,
                    provider=provider,
                    next_poll_at=now,
                )
            )
        session.flush()


def _poll_one(
    engine: Engine, settings: Settings, poller: Any, shipment_id: int, *, broker: Publisher | None
) -> None:
    with session_scope(engine) as session:
        shipment = session.get(Shipment, shipment_id)
        carrier, number = (shipment.carrier, shipment.tracking_number) if shipment else ("", "")
    if not carrier:
        return
    started = utcnow()
    error: ProviderError | None = None
    update = None
    try:
        update = poller.fetch(carrier, number)
    except ProviderError as exc:
        error = exc
        log.warning("polling %s %s: %s", carrier, number, exc)
    with session_scope(engine, broker=broker) as session:
        poll = session.get(CarrierPoll, shipment_id)
        shipment = session.get(Shipment, shipment_id)
        if poll is None or shipment is None:
            return
        poll.last_polled_at = started
        if update is not None:
            order = session.get(Order, shipment.order_id)
            merchant = session.get(Merchant, order.merchant_id) if order else None
            if merchant is not None:
                inbox.apply(session, merchant, [update], server_key=settings.secret_key)
                session.refresh(shipment)
        if error is not None:
            poll.attempts += 1
            poll.last_error = str(error)[:300]
            if not error.retryable:
                poll.stopped_at = started  # a bad key or number: asking again cannot help
        else:
            poll.attempts, poll.last_error = 0, None
        if is_terminal(Status(shipment.status)):
            poll.stopped_at = started  # delivered, returned, cancelled: nothing more to ask
        poll.next_poll_at = started + timedelta(
            seconds=next_poll_delay(
                poll.attempts,
                None if error else shipment.status,
                error.retry_after if error else None,
            )
        )
        session.add(poll)
