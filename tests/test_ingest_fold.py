"""Recording an event folds one step when it is the newest of its timeline, and the whole
timeline again when it arrives late: either way the statuses are what the full fold says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlmodel import Session, select

from tests.utils.factories import MerchantActions
from waybill.ingest import record_shipment_event
from waybill.models import Order, Shipment, ShipmentEventCreate, TrackingEvent
from waybill.tracking.statuses import ALL_STATUSES, Status, TimelineEntry, fold, order_status

START = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
SCAN = st.tuples(
    st.integers(min_value=0, max_value=1),  # which of the two parcels
    st.sampled_from([s.value for s in ALL_STATUSES]),
    st.integers(min_value=0, max_value=20),  # minutes after the start: ties and late arrivals
)


def full_fold(session: Session, shipment: Shipment) -> Status:
    events = session.exec(select(TrackingEvent).where(TrackingEvent.shipment_id == shipment.id))
    entries = [TimelineEntry(e.occurred_at, Status(e.status), e.dedupe_key) for e in events]
    return fold(entries, start=Status.SHIPPED) or Status.SHIPPED


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(scans=st.lists(SCAN, min_size=1, max_size=12))
def test_statuses_after_any_arrival_order_are_the_full_folds(
    app: Flask, merchant: MerchantActions, scans: list[tuple[int, str, int]]
) -> None:
    order = merchant.create_order()
    ids = [merchant.add_shipment(order["id"])["id"] for _ in range(2)]
    with Session(app.extensions["waybill.engine"], expire_on_commit=False) as session:
        for parcel, status, minute in scans:
            shipment = session.get(Shipment, ids[parcel])
            assert shipment is not None
            data = ShipmentEventCreate(status=status, occurred_at=START + timedelta(minutes=minute))
            record_shipment_event(session=session, shipment=shipment, data=data)
            session.commit()
        shipments = [session.get(Shipment, i) for i in ids]
        row = session.get(Order, order["id"])
        assert row is not None
        expected = [full_fold(session, s) for s in shipments if s is not None]
        assert [Status(s.status) for s in shipments if s is not None] == expected
        assert Status(row.status) == order_status(Status.CONFIRMED, expected)


def test_a_late_scan_refolds_its_timeline(merchant: MerchantActions) -> None:
    order = merchant.create_order()
    sid = merchant.add_shipment(order["id"])["id"]
    at: Any = lambda minutes: (START + timedelta(minutes=minutes)).isoformat()  # noqa: E731
    assert merchant.scan(sid, "out_for_delivery", at(60)).status_code == 201
    # an older scan that arrives late leaves the newer status in place
    late = merchant.scan(sid, "in_transit", at(10))
    assert late.status_code == 201
    assert late.get_json()["status"] == "out_for_delivery"
    delivered = merchant.scan(sid, "delivered", at(90)).get_json()
    assert delivered["status"] == "delivered"
    # a stray scan after delivery, newest of all, changes nothing
    assert merchant.scan(sid, "in_transit", at(120)).get_json()["status"] == "delivered"
