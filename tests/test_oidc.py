"""OIDC sign-in end to end against a real OpenID provider (npm oidc-provider) on loopback.

Waybill runs on a real socket; ``requests`` plays the browser: it follows the redirects, fills
in the provider's dev login screen and its consent screen, and lands back on Waybill.
"""

from __future__ import annotations

import html
import re
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urljoin, urlsplit

import pytest
import requests
from werkzeug.serving import make_server

from tests.conftest import make_settings
from tests.utils.factories import make_merchant
from tests.utils.wsgi import files_read_whole
from waybill import close_app, create_app

ROOT = Path(__file__).resolve().parents[1]
PROVIDER_SCRIPT = ROOT / "tests" / "utils" / "oidc_provider.mjs"
CLIENT_ID, CLIENT_SECRET = "waybill-test", "waybill-test-secret-0123456789abcdef"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_for(url: str, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"provider exited: {proc.stdout.read().decode()[-2000:]}")  # type: ignore[union-attr]
        try:
            if requests.get(url, timeout=1).status_code == 200:
                return
        except requests.ConnectionError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not come up")


@pytest.fixture
def provider_and_waybill(instance_dir: Path) -> Iterator[tuple[str, str]]:
    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    if not (ROOT / "tests" / "js" / "node_modules" / "oidc-provider").is_dir():
        pytest.skip("tests/js/node_modules is missing: run `npm ci` in tests/js")
    op_port, app_port = _free_port(), _free_port()
    base_url = f"http://127.0.0.1:{app_port}"
    issuer = f"http://127.0.0.1:{op_port}"
    proc = subprocess.Popen(
        [
            "node",
            str(PROVIDER_SCRIPT),
            str(op_port),
            CLIENT_ID,
            CLIENT_SECRET,
            f"{base_url}/auth/oidc/callback",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    app = create_app(
        make_settings(
            instance_dir,
            base_url=base_url,
            oidc_issuer=issuer,
            oidc_client_id=CLIENT_ID,
            oidc_client_secret=CLIENT_SECRET,
        )
    )
    server = make_server("127.0.0.1", app_port, files_read_whole(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        _wait_for(f"{issuer}/.well-known/openid-configuration", proc)
        merchant = make_merchant(app, app.test_client())
        merchant.create_order(email="ada@example.com")
        merchant.create_order(email="unverified-bob@example.com")
        yield base_url, issuer
    finally:
        server.shutdown()
        thread.join(5)
        proc.terminate()
        proc.wait(10)
        proc.stdout.close()  # type: ignore[union-attr]
        close_app(app)


def _form(page: requests.Response) -> tuple[str, dict[str, str]]:
    action = re.search(r'<form[^>]*action="([^"]+)"', page.text)
    assert action, page.text[:1000]
    fields = dict(re.findall(r'<input type="hidden" name="([^"]+)" value="([^"]*)"', page.text))
    return urljoin(page.url, html.unescape(action.group(1))), fields


def _sign_in_at_provider(browser: requests.Session, base_url: str, login: str) -> requests.Response:
    start = browser.get(f"{base_url}/auth/oidc/login", allow_redirects=False)
    assert start.status_code == 302
    query = parse_qs(urlsplit(start.headers["Location"]).query)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    assert query["state"][0] and query["nonce"][0]
    assert query["redirect_uri"] == [f"{base_url}/auth/oidc/callback"]
    page = browser.get(start.headers["Location"])
    action, fields = _form(page)
    assert "password" in page.text
    page = browser.post(action, data={**fields, "login": login, "password": "any"})
    if 'name="prompt" value="consent"' in page.text:  # the provider's consent screen
        action, fields = _form(page)
        page = browser.post(action, data=fields)
    return page


def test_verified_email_signs_in_as_the_customer_with_that_address(provider_and_waybill):
    base_url, _ = provider_and_waybill
    browser = requests.Session()
    landed = _sign_in_at_provider(browser, base_url, "Ada@Example.com")
    assert landed.status_code == 200 and landed.url == f"{base_url}/"
    me = browser.get(f"{base_url}/api/me")
    assert me.status_code == 200
    assert me.json()["email"] == "ada@example.com"
    assert me.json()["name"] == "Name of Ada"  # from userinfo: the ID token carried only sub
    orders = browser.get(f"{base_url}/api/me/orders").json()["orders"]
    assert len(orders) == 1


def test_unverified_email_is_refused(provider_and_waybill):
    base_url, _ = provider_and_waybill
    browser = requests.Session()
    landed = _sign_in_at_provider(browser, base_url, "unverified-bob@example.com")
    assert landed.status_code == 403
    assert "not verified" in landed.text
    assert browser.get(f"{base_url}/api/me").status_code == 401


def test_address_without_orders_makes_no_account(provider_and_waybill):
    base_url, _ = provider_and_waybill
    browser = requests.Session()
    landed = _sign_in_at_provider(browser, base_url, "nobody@example.com")
    assert landed.status_code == 403
    assert browser.get(f"{base_url}/api/me").status_code == 401


def test_callback_with_a_forged_state_is_refused(provider_and_waybill):
    base_url, _ = provider_and_waybill
    browser = requests.Session()
    browser.get(f"{base_url}/auth/oidc/login", allow_redirects=False)
    r = browser.get(f"{base_url}/auth/oidc/callback", params={"code": "x", "state": "forged"})
    assert r.status_code == 400
    assert browser.get(f"{base_url}/api/me").status_code == 401


def test_sign_in_methods_say_whether_oidc_is_configured(client, provider_and_waybill):
    assert client.get("/api/auth/methods").get_json()["oidc"] is False
    base_url, _ = provider_and_waybill
    body = requests.get(f"{base_url}/api/auth/methods").json()
    assert body["oidc"] is True and body["oidc_login_url"] == "/auth/oidc/login"
    assert client.get("/auth/oidc/login").status_code == 404


@pytest.mark.browser
def test_the_sign_in_screen_offers_the_provider_and_signs_in_through_it(provider_and_waybill):
    """In Chromium: the PWA's button, the provider's own login and consent screens, back home."""
    from tests.test_passkeys import CHROMIUM, run_in_chromium

    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    base_url, issuer = provider_and_waybill

    def scenario(page: Any) -> None:
        page.goto(f"{base_url}/sign-in")
        page.locator("#oidc-sign-in").click()
        page.wait_for_url(f"{issuer}/**")
        page.locator("input[name=login]").fill("ada@example.com")
        page.locator("input[name=password]").fill("any")
        with page.expect_navigation():
            page.locator("button[type=submit]").click()
        if page.locator("input[name=prompt][value=consent]").count():
            page.locator("button[type=submit]").click()
        page.wait_for_url(f"{base_url}/")
        email = page.evaluate("async () => (await (await fetch('/api/me')).json()).email")
        assert email == "ada@example.com"

    run_in_chromium(scenario)
