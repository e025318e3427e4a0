"""Reading orders: by tracking token, in the customer's language, as the JSON every reader
gets (the merchant, the signed-in customer, a tracking link, a socket frame).

Rows for a whole page of orders are loaded in three queries, not three per order.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence

import sqlalchemy as sa
from sqlmodel import Session, select

from waybill import catalogue
from waybill.auth.tokens import digest, tracking_token
from waybill.catalogue import label, package_summary
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
from waybill.tracking.statuses import Status


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


def _event(e: TrackingEvent, lang: str) -> EventPublic:
    return EventPublic(
        status=e.status,
        status_label=label(e.status, lang),
        occurred_at=e.occurred_at,
        location=e.location,
        description=e.description,
    )


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
    ids = [o.id for o in orders]
    shipments: dict[int, list[Shipment]] = defaultdict(list)
    for s in session.exec(
        select(Shipment).where(Shipment.order_id.in_(ids)).order_by(Shipment.id)  # type: ignore[union-attr]
    ):
        shipments[s.order_id].append(s)
    events: dict[tuple[int, int | None], list[TrackingEvent]] = defaultdict(list)
    for e in session.exec(
        select(TrackingEvent)
        .where(TrackingEvent.order_id.in_(ids))  # type: ignore[attr-defined]
        .order_by(TrackingEvent.occurred_at, TrackingEvent.id)
    ):
        events[(e.order_id, e.shipment_id)].append(e)
    cursors = dict(
        session.exec(
            select(Change.order_id, sa.func.max(Change.id))
            .where(Change.order_id.in_(ids))  # type: ignore[attr-defined]
            .group_by(Change.order_id)
        ).all()
    )
    merchants = {
        m.id: m
        for m in session.exec(
            select(Merchant).where(Merchant.id.in_({o.merchant_id for o in orders}))  # type: ignore[attr-defined]
        )
    }
    customers: dict[int, Customer] = {}
    if merchant_view:
        customers = {
            c.id: c  # type: ignore[misc]
            for c in session.exec(
                select(Customer).where(Customer.id.in_({o.customer_id for o in orders}))  # type: ignore[union-attr]
            )
        }
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
                    estimated_delivery=s.estimated_delivery,
                    events=[_event(e, language) for e in events[(order.id, s.id)]],  # type: ignore[index]
                )
                for s in ships
            ],
            events=[_event(e, language) for e in events[(order.id, None)]],  # type: ignore[index]
            estimated_delivery=order.estimated_delivery,
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


def render_order(session: Session, order: Order, **kwargs: object) -> OrderPublic:
    return render_orders(session, [order], **kwargs)[0]  # type: ignore[arg-type]
