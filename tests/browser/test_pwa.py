"""The PWA in a real Chromium at phone size (360×740), against a live server."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveServer, axe_violations, sign_in

pytestmark = pytest.mark.browser


def real_errors(errors: list[str], server: LiveServer) -> list[str]:
    """Console errors, less the failed socket handshakes while no /ws endpoint exists."""
    if server.has_socket:
        return errors
    return [e for e in errors if "WebSocket" not in e]


def open_tracking(context: Any, server: LiveServer, order: dict[str, Any]) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    page.goto(f"{server.url}/t/{server.token_of(order)}")
    page.get_by_role("heading", level=1).wait_for()
    page.errors = errors  # type: ignore[attr-defined]
    return page


def test_tracking_page_shows_status_timeline_items_and_carrier(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    assert page.locator("h1").inner_text() == "On the way"
    assert "Test Shop" in page.locator(".merchant").inner_text()
    assert order["external_id"] in page.locator(".merchant").inner_text()
    timeline = page.locator(".timeline li")
    assert "Leipzig hub" in timeline.first.inner_text()  # newest first
    assert "2 × Socks" in page.locator(".items").inner_text()
    link = page.get_by_role("link", name="Track at DHL")
    assert "dhl.com" in (link.get_attribute("href") or "")
    assert page.get_by_role("button", name="Notify me").is_visible()
    assert real_errors(page.errors, live_server) == []  # type: ignore[attr-defined]
