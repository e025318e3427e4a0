"""A live Waybill on 127.0.0.1 (a migrated database of each backend), Chromium, and helpers.

Browser tests skip, saying why, when /usr/bin/chromium is missing. Tools injected into pages
(axe-core) come from tests/js/node_modules, installed by ``make test`` through ``npm ci``.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import Backend, make_settings
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.smtp import SMTPServer
from tests.utils.wsgi import files_read_whole
from waybill import close_app, create_app

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE = {"width": 360, "height": 740}
AXE = Path(__file__).resolve().parents[1] / "js" / "node_modules" / "axe-core" / "axe.min.js"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ago(**delta: float) -> str:
    """An instant this long before now: screens judge an order by today's date (a window
    passed, delivered "recently"), so a fixed date would make a test that passes only until
    it falls behind."""
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


@dataclass
class LiveServer:
    """The real app served over real sockets, and a merchant that feeds it through the API."""

    url: str
    app: Flask
    merchant: MerchantActions
    auth: AuthActions
    smtp: SMTPServer

    def order_in_transit(
        self, email: str = "shopper@example.com", *, scanned_at: str | None = None, **fields: Any
    ) -> dict[str, Any]:
        """An order with one shipment scanned in transit (three hours ago unless
        ``scanned_at``): what a customer usually opens."""
        order = self.merchant.create_order(
            email=email,
            items=[
                {"name": "Trail running shoes", "quantity": 1},
                {"name": "Socks", "quantity": 2},
            ],
            **fields,
        )
        shipment = self.merchant.add_shipment(order["id"], carrier="DHL")
        r = self.merchant.scan(
            shipment["id"], "in_transit", scanned_at or ago(hours=3), location="Leipzig hub"
        )
        assert r.status_code == 201, r.get_json()
        return {**r.get_json(), "shipment_id": shipment["id"]}

    def token_of(self, order: dict[str, Any]) -> str:
        return str(order["tracking_url"]).rsplit("/", 1)[1]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[LiveServer]:
    """One server per module, on a database of each backend."""
    instance = tmp_path_factory.mktemp("live")
    with backend.database(instance):
        yield from _serve(instance)


def _serve(instance: Path, **overrides: Any) -> Iterator[LiveServer]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    smtp = SMTPServer().start()
    settings = make_settings(
        instance,
        base_url=url,
        smtp_url=smtp.url,
        push_endpoint_hosts=("127.0.0.1:*",),
        extra={"rate_limits": {"tracking_wrong_token_per_ip": "1000/minute"}},
        **overrides,
    )
    app = create_app(settings)
    server: BaseWSGIServer = make_server("127.0.0.1", port, files_read_whole(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="live-server", daemon=True)
    thread.start()
    client = app.test_client()
    try:
        yield LiveServer(
            url=url,
            app=app,
            merchant=make_merchant(app, client),
            auth=AuthActions(app, client),
            smtp=smtp,
        )
    finally:
        server.shutdown()
        smtp.stop()
        thread.join(timeout=10)
        close_app(app)


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Any]:
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium: `make test` installs Debian's chromium when run as root")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        yield p


@pytest.fixture(scope="session")
def browser(playwright_instance: Any) -> Iterator[Any]:
    b = playwright_instance.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
    yield b
    b.close()


@pytest.fixture
def phone(browser: Any) -> Iterator[Any]:
    """A fresh phone-sized context (its own cookies, caches and service workers)."""
    context = browser.new_context(
        viewport=PHONE,
        device_scale_factor=2,
        is_mobile=True,
        has_touch=True,
        locale="en-GB",
        timezone_id="Europe/Berlin",
    )
    yield context
    context.close()


def sign_in(context: Any, server: LiveServer, email: str) -> None:
    """Sign in the way the emailed link does: open it, press the button."""
    page = context.new_page()
    page.goto(f"{server.url}/auth/link/{server.auth.login_link(email)}")
    page.get_by_role("button", name="Sign in").click()
    page.wait_for_url(f"{server.url}/")
    # The app has seen who is signed in (what a tracking page opened later asks about): a page
    # closed before that would leave this browser as one that never signed in.
    page.wait_for_function("() => localStorage.getItem('waybill.signedIn')")
    page.close()


def push_to_worker(context: Any, page: Any, origin: str) -> Any:
    """A function delivering a push message (its text) to the service worker of ``page``, as
    the browser does when its push service forwards one (through the DevTools protocol)."""
    cdp = context.new_cdp_session(page)
    registrations: list[dict[str, Any]] = []
    cdp.on(
        "ServiceWorker.workerRegistrationUpdated",
        lambda e: registrations.extend(r for r in e["registrations"] if not r["isDeleted"]),
    )
    cdp.send("ServiceWorker.enable")
    for _ in range(100):  # the registrations arrive as an event just after enable
        if registrations:
            break
        page.wait_for_timeout(50)
    assert registrations, "CDP reported no service worker registration within 5 s"
    registration_id = registrations[0]["registrationId"]

    def push(data: str) -> None:
        cdp.send(
            "ServiceWorker.deliverPushMessage",
            {"origin": origin + "/", "registrationId": registration_id, "data": data},
        )

    return push


def axe_violations(page: Any) -> list[dict[str, Any]]:
    """Serious and critical axe-core findings on the page as it is now."""
    if not AXE.exists():
        pytest.skip("axe-core is not installed: run `npm ci` in tests/js (make test does)")
    # Injected through evaluate, not a <script> tag: the strict CSP forbids inline scripts.
    page.evaluate(AXE.read_text())
    result = page.evaluate("async () => (await axe.run(document)).violations")
    return [
        {
            "id": v["id"],
            "impact": v["impact"],
            "help": v["help"],
            "nodes": [n["target"] for n in v["nodes"]][:5],
        }
        for v in result
        if v["impact"] in ("serious", "critical")
    ]
