"""Rotating the secret key: what is stored sealed under an old key, sealed again under the new.

The server's secret key seals three kinds of stored value: every order's tracking token
(:func:`waybill.auth.tokens.seal_tracking_token`), every merchant integration's webhook secret
and provider API key, and every merchant webhook endpoint's signing secret
(:func:`waybill.auth.tokens.seal_secret`). After a rotation the servers hold the new key and
the old ones (a :class:`~waybill.config.Keyring`), so everything still opens;
:func:`reseal` moves what is stored onto the new key, so that the old ones can go.

It walks each table by id in batches, each batch its own transaction, and writes a row only
when it changed and only if nobody changed it meanwhile: it can be stopped and run again, and
the servers go on serving while it runs. A value that no key opens is counted and left as it is.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from waybill.auth.tokens import (
    SealError,
    open_secret,
    open_tracking_token,
    seal_secret,
    seal_tracking_token,
)
from waybill.integrations import inbox, outbound
from waybill.models import Order
from waybill.models.integrations import Integration, WebhookEndpoint

BATCH = 500  # rows read at a time
WRITE_CHUNK = 50  # rows written in one transaction
WRITE_ATTEMPTS = 3


@dataclass
class Count:
    resealed: int = 0  # opened with an old key, sealed again with the current one
    current: int = 0  # already under the current key
    unopened: int = 0  # no key of the ring opens it: left as it is
    changed: int = 0  # written anew by someone else meanwhile (a new secret): left as it is


@dataclass
class Resealed:
    """What :func:`reseal` did, by kind of value."""

    kinds: dict[str, Count] = field(default_factory=dict)

    def of(self, kind: str) -> Count:
        return self.kinds.setdefault(kind, Count())

    @property
    def unopened(self) -> int:
        return sum(c.unopened for c in self.kinds.values())


@dataclass(frozen=True)
class _Sealed:
    """One column of sealed values: how to read it, what binds each value to its row, and how
    to open and seal it."""

    kind: str
    table: sa.Table
    column: str
    associated: Callable[[Any], str]  # the row -> the value's associated data
    open: Callable[[str, str, str], str]  # (keys, sealed, associated) -> plain
    seal: Callable[[str, str, str], str]  # (key, plain, associated) -> sealed


def _tracking_hash(row: Any) -> str:
    return str(row.tracking_token_hash)


def _integration(what: str) -> Callable[[Any], str]:
    return lambda row: inbox.seal_context(row.merchant_id, row.platform, what)


def _seal_token(key: str, token: str, _associated: str) -> str:
    return seal_tracking_token(key, token)  # bound to the token's own hash


_COLUMNS = (
    _Sealed(
        "tracking tokens",
        Order.__table__,  # type: ignore[attr-defined]
        "tracking_token_sealed",
        _tracking_hash,
        open_tracking_token,
        _seal_token,
    ),
    _Sealed(
        "integration secrets",
        Integration.__table__,  # type: ignore[attr-defined]
        "secret_sealed",
        _integration("secret"),
        open_secret,
        seal_secret,
    ),
    _Sealed(
        "integration API keys",
        Integration.__table__,  # type: ignore[attr-defined]
        "api_key_sealed",
        _integration("api_key"),
        open_secret,
        seal_secret,
    ),
    _Sealed(
        "webhook endpoint secrets",
        WebhookEndpoint.__table__,  # type: ignore[attr-defined]
        "secret_sealed",
        lambda row: outbound.seal_context(row.merchant_id),
        open_secret,
        seal_secret,
    ),
)


def reseal(engine: Engine, secret: str, *, batch: int = BATCH) -> Resealed:
    """Seal every stored value again under the current key of ``secret`` (a keyring)."""
    done = Resealed()
    for column in _COLUMNS:
        count = done.of(column.kind)
        for rows in _batches(engine, column, batch):
            changed = []
            for row in rows:
                sealed = getattr(row, column.column)
                associated = column.associated(row)
                try:
                    column.open(str(secret), sealed, associated)  # the current key alone
                    count.current += 1
                    continue
                except SealError:
                    pass
                try:
                    plain = column.open(secret, sealed, associated)  # any key of the ring
                except SealError:
                    count.unopened += 1
                    continue
                changed.append((row.id, sealed, column.seal(str(secret), plain, associated)))
            written = _write(engine, column, changed)
            count.resealed += written
            count.changed += len(changed) - written
    return done


def _batches(engine: Engine, column: _Sealed, size: int) -> Iterator[list[Any]]:
    table = column.table
    value = table.c[column.column]
    after = 0
    while True:
        query = (
            sa.select(table)
            .where(table.c.id > after, value.is_not(None), value != "")
            .order_by(table.c.id)
            .limit(size)
        )
        with engine.connect() as conn:
            rows = list(conn.execute(query))
        if not rows:
            return
        yield rows
        after = rows[-1].id


def _write(engine: Engine, column: _Sealed, changed: list[tuple[int, str, str]]) -> int:
    """Write the new sealed values, each only over the value it was read as (a row sealed
    again meanwhile, by a merchant saving a new secret, is kept), a few rows a transaction: the
    servers write to these tables meanwhile, and a short transaction holds their rows briefly.
    A transaction the database gave up (a deadlock with one of theirs) is tried again."""
    table = column.table
    value = table.c[column.column]
    compare_and_set = (
        sa.update(table)
        .where(table.c.id == sa.bindparam("row_id"), value == sa.bindparam("old"))
        .values({value: sa.bindparam("new")})
    )
    written = 0
    for start in range(0, len(changed), WRITE_CHUNK):
        chunk = changed[start : start + WRITE_CHUNK]
        for attempt in range(1, WRITE_ATTEMPTS + 1):
            try:
                with engine.begin() as conn:
                    written += sum(
                        conn.execute(
                            compare_and_set, {"row_id": row_id, "old": old, "new": new}
                        ).rowcount
                        for row_id, old, new in chunk
                    )
                break
            except sa.exc.OperationalError:
                if attempt == WRITE_ATTEMPTS:
                    raise
                time.sleep(0.1 * attempt)
    return written
