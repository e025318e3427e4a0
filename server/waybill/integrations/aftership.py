"""AfterShip Tracking: the webhook (``event`` ``tracking_update``, or ``edd_revise`` when only
the estimate moved) whose ``msg`` is the tracking, with every checkpoint AfterShip has.

https://www.aftership.com/docs/tracking/webhook/webhook-specifications,
.../webhook/webhook-signature, .../model/tracking, .../model/checkpoint.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

from waybill.integrations import mapping as m
from waybill.integrations.base import Checkpoint, TrackingUpdate, Update

PLATFORM = "aftership"
SIGNATURE_HEADER = "aftership-hmac-sha256"
#: The events whose ``msg`` is a tracking; the others (notifications, pending-time alerts
#: without a tracking) are none of ours.
TRACKING_EVENTS = frozenset({"tracking_update", "edd_revise"})


def verify(secret: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """``aftership-hmac-sha256: <base64 HMAC-SHA256(secret, body)>``."""
    return m.base64_hmac_matches(secret, body, headers.get(SIGNATURE_HEADER))


def parse(body: bytes, headers: Mapping[str, str]) -> list[Update]:
    """A tracking webhook as its tracking's update."""
    payload = m.load_json(body)
    if m.need_str(payload, "event", "webhook") not in TRACKING_EVENTS:
        return []
    return [parse_tracking(m.need_dict(payload, "msg", "webhook"))]


def parse_tracking(obj: dict[str, Any]) -> TrackingUpdate:
    """One AfterShip tracking object: a webhook's ``msg``, or ``data.tracking`` of
    ``GET /trackings/{slug}/{tracking_number}``; raises ``PayloadError`` for another shape."""
    what = "tracking"
    tracking = m.as_dict(obj, what)
    number = m.tracking_number(tracking.get("tracking_number"), f"{what}.tracking_number")
    carrier = m.need_str(tracking, "slug", what)
    checkpoints = [
        _checkpoint(m.as_dict(raw, f"{what}.checkpoints[{i}]"), number, i)
        for i, raw in enumerate(m.get_list(tracking, "checkpoints", what))
    ]
    return TrackingUpdate(
        carrier=carrier,
        tracking_number=number,
        checkpoints=m.timeline(checkpoints),
        estimated_delivery=_estimate(tracking),
        service=m.clip(m.get_str(tracking, "shipment_type", what), 100),
    )


def _estimate(tracking: dict[str, Any]) -> datetime | None:
    """The carrier's estimate (``expected_delivery``), else the newest one AfterShip keeps
    (``latest_estimated_delivery``, 2024 versions on), else AfterShip's own prediction."""
    if tracking.get("expected_delivery"):
        return m.estimate(tracking["expected_delivery"], "tracking.expected_delivery")
    latest = m.get_dict(tracking, "latest_estimated_delivery", "tracking") or {}
    if latest.get("datetime"):
        return m.estimate(latest["datetime"], "tracking.latest_estimated_delivery.datetime")
    predicted = m.get_dict(tracking, "aftership_estimated_delivery_date", "tracking") or {}
    return m.estimate(
        predicted.get("estimated_delivery_date"),
        "tracking.aftership_estimated_delivery_date.estimated_delivery_date",
    )


def _checkpoint(raw: dict[str, Any], number: str, index: int) -> Checkpoint:
    what = f"tracking.checkpoints[{index}]"
    tag = m.need_str(raw, "tag", what)
    subtag = m.get_str(raw, "subtag", what)
    mapped, _ = m.aftership_status(tag, subtag)
    source = f"{tag}/{subtag}" if subtag else tag
    # A carrier's local time without an offset is taken as UTC: there is nothing better.
    occurred_at = m.instant(raw.get("checkpoint_time"), f"{what}.checkpoint_time")
    location = _location(raw, what)
    return Checkpoint(
        status=mapped,
        occurred_at=occurred_at,
        source_status=source[: m.SOURCE_STATUS_MAX],
        location=location,
        description=m.clip(m.get_str(raw, "message", what), m.DESCRIPTION_MAX),
        event_id=m.derived_event_id(PLATFORM, number, occurred_at, source, location),
    )


def _location(raw: dict[str, Any], what: str) -> str | None:
    """City, state and country; the country as its ISO code (``country_region`` from 2024,
    ``country_iso3`` before), as the name field often repeats the city. Without any of them,
    the carrier's own ``location`` text."""
    country = (
        m.get_str(raw, "country_region", what)
        or m.get_str(raw, "country_iso3", what)
        or m.get_str(raw, "country_region_name", what)
        or m.get_str(raw, "country_name", what)
    )
    return m.place(m.get_str(raw, "city", what), m.get_str(raw, "state", what), country) or (
        m.get_str(raw, "location", what)
    )
