"""The event rules every source shares: what counts as the same event, when the order arrives."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from waybill.tracking.events import dedupe_key, order_estimate

AT = datetime(2026, 12, 1, 9, 30, tzinfo=UTC)


def key(**overrides: object) -> str:
    fields: dict[str, object] = dict(
        shipment_id=7,
        status="in_transit",
        occurred_at=AT,
        event_id=None,
        location="Leipzig",
        description="Arrived at hub",
    )
    fields.update(overrides)
    return dedupe_key(**fields)  # type: ignore[arg-type]


def test_the_same_report_twice_is_one_event() -> None:
    assert key() == key()


def test_a_sender_id_wins_over_the_content() -> None:
    assert key(event_id="ev-1", location="Halle") == key(event_id="ev-1")
    assert key(event_id="ev-1") != key(event_id="ev-2")


def test_content_without_an_id_tells_events_apart() -> None:
    assert key() != key(occurred_at=AT + timedelta(minutes=1))
    assert key() != key(status="out_for_delivery")
    assert key() != key(location="Halle")


def test_an_event_belongs_to_its_shipment_or_the_order() -> None:
    assert key(shipment_id=7) != key(shipment_id=8) != key(shipment_id=None)
    assert key(shipment_id=None).startswith("o:")


def test_the_order_arrives_with_its_last_parcel() -> None:
    monday, wednesday = AT, AT + timedelta(days=2)
    assert order_estimate([monday, None, wednesday], None) == wednesday
    assert order_estimate([None], monday) == monday  # no estimate given: the old one stays
    assert order_estimate([], None) is None
