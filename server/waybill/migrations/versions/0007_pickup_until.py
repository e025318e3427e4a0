"""shipments: until when a parcel waits at its pickup point

Revision ID: 0007_pickup_until
Revises: 0006_one_shipment_per_number
Create Date: 2026-12-04 10:00:00

"Ready for pickup" said where (the event's location) but not until when. A shipment gains a
nullable ``pickup_until``, set by an ``available_for_pickup`` event that carries one and cleared
once the parcel moves on. Existing shipments have none: no event recorded before said it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from waybill.models.types import UTCDateTime

revision = "0007_pickup_until"
down_revision = "0006_one_shipment_per_number"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("shipment", sa.Column("pickup_until", UTCDateTime(), nullable=True))


def downgrade() -> None:
    op.drop_column("shipment", "pickup_until")
