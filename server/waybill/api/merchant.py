"""The merchant API, ``/api/v1``: orders, shipments and their events, by API key."""

from __future__ import annotations

import base64
import time
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, current_app, g, jsonify, request
from pydantic import ValidationError
from sqlmodel import col, select

from waybill.api.access import owned_or_404
from waybill.api.answers import order_json, rendered_orders
from waybill.api.spec import operation, parse_body, without_nul
from waybill.auth import merchant_keys
from waybill.db import MAX_ID, get_session, touch
from waybill.errors import ApiError, not_found, validation_fields
from waybill.ingest import (
    Conflict,
    NumberTaken,
    create_order,
    record_events,
    record_order_event,
    record_shipment_event,
    update_shipment,
    upsert_shipment,
)
from waybill.models import (
    MAX_BATCH,
    EventBatchBody,
    EventBatchItem,
    EventBatchResult,
    EventBatchResults,
    ItemError,
    Merchant,
    MerchantOrderList,
    MerchantOrderPublic,
    Order,
    OrderCreate,
    OrderEventCreate,
    Shipment,
    ShipmentCreate,
    ShipmentCreated,
    ShipmentEventCreate,
    ShipmentUpdate,
)
from waybill.tracking.statuses import ALL_STATUSES

bp = Blueprint("merchant_api", __name__, url_prefix="/api/v1")


@bp.before_request
def _authenticate() -> None:
    header = request.headers.get("Authorization", "")
    scheme, _, key = header.partition(" ")
    merchant = None
    if scheme.lower() == "bearer" and key:
        merchant = merchant_keys.authenticate(session=get_session(), key=key.strip(), touch=touch)
    if merchant is None:
        raise ApiError(
            401,
            "unauthorized",
            "send a valid API key as 'Authorization: Bearer <key>'",
            headers={"WWW-Authenticate": 'Bearer realm="waybill"'},
        )
    g.merchant = merchant


def _merchant() -> Merchant:
    return g.merchant  # type: ignore[no-any-return]


def _order(order_id: int) -> Order:
    return owned_or_404(get_session(), Order, order_id, "order", merchant_id=_merchant().id)


#: Built once (every event of a shipment runs it).
_SHIPMENT_AND_ORDER = (
    select(Shipment, Order)
    .join(Order, col(Order.id) == col(Shipment.order_id))
    .where(
        col(Shipment.id) == sa.bindparam("shipment_id"),
        col(Order.merchant_id) == sa.bindparam("merchant"),
    )
)


def _shipment_and_order(shipment_id: int) -> tuple[Shipment, Order]:
    """One of this merchant's shipments and its order, in one read. Another merchant's
    shipment answers exactly as a missing one: ids reveal nothing."""
    found = (
        get_session()
        .exec(_SHIPMENT_AND_ORDER, params={"shipment_id": shipment_id, "merchant": _merchant().id})
        .first()
        if 0 < shipment_id <= MAX_ID
        else None
    )
    if found is None:
        raise not_found("shipment")
    return found[0], found[1]


def _answer(order: Order, status: int) -> Any:
    return jsonify(order_json(order, merchant_view=True)), status


def _commit_answering(order: Order, status: int) -> Any:
    """Commit, answering with the order as committed. It is rendered inside the transaction,
    from the rows the write just read: after the commit it would take a transaction (on
    SQLite the write lock) of its own to read them again."""
    body = order_json(order, merchant_view=True)
    _commit()
    return jsonify(body), status


def _commit() -> None:
    db = get_session()
    try:
        db.commit()
    except sa.exc.IntegrityError:
        db.rollback()
        raise ApiError(
            409, "conflict", "a concurrent request changed this resource; retry"
        ) from None


_ORDER_RESPONSES: dict[int, Any] = {200: MerchantOrderPublic, 201: MerchantOrderPublic}


@bp.post("/orders")
@operation(
    "Create an order (idempotent by external_id)",
    body=OrderCreate,
    responses={**_ORDER_RESPONSES, 409: None},
    security="merchant",
    tag="merchant",
)
def post_order() -> Any:
    data = parse_body(OrderCreate)
    try:
        order, created = create_order(
            session=get_session(),
            merchant=_merchant(),
            data=data,
            secret_key=current_app.config["WAYBILL_SETTINGS"].secret_key,
        )
    except Conflict:
        raise ApiError(
            409,
            "conflict",
            "an order with this external_id exists with a different body",
            {"external_id": "already used for another order"},
        ) from None
    return _commit_answering(order, 201 if created else 200)


@bp.get("/orders/<int:order_id>")
@operation("One order", responses={200: MerchantOrderPublic}, security="merchant", tag="merchant")
def get_order(order_id: int) -> Any:
    return _answer(_order(order_id), 200)


def _decode_cursor(raw: str) -> int:
    try:
        value = int(base64.urlsafe_b64decode(raw.encode() + b"==").decode())
    except (ValueError, UnicodeDecodeError):
        raise ApiError(422, "invalid", "bad cursor", {"cursor": "not a cursor we gave"}) from None
    if not 1 <= value <= MAX_ID:
        raise ApiError(422, "invalid", "bad cursor", {"cursor": "not a cursor we gave"})
    return value


def _encode_cursor(order_id: int) -> str:
    return base64.urlsafe_b64encode(str(order_id).encode()).decode().rstrip("=")


LIST_PARAMETERS = frozenset({"external_id", "status", "cursor", "limit"})


@bp.get("/orders")
@operation(
    "This merchant's orders, newest first",
    responses={200: MerchantOrderList, 422: None},
    security="merchant",
    tag="merchant",
    query={
        "external_id": {"type": "string", "maxLength": 200},
        "status": {"type": "string", "enum": [s.value for s in ALL_STATUSES]},
        "cursor": {"type": "string", "maxLength": 40},
        "limit": {"type": "integer", "minimum": 1, "maximum": 100, "default": 20},
    },
)
def list_orders() -> Any:
    args = request.args
    fields: dict[str, str] = {
        name or "(no name)": "not a query parameter of this request"
        for name in args
        if name not in LIST_PARAMETERS
    }
    try:
        limit = int(args.get("limit", "20"))
        if not 1 <= limit <= 100:
            raise ValueError
    except ValueError:
        fields["limit"] = "a whole number from 1 to 100"
        limit = 20
    status = args.get("status")
    if status is not None and status not in {s.value for s in ALL_STATUSES}:
        fields["status"] = "not a known status"
    if len(args.get("external_id", "")) > 200:
        fields["external_id"] = "at most 200 characters"
    if len(args.get("cursor", "")) > 40:
        fields["cursor"] = "not a cursor we gave"
    if fields:
        raise ApiError(422, "invalid", "some query parameters are not valid", fields)
    query = select(Order).where(Order.merchant_id == _merchant().id)
    if "external_id" in args:
        query = query.where(Order.external_id == without_nul(args["external_id"]))
    if status:
        query = query.where(Order.status == status)
    if args.get("cursor"):
        query = query.where(Order.id < _decode_cursor(args["cursor"]))  # type: ignore[operator]
    db = get_session()
    page = list(db.exec(query.order_by(Order.id.desc()).limit(limit + 1)))  # type: ignore[union-attr]
    more = len(page) > limit
    page = page[:limit]
    rendered = rendered_orders(page, merchant_view=True)
    return jsonify(
        orders=[o.model_dump(mode="json") for o in rendered],
        next_cursor=_encode_cursor(page[-1].id) if more else None,  # type: ignore[arg-type]
    )


@bp.post("/orders/<int:order_id>/events")
@operation(
    "Record a change of the order itself",
    body=OrderEventCreate,
    responses=_ORDER_RESPONSES,
    security="merchant",
    tag="merchant",
)
def post_order_event(order_id: int) -> Any:
    order = _order(order_id)
    data = parse_body(OrderEventCreate)
    recorded = record_order_event(session=get_session(), order=order, data=data)
    return _commit_answering(order, 201 if recorded else 200)


@bp.post("/orders/<int:order_id>/shipments")
@operation(
    "Add a shipment to the order (idempotent by carrier, any case, and tracking number)",
    body=ShipmentCreate,
    responses={201: ShipmentCreated, 200: ShipmentCreated, 409: None},
    security="merchant",
    tag="merchant",
)
def post_shipment(order_id: int) -> Any:
    order = _order(order_id)
    data = parse_body(ShipmentCreate)
    try:
        shipment, created = upsert_shipment(session=get_session(), order=order, data=data)
    except NumberTaken as exc:
        raise _number_taken(exc, "tracking_number") from None
    if created:  # what the merchant's platforms said of this parcel before it was known
        _release_held(shipment)
    return _commit_answering_shipment(order, shipment, 201 if created else 200)


def _release_held(shipment: Shipment) -> None:
    from waybill.integrations.inbox import release_for_shipment

    settings = current_app.config["WAYBILL_SETTINGS"]
    release_for_shipment(get_session(), _merchant(), shipment, server_key=settings.secret_key)


@bp.patch("/shipments/<int:shipment_id>")
@operation(
    "Change a shipment's carrier, service or estimate (the fields sent)",
    body=ShipmentUpdate,
    responses={200: ShipmentCreated, 409: None},
    security="merchant",
    tag="merchant",
)
def patch_shipment(shipment_id: int) -> Any:
    shipment, order = _shipment_and_order(shipment_id)
    data = parse_body(ShipmentUpdate)
    changes = data.model_dump(exclude_unset=True)
    try:
        changed = update_shipment(session=get_session(), shipment=shipment, changes=changes)
    except NumberTaken as exc:
        raise _number_taken(exc, "carrier") from None
    if changed and "carrier" in changes:  # now the parcel a platform spoke of, perhaps
        _release_held(shipment)
    return _commit_answering_shipment(order, shipment, 200)


def _number_taken(exc: NumberTaken, field: str) -> ApiError:
    other = exc.shipment
    return ApiError(
        409,
        "conflict",
        f"shipment {other.id} of order {other.order_id} has this carrier and tracking number",
        {field: f"already shipment {other.id} of order {other.order_id}"},
    )


def _commit_answering_shipment(order: Order, shipment: Shipment, status: int) -> Any:
    """Commit, answering with the shipment as committed (rendered first, as
    :func:`_commit_answering` does the order)."""
    body = next(s for s in rendered_orders([order])[0].shipments if s.id == shipment.id)
    answer = ShipmentCreated(**body.model_dump(), order_id=order.id).model_dump(mode="json")
    _commit()
    return jsonify(answer), status


@bp.post("/shipments/<int:shipment_id>/events")
@operation(
    "Record a carrier event of a shipment",
    body=ShipmentEventCreate,
    responses=_ORDER_RESPONSES,
    security="merchant",
    tag="merchant",
)
def post_shipment_event(shipment_id: int) -> Any:
    db = get_session()
    shipment, order = _shipment_and_order(shipment_id)
    data = parse_body(ShipmentEventCreate)
    recorded = record_shipment_event(session=db, shipment=shipment, order=order, data=data)
    return _commit_answering(order, 201 if recorded else 200)


#: Events per transaction: a writer holds the database (on SQLite, every writer) and, under a
#: gevent worker, the event loop this long; between chunks the others get their turn.
BATCH_CHUNK = 50
BATCH_YIELD_S = 0.001  # a timer: one whole turn of the event loop between chunks
_OUTCOME_STATUS = {"recorded": 201, "duplicate": 200, "not_found": 404}


@bp.post("/events")
@operation(
    "Record up to 1,000 events of orders and shipments; each answered on its own",
    body=EventBatchBody,
    responses={200: EventBatchResults},
    security="merchant",
    tag="merchant",
)
def post_events() -> Any:
    body = parse_body(EventBatchBody)
    if len(body.events) > MAX_BATCH:
        raise ApiError(413, "payload_too_large", f"at most {MAX_BATCH:,} events in one batch")
    results: list[EventBatchResult | None] = [None] * len(body.events)
    valid: list[tuple[int, EventBatchItem]] = []
    for index, raw in enumerate(body.events):
        try:
            valid.append((index, EventBatchItem.model_validate(raw)))
        except ValidationError as exc:
            results[index] = EventBatchResult(
                index=index,
                status=422,
                error=ItemError(
                    code="invalid",
                    message="some values are not valid",
                    fields=validation_fields(exc),
                ),
            )
    db = get_session()
    for start in range(0, len(valid), BATCH_CHUNK):
        chunk = valid[start : start + BATCH_CHUNK]
        outcomes = record_events(session=db, merchant=_merchant(), items=[i for _, i in chunk])
        _commit()
        # Under gevent: let the sockets, the other requests and the loop's timers run between
        # chunks. sleep(0) only queued this greenlet behind the ready ones, and it ran on
        # before any timer fired (bench/ingest.py saw whole batches block the loop 2-3 s).
        time.sleep(BATCH_YIELD_S)
        for (index, _), done in zip(chunk, outcomes, strict=True):
            status = _OUTCOME_STATUS[done.outcome]
            results[index] = EventBatchResult(
                index=index,
                status=status,
                order_id=done.order.id if done.order else None,
                shipment_id=done.shipment.id if done.shipment else None,
                order_status=done.order.status if done.order and status < 300 else None,
                error=_item_error(done.outcome),
            )
    answer = EventBatchResults(results=[r for r in results if r is not None])
    return jsonify(answer.model_dump(mode="json"))


def _item_error(outcome: str) -> ItemError | None:
    if outcome == "not_found":
        return ItemError(code="not_found", message="no such order or shipment")
    return None
