"""Screens beyond the tracking page: settings against the real preferences API, German, home
live updates, and the "Reload to update" offer of a new version."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from tests.browser.conftest import LiveServer, ago, push_to_worker, sign_in
from tests.browser.test_pwa import open_tracking, wait_for_offline_copy
from tests.utils.pages import wait_until

pytestmark = pytest.mark.browser


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def push_subscription(server: LiveServer) -> dict[str, Any]:
    """What PushSubscription.toJSON() gives, with real P-256 keys and a loopback endpoint."""
    key = ec.generate_private_key(ec.SECP256R1()).public_key()
    point = key.public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "endpoint": f"{server.url}/push/{secrets.token_hex(8)}",
        "keys": {"p256dh": b64url(point), "auth": b64url(secrets.token_bytes(16))},
    }


def api(context: Any, server: LiveServer, method: str, path: str, body: Any = None) -> Any:
    """Call the API with the browser's own session cookie and CSRF token."""
    csrf = context.request.get(server.url + "/api/me").json()["csrf_token"]
    return context.request.fetch(
        server.url + path,
        method=method,
        data=None if body is None else json.dumps(body),
        headers={"Content-Type": "application/json", "X-CSRF-Token": csrf},
    )


def test_settings_saves_preferences_and_removes_a_device(
    phone: Any, live_server: LiveServer
) -> None:
    email = "settings@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    added = api(
        phone, live_server, "POST", "/api/me/push-subscriptions", push_subscription(live_server)
    )
    assert added.status == 201, added.text()

    page = phone.new_page()
    page.goto(live_server.url + "/settings")
    page.get_by_role("heading", name="Settings").wait_for()
    assert page.locator("#devices li.device").count() == 1
    page.get_by_role("switch", name="Being prepared").check()
    page.get_by_role("switch", name="Email").uncheck()
    page.get_by_role("switch", name="Hold notifications at night").check()
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_role("status").filter(has_text="Preferences saved").wait_for()

    saved = phone.request.get(live_server.url + "/api/me/preferences").json()
    assert saved["statuses"]["processing"] is True
    assert saved["channels"] == {"push": True, "email": False}
    assert saved["quiet_hours"] == {"start": "22:00", "end": "07:00"}
    assert saved["timezone"] == "Europe/Berlin"  # the browser's zone, sent by the app

    page.get_by_role("button", name="Remove").click()
    page.locator("#devices").get_by_text("No devices yet.").wait_for()
    listed = phone.request.get(live_server.url + "/api/me/push-subscriptions").json()
    assert listed["subscriptions"] == []


def test_german_viewer_gets_german_labels_and_local_times(
    browser: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit(scanned_at="2026-11-25T09:30:00+00:00")
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        page = open_tracking(context, live_server, order)
        assert page.locator("h1").inner_text() == "Unterwegs"
        assert page.evaluate("() => document.documentElement.lang") == "de"
        # 09:30 UTC on 25 November is 10:30 in Berlin.
        assert page.locator(".timeline time").first.inner_text() == "25.11.2026, 10:30"
    finally:
        context.close()


def test_home_moves_an_order_when_it_is_delivered_without_reload(
    phone: Any, live_server: LiveServer
) -> None:
    email = "home-live@example.com"
    order = live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/")
    page.get_by_role("heading", name="On the way").wait_for()
    page.locator('#live[data-state="live"]').wait_for()
    page.evaluate("() => { window.sameDocument = true; }")
    r = live_server.merchant.scan(order["shipment_id"], "delivered", ago(hours=1))
    assert r.status_code == 201
    page.get_by_role("heading", name="Delivered recently").wait_for()
    assert page.get_by_role("heading", name="On the way").count() == 0
    assert page.evaluate("() => window.sameDocument") is True


def test_a_new_version_waits_until_the_customer_reloads(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    wait_for_offline_copy(page)
    web = live_server.app.extensions["waybill.web"]
    old, new = web.version.encode(), b"0123456789ab"
    live_server.app.extensions["waybill.web"] = dataclasses.replace(
        web,
        version=new.decode(),
        shell=web.shell.replace(old, new),
        worker=web.worker.replace(old, new),
        gzipped={},
    )
    try:
        wait_until(
            page,
            "async () => (await navigator.serviceWorker.getRegistration()).update().then(() => 1)",
            "the worker to check for a new version",
        )
        page.get_by_role("button", name="Reload to update").click()
        page.locator('#main[data-version="0123456789ab"]').wait_for(state="attached")
        page.get_by_role("heading", name="On the way").wait_for()
        caches = page.evaluate("async () => (await caches.keys()).sort()")
        assert caches == ["waybill-api", "waybill-shell-0123456789ab"]  # the old shell is gone
    finally:
        live_server.app.extensions["waybill.web"] = web


@pytest.mark.layout
def test_dark_mode_screens_keep_contrast(browser: Any, live_server: LiveServer) -> None:
    from tests.browser.conftest import axe_violations
    from tests.browser.test_pwa import screens

    context = browser.new_context(
        viewport={"width": 360, "height": 740},
        color_scheme="dark",
        reduced_motion="reduce",
        locale="en-GB",
    )
    try:
        paths = screens(context, live_server, email="dark@example.com")
        page = context.new_page()
        found = {}
        for name, path in paths.items():
            page.goto(live_server.url + path)
            page.locator("main h1").first.wait_for()
            assert page.evaluate("() => getComputedStyle(document.body).backgroundColor") == (
                "rgb(17, 24, 32)"
            )
            found[name] = axe_violations(page)
        assert {k: v for k, v in found.items() if v} == {}
    finally:
        context.close()


def test_choosing_german_in_settings_redraws_the_app_in_german(
    phone: Any, live_server: LiveServer
) -> None:
    email = "sprache@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/settings")
    page.get_by_label("Language").select_option("de")
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_role("heading", name="Einstellungen").wait_for()
    assert page.evaluate("() => document.documentElement.lang") == "de"
    page.locator("#announce").filter(has_text="Einstellungen gespeichert").wait_for(
        state="attached"
    )
    assert phone.request.get(live_server.url + "/api/me/preferences").json()["language"] == "de"
    page.goto(live_server.url + "/")
    page.get_by_role("heading", name="Deine Bestellungen").wait_for()


def test_service_worker_shows_pushed_messages_json_or_text(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit()
    phone.grant_permissions(["notifications"], origin=live_server.url)
    page = open_tracking(phone, live_server, order)
    wait_for_offline_copy(page)
    push = push_to_worker(phone, page, live_server.url)

    def shown(count: int, data: str) -> list[Any]:
        """Deliver ``data`` and wait until ``count`` notifications show. A delivery over CDP
        can be lost while the worker is still starting on a loaded machine: deliver again
        (up to three times) rather than wait forever."""
        for _ in range(3):
            push(data)
            try:
                return wait_until(  # type: ignore[no-any-return]
                    page,
                    """async (count) => {
                      const list = await (await navigator.serviceWorker.ready).getNotifications();
                      const shown = list.map((n) => [n.title, n.body, n.tag, n.data]);
                      return list.length >= count && shown;
                    }""",
                    f"{count} notification(s)",
                    count,
                    timeout_ms=5000,
                )
            except AssertionError:
                continue
        raise AssertionError(f"the service worker showed no notification for {data!r}")

    url = f"{live_server.url}/t/{live_server.token_of(order)}"
    message = json.dumps(
        {
            "title": "Out for delivery",
            "body": "Test Shop",
            "url": url,
            "tag": f"order-{order['id']}",
            "order_id": order["id"],
            "status": "out_for_delivery",
        }
    )
    assert shown(1, message) == [
        [
            "Out for delivery",
            "Test Shop",
            f"order-{order['id']}",
            {"url": url, "orderId": order["id"]},
        ]
    ]
    plain = shown(2, "plain words, not JSON")
    assert ["Waybill", "plain words, not JSON"] in [n[:2] for n in plain]


def test_signing_out_forgets_the_offline_copy_of_that_customers_orders(
    phone: Any, live_server: LiveServer
) -> None:
    email = "leaving@example.com"
    order = live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/")
    page.locator(f'[data-order="{order["id"]}"]').wait_for()
    wait_for_offline_copy(page)
    page.goto(live_server.url + "/settings")
    wait_until(page, "() => navigator.serviceWorker.controller", "a worker in control")
    page.get_by_role("button", name="Sign out", exact=True).click()
    page.get_by_label("Email address").wait_for()
    kept = page.evaluate(
        "async () => (await (await caches.open('waybill-api')).keys()).map((r) => r.url)"
    )
    assert not [url for url in kept if "/api/me" in url]
    phone.set_offline(True)
    try:
        page.goto(live_server.url + "/")
        page.get_by_label("Email address").wait_for()  # offline and signed out: sign in
        assert page.locator("[data-order]").count() == 0
    finally:
        phone.set_offline(False)
    # Back online, the emailed link's form POST works through the service worker too.
    sign_in(phone, live_server, email)
    page.goto(live_server.url + "/")
    page.locator(f'[data-order="{order["id"]}"]').wait_for()
