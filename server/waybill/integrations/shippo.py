"""Shippo: the ``track_updated`` webhook, whose ``data`` is the Track object: its history
(``tracking_history``) and its latest status (``tracking_status``, usually the history's last
entry again).

https://docs.goshippo.com/docs/tracking/webhooks, .../tracking/tracking,
.../tracking/webhooksecurity.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Mapping
from typing import Any

from waybill.integrations import mapping as m
from waybill.integrations.base import Checkpoint, TrackingUpdate, Update

PLATFORM = "shippo"
SIGNATURE_HEADER = "Shippo-Auth-Signature"
TOKEN_PARAMETER = "token"
#: How far a signature's timestamp may be from now, either way, before it counts as a replay.
REPLAY_WINDOW_SECONDS = 5 * 60


def verify(
    secret: str,
    body: bytes,
    headers: Mapping[str, str],
    query: Mapping[str, str],
    *,
    now: float | None = None,
) -> bool:
    """``Shippo-Auth-Signature: t=<ts>,v1=<hex HMAC of "<ts>.<body>">`` within the replay
    window; without that header (HMAC is opt-in at Shippo), the ``?token=`` the webhook URL
    was registered with. A request that sends the header is judged by it alone."""
    try:
        if not secret:
            return False
        header = headers.get(SIGNATURE_HEADER)
        if header is None:
            return m.digest_matches(_ascii_or_empty(secret), query.get(TOKEN_PARAMETER))
        return _signed(secret, body, header, time.time() if now is None else now)
    except (AttributeError, TypeError, ValueError):
        return False


def _signed(secret: str, body: bytes, header: str, now: float) -> bool:
    fields = [part.strip().partition("=") for part in header.split(",")]
    stamps = [value for name, _, value in fields if name == "t"]
    signatures = [value.lower() for name, _, value in fields if name == "v1" and value]
    if len(stamps) != 1 or not stamps[0].isdigit() or not signatures:
        return False
    if abs(now - int(stamps[0])) > REPLAY_WINDOW_SECONDS:
        return False
    signed = stamps[0].encode("ascii") + b"." + body
    expected = hmac.new(secret.encode("utf-8"), signed, hashlib.sha256).hexdigest()
    # Every candidate is compared, so the time taken says nothing about which one matched.
    matches = [m.digest_matches(expected, candidate) for candidate in signatures]
    return any(matches)


def _ascii_or_empty(secret: str) -> str:
    """A token travels in a URL: one that is not ASCII can never have been sent as is."""
    return secret if secret.isascii() else ""


def parse(body: bytes, headers: Mapping[str, str]) -> list[Update]:
    """A ``track_updated`` webhook as its track's update; other events are none of ours."""
    payload = m.load_json(body)
    if m.need_str(payload, "event", "webhook") != "track_updated":
        return []
    return [parse_track(m.need_dict(payload, "data", "webhook"))]


def parse_track(track: dict[str, Any]) -> TrackingUpdate:
    """One Shippo Track object (as ``GET /tracks/{carrier}/{number}`` returns it too)."""
    what = "data"
    number = m.tracking_number(track.get("tracking_number"), f"{what}.tracking_number")
    carrier = m.need_str(track, "carrier", what)
    history = [
        _checkpoint(m.as_dict(raw, f"{what}.tracking_history[{i}]"), number, f"[{i}]")
        for i, raw in enumerate(m.get_list(track, "tracking_history", what))
    ]
    latest_raw = m.get_dict(track, "tracking_status", what)
    if latest_raw is not None and latest_raw.get("status") is not None:
        known_ids = {c.event_id for c in history}
        if m.get_str(latest_raw, "object_id", f"{what}.tracking_status") not in known_ids:
            latest = _checkpoint(latest_raw, number, ".tracking_status")
            if not any(_same_scan(latest, seen) for seen in history):
                history.append(latest)
    service = m.get_dict(track, "servicelevel", what) or {}
    return TrackingUpdate(
        carrier=carrier,
        tracking_number=number,
        checkpoints=m.timeline(history),
        estimated_delivery=m.estimate(track.get("eta"), f"{what}.eta"),
        service=m.clip(m.get_str(service, "name", f"{what}.servicelevel"), 100),
    )


def _same_scan(a: Checkpoint, b: Checkpoint) -> bool:
    """``tracking_status`` repeats the history's last entry, at times under another id."""
    return a.occurred_at == b.occurred_at and a.source_status == b.source_status


def _checkpoint(entry: dict[str, Any], number: str, where: str) -> Checkpoint:
    what = f"data.tracking_history{where}" if where.startswith("[") else f"data{where}"
    status = m.need_str(entry, "status", what)
    substatus = m.get_dict(entry, "substatus", what) or {}
    code = m.get_str(substatus, "code", f"{what}.substatus")
    mapped, _ = m.shippo_status(status, code)
    source = f"{status}/{code}" if code else status
    if m.get_bool(substatus, "action_required"):
        # Kept in the platform's words: the customer has something to do.
        source += " (action required)"
    occurred_at = m.instant(entry.get("status_date"), f"{what}.status_date")
    place = m.get_dict(entry, "location", what) or {}
    location = m.place(
        m.get_str(place, "city", f"{what}.location"),
        m.get_str(place, "state", f"{what}.location"),
        m.get_str(place, "country", f"{what}.location"),
    )
    return Checkpoint(
        status=mapped,
        occurred_at=occurred_at,
        source_status=source[: m.SOURCE_STATUS_MAX],
        location=location,
        description=m.clip(m.get_str(entry, "status_details", what), m.DESCRIPTION_MAX),
        event_id=m.get_str(entry, "object_id", what)
        or m.derived_event_id(PLATFORM, number, occurred_at, source, location),
    )
