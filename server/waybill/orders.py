"""Reading orders: by tracking token, in the customer's language, as the JSON every reader
gets (the merchant, the signed-in customer, a tracking link, a socket frame).

Rows for a whole page of orders are loaded in a few queries, not a few per order. No answer
grows with an order's history: each timeline (the order's own events, and each shipment's)
carries its latest ``EVENTS_SHOWN`` events, how many it has, and a cursor to the older ones,
which ``event_page`` reads a page at a time.
"""

from __future__ import annotations

import base64
import functools
import re
import struct
import threading
from collections import OrderedDict, defaultdict
from collections.abc import Hashable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlmodel import Session, col, select

from waybill import catalogue
from waybill.auth.tokens import digest, tracking_token
from waybill.catalogue import label, package_summary
from waybill.db import MAX_ID
from waybill.errors import not_found
from waybill.models import (
    Change,
    Customer,
    CustomerPublic,
    EventPublic,
    ItemPublic,
    Merchant,
    MerchantOrderPublic,
    MerchantPublic,
    Order,
    OrderPublic,
    PackagesPublic,
    Shipment,
    ShipmentPublic,
    TrackingEvent,
)
from waybill.models.orders import EVENT_CURSOR_PATTERN, EstimatePublic, EventPage
from waybill.tracking.statuses import Status, is_terminal

T = TypeVar("T")

#: The latest events of each timeline every order answer and socket frame carries.
EVENTS_SHOWN = 50
#: The most events one page of ``GET …/events`` holds.
EVENTS_PAGE_MAX = 100

_CURSOR = re.compile(EVENT_CURSOR_PATTERN.strip("^$"))
_DAY_ONE = datetime(1, 1, 1, tzinfo=UTC)
_LAST_MICROSECOND = (datetime.max.replace(tzinfo=UTC) - _DAY_ONE) // timedelta(microseconds=1)


def tracking_url(base_url: str, secret_key: str, order: Order) -> str:
    return f"{base_url}/t/{tracking_token(secret_key, order)}"


def saved_language(customer: Customer) -> str | None:
    """The language the customer chose in settings, else the one their orders came with (the
    merchant's ``locale``), if we speak it; None when neither says."""
    chosen = (customer.preferences or {}).get("language") or customer.locale
    if not chosen:
        return None
    lang = str(chosen)[:2].lower()
    return lang if lang in catalogue.LANGUAGES else catalogue.DEFAULT_LANGUAGE


def language_of(customer: Customer) -> str:
    """The customer's language: everything we show or send them speaks it."""
    return saved_language(customer) or catalogue.DEFAULT_LANGUAGE


def order_by_token(session: Session, token: str) -> Order | None:
    """Look the order up by the token's hash: timing says nothing about the token."""
    if not 16 <= len(token) <= 64:
        return None
    return session.exec(select(Order).where(Order.tracking_token_hash == digest(token))).first()


def tracked_order(session: Session, token: str) -> Order:
    """The order a tracking link names, or the API's 404."""
    order = order_by_token(session, token)
    if order is None:
        raise not_found("order")
    return order


def event_cursor(occurred_at: datetime, event_id: int) -> str:
    """The cursor to the events of a timeline older than this one (``occurred_at``, then
    ``event_id``, as timelines are ordered). Opaque to clients: 16 bytes (microseconds since
    0001-01-01 UTC, and the event's id), base64url."""
    micros = (occurred_at.astimezone(UTC) - _DAY_ONE) // timedelta(microseconds=1)
    raw = struct.pack(">QQ", micros, event_id)
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def parse_event_cursor(cursor: str) -> tuple[datetime, int] | None:
    """The place a cursor names, or None when ``cursor`` has not the shape of one. Every
    string of that shape names a place (one past the last representable instant or id stands
    for the end), so a made-up cursor reads like any other."""
    if not _CURSOR.fullmatch(cursor):
        return None
    micros, event_id = struct.unpack(">QQ", base64.urlsafe_b64decode(cursor + "=="))
    at = _DAY_ONE + timedelta(microseconds=min(micros, _LAST_MICROSECOND))
    return at, min(event_id, MAX_ID)


def _event(e: Any, lang: str) -> EventPublic:
    """One event (a ``TrackingEvent`` or a row with its columns) as readers get it."""
    return EventPublic(
        status=e.status,
        status_label=label(e.status, lang),
        occurred_at=e.occurred_at,
        location=e.location,
        description=e.description,
    )


_EVENT_COLUMNS = (
    col(TrackingEvent.id),
    col(TrackingEvent.order_id),
    col(TrackingEvent.shipment_id),
    col(TrackingEvent.status),
    col(TrackingEvent.occurred_at),
    col(TrackingEvent.location),
    col(TrackingEvent.description),
)
_NEWEST_FIRST = (col(TrackingEvent.occurred_at).desc(), col(TrackingEvent.id).desc())


#: Built once: the statements and their cache keys are the same for every page of orders.
_ORDER_IDS = sa.bindparam("order_ids", expanding=True)
_SHIPMENTS_OF = (
    select(Shipment).where(col(Shipment.order_id).in_(_ORDER_IDS)).order_by(col(Shipment.id))
)
#: Each order's latest change: the cursor its readers resume from.
_CURSORS_OF = (
    sa.select(col(Change.order_id), sa.func.max(col(Change.id)))
    .where(col(Change.order_id).in_(_ORDER_IDS))
    .group_by(col(Change.order_id))
)


#: Timelines per statement: SQLite allows 500 parts in one UNION ALL.
_TIMELINES_PER_QUERY = 200


@functools.lru_cache(maxsize=256)
def _latest_of(shape: tuple[bool, ...]) -> Any:
    """``UNION ALL`` of one part per timeline (``shape``: True for a shipment's, False for an
    order's own): its newest ``EVENTS_SHOWN`` events, an index range stopped by ``LIMIT``, each
    row with how many the timeline has. Built once per shape (bind parameters ``o<i>`` and
    ``s<i>``): a page of orders has few shapes, and building costs more than running."""
    order, ship = col(TrackingEvent.order_id), col(TrackingEvent.shipment_id)
    parts = []
    for i, of_shipment in enumerate(shape):
        here = (
            order == sa.bindparam(f"o{i}"),
            ship == sa.bindparam(f"s{i}") if of_shipment else ship.is_(None),
        )
        total = sa.select(sa.func.count()).where(*here).scalar_subquery().label("total")
        newest = (
            sa.select(*_EVENT_COLUMNS, total)
            .where(*here)
            .order_by(*_NEWEST_FIRST)
            .limit(EVENTS_SHOWN)
            .subquery()
        )
        parts.append(sa.select(newest))
    return parts[0] if len(parts) == 1 else sa.union_all(*parts)


def _latest_events(
    session: Session, timelines: Sequence[tuple[int, int | None]]
) -> tuple[dict[tuple[int, int | None], list[Any]], dict[tuple[int, int | None], int]]:
    """The latest ``EVENTS_SHOWN`` events of each timeline (an order's own, or one shipment's),
    oldest first, and how many each timeline has, in one statement (per 200 timelines) whose
    cost does not grow with the histories: see :func:`_latest_of`. (A window function over
    each timeline read and sorted the whole history every time: an answer cost more with
    every event the order had.)"""
    events: dict[tuple[int, int | None], list[Any]] = defaultdict(list)
    totals: dict[tuple[int, int | None], int] = {}
    conn = session.connection()
    for start in range(0, len(timelines), _TIMELINES_PER_QUERY):
        chunk = timelines[start : start + _TIMELINES_PER_QUERY]
        params: dict[str, Any] = {}
        for i, (order_id, shipment_id) in enumerate(chunk):
            params[f"o{i}"] = order_id
            if shipment_id is not None:
                params[f"s{i}"] = shipment_id
        statement = _latest_of(tuple(shipment_id is not None for _, shipment_id in chunk))
        for row in conn.execute(statement, params):
            key = (row.order_id, row.shipment_id)
            events[key].append(row)
            totals[key] = row.total
    for rows in events.values():
        rows.reverse()  # oldest first
    return events, totals


def _by_id(session: Session, model: type[T], ids: set[Any]) -> dict[Any, T]:
    """Rows by primary key: those the session holds already cost no query, the rest one."""
    found: dict[Any, T] = {}
    for row_id in ids:
        row = session.identity_map.get(session.identity_key(model, row_id))
        if row is not None:
            found[row_id] = row  # type: ignore[assignment]
    missing = ids - found.keys()
    if missing:
        for row in session.exec(_rows_by_id(model), params={"ids": list(missing)}):
            found[sa.inspect(row).identity[0]] = row
    return found


@functools.cache
def _rows_by_id(model: type[T]) -> Any:
    """``SELECT … WHERE id IN (:ids)`` for ``model``, built once."""
    pk = sa.inspect(model).primary_key[0]
    return select(model).where(pk.in_(sa.bindparam("ids", expanding=True)))


def _timeline_fields(rows: list[Any], total: int, language: str) -> dict[str, Any]:
    """What an answer says of one timeline: its latest events, oldest first, and the rest."""
    left_out = total > len(rows)
    return {
        "events": [_event(e, language) for e in rows],
        "events_total": total,
        "events_before": event_cursor(rows[0].occurred_at, rows[0].id) if left_out else None,
        "events_truncated": left_out,
    }


def render_orders(
    session: Session,
    orders: Sequence[Order],
    *,
    base_url: str,
    secret_key: str,
    merchant_view: bool = False,
    language: str = "en",
) -> list[OrderPublic]:
    if not orders:
        return []
    ids = {"order_ids": [o.id for o in orders]}
    shipments: dict[int, list[Shipment]] = defaultdict(list)
    for s in session.exec(_SHIPMENTS_OF, params=ids):
        shipments[s.order_id].append(s)
    timelines = [(o.id, None) for o in orders] + [
        (s.order_id, s.id) for ships in shipments.values() for s in ships
    ]
    events, totals = _latest_events(session, timelines)  # type: ignore[arg-type]
    cursors = {oid: cursor for oid, cursor in session.connection().execute(_CURSORS_OF, ids)}
    merchants = _by_id(session, Merchant, {o.merchant_id for o in orders})
    customers = _by_id(session, Customer, {o.customer_id for o in orders}) if merchant_view else {}
    out: list[OrderPublic] = []
    for order in orders:
        ships = shipments[order.id]  # type: ignore[index]
        summary = package_summary([Status(s.status) for s in ships])
        merchant = merchants[order.merchant_id]
        fields = dict(
            id=order.id,
            external_id=order.external_id,
            status=order.status,
            status_label=label(order.status, language),
            merchant=MerchantPublic(id=merchant.id, name=merchant.name),
            tracking_url=tracking_url(base_url, secret_key, order),
            items=[ItemPublic(**i) for i in order.items],
            packages=PackagesPublic(
                total=summary.total, delivered=summary.delivered, summary=summary.text(language)
            ),
            shipments=[
                ShipmentPublic(
                    id=s.id,
                    carrier=s.carrier,
                    tracking_number=s.tracking_number,
                    service=s.service,
                    status=s.status,
                    status_label=label(s.status, language),
                    estimated_delivery=_given(s),
                    pickup_until=s.pickup_until,
                    **_timeline_fields(
                        events[(order.id, s.id)],  # type: ignore[index]
                        totals.get((order.id, s.id), 0),  # type: ignore[arg-type]
                        language,
                    ),
                )
                for s in ships
            ],
            **_timeline_fields(
                events[(order.id, None)],  # type: ignore[index]
                totals.get((order.id, None), 0),  # type: ignore[arg-type]
                language,
            ),
            estimated_delivery=_ours(order),
            estimated_delivery_given=_latest_given(order, ships),
            placed_at=order.placed_at,
            created_at=order.created_at,
            updated_at=order.updated_at,
            cursor=cursors.get(order.id),
        )
        if merchant_view:
            c = customers[order.customer_id]
            out.append(
                MerchantOrderPublic(
                    **fields,
                    # the name this merchant gave, never one another merchant sent
                    customer=CustomerPublic(email=c.email, name=order.customer_name),
                )
            )
        else:
            out.append(OrderPublic(**fields))
    return out


_CUSTOMER_CURSOR = sa.select(sa.func.max(col(Change.id))).where(
    col(Change.customer_id) == sa.bindparam("customer_id")
)
_ORDER_CURSOR = sa.select(sa.func.max(col(Change.id))).where(
    col(Change.order_id) == sa.bindparam("order_id")
)


def customer_cursor(session: Session, customer_id: int) -> int:
    """The latest change of any of the customer's orders (0 when none): every change of what
    their order list shows writes one (``ingest``), so an answer rendered at this cursor is
    the answer until it moves."""
    return session.connection().scalar(_CUSTOMER_CURSOR, {"customer_id": customer_id}) or 0


def order_cursor(session: Session, order_id: int) -> int:
    """The latest change of one order (0 when none): see :func:`customer_cursor`."""
    return session.connection().scalar(_ORDER_CURSOR, {"order_id": order_id}) or 0


class AnswerCache:
    """The latest rendered answer per reader (a key such as the customer and language), with
    the cursor it was rendered at: opening the app again before anything changed costs one
    indexed read instead of a render. A newer cursor replaces the entry; at most ``size``
    entries are kept, the least recently read going first. Shared by a worker's greenlets and
    threads (a lock around the dictionary, never around a render)."""

    def __init__(self, size: int = 2048) -> None:
        self._size = size
        self._entries: OrderedDict[Hashable, tuple[int, bytes]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, cursor: int) -> bytes | None:
        with self._lock:
            entry = self._entries.get(key)
            if entry is None or entry[0] != cursor:
                return None
            self._entries.move_to_end(key)
            return entry[1]

    def put(self, key: Hashable, cursor: int, body: bytes) -> None:
        with self._lock:
            held = self._entries.get(key)
            if held is not None and held[0] > cursor:
                return  # a reader that began later rendered a newer answer already
            self._entries[key] = (cursor, body)
            self._entries.move_to_end(key)
            while len(self._entries) > self._size:
                self._entries.popitem(last=False)


def render_order(session: Session, order: Order, **kwargs: object) -> OrderPublic:
    return render_orders(session, [order], **kwargs)[0]  # type: ignore[arg-type]


def event_page(
    session: Session,
    order: Order,
    *,
    shipment_id: int | None,
    before: tuple[datetime, int] | None,
    limit: int,
    language: str = "en",
) -> EventPage:
    """Up to ``limit`` events of one timeline of ``order`` (a shipment's, or with None the
    order's own) that come before ``before`` (all, when None), the newest of them, oldest first;
    with the cursor to the ones before those, or None when there are none. ``limit + 1`` rows
    at most leave the database."""
    ship, at_col, id_col = (
        col(TrackingEvent.shipment_id),
        col(TrackingEvent.occurred_at),
        col(TrackingEvent.id),
    )
    query = sa.select(*_EVENT_COLUMNS).where(
        col(TrackingEvent.order_id) == order.id,
        ship.is_(None) if shipment_id is None else ship == shipment_id,
    )
    if before is not None:
        at, event_id = before
        query = query.where(sa.or_(at_col < at, sa.and_(at_col == at, id_col < event_id)))
    rows = list(session.exec(query.order_by(*_NEWEST_FIRST).limit(limit + 1)))
    more = len(rows) > limit
    rows = rows[:limit][::-1]
    return EventPage(
        events=[_event(e, language) for e in rows],
        next_before=event_cursor(rows[0].occurred_at, rows[0].id) if more else None,
    )


def _ours(order: Order) -> EstimatePublic | None:
    """Waybill's window, while the order is on its way."""
    if is_terminal(order.status) or order.eta_latest is None:
        return None
    return EstimatePublic(
        earliest=order.eta_earliest or order.eta_latest,
        latest=order.eta_latest,
        most_likely=order.eta_most_likely or order.eta_latest,
        updated_at=order.eta_updated_at or order.updated_at,
        source="waybill",
    )


def _given(shipment: Shipment) -> EstimatePublic | None:
    """The date the parcel's merchant or carrier gave, as an estimate of one day."""
    at = shipment.estimated_delivery
    if at is None:
        return None
    day = at.astimezone(UTC).date()
    source = "carrier" if shipment.estimated_delivery_source == "carrier" else "merchant"
    return EstimatePublic(
        earliest=day,
        latest=day,
        most_likely=day,
        updated_at=shipment.estimated_delivery_updated_at or shipment.created_at,
        source=source,
        at=at,
    )


def _latest_given(order: Order, shipments: Sequence[Shipment]) -> EstimatePublic | None:
    """The order arrives with its last parcel: the latest given date, while it is on its way."""
    if is_terminal(order.status):
        return None
    given = [g for g in (_given(s) for s in shipments) if g is not None]
    return max(given, key=lambda g: g.at or g.updated_at, default=None)
