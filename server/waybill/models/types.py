"""The column types and value types the tables and their input and output models share.

Every timestamp is timezone-aware UTC (SQLite stores it naive; we restore it).
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any, Literal
from zoneinfo import available_timezones

import sqlalchemy as sa
from pydantic import AfterValidator, AwareDatetime, ConfigDict, StringConstraints
from pydantic import Field as Constraint
from sqlmodel import Column, Field, SQLModel

from waybill.tracking.statuses import ALL_STATUSES


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ts(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


def created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


StatusName = Literal[tuple(s.value for s in ALL_STATUSES)]  # type: ignore[valid-type]
#: One line of text: no control characters, line breaks or line/paragraph separators, so that
#: no value (an order number in a mail's subject, say) can break a line where it is shown; and
#: no bidirectional embedding, override or isolate controls (U+202A-U+202E, U+2066-U+2069),
#: which can make "1042" read as "2401" or hide part of a name.
ONE_LINE = r"^[^\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]*$"
_LINE_CHARS = ONE_LINE[3:-3]  # the characters ONE_LINE refuses, as a class body
#: One line that is not only spaces: what the required texts below keep once stripped, said in
#: the schema too (so that a client knows "\u00a0" alone is not a name).
SOME_TEXT = rf"^[^{_LINE_CHARS}]*[^\s{_LINE_CHARS}][^{_LINE_CHARS}]*$"
Text200 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200, pattern=SOME_TEXT)
]
Text100 = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100, pattern=SOME_TEXT)
]
Locale = Annotated[str, StringConstraints(pattern=r"^[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*$")]


def _known_zone(value: str) -> str:
    if value not in _zones():
        raise ValueError("not an IANA time zone")
    return value


_ZONES: set[str] = set()


def _zones() -> set[str]:
    if not _ZONES:
        _ZONES.update(available_timezones())
    return _ZONES


def _zone_enum(schema: dict[str, object]) -> None:
    schema["enum"] = sorted(_zones())  # so generated clients (and fuzzers) send real zones


TimeZone = Annotated[str, AfterValidator(_known_zone), Constraint(json_schema_extra=_zone_enum)]


def _in_utc(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise ValueError("out of range once converted to UTC") from None


#: A timestamp with an offset that still exists in UTC (0001-01-01T00:00+05:00 does not).
Instant = Annotated[AwareDatetime, AfterValidator(_in_utc)]


class Strict(SQLModel):
    model_config = ConfigDict(extra="forbid")
