"""A shared device keeps no customer's orders for offline use past their sign-out: the service
worker's personal answers (/api/me…) are dropped at the first 401 once the device is back online
(signed out from another device meanwhile), and are never shown offline once a week old."""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveServer, sign_in
from tests.browser.test_pwa import wait_for_offline_copy
from tests.utils.factories import AuthActions
from tests.utils.pages import wait_until

pytestmark = pytest.mark.browser

DAY_MS = 24 * 3600 * 1000

KEPT = """async () => (await (await caches.open('waybill-api')).keys())
  .map((r) => new URL(r.url).pathname)"""

#: Stamp every kept personal answer as fetched ``age`` ms ago (what the worker wrote then).
AGE = """async (age) => {
  const cache = await caches.open('waybill-api');
  let aged = 0;
  for (const request of await cache.keys()) {
    if (!new URL(request.url).pathname.startsWith('/api/me')) continue;
    const kept = await cache.match(request);
    const headers = new Headers(kept.headers);
    headers.set('X-Waybill-Stored-At', String(Date.now() - age));
    const body = await kept.arrayBuffer();
    await cache.put(request, new Response(body, { status: kept.status, headers }));
    aged += 1;
  }
  return aged;
}"""


def personal(page: Any) -> list[str]:
    return [path for path in page.evaluate(KEPT) if path.startswith("/api/me")]


def home_kept_for_offline(page: Any, server: LiveServer, order: dict[str, Any]) -> None:
    """Home loaded through the worker, with both of its answers (/api/me, /api/me/orders) kept."""
    page.goto(server.url + "/")
    page.locator(f'[data-order="{order["id"]}"]').wait_for()
    wait_for_offline_copy(page)
    page.reload()  # the first load may have bypassed the worker: this one goes through it
    page.locator(f'[data-order="{order["id"]}"]').wait_for()
    wait_until(
        page,
        """async () => {
          const kept = (await (await caches.open('waybill-api')).keys())
            .map((r) => new URL(r.url).pathname);
          return kept.includes('/api/me') && kept.includes('/api/me/orders');
        }""",
        "the home screen's answers kept for offline use",
    )


def sign_out_from_another_device(server: LiveServer, email: str) -> None:
    """The customer, on another device, signs the browser under test out."""
    other = server.app.test_client()
    csrf = AuthActions(server.app, other).sign_in(email)
    listed = other.get("/api/me/sessions").get_json()["sessions"]
    [shared] = [s for s in listed if not s["current"]]
    r = other.delete(f"/api/me/sessions/{shared['id']}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204


def offline_home_shows_no_orders(phone: Any, page: Any, server: LiveServer) -> None:
    phone.set_offline(True)
    try:
        page.goto(server.url + "/")
        page.get_by_label("Email address").wait_for()  # offline and signed out: sign in
        assert page.locator("[data-order]").count() == 0
    finally:
        phone.set_offline(False)


def test_signed_out_from_another_device_the_offline_copy_goes_at_the_first_401(
    phone: Any, live_server: LiveServer
) -> None:
    email = "shared-device@example.com"
    order = live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    home_kept_for_offline(page, live_server, order)
    sign_out_from_another_device(live_server, email)

    page.reload()  # online: GET /api/me answers 401
    page.get_by_label("Email address").wait_for()
    assert personal(page) == []
    offline_home_shows_no_orders(phone, page, live_server)


def test_a_write_refused_with_401_drops_the_offline_copy_too(
    phone: Any, live_server: LiveServer
) -> None:
    email = "shared-write@example.com"
    order = live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    home_kept_for_offline(page, live_server, order)
    sign_out_from_another_device(live_server, email)

    status = page.evaluate(
        """async () => (await fetch('/api/me/preferences', {
          method: 'PUT', headers: { 'Content-Type': 'application/json' }, body: '{}',
        })).status"""
    )
    assert status == 401
    assert personal(page) == []  # forgotten before the page got the answer
    offline_home_shows_no_orders(phone, page, live_server)


def test_a_personal_answer_kept_for_offline_use_expires_after_a_week(
    phone: Any, live_server: LiveServer
) -> None:
    email = "week-offline@example.com"
    order = live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    home_kept_for_offline(page, live_server, order)

    phone.set_offline(True)
    try:
        assert page.evaluate(AGE, 6 * DAY_MS) == 2  # six days old: still shown offline
        page.goto(live_server.url + "/")
        page.locator(f'[data-order="{order["id"]}"]').wait_for()

        assert page.evaluate(AGE, 8 * DAY_MS) == 2  # eight days old: not any more
        page.goto(live_server.url + "/")
        page.get_by_label("Email address").wait_for()
        assert page.locator("[data-order]").count() == 0
        assert "/api/me" not in personal(page)  # dropped when it was refused
    finally:
        phone.set_offline(False)

    # Online again and still signed in: the orders are back, and kept afresh.
    page.goto(live_server.url + "/")
    page.locator(f'[data-order="{order["id"]}"]').wait_for()
