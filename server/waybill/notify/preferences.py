"""Who hears what, and when: the customer's notification preferences and ``should_notify``.

Plain Python with no I/O, so the rules are tested without a server or a database.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

from waybill.tracking.statuses import ALL_STATUSES, Status

CHANNELS: tuple[str, ...] = ("push", "email")
#: One parcel of a split order delivered while another is still on its way: a moment to tell,
#: though the order's own status (its least advanced parcel) stays as it was.
PARTIALLY_DELIVERED = "partially_delivered"
#: What a customer can choose to hear about, in the order screens list them: every status, a
#: partial delivery just before the delivery, and a revised estimate last.
#: The same status, but the "arrives by" date moved (a day or more): off until chosen.
ESTIMATE_CHANGED = "estimate_changed"
STAGES: tuple[str, ...] = (
    *(
        stage
        for s in ALL_STATUSES
        for stage in ((PARTIALLY_DELIVERED, s.value) if s == Status.DELIVERED else (s.value,))
    ),
    ESTIMATE_CHANGED,
)
LANGUAGES: tuple[str, ...] = ("en", "de")
#: Statuses on until a customer saves preferences (and for anonymous "notify me").
DEFAULT_ON: frozenset[str] = frozenset(
    {
        Status.SHIPPED,
        Status.OUT_FOR_DELIVERY,
        PARTIALLY_DELIVERED,
        Status.DELIVERED,
        Status.ATTEMPTED,
        Status.AVAILABLE_FOR_PICKUP,
        Status.EXCEPTION,
        Status.RETURNED,
        Status.CANCELLED,
    }
)
_HHMM = re.compile(r"^([01]\d|2[0-3]):([0-5]\d)$")
_ZONES: set[str] = set()


class InvalidPreferences(ValueError):
    """Some values cannot be used; ``fields`` says which, keyed like the JSON."""

    def __init__(self, fields: dict[str, str]) -> None:
        super().__init__("invalid preferences")
        self.fields = fields


@dataclass(frozen=True)
class QuietHours:
    start: time
    end: time

    def to_dict(self) -> dict[str, str]:
        return {"start": self.start.strftime("%H:%M"), "end": self.end.strftime("%H:%M")}


@dataclass(frozen=True)
class Preferences:
    channels: dict[str, bool] = field(default_factory=lambda: dict.fromkeys(CHANNELS, True))
    statuses: dict[str, bool] = field(
        default_factory=lambda: {stage: stage in DEFAULT_ON for stage in STAGES}
    )
    quiet_hours: QuietHours | None = None
    timezone: str = "UTC"
    language: str = "en"

    def to_dict(self) -> dict[str, Any]:
        return {
            "channels": dict(self.channels),
            "statuses": dict(self.statuses),
            "quiet_hours": self.quiet_hours.to_dict() if self.quiet_hours else None,
            "timezone": self.timezone,
            "language": self.language,
        }


@dataclass(frozen=True)
class ChangeInfo:
    """What ``should_notify`` needs to know about one committed change of an order."""

    order_id: int
    status: str
    status_before: str | None
    muted: bool = False


@dataclass(frozen=True)
class Decision:
    """The channels to use, and the moment to send (``hold_until`` None means now)."""

    channels: frozenset[str]
    hold_until: datetime | None = None

    @property
    def silent(self) -> bool:
        return not self.channels


SILENT = Decision(frozenset())


def supported_language(value: str | None) -> str:
    lang = (value or "en")[:2].lower()
    return lang if lang in LANGUAGES else "en"


@functools.lru_cache(maxsize=256)
def defaults(*, language: str | None = None, timezone: str | None = None) -> Preferences:
    """What a customer hears before saving preferences (shared: treat it as read-only)."""
    zone = timezone if timezone and is_zone(timezone) else "UTC"
    return Preferences(timezone=zone, language=supported_language(language))


def anonymous() -> Preferences:
    """A tracking-link subscriber: push only, default statuses, no quiet hours."""
    return Preferences(channels={"push": True, "email": False})


def is_zone(name: str) -> bool:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return name in _ZONES


def zone(name: str) -> ZoneInfo:
    """The time zone ``name`` names; UTC for one that is none (a stored value may predate the
    check, and a message is better in UTC than not at all)."""
    return ZoneInfo(name if is_zone(name) else "UTC")


def parse(data: dict[str, Any], *, base: Preferences | None = None) -> Preferences:
    """Validate a preferences object from JSON; raises ``InvalidPreferences`` with every field."""
    base = base or defaults()
    errors: dict[str, str] = {}
    channels = dict(base.channels)
    raw_channels = data.get("channels", {})
    if not isinstance(raw_channels, dict):
        errors["channels"] = "must be an object of channel: true|false"
    else:
        for name, on in raw_channels.items():
            if name not in CHANNELS:
                errors[f"channels.{name}"] = "unknown channel; expected push or email"
            elif not isinstance(on, bool):
                errors[f"channels.{name}"] = "must be true or false"
            else:
                channels[name] = on
    statuses = dict(base.statuses)
    raw_statuses = data.get("statuses", {})
    if not isinstance(raw_statuses, dict):
        errors["statuses"] = "must be an object of status: true|false"
    else:
        for name, on in raw_statuses.items():
            if name not in STAGES:
                errors[f"statuses.{name}"] = "unknown status"
            elif not isinstance(on, bool):
                errors[f"statuses.{name}"] = "must be true or false"
            else:
                statuses[name] = on
    quiet: QuietHours | None = base.quiet_hours
    if "quiet_hours" in data:
        raw_quiet = data["quiet_hours"]
        if raw_quiet is None:
            quiet = None
        elif not isinstance(raw_quiet, dict):
            errors["quiet_hours"] = 'must be null or {"start": "HH:MM", "end": "HH:MM"}'
        else:
            bounds: dict[str, time] = {}
            for key in ("start", "end"):
                value = raw_quiet.get(key)
                match = _HHMM.match(value) if isinstance(value, str) else None
                if match is None:
                    errors[f"quiet_hours.{key}"] = "must be a time as HH:MM (00:00 to 23:59)"
                else:
                    bounds[key] = time(int(match[1]), int(match[2]))
            extra = set(raw_quiet) - {"start", "end"}
            if extra:
                errors[f"quiet_hours.{sorted(extra)[0]}"] = "unknown field"
            if len(bounds) == 2:
                quiet = QuietHours(bounds["start"], bounds["end"])
    zone = base.timezone
    if "timezone" in data:
        if not isinstance(data["timezone"], str) or not is_zone(data["timezone"]):
            errors["timezone"] = "must be an IANA time zone such as Europe/Berlin"
        else:
            zone = data["timezone"]
    language = base.language
    if "language" in data:
        if data["language"] not in LANGUAGES:
            errors["language"] = f"must be one of {', '.join(LANGUAGES)}"
        else:
            language = data["language"]
    for key in set(data) - {"channels", "statuses", "quiet_hours", "timezone", "language"}:
        errors[key] = "unknown field"
    if errors:
        raise InvalidPreferences(errors)
    return Preferences(channels, statuses, quiet, zone, language)


def load(
    stored: dict[str, Any] | None, *, language: str | None = None, timezone: str | None = None
) -> Preferences:
    """The preferences kept on a customer row; defaults where nothing (valid) was saved."""
    base = defaults(language=language, timezone=timezone)
    if not stored:
        return base
    try:
        return parse(stored, base=base)
    except InvalidPreferences:
        return base


def in_quiet_hours(prefs: Preferences, now: datetime) -> datetime | None:
    """When the quiet window containing ``now`` ends (UTC), or None outside quiet hours."""
    quiet = prefs.quiet_hours
    if quiet is None or quiet.start == quiet.end:
        return None
    local_zone = zone(prefs.timezone)
    local = now.astimezone(local_zone)
    t = local.time().replace(tzinfo=None)
    if quiet.start < quiet.end:
        inside = quiet.start <= t < quiet.end
    else:  # the window crosses midnight
        inside = t >= quiet.start or t < quiet.end
    if not inside:
        return None
    end = datetime.combine(local.date(), quiet.end, tzinfo=local_zone)
    if end <= local:
        end = datetime.combine(local.date() + timedelta(days=1), quiet.end, tzinfo=local_zone)
    return end.astimezone(UTC)


def should_notify(change: ChangeInfo, prefs: Preferences, now: datetime) -> Decision:
    """Which channels hear about ``change`` now, or the moment quiet hours let them."""
    if change.status == change.status_before or change.muted:
        return SILENT
    if not prefs.statuses.get(change.status, False):
        return SILENT
    channels = frozenset(c for c in CHANNELS if prefs.channels.get(c))
    if not channels:
        return SILENT
    return Decision(channels, in_quiet_hours(prefs, now))
