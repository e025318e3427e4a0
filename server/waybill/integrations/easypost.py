"""EasyPost: ``tracker.created`` / ``tracker.updated`` Events, whose ``result`` is the Tracker
with its whole history (``tracking_details``, oldest first).

https://docs.easypost.com/docs/events, https://docs.easypost.com/docs/trackers.
"""

from __future__ import annotations

import hashlib
import hmac
import unicodedata
from collections.abc import Mapping
from typing import Any

from waybill.integrations import mapping as m
from waybill.integrations.base import Checkpoint, TrackingUpdate, Update

PLATFORM = "easypost"
SIGNATURE_HEADER = "X-Hmac-Signature"
SIGNATURE_PREFIX = "hmac-sha256-hex="
TRACKER_EVENTS = frozenset({"tracker.created", "tracker.updated"})


def verify(secret: str, body: bytes, headers: Mapping[str, str], query: Mapping[str, str]) -> bool:
    """``X-Hmac-Signature: hmac-sha256-hex=<hex>``, keyed with the NFKD form of the secret as
    EasyPost's own libraries do (a secret with accents signs the same either way it is typed)."""
    try:
        header = headers.get(SIGNATURE_HEADER)
        if not secret or not header or not header.lower().startswith(SIGNATURE_PREFIX):
            return False
        key = unicodedata.normalize("NFKD", secret).encode("utf-8")
        expected = hmac.new(key, body, hashlib.sha256).hexdigest()
        return m.digest_matches(expected, header[len(SIGNATURE_PREFIX) :].lower())
    except (AttributeError, TypeError, ValueError):
        return False


def parse(body: bytes, headers: Mapping[str, str]) -> list[Update]:
    """A tracker Event as its tracker's update; any other Event is none of ours."""
    event = m.load_json(body)
    description = m.need_str(event, "description", "event")
    if description not in TRACKER_EVENTS:
        return []
    return [parse_tracker(m.need_dict(event, "result", "event"))]


def parse_tracker(tracker: dict[str, Any]) -> TrackingUpdate:
    """One EasyPost Tracker object (as ``GET /trackers/{id}`` returns it too)."""
    what = "tracker"
    number = m.tracking_number(tracker.get("tracking_code"), f"{what}.tracking_code")
    carrier = m.need_str(tracker, "carrier", what)
    details = m.get_list(tracker, "tracking_details", what)
    checkpoints = [
        _checkpoint(m.as_dict(raw, f"{what}.tracking_details[{i}]"), number, i)
        for i, raw in enumerate(details)
    ]
    carrier_detail = m.get_dict(tracker, "carrier_detail", what) or {}
    return TrackingUpdate(
        carrier=carrier,
        tracking_number=number,
        checkpoints=m.timeline(checkpoints),
        estimated_delivery=m.estimate(tracker.get("est_delivery_date"), "est_delivery_date"),
        service=m.clip(m.get_str(carrier_detail, "service", "carrier_detail"), 100),
    )


def _checkpoint(detail: dict[str, Any], number: str, index: int) -> Checkpoint:
    what = f"tracker.tracking_details[{index}]"
    status = m.need_str(detail, "status", what)
    status_detail = m.get_str(detail, "status_detail", what)
    mapped, _ = m.easypost_status(status, status_detail)
    source = f"{status}/{status_detail}" if status_detail else status
    occurred_at = m.instant(detail.get("datetime"), f"{what}.datetime")
    where = m.get_dict(detail, "tracking_location", what) or {}
    location = m.place(
        m.get_str(where, "city", f"{what}.tracking_location"),
        m.get_str(where, "state", f"{what}.tracking_location"),
        m.get_str(where, "country", f"{what}.tracking_location"),
    )
    text = m.get_str(detail, "message", what) or m.get_str(detail, "description", what)
    return Checkpoint(
        status=mapped,
        occurred_at=occurred_at,
        source_status=source[: m.SOURCE_STATUS_MAX],
        location=location,
        description=m.clip(text, m.DESCRIPTION_MAX),
        event_id=m.derived_event_id(PLATFORM, number, occurred_at, source, location),
    )
