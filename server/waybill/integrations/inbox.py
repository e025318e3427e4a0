"""Platform webhooks in: verified, recorded, answered, then applied through the one ingest path.

A webhook is checked (its platform's signature, its shape) and recorded as a
:class:`WebhookReceipt` before it is answered, so that a platform's retry and a burst cost one
short write each; it is applied right after the answer (``apply_now``), and a receipt left
queued — the process died in between — is applied by the worker (``apply_stale``). Applying is
idempotent: every event of a payload's history is recorded once (its dedupe key), so a replay
records nothing and notifies nobody.

An update for a parcel (or a Shopify fulfilment for an order) Waybill does not know yet is kept
as a :class:`HeldUpdate` and applied when that shipment (or order) appears: ``release``.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from types import ModuleType
from typing import Any, NamedTuple

import sqlalchemy as sa
from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from waybill.auth.tokens import SealError, open_secret, seal_secret
from waybill.db import Publisher, session_scope
from waybill.ingest import (
    NumberTaken,
    create_order,
    record_events,
    record_order_event,
    update_shipment,
    upsert_shipment,
)
from waybill.integrations.base import (
    Checkpoint,
    LineItem,
    OrderUpsert,
    PayloadError,
    ShipmentUpsert,
    TrackingUpdate,
    Update,
)
from waybill.models import (
    EventBatchItem,
    HeldUpdate,
    Integration,
    Merchant,
    Order,
    OrderCreate,
    OrderEventCreate,
    Shipment,
    ShipmentCreate,
    WebhookReceipt,
    utcnow,
)
from waybill.models.integrations import RECEIPT_DAYS

log = logging.getLogger("waybill.integrations")

PLATFORMS = ("easypost", "shippo", "aftership", "shopify", "woocommerce")
#: Platforms that are also tracking providers Waybill can poll with the merchant's API key.
POLLED = ("aftership",)
#: A webhook's body at most: the largest sample payloads are a few tens of KB.
MAX_BODY = 256 * 1024
#: A receipt still queued after this long was not applied by the request that took it.
STALE_AFTER = timedelta(seconds=30)
#: Held updates younger than this are looked at again for a parcel that appeared meanwhile.
STRANDED_WITHIN = timedelta(minutes=10)
#: The headers that name a webhook's topic, by platform.
_TOPIC_HEADERS = ("X-Shopify-Topic", "X-WC-Webhook-Topic")


class Refused(Exception):
    """The webhook is not taken: ``status`` (401, 400, 413, 415) and why, for the answer."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def adapter(platform: str) -> ModuleType | None:
    if platform not in PLATFORMS:
        return None
    return importlib.import_module(f"waybill.integrations.{platform}")


def seal_context(merchant_id: str, platform: str, what: str) -> str:
    return f"integration:{merchant_id}:{platform}:{what}"


# --- the merchant's settings --------------------------------------------------------------


def connect(
    session: Session,
    *,
    merchant: Merchant,
    platform: str,
    secret: str,
    api_key: str | None,
    server_key: str,
    now: datetime | None = None,
) -> Integration:
    """Set the platform's webhook secret (and a provider's API key for polling): the same
    request again changes nothing but the sealed values."""
    now = now or utcnow()
    row = session.exec(
        select(Integration).where(
            Integration.merchant_id == merchant.id, Integration.platform == platform
        )
    ).first()
    if row is None:
        row = Integration(
            merchant_id=merchant.id, platform=platform, secret_sealed="", created_at=now
        )
    row.secret_sealed = seal_secret(
        server_key, secret, seal_context(merchant.id, platform, "secret")
    )
    row.api_key_sealed = (
        seal_secret(server_key, api_key, seal_context(merchant.id, platform, "api_key"))
        if api_key
        else None
    )
    row.updated_at = now
    session.add(row)
    session.flush()
    return row


def api_key_of(integration: Integration, server_key: str) -> str | None:
    if not integration.api_key_sealed:
        return None
    return open_secret(
        server_key,
        integration.api_key_sealed,
        seal_context(integration.merchant_id, integration.platform, "api_key"),
    )


# --- receiving ----------------------------------------------------------------------------


class Received(NamedTuple):
    """A webhook taken: its receipt, and whether it waits to be applied (``queued``)."""

    id: int
    state: str


def receive(
    session: Session,
    *,
    merchant_id: str,
    platform: str,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    server_key: str,
) -> tuple[Received, list[Update]]:
    """Verify and parse one webhook and record it (queued); :class:`Refused` when it is not
    taken, and then nothing is written. The caller commits, answers, then applies."""
    module = adapter(platform)
    if module is None:
        raise Refused(404, "not_found", "no such platform")
    if len(body) > MAX_BODY:
        raise Refused(413, "payload_too_large", f"a webhook body is at most {MAX_BODY} bytes")
    # Core statements, not the ORM: this is the whole of what a platform waits for, and a
    # burst of a thousand retries is answered at the pace of this function.
    sealed = session.execute(
        sa.select(Integration.secret_sealed).where(
            col(Integration.merchant_id) == merchant_id, col(Integration.platform) == platform
        )
    ).scalar()
    # One answer for "no such merchant", "not connected" and "wrong signature": the URL
    # tells nobody which merchants exist.
    unsigned = Refused(401, "unauthorized", f"the {platform} signature does not match")
    if sealed is None:
        raise unsigned
    try:
        secret = open_secret(server_key, sealed, seal_context(merchant_id, platform, "secret"))
    except SealError:
        log.error("integration %s of merchant %s: secret does not open", platform, merchant_id)
        raise unsigned from None
    if not module.verify(secret, body, headers, query):
        raise unsigned
    try:
        text = body.decode("utf-8")
        updates = module.parse(body, headers)
    except UnicodeDecodeError:
        raise Refused(400, "malformed", "the body is not UTF-8") from None
    except PayloadError as exc:
        raise Refused(400, "malformed", f"not a {platform} webhook: {exc}") from None
    topic = next((headers.get(h) for h in _TOPIC_HEADERS if headers.get(h)), None)
    state = "queued" if updates else "ignored"
    receipt_id = session.execute(
        sa.insert(WebhookReceipt)
        .values(
            merchant_id=merchant_id,
            platform=platform,
            topic=(topic or "")[:100] or None,
            body=text,
            state=state,
            result=None if updates else "nothing to apply (a topic Waybill does not use)",
            received_at=utcnow(),
            attempts=0,
        )
        .returning(WebhookReceipt.id)
    ).scalar_one()
    return Received(receipt_id, state), updates


# --- applying -----------------------------------------------------------------------------


def apply_now(
    engine: Engine,
    receipt_id: int,
    updates: list[Update],
    *,
    server_key: str,
    broker: Publisher | None = None,
) -> str:
    """Apply a receipt just answered; its state says what happened. Never raises: a failure
    is recorded on the receipt (and the worker does not try again: the payload is the same)."""
    try:
        with session_scope(engine, broker=broker) as session:
            receipt = session.get(WebhookReceipt, receipt_id)
            if receipt is None or receipt.state != "queued":
                return receipt.state if receipt else "gone"
            merchant = session.get(Merchant, receipt.merchant_id)
            assert merchant is not None
            held, notes = apply(
                session, merchant, updates, server_key=server_key, receipt_id=receipt_id
            )
            receipt.state = "held" if held else "applied"
            receipt.result = "; ".join(notes)[:500] or None
            receipt.applied_at = utcnow()
            session.add(receipt)
            return receipt.state
    except Exception as exc:  # one bad payload never stops the others
        log.exception("webhook receipt %s could not be applied", receipt_id)
        with session_scope(engine) as session:
            receipt = session.get(WebhookReceipt, receipt_id)
            if receipt is not None:
                receipt.state, receipt.result = "failed", f"{type(exc).__name__}: {exc}"[:500]
                receipt.applied_at = utcnow()
                session.add(receipt)
        return "failed"


def apply_stale(
    engine: Engine, *, server_key: str, broker: Publisher | None = None, now: datetime | None = None
) -> int:
    """Apply the receipts the requests that took them did not (their process ended first):
    leased one at a time, so that two workers never apply one twice at once. Returns how many."""
    now = now or utcnow()
    done = 0
    for _ in range(1000):
        with session_scope(engine) as session:
            due = (
                select(WebhookReceipt.id)
                .where(
                    WebhookReceipt.state == "queued",
                    col(WebhookReceipt.received_at) < now - STALE_AFTER,
                    sa.or_(
                        col(WebhookReceipt.lease_until).is_(None),
                        col(WebhookReceipt.lease_until) < now,
                    ),
                )
                .order_by(col(WebhookReceipt.id))
                .limit(1)
            )
            if engine.dialect.name == "postgresql":
                due = due.with_for_update(skip_locked=True)
            row_id = session.exec(due).first()
            if row_id is None:
                return done
            receipt = session.get(WebhookReceipt, row_id)
            assert receipt is not None
            receipt.lease_until, receipt.attempts = now + timedelta(minutes=2), receipt.attempts + 1
            session.add(receipt)
            platform, body = receipt.platform, receipt.body
            headers = {
                "X-Shopify-Topic": receipt.topic or "",
                "X-WC-Webhook-Topic": receipt.topic or "",
            }
        module = adapter(platform)
        try:
            updates = module.parse(body.encode(), headers) if module else []
        except PayloadError:
            updates = []
        apply_now(engine, row_id, updates, server_key=server_key, broker=broker)
        done += 1
    return done


def release_stranded(
    engine: Engine, *, server_key: str, broker: Publisher | None = None, now: datetime | None = None
) -> int:
    """Release held updates whose parcel or order has appeared without releasing them: made
    by a transaction that had not yet seen the hold (two workers, on PostgreSQL, at the same
    moment). Looks at holds between STALE_AFTER and STRANDED_WITHIN old. Returns how many
    updates it applied."""
    now = now or utcnow()
    applied = 0
    with session_scope(engine, broker=broker) as session:
        keys = session.exec(
            select(HeldUpdate.merchant_id, HeldUpdate.key)
            .where(
                col(HeldUpdate.created_at) < now - STALE_AFTER,
                col(HeldUpdate.created_at) >= now - STRANDED_WITHIN,
            )
            .distinct()
            .limit(200)
        ).all()
        for merchant_id, key in keys:
            if not _appeared(session, merchant_id, key):
                continue
            merchant = session.get(Merchant, merchant_id)
            assert merchant is not None
            with session.begin_nested():
                notes = release(session, merchant, key, server_key=server_key)
            log.info("released %d stranded update(s) for %s", len(notes), key)
            applied += len(notes)
    return applied


def _appeared(session: Session, merchant_id: str, key: str) -> bool:
    kind, _, rest = key.partition(":")
    if kind == "order":
        found = select(Order.id).where(Order.merchant_id == merchant_id, Order.external_id == rest)
    else:
        carrier_key, _, number = rest.rpartition(":")
        found = (
            select(Shipment.id)
            .join(Order, col(Order.id) == col(Shipment.order_id))
            .where(
                Order.merchant_id == merchant_id,
                Shipment.carrier_key == carrier_key,
                Shipment.tracking_number == number,
            )
        )
    return session.exec(found.limit(1)).first() is not None


def purge(session: Session, *, now: datetime | None = None) -> int:
    """Forget raw payloads older than ``RECEIPT_DAYS`` (and updates held as long)."""
    before = (now or utcnow()) - timedelta(days=RECEIPT_DAYS)
    session.execute(sa.delete(HeldUpdate).where(col(HeldUpdate.created_at) < before))
    session.execute(
        sa.update(HeldUpdate)
        .where(
            col(HeldUpdate.receipt_id).in_(
                select(WebhookReceipt.id).where(col(WebhookReceipt.received_at) < before)
            )
        )
        .values(receipt_id=None)
    )
    result = session.execute(
        sa.delete(WebhookReceipt).where(col(WebhookReceipt.received_at) < before)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def apply(
    session: Session,
    merchant: Merchant,
    updates: list[Update],
    *,
    server_key: str,
    receipt_id: int | None = None,
) -> tuple[bool, list[str]]:
    """Apply updates in the caller's transaction; returns (whether any was held, notes)."""
    held, notes = False, []
    for update in updates:
        if isinstance(update, TrackingUpdate):
            note = _apply_tracking(session, merchant, update, receipt_id=receipt_id)
        elif isinstance(update, OrderUpsert):
            note = _apply_order(session, merchant, update, server_key=server_key)
        else:
            note = _apply_fulfilment(
                session, merchant, update, server_key=server_key, receipt_id=receipt_id
            )
        held = held or note.startswith("held")
        notes.append(note)
    return held, notes


def _parcel_key(carrier: str, tracking_number: str) -> str:
    return f"parcel:{Shipment.carrier_key_of(carrier)}:{tracking_number}"


def _apply_tracking(
    session: Session, merchant: Merchant, update: TrackingUpdate, *, receipt_id: int | None
) -> str:
    items, refused = [], 0
    for point in update.checkpoints:
        try:
            items.append(_item(update, point))
        except ValidationError as exc:
            refused += 1
            log.warning("a %s checkpoint was not valid: %s", update.carrier, exc.errors()[:1])
    if not items:
        return f"{update.tracking_number}: no valid checkpoint"
    outcomes = record_events(session=session, merchant=merchant, items=items, source="webhook")
    if all(o.outcome == "not_found" for o in outcomes):
        _hold(
            session,
            merchant,
            _parcel_key(update.carrier, update.tracking_number),
            update,
            receipt_id,
        )
        return f"held: {update.carrier} {update.tracking_number} is not a shipment yet"
    recorded = sum(o.outcome == "recorded" for o in outcomes)
    shipment = next((o.shipment for o in outcomes if o.shipment is not None), None)
    changes: dict[str, Any] = {}
    if shipment is not None and update.estimated_delivery is not None:
        changes["estimated_delivery"] = update.estimated_delivery  # the carrier's own estimate
        changes["estimated_delivery_source"] = "carrier"
    if shipment is not None and update.service and not shipment.service:
        changes["service"] = update.service  # what the shop did not say, the carrier did
    if shipment is not None and set(changes) - {"estimated_delivery_source"}:
        with session.begin_nested():
            update_shipment(session=session, shipment=shipment, changes=changes)
    note = f"{update.tracking_number}: {recorded} new of {len(items)} events"
    return note + (f", {refused} not valid" if refused else "")


def _item(update: TrackingUpdate, point: Checkpoint) -> EventBatchItem:
    data: dict[str, Any] = {
        "carrier": update.carrier[:100],
        "tracking_number": update.tracking_number,
        "status": point.status,
        "occurred_at": point.occurred_at,
        "event_id": point.event_id[:200] if point.event_id else None,
        "location": point.location[:200] if point.location else None,
        "description": point.description[:500] if point.description else None,
        "source_status": _one_line(point.source_status)[:100] or None,
    }
    if point.pickup_until and point.status == "available_for_pickup":
        data["pickup_until"] = point.pickup_until
    try:
        return EventBatchItem.model_validate(data)
    except ValidationError:
        if "pickup_until" not in data:
            raise
        data.pop("pickup_until")  # a deadline that does not hold never costs the scan itself
        return EventBatchItem.model_validate(data)


def _one_line(text: str | None) -> str:
    return "".join(ch for ch in (text or "") if ch.isprintable())


def _order_of(session: Session, merchant: Merchant, external_id: str) -> Order | None:
    return session.exec(
        select(Order).where(Order.merchant_id == merchant.id, Order.external_id == external_id)
    ).first()


def _apply_order(
    session: Session, merchant: Merchant, update: OrderUpsert, *, server_key: str
) -> str:
    order = _order_of(session, merchant, update.external_id)
    notes = []
    if order is None:
        order = _create(
            session,
            merchant,
            update.external_id,
            update.email,
            update.name,
            update.locale,
            update.items,
            update.placed_at,
            server_key,
        )
        if isinstance(order, str):
            return order
        notes.append(f"order {update.external_id} created")
        notes += release(session, merchant, f"order:{update.external_id}", server_key=server_key)
    if update.status:
        try:
            event = OrderEventCreate(
                status=update.status,
                occurred_at=update.occurred_at,
                event_id=(update.event_id or f"{update.external_id}:{update.status}")[:200],
                source_status=_one_line(update.source_status)[:100] or None,
            )
        except ValidationError as exc:
            return f"order {update.external_id}: status not valid ({exc.errors()[0]['msg']})"
        with session.begin_nested():
            done = record_order_event(session=session, order=order, data=event, source="webhook")
        notes.append(
            f"order {update.external_id} {update.status}" + ("" if done else " (seen before)")
        )
    return "; ".join(notes) or f"order {update.external_id}: nothing new"


def _create(
    session: Session,
    merchant: Merchant,
    external_id: str,
    email: str,
    name: str | None,
    locale: str | None,
    items: tuple[LineItem, ...],
    placed_at: datetime | None,
    server_key: str,
) -> Order | str:
    try:
        data = OrderCreate.model_validate(
            {
                "external_id": external_id,
                "customer": {"email": email, "name": name, "locale": _locale(locale)},
                "items": [{"name": i.name[:200], "quantity": max(1, i.quantity)} for i in items][
                    :100
                ],
                "placed_at": placed_at,
            }
        )
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        return f"order {external_id} not created: {where}: {err['msg']}"
    with session.begin_nested():
        order, _ = create_order(
            session=session, merchant=merchant, data=data, secret_key=server_key
        )
    return order


def _locale(value: str | None) -> str | None:
    """A shop's locale (``de-CH``, ``pt_BR``) as Waybill keeps one, or none."""
    if not value:
        return None
    return value.replace("_", "-").split("-")[0].lower()[:8] or None


def _apply_fulfilment(
    session: Session,
    merchant: Merchant,
    update: ShipmentUpsert,
    *,
    server_key: str,
    receipt_id: int | None,
) -> str:
    order = _order_of(session, merchant, update.order_external_id)
    notes: list[str] = []
    if order is None:
        if not update.email:
            _hold(session, merchant, f"order:{update.order_external_id}", update, receipt_id)
            return f"held: order {update.order_external_id} is not known yet"
        made = _create(
            session,
            merchant,
            update.order_external_id,
            update.email,
            None,
            None,
            update.items,
            None,
            server_key,
        )
        if isinstance(made, str):
            return made
        order = made
        notes.append(f"order {update.order_external_id} created")
    try:
        data = ShipmentCreate.model_validate(
            {
                "carrier": update.carrier[:100],
                "tracking_number": update.tracking_number,
                "service": update.service[:100] if update.service else None,
                **(
                    {"estimated_delivery": update.estimated_delivery}
                    if update.estimated_delivery
                    else {}
                ),
            }
        )
    except ValidationError as exc:
        return f"fulfilment of {update.order_external_id} not valid: {exc.errors()[0]['msg']}"
    try:
        with session.begin_nested():
            shipment, added = upsert_shipment(session=session, order=order, data=data)
    except NumberTaken as exc:
        return f"{update.tracking_number} belongs to another order (shipment {exc.shipment.id})"
    if added:
        notes.append(f"shipment {update.tracking_number} added")
        notes += release(
            session,
            merchant,
            _parcel_key(shipment.carrier, shipment.tracking_number),
            server_key=server_key,
        )
    if update.checkpoints:
        tracking = TrackingUpdate(update.carrier, update.tracking_number, update.checkpoints)
        notes.append(_apply_tracking(session, merchant, tracking, receipt_id=receipt_id))
    return "; ".join(notes) or f"shipment {update.tracking_number}: nothing new"


def release(session: Session, merchant: Merchant, key: str, *, server_key: str) -> list[str]:
    """Apply the updates held for ``key`` (a parcel or an order that has just appeared)."""
    rows = session.exec(
        select(HeldUpdate)
        .where(HeldUpdate.merchant_id == merchant.id, HeldUpdate.key == key)
        .order_by(col(HeldUpdate.id))
    ).all()
    notes = []
    for row in rows:
        session.delete(row)
        session.flush()
        _, applied = apply(session, merchant, [update_from_json(row.update)], server_key=server_key)
        notes += [f"held update {row.id}: {n}" for n in applied]
        if row.receipt_id is not None:
            session.execute(
                sa.update(WebhookReceipt)
                .where(col(WebhookReceipt.id) == row.receipt_id, WebhookReceipt.state == "held")
                .values(state="applied", applied_at=utcnow())
            )
    return notes


def release_for_shipment(
    session: Session, merchant: Merchant, shipment: Shipment, *, server_key: str
) -> list[str]:
    """A shipment just made by the API: what its platforms said of it before is applied."""
    return release(
        session,
        merchant,
        _parcel_key(shipment.carrier, shipment.tracking_number),
        server_key=server_key,
    )


def _hold(
    session: Session, merchant: Merchant, key: str, update: Update, receipt_id: int | None
) -> None:
    session.add(
        HeldUpdate(
            merchant_id=merchant.id,
            key=key[:240],
            receipt_id=receipt_id,
            update=update_to_json(update),
        )
    )
    session.flush()


# --- updates as JSON (held ones wait in the database) ----------------------------------------

_KINDS: dict[str, type] = {
    "tracking": TrackingUpdate,
    "order": OrderUpsert,
    "fulfilment": ShipmentUpsert,
}


def update_to_json(update: Update) -> str:
    kind = next(k for k, t in _KINDS.items() if isinstance(update, t))
    return json.dumps({"kind": kind, **dataclasses.asdict(update)}, default=_encode)


def _encode(value: object) -> str:
    if isinstance(value, datetime):
        return value.isoformat()
    raise TypeError(type(value).__name__)


def update_from_json(text: str) -> Update:
    data = json.loads(text)
    cls = _KINDS[data.pop("kind")]
    return _build(cls, data)  # type: ignore[no-any-return]


def _build(cls: type, data: dict[str, Any]) -> Any:
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in data:
            continue
        value = data[f.name]
        if f.name == "checkpoints":
            value = tuple(_build(Checkpoint, c) for c in value)
        elif f.name == "items":
            value = tuple(_build(LineItem, i) for i in value)
        elif isinstance(value, str) and f.name in _TIMES:
            value = datetime.fromisoformat(value)
        values[f.name] = value
    return cls(**values)


_TIMES = {"occurred_at", "pickup_until", "estimated_delivery", "placed_at"}
