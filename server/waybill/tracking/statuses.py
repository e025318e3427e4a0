"""The unified status set and the state machine over a timeline; no words for people.

What each status is called, in each language, is ``waybill.catalogue``'s.

Events may arrive late, twice or out of order. The state here is therefore never "the last
request wins": it is a pure function of the *set* of events, folded in ``occurred_at`` order,
so any order of arrival gives the same answer.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum


class Status(StrEnum):
    CONFIRMED = "confirmed"
    PROCESSING = "processing"
    SHIPPED = "shipped"
    IN_TRANSIT = "in_transit"
    OUT_FOR_DELIVERY = "out_for_delivery"
    DELIVERED = "delivered"
    ATTEMPTED = "attempted"
    AVAILABLE_FOR_PICKUP = "available_for_pickup"
    EXCEPTION = "exception"
    RETURNED = "returned"
    CANCELLED = "cancelled"


ALL_STATUSES: tuple[Status, ...] = tuple(Status)
MAIN_LINE: tuple[Status, ...] = (
    Status.CONFIRMED,
    Status.PROCESSING,
    Status.SHIPPED,
    Status.IN_TRANSIT,
    Status.OUT_FOR_DELIVERY,
    Status.DELIVERED,
)
TERMINAL: frozenset[Status] = frozenset({Status.DELIVERED, Status.RETURNED, Status.CANCELLED})
#: Statuses that want the customer's attention; they win ties in "least advanced".
ATTENTION: frozenset[Status] = frozenset(
    {Status.EXCEPTION, Status.ATTEMPTED, Status.AVAILABLE_FOR_PICKUP}
)

#: How far along the way to the customer a status is; off-line statuses sit beside the step
#: they interrupt.
PROGRESS: dict[Status, int] = {
    Status.CONFIRMED: 0,
    Status.PROCESSING: 1,
    Status.SHIPPED: 2,
    Status.IN_TRANSIT: 3,
    Status.EXCEPTION: 3,
    Status.OUT_FOR_DELIVERY: 4,
    Status.ATTEMPTED: 4,
    Status.AVAILABLE_FOR_PICKUP: 4,
    Status.DELIVERED: 5,
    Status.RETURNED: 5,
    Status.CANCELLED: 5,
}


def is_terminal(status: Status | str) -> bool:
    return Status(status) in TERMINAL


@dataclass(frozen=True)
class TimelineEntry:
    """One recorded event as the state machine sees it."""

    occurred_at: datetime
    status: Status
    key: str  # the dedupe key: a stable tie-breaker between events at the same instant


def sort_key(entry: TimelineEntry) -> tuple[datetime, int, str]:
    return (entry.occurred_at, PROGRESS[entry.status], entry.key)


def ordered(entries: Iterable[TimelineEntry]) -> list[TimelineEntry]:
    """The timeline, oldest first, with one entry per dedupe key."""
    unique = {e.key: e for e in sorted(entries, key=lambda e: e.key)}
    return sorted(unique.values(), key=sort_key)


def fold(entries: Iterable[TimelineEntry], start: Status | None = None) -> Status | None:
    """The current status the timeline says.

    A terminal status is only left by a newer event that itself says the journey ended
    another way (``delivered`` → ``returned``): a stray scan after delivery changes nothing.
    """
    status = start
    for entry in ordered(entries):
        status = step(status, entry.status)
    return status


def step(status: Status | None, newer: Status) -> Status:
    """The status after one event newer than every other of its timeline: ``fold`` of a
    timeline is ``step`` applied to each entry in order, so an event that comes last (the
    common case) needs the current status, not the timeline read back."""
    if status is not None and status in TERMINAL and newer not in TERMINAL:
        return status
    return newer


@dataclass(frozen=True)
class PackageCounts:
    """How many parcels an order has and how many of them have arrived."""

    total: int
    delivered: int


def order_status(base: Status, shipment_statuses: Sequence[Status]) -> Status:
    """An order's status from its own events (``base``) and its shipments'.

    A cancelled order is cancelled. Without shipments the order's own events decide. With
    shipments, the least advanced active (non-terminal) shipment decides, attention statuses
    winning ties; when every shipment has ended, delivered wins over returned.
    """
    if base == Status.CANCELLED or not shipment_statuses:
        return base
    active = [s for s in shipment_statuses if s not in TERMINAL]
    if active:
        derived = min(active, key=lambda s: (PROGRESS[s], s not in ATTENTION, s.value))
    else:
        counts = Counter(shipment_statuses)
        derived = next(
            s for s in (Status.DELIVERED, Status.RETURNED, Status.CANCELLED) if counts[s]
        )
    # The merchant may have said more than the carriers have (an order marked delivered).
    if base in TERMINAL and PROGRESS[base] > PROGRESS[derived]:
        return base
    return derived


def package_counts(shipment_statuses: Sequence[Status]) -> PackageCounts:
    return PackageCounts(
        total=len(shipment_statuses),
        delivered=sum(1 for s in shipment_statuses if s == Status.DELIVERED),
    )
