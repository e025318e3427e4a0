"""Merchants and their API keys; the merchant as orders show it."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import Field, SQLModel

from waybill.models.types import (
    created,
    ts,
)


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


class MerchantPublic(SQLModel):
    id: str
    name: str
