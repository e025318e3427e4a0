"""Customers, their sign-in codes and sessions; what a customer sends and is shown."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from pydantic import EmailStr, StringConstraints
from sqlmodel import JSON, Column, Field, SQLModel

from waybill.models.types import (
    Locale,
    Strict,
    Text200,
    TimeZone,
    UTCDateTime,
    created,
    ts,
)


class Customer(SQLModel, table=True):
    id: int | None = Field(default=None, primary_key=True)
    email: str = Field(unique=True, max_length=320)  # stored lower-cased
    name: str | None = Field(default=None, max_length=200)
    locale: str | None = Field(default=None, max_length=35)
    timezone: str | None = Field(default=None, max_length=64)
    preferences: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
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


# --- in and out ---------------------------------------------------------------------------


class CustomerIn(Strict):
    email: Annotated[EmailStr, StringConstraints(max_length=320)]
    name: Text200 | None = None
    locale: Locale | None = None
    timezone: TimeZone | None = None


class CustomerPublic(SQLModel):
    email: str
    name: str | None


class EmailSignIn(Strict):
    email: Annotated[str, StringConstraints(max_length=320, pattern=r"^[^\x00]*$")]


class CodeSignIn(Strict):
    email: Annotated[str, StringConstraints(max_length=320)]
    code: Annotated[str, StringConstraints(pattern=r"^\s*\d{6}\s*$")]


class Me(SQLModel):
    """The signed-in customer."""

    email: str
    name: str | None
    csrf_token: str
    locale: str | None
    timezone: str | None


class Sent(SQLModel):
    """Accepted."""

    sent: bool


class SignedIn(SQLModel):
    """Signed in."""

    signed_in: bool
    redirect: str
