"""Many events in one request: what each item names and how each fared."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import Field as Constraint
from pydantic import StringConstraints, ValidationInfo, field_validator, model_validator
from sqlmodel import SQLModel

from waybill.models.orders import PICKUP_UNTIL_DOC, SOURCE_STATUS_DOC, check_pickup_until
from waybill.models.types import Instant, StatusName, Strict, Text100, Text200

MAX_BATCH = 1000


class EventBatchItem(Strict):
    """One event: of a shipment (``shipment_id``, or ``carrier`` + ``tracking_number``) or of
    the order itself (``order_id``)."""

    order_id: int | None = Constraint(default=None, ge=1)
    shipment_id: int | None = Constraint(default=None, ge=1)
    carrier: Text100 | None = None
    tracking_number: (
        Annotated[
            str, StringConstraints(strip_whitespace=True, pattern=r"^[A-Za-z0-9 ._/-]{1,100}$")
        ]
        | None
    ) = None
    status: StatusName
    occurred_at: Instant | None = None
    event_id: Text200 | None = None
    location: Annotated[str, StringConstraints(max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=500)] | None = None
    pickup_until: Instant | None = Constraint(default=None, description=PICKUP_UNTIL_DOC)
    source_status: Text100 | None = Constraint(default=None, description=SOURCE_STATUS_DOC)

    @field_validator("pickup_until")
    @classmethod
    def _only_while_waiting(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is not None and info.data.get("order_id") is not None:
            raise ValueError("only with a shipment's event")
        return check_pickup_until(value, info)

    @model_validator(mode="after")
    def _one_target(self) -> EventBatchItem:
        by_number = self.carrier is not None or self.tracking_number is not None
        if by_number and (self.carrier is None or self.tracking_number is None):
            raise ValueError("carrier and tracking_number go together")
        named = sum((self.order_id is not None, self.shipment_id is not None, by_number))
        if named != 1:
            raise ValueError(
                "name exactly one of order_id, shipment_id, or carrier with tracking_number"
            )
        if self.order_id is None and self.occurred_at is None:
            raise ValueError("a shipment event needs occurred_at")
        return self


class EventBatchBody(Strict):
    """Up to 1,000 events, each an object with ``status`` and ``order_id``, or
    ``shipment_id``, or ``carrier`` and ``tracking_number``; ``occurred_at`` (required for a
    shipment's event), ``event_id``, ``location``, ``description`` and ``pickup_until`` (a
    shipment's, with ``available_for_pickup``) as for a single event. Each is validated on its
    own: one that is not valid is answered 422 at its index, and the others are recorded."""

    # More than MAX_BATCH is a body too large (413), not an invalid one: checked by the route.
    events: list[dict[str, Any]] = Constraint(
        min_length=1, json_schema_extra={"maxItems": MAX_BATCH}
    )


class ItemError(SQLModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class EventBatchResult(SQLModel):
    """``status``: 201 recorded, 200 seen before (nothing changed), 404 no such order or
    shipment of yours, 422 invalid (``error.fields``)."""

    index: int
    status: int
    order_id: int | None = None
    shipment_id: int | None = None
    order_status: StatusName | None = None
    error: ItemError | None = None


class EventBatchResults(SQLModel):
    """How each event fared, in the order sent."""

    results: list[EventBatchResult]
