"""Passkeys: the API's guards, and the whole journey in Chromium with a virtual authenticator.

WebAuthn refuses IP addresses as relying-party ids, so the live server's base URL is
``http://localhost:<port>`` (a secure context, like 127.0.0.1).
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from sqlmodel import select
from werkzeug.serving import make_server

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, make_merchant
from tests.utils.pages import wait_until
from tests.utils.wsgi import files_read_whole
from waybill import close_app, create_app
from waybill.auth.models import Passkey, PasskeyChallenge
from waybill.db import session_scope
from waybill.models import utcnow

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


# --- the API, without a browser -------------------------------------------------------------


def test_managing_passkeys_needs_a_session_and_the_csrf_token(client, auth, merchant):
    assert client.get("/api/me/passkeys").status_code == 401
    assert client.post("/api/me/passkeys/options", json={}).status_code == 401
    merchant.create_order(email="pk@example.com")
    csrf = auth.sign_in("pk@example.com")
    assert client.get("/api/me/passkeys").get_json() == {"passkeys": []}
    assert client.post("/api/me/passkeys/options", json={}).status_code == 403
    r = client.post("/api/me/passkeys/options", json={}, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200
    options = r.get_json()
    assert options["authenticatorSelection"]["residentKey"] == "required"
    assert options["rp"]["id"] == "127.0.0.1" and options["user"]["name"] == "pk@example.com"


def test_a_made_up_credential_is_refused_and_the_challenge_is_used_once(client, auth, merchant):
    merchant.create_order(email="pk@example.com")
    csrf = auth.sign_in("pk@example.com")
    headers = {"X-CSRF-Token": csrf}
    client.post("/api/me/passkeys/options", json={}, headers=headers)
    fake = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "attestationObject": "oA"},
    }
    r = client.post("/api/me/passkeys", json={"credential": fake}, headers=headers)
    assert r.status_code == 422 and r.get_json()["error"]["fields"]["credential"]
    r = client.post("/api/me/passkeys", json={"credential": fake}, headers=headers)
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "no_challenge"


def test_passkey_sign_in_refuses_unknown_credentials(client):
    fake = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"},
    }
    r = client.post("/auth/passkey", json={"credential": fake})
    assert r.status_code == 400  # no options asked for on this browser
    r = client.post("/auth/passkey/options", json={})
    options = r.get_json()
    assert options["challenge"] and options.get("allowCredentials", []) == []
    # The challenge rides in Flask's signed cookie, as guarded as the session's.
    flow = [c for c in r.headers.getlist("Set-Cookie") if c.startswith("waybill_flow=")]
    assert len(flow) == 1
    attrs = [a.strip().lower() for a in flow[0].split(";")]
    assert "httponly" in attrs and "samesite=lax" in attrs
    r = client.post("/auth/passkey", json={"credential": fake})
    assert r.status_code == 401
    assert client.get("/api/me").status_code == 401


def test_a_replayed_challenge_cookie_finds_nothing_to_spend(app, client):
    """The challenge is spent on the server: an old copy of the flow cookie is worth nothing,
    and one not answered within five minutes has expired."""
    fake = {
        "id": "AAAA",
        "rawId": "AAAA",
        "type": "public-key",
        "response": {"clientDataJSON": "e30", "authenticatorData": "AA", "signature": "AA"},
    }
    client.post("/auth/passkey/options", json={})
    saved = client.get_cookie("waybill_flow").value
    assert client.post("/auth/passkey", json={"credential": fake}).status_code == 401
    client.set_cookie("waybill_flow", saved)  # the attacker's copy of the cookie
    r = client.post("/auth/passkey", json={"credential": fake})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "no_challenge"

    client.post("/auth/passkey/options", json={})
    with session_scope(app.extensions["waybill.engine"]) as s:
        s.exec(sa.update(PasskeyChallenge).values(expires_at=utcnow() - timedelta(seconds=1)))
    r = client.post("/auth/passkey", json={"credential": fake})
    assert r.status_code == 400 and "expired" in r.get_json()["error"]["message"]


def test_another_customers_passkey_cannot_be_removed(app, client, auth, merchant):
    merchant.create_order(email="owner@example.com")
    merchant.create_order(email="other@example.com")
    with session_scope(app.extensions["waybill.engine"]) as session:
        from waybill.auth.login import find_customer

        owner = find_customer(session, "owner@example.com")
        assert owner is not None
        key = Passkey(
            customer_id=owner.id,
            credential_id="cred",
            public_key="pk",  # type: ignore[arg-type]
            user_handle="h",
            name="Phone",
        )
        session.add(key)
        session.flush()
        key_id = key.id
    csrf = auth.sign_in("other@example.com")
    r = client.delete(f"/api/me/passkeys/{key_id}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404
    assert client.get("/api/me/passkeys").get_json() == {"passkeys": []}


# --- in Chromium ----------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def localhost_server(instance_dir: Path) -> Iterator[tuple[str, Any]]:
    instance = instance_dir
    port = _free_port()
    url = f"http://localhost:{port}"
    app = create_app(make_settings(instance, base_url=url))
    server = make_server("127.0.0.1", port, files_read_whole(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, app
    finally:
        server.shutdown()
        thread.join(10)
        close_app(app)


def run_in_chromium(scenario: Callable[[Any], None]) -> None:
    """Run ``scenario(page)`` in a fresh Chromium, on a thread of its own.

    The browser tests under tests/browser keep a session-wide sync Playwright on the main
    thread, and a second one cannot start beside it there; on its own thread it can.
    """
    failures: list[BaseException] = []

    def run() -> None:
        from playwright.sync_api import sync_playwright

        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
                try:
                    context = browser.new_context(
                        viewport={"width": 390, "height": 800}, locale="en-GB"
                    )
                    scenario(context.new_page())
                finally:
                    browser.close()
        except BaseException as exc:  # handed to the test's thread
            failures.append(exc)

    thread = threading.Thread(target=run, name="chromium-scenario")
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), "the browser scenario did not finish in 120 s"
    if failures:
        raise failures[0]


@pytest.fixture
def in_chromium() -> Callable[[Callable[[Any], None]], None]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    return run_in_chromium


def _passkeys_in_db(app: Any) -> list[Passkey]:
    with session_scope(app.extensions["waybill.engine"]) as session:
        return list(session.exec(select(Passkey)))


@pytest.mark.browser
def test_register_sign_out_and_sign_in_with_the_passkey_alone(localhost_server, in_chromium):
    url, app = localhost_server
    client = app.test_client()
    make_merchant(app, client).create_order(email="passkey@example.com")
    link = AuthActions(app, client).login_link("passkey@example.com")

    def scenario(page: Any) -> None:
        cdp = page.context.new_cdp_session(page)
        cdp.send("WebAuthn.enable")
        authenticator = cdp.send(
            "WebAuthn.addVirtualAuthenticator",
            {
                "options": {
                    "protocol": "ctap2",
                    "transport": "internal",
                    "hasResidentKey": True,
                    "hasUserVerification": True,
                    "isUserVerified": True,
                    "automaticPresenceSimulation": True,
                }
            },
        )["authenticatorId"]

        page.goto(f"{url}/auth/link/{link}")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/")

        page.goto(f"{url}/settings")
        page.locator("#add-passkey").click()
        wait_until(
            page,
            "() => document.querySelector('#passkey-status')?.textContent === 'Passkey added.'",
            "'Passkey added.'",
        )
        assert page.locator("#passkey-list li[data-passkey-id]").count() == 1
        stored = _passkeys_in_db(app)
        assert len(stored) == 1 and stored[0].sign_count >= 0
        creds = cdp.send("WebAuthn.getCredentials", {"authenticatorId": authenticator})[
            "credentials"
        ]
        assert len(creds) == 1 and creds[0]["isResidentCredential"] is True

        page.locator("#sign-out").click()
        page.wait_for_url(f"{url}/sign-in")
        me = page.evaluate("async () => (await fetch('/api/me')).status")
        assert me == 401

        page.locator("#passkey-sign-in").click()
        page.wait_for_url(f"{url}/")
        who = page.evaluate("async () => (await (await fetch('/api/me')).json()).email")
        assert who == "passkey@example.com"
        assert _passkeys_in_db(app)[0].last_used_at is not None

        # Remove it: it no longer signs in.
        page.goto(f"{url}/settings")
        page.locator("#passkey-list li[data-passkey-id] button").click()
        wait_until(
            page,
            "() => !document.querySelector('#passkey-list li[data-passkey-id]')",
            "the removed passkey to leave the list",
        )
        assert _passkeys_in_db(app) == []
        page.locator("#sign-out").click()
        page.wait_for_url(f"{url}/sign-in")
        page.locator("#passkey-sign-in").click()
        wait_until(
            page,
            "() => document.querySelector('#passkey-error')?.textContent.length > 0",
            "an error for the removed passkey",
        )
        assert page.evaluate("async () => (await fetch('/api/me')).status") == 401

    in_chromium(scenario)
