"""estimates: Waybill's own delivery window on each order, where a shipment's date came from,
and the learned model

Revision ID: 0009_estimates
Revises: 0008_integrations
Create Date: 2026-12-02 19:00:00

An order gains Waybill's estimate (``eta_earliest``, ``eta_latest`` — the "arrives by" —
``eta_most_likely``, dates in the customer's zone, and ``eta_updated_at``), set whenever one of
its events is recorded. A shipment's ``estimated_delivery`` keeps the date a merchant or a
carrier gave, now with ``estimated_delivery_source`` (``merchant`` | ``carrier``) and when it was
set: existing ones came through the merchant API, so they are the merchant's. ``eta_model`` holds the estimator
learned from delivered orders (``waybill eta train``, and the worker daily), newest row in use.
An outbox row keeps the id of the request that queued it (``request_id``), as the request's log
line does.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waybill.models.types import UTCDateTime

revision = "0009_estimates"
down_revision = "0008_integrations"
branch_labels = None
depends_on = None


def upgrade() -> None:
    for name in ("eta_earliest", "eta_latest", "eta_most_likely"):
        op.add_column("order", sa.Column(name, sa.Date(), nullable=True))
    op.add_column("order", sa.Column("eta_updated_at", UTCDateTime(), nullable=True))
    op.add_column("shipment", sa.Column("estimated_delivery_source", sa.String(10), nullable=True))
    op.add_column(
        "shipment", sa.Column("estimated_delivery_updated_at", UTCDateTime(), nullable=True)
    )
    shipment = sa.table(
        "shipment",
        sa.column("created_at", UTCDateTime()),
        sa.column("estimated_delivery", UTCDateTime()),
        sa.column("estimated_delivery_source", sa.String()),
        sa.column("estimated_delivery_updated_at", UTCDateTime()),
    )
    op.execute(
        shipment.update()
        .where(shipment.c.estimated_delivery.is_not(None))
        .values(
            estimated_delivery_source="merchant",
            estimated_delivery_updated_at=shipment.c.created_at,  # when, at the latest
        )
    )
    op.add_column("notify_outbox", sa.Column("request_id", sa.String(64), nullable=True))
    op.create_table(
        "eta_model",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("trained_at", UTCDateTime(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("body", sa.Text(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("eta_model")
    op.drop_column("notify_outbox", "request_id")
    op.drop_column("shipment", "estimated_delivery_updated_at")
    op.drop_column("shipment", "estimated_delivery_source")
    for name in ("eta_updated_at", "eta_most_likely", "eta_latest", "eta_earliest"):
        op.drop_column("order", name)
