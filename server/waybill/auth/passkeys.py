"""Passkeys (WebAuthn, the ``webauthn`` package): add one once signed in, then sign in with it.

Passkeys are discoverable credentials: signing in asks for no address, the authenticator
offers the accounts it holds for this site. Each ceremony's challenge is kept on the server
(``passkey_challenge``, by its hash, for five minutes) and in Flask's signed cookie
(``waybill_flow``), and is spent on the server when it is answered: it works once. Only
public keys are stored. The routes are in ``waybill.api.passkeys``.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import current_app, session
from sqlmodel import Session, col, select
from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import base64url_to_bytes, bytes_to_base64url
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from waybill.auth.models import Passkey, PasskeyChallenge
from waybill.config import Settings
from waybill.db import get_session
from waybill.devices import device_label
from waybill.errors import ApiError
from waybill.models import Customer, utcnow

_REGISTER, _AUTHENTICATE = "passkey_register", "passkey_authenticate"  # the cookie's keys


def _purpose(key: str) -> str:
    """The challenge row's purpose for a cookie key: ``register`` or ``authenticate`` (the
    column holds 16 characters, which PostgreSQL enforces)."""
    return key.removeprefix("passkey_")


CHALLENGE_LIFETIME = timedelta(minutes=5)


def _relying_party() -> tuple[str, str]:
    """The RP id (host) and the origin a browser reports for this site."""
    settings: Settings = current_app.config["WAYBILL_SETTINGS"]
    base = urlsplit(settings.base_url)
    return base.hostname or "localhost", f"{base.scheme}://{base.netloc}"


def _ceremony_failed(exc: Exception) -> ApiError:
    return ApiError(
        422, "invalid", "the passkey could not be verified", {"credential": str(exc)[:200]}
    )


def _offer(key: str, challenge: bytes, customer_id: int | None = None) -> None:
    """Remember a challenge handed out: on the server (single use, expiring) and in this
    browser's signed cookie (so that it is answered by the browser that asked)."""
    db = get_session()
    now = utcnow()
    db.exec(  # type: ignore[call-overload]
        sa.delete(PasskeyChallenge).where(col(PasskeyChallenge.expires_at) < now)
    )
    db.add(
        PasskeyChallenge(
            challenge_hash=hashlib.sha256(challenge).hexdigest(),
            purpose=_purpose(key),
            customer_id=customer_id,
            expires_at=now + CHALLENGE_LIFETIME,
        )
    )
    db.commit()
    session[key] = bytes_to_base64url(challenge)


def _challenge(key: str, customer_id: int | None = None) -> bytes:
    """This browser's pending challenge for ``key``, spent on the server so that it works
    once: a replayed cookie (or a copy of it) finds nothing to spend."""
    value = session.pop(key, None)
    if not isinstance(value, str):
        raise ApiError(400, "no_challenge", "ask for options first, then answer them once")
    challenge = base64url_to_bytes(value)
    spent = get_session().exec(  # type: ignore[call-overload]
        sa.delete(PasskeyChallenge).where(
            col(PasskeyChallenge.challenge_hash) == hashlib.sha256(challenge).hexdigest(),
            col(PasskeyChallenge.purpose) == _purpose(key),
            col(PasskeyChallenge.customer_id) == customer_id
            if customer_id is not None
            else col(PasskeyChallenge.customer_id).is_(None),
            col(PasskeyChallenge.expires_at) >= utcnow(),
        )
    )
    get_session().commit()  # spent even if the answer then fails to verify
    if spent.rowcount != 1:
        raise ApiError(400, "no_challenge", "this challenge was used or has expired: ask again")
    return challenge


# --- managing passkeys (signed in) --------------------------------------------------------


def passkeys_of(db: Session, customer_id: int) -> list[Passkey]:
    """The customer's passkeys, oldest first."""
    return list(
        db.exec(
            select(Passkey).where(Passkey.customer_id == customer_id).order_by(Passkey.id)  # type: ignore[arg-type]
        )
    )


def registration_options(customer: Customer) -> str:
    """Options (WebAuthn JSON) to create a passkey for ``customer``; every passkey of one
    customer shares one user handle, so an authenticator keeps one entry per account."""
    existing = passkeys_of(get_session(), customer.id)  # type: ignore[arg-type]
    handle = existing[0].user_handle if existing else bytes_to_base64url(secrets.token_bytes(32))
    rp_id, _ = _relying_party()
    options = generate_registration_options(
        rp_id=rp_id,
        rp_name="Waybill",
        user_id=base64url_to_bytes(handle),
        user_name=customer.email,
        user_display_name=customer.name or customer.email,
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.REQUIRED,
            user_verification=UserVerificationRequirement.PREFERRED,
        ),
        exclude_credentials=[
            PublicKeyCredentialDescriptor(id=base64url_to_bytes(p.credential_id)) for p in existing
        ],
    )
    _offer(_REGISTER, options.challenge, customer.id)
    session[_REGISTER + "_handle"] = handle
    return options_to_json(options)


def add(
    customer: Customer, credential: dict[str, Any], *, name: str | None, user_agent: str | None
) -> Passkey:
    """Verify the credential the browser created for the pending challenge and keep its
    public key; unnamed, it is called after the device (``user_agent``) it was made on."""
    challenge = _challenge(_REGISTER, customer.id)
    handle = session.pop(_REGISTER + "_handle", None)
    rp_id, origin = _relying_party()
    try:
        verified = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
        )
    except Exception as exc:  # the library raises many kinds for a bad credential
        raise _ceremony_failed(exc) from None
    db = get_session()
    credential_id = bytes_to_base64url(verified.credential_id)
    if db.exec(select(Passkey).where(Passkey.credential_id == credential_id)).first():
        raise ApiError(409, "conflict", "this passkey is already added")
    response_part = credential.get("response")
    transports = response_part.get("transports") if isinstance(response_part, dict) else None
    passkey = Passkey(
        customer_id=customer.id,  # type: ignore[arg-type]
        credential_id=credential_id,
        public_key=bytes_to_base64url(verified.credential_public_key),
        sign_count=verified.sign_count,
        user_handle=handle if isinstance(handle, str) else bytes_to_base64url(b""),
        transports=[t for t in transports if isinstance(t, str)][:10]
        if isinstance(transports, list)
        else [],
        name=(name or "").strip()[:100] or device_label(user_agent),
    )
    db.add(passkey)
    db.commit()
    return passkey


# --- signing in with a passkey (no session yet) ----------------------------------------------


def authentication_options() -> str:
    """Options (WebAuthn JSON) to sign in: no account named, the authenticator offers its own."""
    rp_id, _ = _relying_party()
    options = generate_authentication_options(
        rp_id=rp_id, user_verification=UserVerificationRequirement.PREFERRED
    )
    _offer(_AUTHENTICATE, options.challenge)
    return options_to_json(options)


def verify_sign_in(credential: dict[str, Any]) -> Customer:
    """The customer whose passkey signed the pending challenge (401 for any other answer).

    The new signature count is recorded, not committed: the caller commits with the session."""
    challenge = _challenge(_AUTHENTICATE)
    db = get_session()
    raw_id = credential.get("rawId") or credential.get("id")
    passkey = (
        db.exec(select(Passkey).where(Passkey.credential_id == raw_id)).first()
        if isinstance(raw_id, str) and len(raw_id) <= 1400
        else None
    )
    if passkey is None:
        raise ApiError(401, "unknown_passkey", "this passkey is not (or no longer) on any account")
    response_part = credential.get("response")
    handle = response_part.get("userHandle") if isinstance(response_part, dict) else None
    if handle and handle != passkey.user_handle:
        raise ApiError(401, "unknown_passkey", "this passkey belongs to another account")
    rp_id, origin = _relying_party()
    try:
        verified = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp_id,
            expected_origin=origin,
            credential_public_key=base64url_to_bytes(passkey.public_key),
            credential_current_sign_count=passkey.sign_count,
        )
    except Exception as exc:  # a bad signature, a replayed counter, the wrong origin...
        raise ApiError(
            401, "invalid_passkey", f"the passkey did not verify: {str(exc)[:200]}"
        ) from None
    passkey.sign_count = verified.new_sign_count
    passkey.last_used_at = utcnow()
    db.add(passkey)
    customer = db.get(Customer, passkey.customer_id)
    assert customer is not None
    return customer
