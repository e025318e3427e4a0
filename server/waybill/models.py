"""The tables. Every timestamp is timezone-aware UTC (SQLite stores it naive; we restore it)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import JSON, Column, Field, SQLModel


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back timezone-aware."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTCDateTime column")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def ts(*, nullable: bool = False, index: bool = False) -> Any:
    return Field(
        default=None,
        sa_column=Column(UTCDateTime(), nullable=nullable, index=index),
    )


def created() -> Any:
    return Field(default_factory=utcnow, sa_column=Column(UTCDateTime(), nullable=False))


class Merchant(SQLModel, table=True):
    id: str = Field(primary_key=True, max_length=40)
    name: str = Field(max_length=200)
    created_at: datetime = created()


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_key"

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True, max_length=40)
    prefix: str = Field(max_length=20)  # shown in listings so a key can be told apart
    key_hash: str = Field(unique=True, max_length=64)
    created_at: datetime = created()
    last_used_at: datetime | None = ts(nullable=True)
    revoked_at: datetime | None = ts(nullable=True)


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)  # stored lower-cased
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    preferences: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = created()


class Order(SQLModel, table=True):
    __table_args__ = (sa.UniqueConstraint("merchant_id", "external_id"),)

    id: int | None = Field(default=None, primary_key=True)
    merchant_id: str = Field(foreign_key="merchant.id", index=True, max_length=40)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    external_id: str = Field(max_length=200)
    # What this order's merchant said about its customer: shown to that merchant alone, never
    # to another; the customer's own saved settings win over it everywhere else.
    customer_name: str | None = Field(default=None, max_length=200)
    customer_locale: str | None = Field(default=None, max_length=35)
    customer_timezone: str | None = Field(default=None, max_length=64)
    # sealed with the server key (auth.tokens): only the server opens it, to build the link
    tracking_token_sealed: str = Field(max_length=200)
    tracking_token_hash: str = Field(unique=True, max_length=64)
    status: str = Field(default="confirmed", max_length=32)
    items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    request_hash: str = Field(max_length=64)  # of the creating body, for idempotent retries
    placed_at: datetime | None = ts(nullable=True)
    estimated_delivery: datetime | None = ts(nullable=True)
    created_at: datetime = created()
    updated_at: datetime = created()


class Shipment(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    carrier: str = Field(max_length=100)
    tracking_number: str = Field(max_length=100)
    service: str | None = Field(default=None, max_length=100)
    status: str = Field(default="shipped", max_length=32)
    estimated_delivery: datetime | None = ts(nullable=True)
    created_at: datetime = created()


class TrackingEvent(SQLModel, table=True):
    __tablename__ = "tracking_event"
    __table_args__ = (sa.UniqueConstraint("order_id", "dedupe_key"),)

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    shipment_id: int | None = Field(default=None, foreign_key="shipment.id", index=True)
    status: str = Field(max_length=32)
    occurred_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    location: str | None = Field(default=None, max_length=200)
    description: str | None = Field(default=None, max_length=500)
    source: str = Field(default="api", max_length=32)
    event_id: str | None = Field(default=None, max_length=200)  # the sender's own id
    dedupe_key: str = Field(max_length=120)
    created_at: datetime = created()


class Change(SQLModel, table=True):
    """The change log: one row per committed change a customer can see. Its id is the cursor."""

    id: int | None = Field(default=None, primary_key=True)
    order_id: int = Field(foreign_key="order.id", index=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    kind: str = Field(max_length=32)  # order.created, shipment.added, event.recorded, ...
    status_before: str | None = Field(default=None, max_length=32)
    status_after: str = Field(max_length=32)
    created_at: datetime = created()


class LoginToken(SQLModel, table=True):
    __tablename__ = "login_token"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    link_hash: str = Field(unique=True, max_length=64)
    code_hash: str = Field(max_length=64)
    attempts: int = 0
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    used_at: datetime | None = ts(nullable=True)
    created_at: datetime = created()


class AuthSession(SQLModel, table=True):
    """A signed-in browser. The cookie holds a random id; only its hash is stored."""

    __tablename__ = "auth_session"

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    id_hash: str = Field(unique=True, max_length=64)
    csrf_token: str = Field(max_length=64)
    user_agent: str | None = Field(default=None, max_length=300)
    created_at: datetime = created()
    last_seen_at: datetime = created()
    revoked_at: datetime | None = ts(nullable=True)
