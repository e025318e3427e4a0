"""OpenID Connect routes: which sign-in methods exist, the hand-over to the provider and the
way back. The provider and its claims are ``waybill.auth.oidc``."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify, redirect, render_template
from pydantic import BaseModel

from waybill.api.spec import operation
from waybill.auth import oidc, sessions
from waybill.config import Settings
from waybill.db import get_session

bp = Blueprint("oidc", __name__)

_REFUSALS: dict[str, tuple[int, str, str]] = {
    oidc.NOT_CONFIGURED: (404, "No OpenID sign-in here", "This server signs in by email."),
    oidc.UNREACHABLE: (502, "The sign-in provider did not answer", "Try again in a moment."),
    oidc.FAILED: (400, "Sign-in did not work", "Please start again from the sign-in screen."),
    oidc.UNVERIFIED: (
        403,
        "Your provider has not verified that address",
        "Verify your email address with your provider, or sign in with an emailed link.",
    ),
    oidc.NO_ORDERS: (
        403,
        "No orders for this address yet",
        "When a shop sends us an order for this address, you can sign in with it.",
    ),
}


class SignInMethods(BaseModel):
    """How a customer can sign in here."""

    email: bool
    oidc: bool
    oidc_login_url: str | None
    passkeys: bool


def _settings() -> Settings:
    return current_app.config["WAYBILL_SETTINGS"]  # type: ignore[no-any-return]


def _refused(refusal: oidc.SignInRefused) -> Any:
    status, title, message = _REFUSALS[refusal.reason]
    return render_template("oidc_refused.html", title=title, message=message), status


@bp.get("/api/auth/methods")
@operation("The sign-in methods this server offers", responses={200: SignInMethods}, tag="auth")
def methods() -> Any:
    enabled = bool(_settings().oidc_issuer)
    body = SignInMethods(
        email=True,
        oidc=enabled,
        oidc_login_url="/auth/oidc/login" if enabled else None,
        passkeys=True,
    )
    return jsonify(body.model_dump(mode="json"))


@bp.get("/auth/oidc/login")
def oidc_login() -> Any:
    try:
        return oidc.start(f"{_settings().base_url}/auth/oidc/callback")
    except oidc.SignInRefused as refusal:
        return _refused(refusal)


@bp.get("/auth/oidc/callback")
def oidc_callback() -> Any:
    db = get_session()
    try:
        customer = oidc.finish(db)
    except oidc.SignInRefused as refusal:
        return _refused(refusal)
    response = redirect("/", code=303)
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response
