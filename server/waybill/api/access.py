"""Who may read a row: one lookup for "this id, if it is the asker's, else 404"."""

from __future__ import annotations

from typing import Any, TypeVar

from sqlmodel import Session, SQLModel

from waybill.db import MAX_ID
from waybill.errors import not_found

T = TypeVar("T", bound=SQLModel)


def owned_or_404(session: Session, model: type[T], row_id: int, what: str, **owner: Any) -> T:
    """The row with ``row_id`` if each ``owner`` column holds the given value, else the API's
    404 — the same answer for another owner's row as for a missing one, so ids reveal nothing."""
    row = session.get(model, row_id) if 0 < row_id <= MAX_ID else None
    if row is None or any(getattr(row, column) != value for column, value in owner.items()):
        raise not_found(what)
    return row
