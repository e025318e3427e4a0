"""The notification tables: push subscriptions, per-order mutes and the outbox."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Column, Field, SQLModel

from waybill.models import UTCDateTime, created, ts


class PushSubscription(SQLModel, table=True):
    """One browser's push endpoint: a signed-in customer's device, or one order's "notify me"."""

    __tablename__ = "push_subscription"
    __table_args__ = (sa.UniqueConstraint("scope", "endpoint_hash"),)

    id: int | None = Field(default=None, primary_key=True)
    scope: str = Field(max_length=40)  # "customer:<id>" or "order:<id>"
    customer_id: int | None = Field(default=None, foreign_key="customer.id", index=True)
    order_id: int | None = Field(default=None, foreign_key="order.id", index=True)
    # the sign-in it was registered through: ending that sign-in forgets it
    auth_session_id: int | None = Field(
        default=None, foreign_key="auth_session.id", index=True, ondelete="SET NULL"
    )
    endpoint: str = Field(max_length=2048)
    endpoint_hash: str = Field(max_length=64)
    p256dh: str = Field(max_length=100)
    auth: str = Field(max_length=40)
    label: str = Field(default="Browser", max_length=100)
    language: str = Field(default="en", max_length=8)
    created_at: datetime = created()
    last_used_at: datetime | None = ts(nullable=True)
    expires_at: datetime | None = ts(nullable=True)  # anonymous ones: 30 days after terminal
    # the VAPID public key the browser subscribed with (None: from before keys were recorded,
    # the current one); messages to it are signed with that key
    vapid_key: str | None = Field(default=None, max_length=100)


class OrderMute(SQLModel, table=True):
    """An order the customer silenced on every channel."""

    __tablename__ = "order_mute"

    order_id: int = Field(foreign_key="order.id", primary_key=True)
    created_at: datetime = created()


class OutboxMessage(SQLModel, table=True):
    """One notification to one destination, written in the transaction of its change."""

    __tablename__ = "notify_outbox"
    __table_args__ = (sa.Index("ix_notify_outbox_due", "state", "due_at"),)

    id: int | None = Field(default=None, primary_key=True)
    dedupe_key: str = Field(max_length=120, unique=True)  # change + destination: never twice
    change_id: int = Field(foreign_key="change.id", index=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    customer_id: int | None = Field(default=None, foreign_key="customer.id", index=True)
    channel: str = Field(max_length=8)  # push | email
    destination: str = Field(max_length=320)  # "sub:<id>" or the email address
    subscription_id: int | None = Field(default=None, index=True)  # no FK: rows outlive it
    status: str = Field(max_length=32)  # the order status this tells about
    # pending | sent | superseded | dropped | failed | dead (every attempt failed)
    state: str = Field(default="pending", max_length=12)
    attempts: int = 0
    due_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    deadline: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    lease_until: datetime | None = ts(nullable=True)
    lease_owner: str | None = Field(default=None, max_length=64)  # batch token; kept once sent
    last_error: str | None = Field(default=None, max_length=300)
    # the request that queued it (its X-Request-ID), to follow one request into its messages
    request_id: str | None = Field(default=None, max_length=64)
    created_at: datetime = created()
    done_at: datetime | None = ts(nullable=True)
