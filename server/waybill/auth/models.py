"""Tables of the sign-in methods beyond email: passkeys (WebAuthn credentials) and the
challenges of their ceremonies."""

from __future__ import annotations

from datetime import datetime

from sqlmodel import JSON, Column, Field, SQLModel

from waybill.models import UTCDateTime, created, ts


class Passkey(SQLModel, table=True):
    """A customer's WebAuthn credential. Only its public key is here; the secret never leaves
    the authenticator."""

    id: int | None = Field(default=None, primary_key=True)
    customer_id: int = Field(foreign_key="customer.id", index=True)
    credential_id: str = Field(unique=True, max_length=1400)  # base64url, as the browser sends it
    public_key: str = Field(max_length=2000)  # COSE key, base64url
    sign_count: int = 0
    user_handle: str = Field(index=True, max_length=100)  # base64url; one per customer
    transports: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    name: str = Field(max_length=100)
    created_at: datetime = created()
    last_used_at: datetime | None = ts(nullable=True)


class PasskeyChallenge(SQLModel, table=True):
    """A WebAuthn challenge handed out and not yet answered: used once, then deleted; one that
    was never answered expires. Kept by its hash."""

    __tablename__ = "passkey_challenge"

    challenge_hash: str = Field(primary_key=True, max_length=64)  # SHA-256 hex
    purpose: str = Field(max_length=16)  # register | authenticate
    customer_id: int | None = Field(default=None, foreign_key="customer.id")  # register only
    expires_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False, index=True))
