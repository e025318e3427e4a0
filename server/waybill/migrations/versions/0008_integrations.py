"""integrations: platform webhooks in, the merchant's webhook out, carrier polling

Revision ID: 0008_integrations
Revises: 0007_pickup_until
Create Date: 2026-12-05 09:00:00

Merchants connect their shop and shipping platforms: each connection's secret (sealed with the
server key), every webhook received (kept 30 days for support), updates waiting for a parcel or
an order not known yet, the merchant's own webhook endpoint, and the shipments polled at a
tracking provider. Events keep the sender's own word for their status (``source_status``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waybill.models.types import UTCDateTime

revision = "0008_integrations"
down_revision = "0007_pickup_until"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("tracking_event", sa.Column("source_status", sa.String(100), nullable=True))
    op.create_table(
        "integration",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchant.id"), nullable=False),
        sa.Column("platform", sa.String(20), nullable=False),
        sa.Column("secret_sealed", sa.String(400), nullable=False),
        sa.Column("api_key_sealed", sa.String(400), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("merchant_id", "platform"),
    )
    op.create_table(
        "webhook_receipt",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchant.id"), nullable=False),
        sa.Column("platform", sa.String(20), nullable=False),
        sa.Column("topic", sa.String(100), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("state", sa.String(10), nullable=False),
        sa.Column("result", sa.String(500), nullable=True),
        sa.Column("received_at", UTCDateTime(), nullable=False),
        sa.Column("applied_at", UTCDateTime(), nullable=True),
        sa.Column("lease_until", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
    )
    op.create_index("ix_webhook_receipt_state", "webhook_receipt", ["state", "received_at"])
    op.create_index(
        "ix_webhook_receipt_merchant", "webhook_receipt", ["merchant_id", "platform", "id"]
    )
    op.create_table(
        "held_update",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchant.id"), nullable=False),
        sa.Column("key", sa.String(240), nullable=False),
        sa.Column("receipt_id", sa.Integer(), sa.ForeignKey("webhook_receipt.id"), nullable=True),
        sa.Column("update", sa.Text(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
    )
    op.create_index("ix_held_update_key", "held_update", ["merchant_id", "key"])
    op.create_table(
        "webhook_endpoint",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "merchant_id", sa.String(40), sa.ForeignKey("merchant.id"), nullable=False, unique=True
        ),
        sa.Column("url", sa.String(2048), nullable=False),
        sa.Column("events", sa.String(200), nullable=False),
        sa.Column("secret_sealed", sa.String(400), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
    )
    op.create_table(
        "carrier_poll",
        sa.Column("shipment_id", sa.Integer(), sa.ForeignKey("shipment.id"), primary_key=True),
        sa.Column("merchant_id", sa.String(40), sa.ForeignKey("merchant.id"), nullable=False),
        sa.Column("provider", sa.String(20), nullable=False),
        sa.Column("next_poll_at", UTCDateTime(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_polled_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("stopped_at", UTCDateTime(), nullable=True),
    )
    op.create_index("ix_carrier_poll_due", "carrier_poll", ["stopped_at", "next_poll_at"])


def downgrade() -> None:
    op.drop_table("carrier_poll")
    op.drop_table("webhook_endpoint")
    op.drop_table("held_update")
    op.drop_table("webhook_receipt")
    op.drop_table("integration")
    op.drop_column("tracking_event", "source_status")
