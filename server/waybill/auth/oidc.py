"""Sign in with any OpenID Connect provider (authlib): code flow, PKCE S256, state and nonce.

The provider is discovered from ``WAYBILL_OIDC_ISSUER``; register
``<BASE_URL>/auth/oidc/callback`` as the redirect URI. Only an email address the provider says
is verified signs in, and only into the customer that already has that address: customers come
from merchants' orders, so an address with no orders is refused, and no empty account is made
(the same as the email sign-in, which mails nothing to unknown addresses).
Many providers put only ``sub`` in the ID token; the email is then read from userinfo, whose
``sub`` must match the ID token's. The routes are in ``waybill.api.oidc``.
"""

from __future__ import annotations

import logging
from typing import Any

from authlib.common.errors import AuthlibBaseError
from authlib.integrations.flask_client import OAuth
from flask import Flask, Response, current_app
from sqlmodel import Session

from waybill.auth import login
from waybill.config import Settings
from waybill.models import Customer

log = logging.getLogger(__name__)

# Why a sign-in through the provider signs no one in (the routes word each for the person).
NOT_CONFIGURED = "not_configured"
UNREACHABLE = "unreachable"
FAILED = "failed"
UNVERIFIED = "unverified"
NO_ORDERS = "no_orders"


class SignInRefused(Exception):
    """The provider's answer signs no one in; ``reason`` is one of the constants above."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


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
    if oauth is None:
        raise SignInRefused(NOT_CONFIGURED)
    return oauth.provider


def start(redirect_uri: str) -> Response:
    """The redirect to the provider's sign-in; authlib makes and keeps (in the signed flow
    cookie) state, nonce and the PKCE verifier."""
    client = _client()
    try:
        return client.authorize_redirect(redirect_uri)  # type: ignore[no-any-return]
    except (AuthlibBaseError, OSError, ValueError) as exc:
        log.warning("OpenID provider unreachable: %s", exc)
        raise SignInRefused(UNREACHABLE) from None


def _claims(client: Any) -> dict[str, Any]:
    """What the provider says about the person who came back with this request's code."""
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
        raise SignInRefused(FAILED) from None
    return claims


def finish(session: Session) -> Customer:
    """The customer the provider's answer to this request signs in, named as the provider
    names them (added to ``session``, not committed)."""
    claims = _claims(_client())
    email = claims.get("email")
    if not isinstance(email, str) or claims.get("email_verified") is not True:
        raise SignInRefused(UNVERIFIED)
    customer = login.find_customer(session, email)
    if customer is None:
        raise SignInRefused(NO_ORDERS)
    name = claims.get("name")
    if isinstance(name, str) and name.strip():
        customer.name = name.strip()[:200]
        session.add(customer)
    return customer
