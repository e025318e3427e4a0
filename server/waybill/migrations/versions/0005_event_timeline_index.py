"""tracking events: an index per timeline, newest first

Revision ID: 0005_timeline_index
Revises: 0004_order_customer
Create Date: 2026-12-02 02:00:00

Recording an event asks whether it is the newest of its timeline, and every answer carries a
timeline's latest events: both read a few entries of this index instead of the order's whole
history.
"""

from __future__ import annotations

from alembic import op

revision = "0005_timeline_index"
down_revision = "0004_order_customer"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_tracking_event_timeline",
        "tracking_event",
        ["order_id", "shipment_id", "occurred_at", "id"],
    )


def downgrade() -> None:
    op.drop_index("ix_tracking_event_timeline", table_name="tracking_event")
