"""Rules about events and estimates that hold wherever an event comes from (the API, a
platform's webhook, a carrier poll): plain functions, no database and no Flask."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
from datetime import datetime


def dedupe_key(
    *,
    shipment_id: int | None,
    status: str,
    occurred_at: datetime,
    event_id: str | None,
    location: str | None,
    description: str | None,
) -> str:
    """What makes two reports one event: the sender's own id when it gives one, else the
    content (status, time, place, text), within one shipment (or the order itself)."""
    scope = f"s{shipment_id}" if shipment_id is not None else "o"
    if event_id:
        return f"{scope}:id:{hashlib.sha256(event_id.encode()).hexdigest()[:40]}"
    content = json.dumps([status, occurred_at.isoformat(), location, description])
    return f"{scope}:h:{hashlib.sha256(content.encode()).hexdigest()[:40]}"


def order_estimate(
    shipment_estimates: Iterable[datetime | None], current: datetime | None
) -> datetime | None:
    """The order arrives when its last parcel does: the latest of its shipments' estimates;
    without any, the order keeps the estimate it had."""
    known = [e for e in shipment_estimates if e is not None]
    return max(known) if known else current
