"""shipments: one per carrier (any case) and tracking number in an order

Revision ID: 0006_one_shipment_per_number
Revises: 0005_timeline_index
Create Date: 2026-12-03 10:00:00

A retried ``POST /orders/{id}/shipments`` used to add the parcel again: an order could hold
two shipments with one carrier and number, the second at "shipped" while the first was out
for delivery, and the order fell back to "shipped". Each such set becomes one shipment again
before the unique index goes on: the oldest keeps its id and takes the others' events (an
event both recorded is kept once), the latest service and estimate any of them was given,
and a status folded afresh from the merged timeline; its order's status and estimate are
recomputed, and a change-log row lets open pages and sockets catch up (no notification: the
parcel did not move, our record of it did).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
import sqlmodel
from alembic import op

from waybill.models.types import UTCDateTime
from waybill.tracking.events import order_estimate
from waybill.tracking.statuses import Status, TimelineEntry, fold, order_status

revision = "0006_one_shipment_per_number"
down_revision = "0005_timeline_index"
branch_labels = None
depends_on = None

_shipment = sa.table(
    "shipment",
    sa.column("id", sa.Integer()),
    sa.column("order_id", sa.Integer()),
    sa.column("carrier", sa.String()),
    sa.column("carrier_key", sa.String()),
    sa.column("tracking_number", sa.String()),
    sa.column("service", sa.String()),
    sa.column("status", sa.String()),
    sa.column("estimated_delivery", UTCDateTime()),
)
_event = sa.table(
    "tracking_event",
    sa.column("id", sa.Integer()),
    sa.column("order_id", sa.Integer()),
    sa.column("shipment_id", sa.Integer()),
    sa.column("status", sa.String()),
    sa.column("occurred_at", UTCDateTime()),
    sa.column("dedupe_key", sa.String()),
)
_order = sa.table(
    "order",
    sa.column("id", sa.Integer()),
    sa.column("customer_id", sa.Integer()),
    sa.column("status", sa.String()),
    sa.column("estimated_delivery", UTCDateTime()),
    sa.column("updated_at", UTCDateTime()),
)
_change = sa.table(
    "change",
    sa.column("order_id", sa.Integer()),
    sa.column("customer_id", sa.Integer()),
    sa.column("kind", sa.String()),
    sa.column("status_before", sa.String()),
    sa.column("status_after", sa.String()),
    sa.column("created_at", UTCDateTime()),
)


def _carrier_key(carrier: str) -> str:
    return carrier.casefold()  # as waybill.models.orders.carrier_key, frozen here


def upgrade() -> None:
    bind = op.get_bind()
    # NOT NULL needs a default on a table with rows in SQLite, which then cannot drop it
    # without rebuilding the table (its foreign keys forbid that inside a migration).
    op.add_column(
        "shipment",
        sa.Column(
            "carrier_key",
            sqlmodel.sql.sqltypes.AutoString(length=300),
            nullable=False,
            server_default="",
        ),
    )
    if bind.dialect.name != "sqlite":
        op.alter_column("shipment", "carrier_key", server_default=None)
    rows = bind.execute(sa.select(_shipment.c.id, _shipment.c.carrier)).all()
    if rows:
        bind.execute(
            _shipment.update()
            .where(_shipment.c.id == sa.bindparam("row_id"))
            .values(carrier_key=sa.bindparam("key")),
            [{"row_id": i, "key": _carrier_key(carrier)} for i, carrier in rows],
        )
    _merge_duplicates(bind)
    op.create_index(
        "uq_shipment_number",
        "shipment",
        ["tracking_number", "carrier_key", "order_id"],
        unique=True,
    )


def downgrade() -> None:
    op.drop_index("uq_shipment_number", table_name="shipment")
    op.drop_column("shipment", "carrier_key")


def _merge_duplicates(bind: sa.Connection) -> None:
    s, e = _shipment, _event
    same = (s.c.order_id, s.c.carrier_key, s.c.tracking_number)
    groups = bind.execute(
        sa.select(*same, sa.func.min(s.c.id)).group_by(*same).having(sa.func.count() > 1)
    ).all()
    orders: set[int] = set()
    for order_id, key, number, keeper in groups:
        parcels = bind.execute(
            sa.select(s.c.id, s.c.service, s.c.estimated_delivery)
            .where(s.c.order_id == order_id, s.c.carrier_key == key, s.c.tracking_number == number)
            .order_by(s.c.id)
        ).all()
        taken = set(
            bind.execute(sa.select(e.c.dedupe_key).where(e.c.order_id == order_id)).scalars()
        )
        for other in (p.id for p in parcels if p.id != keeper):
            old, new = f"s{other}:", f"s{keeper}:"
            for event_id, dedupe in bind.execute(
                sa.select(e.c.id, e.c.dedupe_key).where(e.c.shipment_id == other)
            ).all():
                moved = new + dedupe[len(old) :] if dedupe.startswith(old) else dedupe
                if moved != dedupe and moved in taken:  # both recorded it: keep it once
                    bind.execute(e.delete().where(e.c.id == event_id))
                    continue
                bind.execute(
                    e.update()
                    .where(e.c.id == event_id)
                    .values(shipment_id=keeper, dedupe_key=moved)
                )
                taken.add(moved)
        bind.execute(
            s.delete().where(
                s.c.order_id == order_id,
                s.c.carrier_key == key,
                s.c.tracking_number == number,
                s.c.id != keeper,
            )
        )
        timeline = [
            TimelineEntry(at, Status(status), k)
            for at, status, k in bind.execute(
                sa.select(e.c.occurred_at, e.c.status, e.c.dedupe_key).where(
                    e.c.shipment_id == keeper
                )
            )
        ]
        bind.execute(
            s.update()
            .where(s.c.id == keeper)
            .values(
                status=(fold(timeline, start=Status.SHIPPED) or Status.SHIPPED).value,
                service=_latest(p.service for p in parcels),
                estimated_delivery=_latest(p.estimated_delivery for p in parcels),
            )
        )
        orders.add(order_id)
    for order_id in sorted(orders):
        _refold_order(bind, order_id)


def _latest(values: Iterable[Any]) -> Any:
    """What the newest shipment of a set said (a retry carries the merchant's latest word)."""
    said = [v for v in values if v is not None]
    return said[-1] if said else None


def _refold_order(bind: sa.Connection, order_id: int) -> None:
    s, e, o = _shipment, _event, _order
    order = bind.execute(
        sa.select(o.c.customer_id, o.c.status, o.c.estimated_delivery).where(o.c.id == order_id)
    ).one()
    own = [
        TimelineEntry(at, Status(status), k)
        for at, status, k in bind.execute(
            sa.select(e.c.occurred_at, e.c.status, e.c.dedupe_key).where(
                e.c.order_id == order_id, e.c.shipment_id.is_(None)
            )
        )
    ]
    parcels = bind.execute(
        sa.select(s.c.status, s.c.estimated_delivery).where(s.c.order_id == order_id)
    ).all()
    status = order_status(
        fold(own, start=Status.CONFIRMED) or Status.CONFIRMED, [Status(p.status) for p in parcels]
    )
    now = datetime.now(UTC)
    bind.execute(
        o.update()
        .where(o.c.id == order_id)
        .values(
            status=status.value,
            estimated_delivery=order_estimate(
                (p.estimated_delivery for p in parcels), order.estimated_delivery
            ),
            updated_at=now,
        )
    )
    bind.execute(
        _change.insert().values(
            order_id=order_id,
            customer_id=order.customer_id,
            kind="shipment.merged",
            status_before=order.status,
            status_after=status.value,
            created_at=now,
        )
    )
