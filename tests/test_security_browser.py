"""In Chromium: shop- and customer-supplied text containing HTML stays text, no script runs,
and the strict CSP blocks nothing the PWA itself needs."""

from __future__ import annotations

from typing import Any

import pytest

from tests.test_passkeys import in_chromium, localhost_server  # noqa: F401  (fixtures)
from tests.utils.factories import AuthActions, make_merchant
from tests.utils.pages import wait_until

pytestmark = pytest.mark.browser

PAYLOAD = '<img src=x onerror="window.__xss=1"><script>window.__xss=2</script>'


def _no_script_ran(page: Any) -> None:
    # Markup turned into elements would leave them in the page, whether or not they fired yet.
    assert page.locator("main img[src='x'], main script").count() == 0
    assert page.evaluate("() => window.__xss") is None


def test_html_in_names_is_shown_as_text_and_runs_nothing(localhost_server, in_chromium):  # noqa: F811
    url, app = localhost_server
    client = app.test_client()
    merchant = make_merchant(app, client, name=f"Shop {PAYLOAD}")
    order = merchant.create_order(
        email="html@example.com",
        customer={"email": "html@example.com", "name": f"Eve {PAYLOAD}"},
        items=[{"name": f"Lamp {PAYLOAD}", "quantity": 1}],
    )
    shipment = merchant.add_shipment(order["id"])
    r = merchant.scan(
        shipment["id"],
        "in_transit",
        "2026-11-25T09:30:00+00:00",
        location=f"Hub {PAYLOAD}",
        description=f"Scan {PAYLOAD}",
    )
    assert r.status_code == 201
    link = AuthActions(app, client).login_link("html@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]

    def scenario(page: Any) -> None:
        violations: list[str] = []
        page.on(
            "console",
            lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
        )
        page.goto(f"{url}/auth/link/{link}")
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(f"{url}/")
        name = page.evaluate("async () => (await (await fetch('/api/me')).json()).name")
        assert name.startswith("Eve <img")

        for path in ("/", f"/orders/{order['id']}", "/settings", f"/t/{token}"):
            page.goto(f"{url}{path}")
            wait_until(page, "() => !document.querySelector('main .skeleton')", f"{path} to load")
            _no_script_ran(page)
            if path != "/settings":
                assert "<img src=x" in page.locator("main").inner_text(), path
        assert violations == []

    in_chromium(scenario)
