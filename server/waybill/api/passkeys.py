"""Passkey routes: list, add and remove a signed-in customer's passkeys, and sign in with one.

The ceremonies themselves (challenges, verification, the stored keys) are
``waybill.auth.passkeys``.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, make_response, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field

from waybill.api.access import owned_or_404
from waybill.api.spec import operation, parse_body
from waybill.auth import passkeys, sessions
from waybill.auth.models import Passkey
from waybill.db import get_session
from waybill.models import SignedIn

account_bp = Blueprint("passkeys_api", __name__, url_prefix="/api/me/passkeys")
sign_in_bp = Blueprint("passkey_sign_in", __name__, url_prefix="/auth/passkey")


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


def _public(p: Passkey) -> PasskeyPublic:
    return PasskeyPublic(
        id=p.id,
        name=p.name,
        created_at=p.created_at,
        last_used_at=p.last_used_at,  # type: ignore[arg-type]
    )


def _options(options_json: str) -> Any:
    return current_app.response_class(options_json, mimetype="application/json")


# --- managing passkeys (signed in) --------------------------------------------------------


@account_bp.before_request
def _signed_in() -> None:
    sessions.require_signed_in()


@account_bp.get("")
@operation(
    "The customer's passkeys", responses={200: PasskeyList}, security="session", tag="customer"
)
def list_passkeys() -> Any:
    keys = passkeys.passkeys_of(get_session(), sessions.require_signed_in().id)  # type: ignore[arg-type]
    return jsonify(PasskeyList(passkeys=[_public(p) for p in keys]).model_dump(mode="json"))


@account_bp.post("/options")
@operation(
    "Options to create a passkey for this account",
    responses={200: CeremonyOptions},
    security="session",
    tag="customer",
)
def registration_options() -> Any:
    return _options(passkeys.registration_options(sessions.require_signed_in()))


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
    passkey = passkeys.add(
        sessions.require_signed_in(),
        data.credential,
        name=data.name,
        user_agent=request.user_agent.string,
    )
    return jsonify(_public(passkey).model_dump(mode="json")), 201


@account_bp.delete("/<int:passkey_id>")
@operation("Remove a passkey", responses={204: None}, security="session", tag="customer")
def remove_passkey(passkey_id: int) -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    db.delete(owned_or_404(db, Passkey, passkey_id, "passkey", customer_id=customer.id))
    db.commit()
    return make_response("", 204)


# --- signing in with a passkey (no session yet) ----------------------------------------------


@sign_in_bp.post("/options")
@operation("Options to sign in with a passkey", responses={200: CeremonyOptions}, tag="auth")
def authentication_options() -> Any:
    return _options(passkeys.authentication_options())


@sign_in_bp.post("")
@operation(
    "Sign in with a passkey", body=PasskeySignIn, responses={200: SignedIn, 401: None}, tag="auth"
)
def passkey_sign_in() -> Any:
    data = parse_body(PasskeySignIn)
    customer = passkeys.verify_sign_in(data.credential)
    db = get_session()
    response = jsonify(SignedIn(signed_in=True, redirect="/").model_dump(mode="json"))
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response
