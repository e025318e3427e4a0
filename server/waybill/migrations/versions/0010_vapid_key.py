"""vapid_key: the VAPID public key each push subscription was made with

Revision ID: 0010_vapid_key
Revises: 0009_estimates
Create Date: 2026-12-04 19:00:00

A push service accepts messages for a subscription only when they are signed with the key the
browser subscribed with, so rotating the VAPID key needs to know each subscription's. Existing
rows get NULL, read as the current key; ``waybill init`` and ``waybill rotate-vapid --new`` write
the current key into them (before this column there was only ever one key).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_vapid_key"
down_revision = "0009_estimates"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("push_subscription", sa.Column("vapid_key", sa.String(100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("push_subscription") as batch:
        batch.drop_column("vapid_key")
