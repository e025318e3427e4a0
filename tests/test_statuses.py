"""The state machine: late, duplicate and out-of-order events give one answer."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from hypothesis import given
from hypothesis import strategies as st

from waybill import catalogue
from waybill.tracking.statuses import (
    Status,
    TimelineEntry,
    fold,
    order_status,
    ordered,
    package_counts,
)

T0 = datetime(2026, 11, 20, 8, 0, tzinfo=UTC)


def entry(hours: float, status: Status, key: str | None = None) -> TimelineEntry:
    return TimelineEntry(T0 + timedelta(hours=hours), status, key or f"{hours}-{status}")


def test_latest_event_by_occurrence_wins_not_latest_arrival():
    late_scan = entry(1, Status.IN_TRANSIT)
    newer = entry(5, Status.OUT_FOR_DELIVERY)
    assert fold([newer, late_scan]) == Status.OUT_FOR_DELIVERY


def test_stray_scan_after_delivery_does_not_reopen_it():
    events = [entry(1, Status.IN_TRANSIT), entry(2, Status.DELIVERED), entry(3, Status.IN_TRANSIT)]
    assert fold(events) == Status.DELIVERED


def test_terminal_status_left_only_by_a_newer_terminal_one():
    events = [entry(2, Status.DELIVERED), entry(9, Status.RETURNED)]
    assert fold(events) == Status.RETURNED
    # ...and an older one changes nothing.
    assert fold([entry(2, Status.RETURNED), entry(1, Status.DELIVERED)]) == Status.RETURNED


def test_duplicates_count_once():
    a = entry(1, Status.IN_TRANSIT, key="evt-1")
    assert ordered([a, a, a]) == [a]


def test_split_order_shows_least_advanced_active_shipment():
    statuses = [Status.DELIVERED, Status.IN_TRANSIT, Status.OUT_FOR_DELIVERY]
    assert order_status(Status.CONFIRMED, statuses) == Status.IN_TRANSIT
    counts = package_counts(statuses)
    assert (counts.total, counts.delivered) == (3, 1)
    assert catalogue.packages_text(counts) == "1 of 3 packages delivered"
    assert catalogue.packages_text(counts, "de") == "1 von 3 Paketen zugestellt"
    assert catalogue.package_summary(statuses).text("de") == "1 von 3 Paketen zugestellt"
    assert catalogue.packages_text(package_counts([Status.DELIVERED])) is None


def test_split_order_surfaces_a_problem_over_a_plain_step():
    assert order_status(Status.CONFIRMED, [Status.IN_TRANSIT, Status.EXCEPTION]) == Status.EXCEPTION


def test_split_order_delivered_when_every_parcel_is():
    assert order_status(Status.CONFIRMED, [Status.DELIVERED, Status.DELIVERED]) == Status.DELIVERED
    assert order_status(Status.CONFIRMED, [Status.DELIVERED, Status.RETURNED]) == Status.DELIVERED


def test_cancelled_order_stays_cancelled_and_unshipped_order_follows_its_own_events():
    assert order_status(Status.CANCELLED, [Status.IN_TRANSIT]) == Status.CANCELLED
    assert order_status(Status.PROCESSING, []) == Status.PROCESSING


def test_the_catalogue_names_every_status_in_every_language():
    for lang in catalogue.LANGUAGES:
        assert set(catalogue.LABELS[lang]) == set(Status), lang
        assert all(catalogue.label(s, lang).strip() for s in Status)
    assert catalogue.label("shipped", "fr") == catalogue.label("shipped", "en") == "Shipped"


def test_the_domain_core_keeps_no_words():
    """Labels and the package sentence live in the catalogue, not beside the state machine."""
    import waybill.tracking.statuses as core

    assert not hasattr(core, "LABELS") and not hasattr(core, "label")
    assert not hasattr(core.PackageCounts, "text")


events_strategy = st.lists(
    st.builds(
        TimelineEntry,
        occurred_at=st.integers(0, 72).map(lambda h: T0 + timedelta(hours=h)),
        status=st.sampled_from(list(Status)),
        key=st.text(alphabet="abcdef", min_size=1, max_size=3),
    ),
    max_size=12,
).map(lambda es: list({e.key: e for e in es}.values()))  # a sender's id names one event


@given(events=events_strategy, data=st.data())
def test_any_order_of_arrival_gives_the_same_status_and_timeline(events, data):
    arrival = data.draw(st.permutations(events))
    repeated = arrival + data.draw(
        st.lists(st.sampled_from(events), max_size=5) if events else st.just([])
    )
    assert fold(repeated, start=Status.SHIPPED) == fold(events, start=Status.SHIPPED)
    assert ordered(repeated) == ordered(events)


@given(events=events_strategy)
def test_once_ended_a_journey_only_ends_differently(events):
    timeline = ordered(events)
    status = fold(timeline)
    terminal_seen = [
        e for e in timeline if e.status in {Status.DELIVERED, Status.RETURNED, Status.CANCELLED}
    ]
    if terminal_seen:
        assert status == terminal_seen[-1].status
    elif timeline:
        assert status == timeline[-1].status
