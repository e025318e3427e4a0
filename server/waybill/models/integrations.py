"""What merchants connect: their platforms' webhooks in, their own webhook out, and carrier
polling; with the raw payloads kept for support."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from waybill.models.types import UTCDateTime, created, ts

#: How long a received webhook's raw payload is kept, for support (``waybill webhooks show``).
RECEIPT_DAYS = 30


class Integration(SQLModel, table=True):
    """One merchant's connection to one platform: the secret its webhooks are signed with,
    and for a tracking provider the API key Waybill polls it with. Both sealed with the
    server key: a copy of the database alone forges no webhook."""

    __table_args__ = (sa.UniqueConstraint("merchant_id", "platform"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", max_length=40)
    platform: str = Field(max_length=20)
    secret_sealed: str = Field(max_length=400)
    api_key_sealed: str | None = Field(default=None, max_length=400)
    created_at: datetime = created()
    updated_at: datetime = created()


class WebhookReceipt(SQLModel, table=True):
    """One webhook as it arrived, verified: recorded before it is answered, applied after."""

    __tablename__ = "webhook_receipt"
    __table_args__ = (
        sa.Index("ix_webhook_receipt_state", "state", "received_at"),
        sa.Index("ix_webhook_receipt_merchant", "merchant_id", "platform", "id"),
    )

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", max_length=40)
    platform: str = Field(max_length=20)
    topic: str | None = Field(default=None, max_length=100)
    body: str = Field(sa_column=Column(sa.Text(), nullable=False))
    # queued | applied | held (waits for its shipment or order) | ignored | failed
    state: str = Field(default="queued", max_length=10)
    result: str | None = Field(default=None, max_length=500)  # what applying it did, in words
    received_at: datetime = created()
    applied_at: datetime | None = ts(nullable=True)
    lease_until: datetime | None = ts(nullable=True)
    attempts: int = 0


class HeldUpdate(SQLModel, table=True):
    """An update that names a parcel (or an order) Waybill does not know yet: applied when it
    appears."""

    __tablename__ = "held_update"
    __table_args__ = (sa.Index("ix_held_update_key", "merchant_id", "key"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", max_length=40)
    #: "parcel:<carrier key>:<tracking number>" or "order:<external id>"
    key: str = Field(max_length=240)
    receipt_id: int | None = Field(default=None, foreign_key="webhook_receipt.id")
    update: str = Field(sa_column=Column(sa.Text(), nullable=False))  # the update, as JSON
    created_at: datetime = created()


class WebhookEndpoint(SQLModel, table=True):
    """The merchant's own URL, told of their orders' changes; one per merchant."""

    __tablename__ = "webhook_endpoint"

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", max_length=40, unique=True)
    url: str = Field(max_length=2048)
    events: str = Field(max_length=200)  # space-separated event types
    secret_sealed: str = Field(max_length=400)
    created_at: datetime = created()
    updated_at: datetime = created()


class CarrierPoll(SQLModel, table=True):
    """When a shipment of a merchant without webhooks is next asked about at its provider."""

    __tablename__ = "carrier_poll"
    __table_args__ = (sa.Index("ix_carrier_poll_due", "stopped_at", "next_poll_at"),)

    shipment_id: int = Field(foreign_key="shipment.id", primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", max_length=40)
    provider: str = Field(max_length=20)
    next_poll_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    attempts: int = 0
    last_polled_at: datetime | None = ts(nullable=True)
    last_error: str | None = Field(default=None, max_length=300)
    stopped_at: datetime | None = ts(nullable=True)
