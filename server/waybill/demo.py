"""Demo data: a shop, a customer and orders at several stages, split shipments included."""

from __future__ import annotations

from datetime import timedelta

from sqlmodel import Session, select

from waybill.auth import login
from waybill.auth.merchant_keys import create_merchant
from waybill.config import Settings
from waybill.ingest import add_shipment, create_order, record_order_event, record_shipment_event
from waybill.models import (
    Merchant,
    OrderCreate,
    OrderEventCreate,
    ShipmentCreate,
    ShipmentEventCreate,
    utcnow,
)

DEMO_EMAIL = "demo@example.com"
DEMO_SHOP = "Demo Outfitters"


def seed(*, session: Session, settings: Settings) -> list[str]:
    """Seed once; later runs only print a fresh sign-in link."""
    lines: list[str] = []
    shop = session.exec(select(Merchant).where(Merchant.name == DEMO_SHOP)).first()
    if shop is None:
        shop, key = create_merchant(session=session, name=DEMO_SHOP)
        lines.append(f"demo merchant {shop.id}, API key (shown once): {key}")
        _orders(session, shop, settings.secret_key)
    customer = login.find_customer(session, DEMO_EMAIL)
    assert customer is not None
    issued = login.issue(session=session, customer=customer, secret=settings.secret_key)
    lines.append(f"demo customer {DEMO_EMAIL}: sign in at")
    lines.append(f"  {settings.base_url}/auth/link/{issued.link_token}")
    return lines


def _orders(session: Session, shop: Merchant, secret_key: str) -> None:
    now = utcnow()
    customer = {
        "email": DEMO_EMAIL,
        "name": "Dana Demo",
        "locale": "en",
        "timezone": "Europe/Berlin",
    }

    def order(ext: str, items: list[dict[str, object]], days_ago: float):  # type: ignore[no-untyped-def]
        data = OrderCreate.model_validate(
            {
                "external_id": ext,
                "customer": customer,
                "items": items,
                "placed_at": (now - timedelta(days=days_ago)).isoformat(),
            }
        )
        return create_order(session=session, merchant=shop, data=data, secret_key=secret_key)[0]

    def ship(o, carrier: str, number: str, eta_days: float | None):  # type: ignore[no-untyped-def]
        eta = (now + timedelta(days=eta_days)).isoformat() if eta_days is not None else None
        return add_shipment(
            session=session,
            order=o,
            data=ShipmentCreate.model_validate(
                {"carrier": carrier, "tracking_number": number, "estimated_delivery": eta}
            ),
        )

    def scan(s, status: str, hours_ago: float, location: str, description: str) -> None:  # type: ignore[no-untyped-def]
        record_shipment_event(
            session=session,
            shipment=s,
            data=ShipmentEventCreate.model_validate(
                {
                    "status": status,
                    "occurred_at": (now - timedelta(hours=hours_ago)).isoformat(),
                    "location": location,
                    "description": description,
                }
            ),
        )

    o = order("1001", [{"name": "Rain jacket", "quantity": 1}], 0.1)
    record_order_event(session=session, order=o, data=OrderEventCreate(status="processing"))

    o = order("1002", [{"name": "Trail shoes", "quantity": 1}], 3)
    s = ship(o, "DHL", "JD014600006281230001", 0)
    scan(s, "in_transit", 40, "Leipzig hub", "Arrived at sorting centre")
    scan(s, "out_for_delivery", 2, "Berlin", "With the courier")

    o = order("1003", [{"name": "Wool socks", "quantity": 3}, {"name": "Beanie", "quantity": 1}], 4)
    a = ship(o, "UPS", "1Z999AA10123456784", 1)
    b = ship(o, "DHL", "JD014600006281230002", 2)
    scan(a, "in_transit", 30, "Cologne", "Departed facility")
    scan(a, "delivered", 3, "Berlin", "Left with neighbour")
    scan(b, "in_transit", 20, "Hamburg", "In transit")

    o = order("1004", [{"name": "Camping stove", "quantity": 1}], 9)
    s = ship(o, "DPD", "01234567890123", None)
    scan(s, "in_transit", 150, "Munich", "Parcel collected")
    scan(s, "delivered", 100, "Berlin", "Delivered to front door")

    o = order("1005", [{"name": "Tent", "quantity": 1}], 6)
    s = ship(o, "GLS", "ZX81234567", 2)
    scan(s, "in_transit", 60, "Frankfurt", "Sorted")
    scan(s, "exception", 10, "Berlin", "Address could not be found; the carrier will try again")
