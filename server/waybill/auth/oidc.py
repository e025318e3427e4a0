"""Sign in with any OpenID Connect provider (authlib): code flow, PKCE S256, state and nonce.

The provider is discovered from ``WAYBILL_OIDC_ISSUER``; register
``<BASE_URL>/auth/oidc/callback`` as the redirect URI. Only an email address the provider says
is verified signs in, and only into the customer that already has that address: customers come
from merchants' orders, so an address with no orders gets a page that says so, and no empty
account is made (the same as the email sign-in, which mails nothing to unknown addresses).
Many providers put only ``sub`` in the ID token; the email is then read from userinfo, whose
``sub`` must match the ID token's.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Blueprint, Flask, current_app, jsonify, redirect, render_template_string
from pydantic import BaseModel

from waybill.api.spec import operation
from waybill.auth import login, sessions
from waybill.config import Settings
from waybill.db import get_session

bp = Blueprint("oidc", __name__)
log = logging.getLogger(__name__)

_PAGE = """{% extends "base.html" %}
{% block title %}Sign-in failed · Waybill{% endblock %}
{% block main %}<h1>{{ title }}</h1><p>{{ message }}</p><p><a href="/">Back to Waybill</a></p>
{% endblock %}"""


class SignInMethods(BaseModel):
    """How a customer can sign in here."""

    email: bool
    oidc: bool
    oidc_login_url: str | None
    passkeys: bool


def _settings() -> Settings:
    return current_app.config["WAYBILL_SETTINGS"]  # type: ignore[no-any-return]


def init_app(app: Flask) -> None:
    """Register the provider when one is configured (discovery happens on first use)."""
    settings: Settings = app.config["WAYBILL_SETTINGS"]
    if not settings.oidc_issuer:
        return
    oauth = OAuth(app)
    oauth.register(
        "provider",
        client_id=settings.oidc_client_id,
        client_secret=settings.oidc_client_secret or None,
        server_metadata_url=settings.oidc_issuer.rstrip("/") + "/.well-known/openid-configuration",
        client_kwargs={
            "scope": "openid email profile",
            "code_challenge_method": "S256",
            "timeout": 10,
        },
    )
    app.extensions["waybill.oidc"] = oauth


def _client() -> Any:
    oauth = current_app.extensions.get("waybill.oidc")
    return oauth.provider if oauth is not None else None


def _refuse(status: int, title: str, message: str) -> Any:
    return render_template_string(_PAGE, title=title, message=message), status


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
    client = _client()
    if client is None:
        return _refuse(404, "No OpenID sign-in here", "This server signs in by email.")
    try:
        # authlib makes and keeps (in the signed flow cookie) state, nonce and the PKCE verifier.
        return client.authorize_redirect(f"{_settings().base_url}/auth/oidc/callback")
    except (AuthlibBaseError, OSError, ValueError) as exc:
        log.warning("OpenID provider unreachable: %s", exc)
        return _refuse(502, "The sign-in provider did not answer", "Try again in a moment.")


@bp.get("/auth/oidc/callback")
def oidc_callback() -> Any:
    client = _client()
    if client is None:
        return _refuse(404, "No OpenID sign-in here", "This server signs in by email.")
    try:
        token = client.authorize_access_token()
        if "id_token" not in token or "userinfo" not in token:
            raise ValueError("the provider answered without an ID token")
        claims = dict(token["userinfo"])  # the ID token's claims, nonce checked by authlib
        if "email" not in claims or "email_verified" not in claims:
            info = dict(client.userinfo(token=token))
            if info.get("sub") != claims.get("sub"):
                raise ValueError("userinfo is about another subject than the ID token")
            claims.update(info)
    except (AuthlibBaseError, OSError, ValueError, KeyError) as exc:
        log.info("OpenID sign-in refused: %s", exc)
        return _refuse(400, "Sign-in did not work", "Please start again from the sign-in screen.")
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        return _refuse(
            403,
            "Your provider has not verified that address",
            "Verify your email address with your provider, or sign in with an emailed link.",
        )
    db = get_session()
    customer = login.find_customer(db, email)
    if customer is None:
        return _refuse(
            403,
            "No orders for this address yet",
            "When a shop sends us an order for this address, you can sign in with it.",
        )
    name = claims.get("name")
    if isinstance(name, str) and name.strip():
        customer.name = name.strip()[:200]
        db.add(customer)
    response = redirect("/", code=303)
    sessions.start(session=db, customer=customer, response=response)
    db.commit()
    return response
