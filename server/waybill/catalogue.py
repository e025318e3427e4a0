"""The status catalogue: what every status is called, in every language, and the package
sentence ("2 of 3 packages delivered").

The one home of these words: the API's ``status_label`` and ``packages.summary``, and through
``GET /api/statuses`` the PWA, all read them here. German text says "du", as the PWA does.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from waybill.tracking.statuses import PackageCounts, Status, package_counts

DEFAULT_LANGUAGE = "en"

LABELS: dict[str, dict[Status, str]] = {
    "en": {
        Status.CONFIRMED: "Order confirmed",
        Status.PROCESSING: "Being prepared",
        Status.SHIPPED: "Shipped",
        Status.IN_TRANSIT: "On the way",
        Status.OUT_FOR_DELIVERY: "Out for delivery",
        Status.DELIVERED: "Delivered",
        Status.ATTEMPTED: "Delivery attempted",
        Status.AVAILABLE_FOR_PICKUP: "Ready for pickup",
        Status.EXCEPTION: "Delayed",
        Status.RETURNED: "Returned to sender",
        Status.CANCELLED: "Cancelled",
    },
    "de": {
        Status.CONFIRMED: "Bestellung bestätigt",
        Status.PROCESSING: "Wird vorbereitet",
        Status.SHIPPED: "Versendet",
        Status.IN_TRANSIT: "Unterwegs",
        Status.OUT_FOR_DELIVERY: "In Zustellung",
        Status.DELIVERED: "Zugestellt",
        Status.ATTEMPTED: "Zustellversuch",
        Status.AVAILABLE_FOR_PICKUP: "Abholbereit",
        Status.EXCEPTION: "Verzögert",
        Status.RETURNED: "Zurück an Absender",
        Status.CANCELLED: "Storniert",
    },
}
#: The package sentence, said only of orders with two packages or more.
_PACKAGES: dict[str, str] = {
    "en": "{delivered} of {total} packages delivered",
    "de": "{delivered} von {total} Paketen zugestellt",
}
LANGUAGES: tuple[str, ...] = tuple(LABELS)
#: Moments a customer can choose to hear about that are no status of their own.
STAGE_LABELS: dict[str, dict[str, str]] = {
    "en": {
        "partially_delivered": "One package delivered, others on the way",
        "estimate_changed": "New delivery estimate",
    },
    "de": {
        "partially_delivered": "Ein Paket zugestellt, weitere unterwegs",
        "estimate_changed": "Neuer voraussichtlicher Liefertermin",
    },
}


def _known(language: str | None) -> str:
    return language if language in LABELS else DEFAULT_LANGUAGE


def first_spoken(tags: Iterable[str]) -> str:
    """The first language of ``tags`` (best first, as in Accept-Language) the catalogue has,
    the way the PWA picks its own; English if none."""
    for tag in tags:
        if tag[:2].lower() in LABELS:
            return tag[:2].lower()
    return DEFAULT_LANGUAGE


def stage_label(stage: str, language: str = DEFAULT_LANGUAGE) -> str:
    """What a notification stage (a status, or a moment such as ``partially_delivered``) is
    called in ``language``."""
    words = STAGE_LABELS[_known(language)]
    return words[stage] if stage in words else label(stage, language)


def label(status: Status | str, language: str = DEFAULT_LANGUAGE) -> str:
    """What ``status`` is called in ``language`` (English where the catalogue has no words)."""
    return LABELS[_known(language)][Status(status)]


def packages_text(counts: PackageCounts, language: str = DEFAULT_LANGUAGE) -> str | None:
    """The package sentence, or None for an order of one package (or none)."""
    if counts.total < 2:
        return None
    return _PACKAGES[_known(language)].format(delivered=counts.delivered, total=counts.total)


@dataclass(frozen=True)
class PackageSummary(PackageCounts):
    """The counts with their sentence, as an order answer shows them."""

    def text(self, language: str = DEFAULT_LANGUAGE) -> str | None:
        return packages_text(self, language)


def package_summary(shipment_statuses: Sequence[Status]) -> PackageSummary:
    counts = package_counts(shipment_statuses)
    return PackageSummary(total=counts.total, delivered=counts.delivered)
