"""Passkeys (WebAuthn, the ``webauthn`` package): add one once signed in, then sign in with it.

Passkeys are discoverable credentials: signing in asks for no address, the authenticator
offers the accounts it holds for this site. Each ceremony's challenge is kept on the server
(``passkey_challenge``, by its hash, for five minutes) and in Flask's signed cookie
(``waybill_flow``), and is spent on the server when it is answered: it works once. Only
public keys are stored.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import sqlalchemy as sa
from flask import Blueprint, current_app, jsonify, make_response, request, session
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlmodel import col, select
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

from waybill.api.spec import operation, parse_body
from waybill.auth import sessions
from waybill.auth.models import Passkey, PasskeyChallenge
from waybill.config import Settings
from waybill.db import get_session
from waybill.devices import device_label
from waybill.errors import ApiError, not_found
from waybill.models import Customer, SignedIn, utcnow

account_bp = Blueprint("passkeys_api", __name__, url_prefix="/api/me/passkeys")
sign_in_bp = Blueprint("passkey_sign_in", __name__, url_prefix="/auth/passkey")
MAX_ID = 2**63 - 1
_REGISTER, _AUTHENTICATE = "passkey_register", "passkey_authenticate"


class CeremonyOptions(BaseModel):
    """Options for navigator.credentials.create() or .get(), as WebAuthn JSON."""

    model_config = ConfigDict(extra="allow")
    challenge: str


class PasskeyRegistration(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credential: dict[str, Any]  # PublicKeyCredential.toJSON() of the new credential
    name: str | None = Field(default=None, max_length=100)


class PasskeySignIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    credential: dict[str, Any]  # PublicKeyCredential.toJSON() of the assertion


class PasskeyPublic(BaseModel):
    """A passkey."""

    id: int
    name: str
    created_at: AwareDatetime
    last_used_at: AwareDatetime | None


class PasskeyList(BaseModel):
    """The customer's passkeys, oldest first."""

    passkeys: list[PasskeyPublic]


def _relying_party() -> tuple[str, str]:
    """The RP id (host) and the origin a browser reports for this site."""
    settings: Settings = current_app.config["WAYBILL_SETTINGS"]
    base = urlsplit(settings.base_url)
    return base.hostname or "localhost", f"{base.scheme}://{base.netloc}"


def _public(p: Passkey) -> PasskeyPublic:
    return PasskeyPublic(
        id=p.id,
        name=p.name,
        created_at=p.created_at,
        last_used_at=p.last_used_at,  # type: ignore[arg-type]
    )


def _ceremony_failed(exc: Exception) -> ApiError:
    return ApiError(
        422, "invalid", "the passkey could not be verified", {"credential": str(exc)[:200]}
    )


CHALLENGE_LIFETIME = timedelta(minutes=5)


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
            purpose=key,
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
            col(PasskeyChallenge.purpose) == key,
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


@account_bp.before_request
def _signed_in() -> None:
    sessions.require_signed_in()


def _customer() -> Customer:
    customer = sessions.current_customer()
    if customer is None:
        raise ApiError(401, "unauthorized", "sign in first")
    return customer


def _passkeys_of(customer_id: int) -> list[Passkey]:
    return list(
        get_session().exec(
            select(Passkey).where(Passkey.customer_id == customer_id).order_by(Passkey.id)  # type: ignore[arg-type]
        )
    )


@account_bp.get("")
@operation(
    "The customer's passkeys", responses={200: PasskeyList}, security="session", tag="customer"
)
def list_passkeys() -> Any:
    keys = _passkeys_of(_customer().id)  # type: ignore[arg-type]
    return jsonify(PasskeyList(passkeys=[_public(p) for p in keys]).model_dump(mode="json"))


@account_bp.post("/options")
@operation(
    "Options to create a passkey for this account",
    responses={200: CeremonyOptions},
    security="session",
    tag="customer",
)
def registration_options() -> Any:
    customer = _customer()
    existing = _passkeys_of(customer.id)  # type: ignore[arg-type]
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
    return current_app.response_class(options_to_json(options), mimetype="application/json")


@account_bp.post("")
@operation(
    "Add the passkey the browser just created",
    body=PasskeyRegistration,
    responses={201: PasskeyPublic},
    security="session",
    tag="customer",
)
def add_passkey() -> Any:
    data = parse_body(PasskeyRegistration)
    customer = _customer()
    challenge = _challenge(_REGISTER, customer.id)
    handle = session.pop(_REGISTER + "_handle", None)
    rp_id, origin = _relying_party()
    try:
        verified = verify_registration_response(
            credential=data.credential,
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
    response_part = data.credential.get("response")
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
        name=(data.name or "").strip()[:100] or device_label(request.user_agent.string),
    )
    db.add(passkey)
    db.commit()
    return jsonify(_public(passkey).model_dump(mode="json")), 201


@account_bp.delete("/<int:passkey_id>")
@operation("Remove a passkey", responses={204: None}, security="session", tag="customer")
def remove_passkey(passkey_id: int) -> Any:
    customer = _customer()
    db = get_session()
    passkey = db.get(Passkey, passkey_id) if passkey_id <= MAX_ID else None
    if passkey is None or passkey.customer_id != customer.id:
        raise not_found("passkey")
    db.delete(passkey)
    db.commit()
    return make_response("", 204)


# --- signing in with a passkey (no session yet) ----------------------------------------------


@sign_in_bp.post("/options")
@operation("Options to sign in with a passkey", responses={200: CeremonyOptions}, tag="auth")
def authentication_options() -> Any:
    rp_id, _ = _relying_party()
    options = generate_authentication_options(
        rp_id=rp_id, user_verification=UserVerificationRequirement.PREFERRED
    )
    _offer(_AUTHENTICATE, options.challenge)
    return current_app.response_class(options_to_json(options), mimetype="application/json")


@sign_in_bp.post("")
@operation(
    "Sign in with a passkey", body=PasskeySignIn, responses={200: SignedIn, 401: None}, tag="auth"
)
def passkey_sign_in() -> Any:
    data = parse_body(PasskeySignIn)
    challenge = _challenge(_AUTHENTICATE)
    db = get_session()
    raw_id = data.credential.get("rawId") or data.credential.get("id")
    passkey = (
        db.exec(select(Passkey).where(Passkey.credential_id == raw_id)).first()
        if isinstance(raw_id, str) and len(raw_id) <= 1400
        else None
    )
    if passkey is None:
        raise ApiError(401, "unknown_passkey", "this passkey is not (or no longer) on any account")
    response_part = data.credential.get("response")
    handle = response_part.get("userHandle") if isinstance(response_part, dict) else None
    if handle and handle != passkey.user_handle:
        raise ApiError(401, "unknown_passkey", "this passkey belongs to another account")
    rp_id, origin = _relying_party()
    try:
        verified = verify_authentication_response(
            credential=data.credential,
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
    response = jsonify(SignedIn(signed_in=True, redirect="/").model_dump(mode="json"))
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response
