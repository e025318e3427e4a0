"""The PWA in a real Chromium at phone size (360×740), against a live server."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import LiveServer, ago, axe_violations, sign_in
from tests.utils.pages import wait_until

pytestmark = pytest.mark.browser


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
    assert page.errors == []  # type: ignore[attr-defined]


def test_a_carrier_named_like_an_object_property_gets_no_carrier_link(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.merchant.create_order(email="proto@example.com")
    for carrier in ("constructor", "__proto__", "toString"):
        live_server.merchant.add_shipment(order["id"], carrier=carrier)
    page = open_tracking(phone, live_server, order)
    page.get_by_text("__proto__", exact=True).wait_for()
    assert page.get_by_role("link", name=re.compile("^Track at")).count() == 0
    assert "native code" not in page.locator("main").inner_text()


def test_bidirectional_controls_stored_before_they_were_refused_are_not_shown(
    phone: Any, live_server: LiveServer
) -> None:
    """An order number stored with U+202E (right-to-left override) would read backwards."""
    import sqlalchemy as sa

    from waybill.models import Order

    order = live_server.order_in_transit(email="bidi@example.com")
    with live_server.app.extensions["waybill.engine"].begin() as conn:
        conn.execute(
            sa.update(Order).where(Order.id == order["id"]).values(external_id="\u202e2401")
        )
    page = open_tracking(phone, live_server, order)
    shown = page.locator(".merchant").inner_text()
    assert "2401" in shown and "\u202e" not in shown


def wait_for_offline_copy(page: Any) -> None:
    """The service worker controls the page and has kept an API answer for offline use (one of
    the page's own, not only the status labels); on giving up, say what the page and its worker
    were doing."""
    try:
        wait_until(
            page,
            """async () => navigator.serviceWorker.controller
                && (await (await caches.open('waybill-api')).keys())
                  .some((r) => new URL(r.url).pathname !== '/api/statuses')""",
            "an offline copy of the page's answer",
        )
    except AssertionError as exc:
        state = page.evaluate(
            """async () => {
              const reg = await navigator.serviceWorker.getRegistration();
              const api = performance.getEntriesByType('resource')
                .filter((e) => e.name.includes('/api/'));
              return {
                controlled: Boolean(navigator.serviceWorker.controller),
                kept: (await (await caches.open('waybill-api')).keys()).map((r) => r.url),
                worker: [reg?.installing, reg?.waiting, reg?.active].map((w) => w?.state),
                loadedThroughWorker: performance.getEntriesByType('navigation')[0].workerStart > 0,
                api: api.map((e) => [e.name, e.workerStart > 0]),
              };
            }"""
        )
        raise AssertionError(f"{exc}: {state}") from None


def test_status_change_posted_to_the_api_appears_without_reload(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    page.locator('#live[data-state="live"]').wait_for()
    page.evaluate("() => { window.sameDocument = true; }")
    r = live_server.merchant.scan(
        order["shipment_id"], "out_for_delivery", ago(hours=1), location="Berlin"
    )
    assert r.status_code == 201
    page.get_by_role("heading", name="Out for delivery").wait_for()
    assert page.evaluate("() => window.sameDocument") is True
    assert "Berlin" in page.locator(".timeline li").first.inner_text()
    assert page.locator("#announce").inner_text() == "Status changed: Out for delivery"


def test_offline_reload_still_shows_the_last_status(phone: Any, live_server: LiveServer) -> None:
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    wait_for_offline_copy(page)
    phone.set_offline(True)
    try:
        page.reload()
        page.get_by_role("heading", name="On the way").wait_for()
        assert "Offline · updated" in page.locator(".freshness").inner_text()
        assert "Leipzig hub" in page.locator(".timeline").inner_text()
    finally:
        phone.set_offline(False)


def test_a_page_the_worker_did_not_load_is_claimed_and_kept_for_offline(
    phone: Any, live_server: LiveServer
) -> None:
    """A page whose own load bypassed an active worker (it began while the first worker was
    installing, so the worker's claim missed it; or a hard reload) asks to be claimed, then
    keeps its answer for offline use. Five times over, each from an empty offline copy."""
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    wait_for_offline_copy(page)
    cdp = phone.new_cdp_session(page)
    for _ in range(5):
        page.evaluate("async () => { await caches.delete('waybill-api'); }")
        with page.expect_navigation(wait_until="load"):
            cdp.send("Page.reload", {"ignoreCache": True})  # shift-reload skips the worker
        assert page.evaluate("() => performance.getEntriesByType('navigation')[0].workerStart") == 0
        page.get_by_role("heading", name="On the way").wait_for()
        wait_for_offline_copy(page)
    phone.set_offline(True)
    try:
        page.reload()
        page.get_by_role("heading", name="On the way").wait_for()
        assert "Offline · updated" in page.locator(".freshness").inner_text()
    finally:
        phone.set_offline(False)


def test_chromium_finds_the_app_installable(
    playwright_instance: Any, live_server: LiveServer, tmp_path: Any
) -> None:
    from tests.browser.conftest import CHROMIUM, CHROMIUM_ARGS, PHONE

    order = live_server.order_in_transit()
    context = playwright_instance.chromium.launch_persistent_context(
        str(tmp_path / "profile"),
        executable_path=str(CHROMIUM),
        args=CHROMIUM_ARGS,
        viewport=PHONE,
    )
    try:
        page = context.pages[0] if context.pages else context.new_page()
        page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
        wait_until(page, "() => navigator.serviceWorker.controller", "a worker in control")
        cdp = context.new_cdp_session(page)
        manifest = cdp.send("Page.getAppManifest")
        assert manifest.get("errors") == []
        assert manifest["url"] == f"{live_server.url}/manifest.json"
        assert cdp.send("Page.getInstallabilityErrors")["installabilityErrors"] == []
    finally:
        context.close()


def assert_no_sideways_scroll(page: Any, name: str) -> None:
    width = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert width[0] <= width[1] == 360, (name, width)


def screens(context: Any, server: LiveServer, email: str = "screens@example.com") -> dict[str, str]:
    """Every screen of the app, signed in where it needs to be."""
    order = server.order_in_transit(email=email)
    sign_in(context, server, email)
    return {
        "tracking": f"/t/{server.token_of(order)}",
        "home": "/",
        "order": f"/orders/{order['id']}",
        "settings": "/settings",
    }


@pytest.mark.layout
def test_no_screen_scrolls_sideways_or_has_serious_axe_violations(
    phone: Any, live_server: LiveServer
) -> None:
    paths = screens(phone, live_server)
    page = phone.new_page()
    found: dict[str, Any] = {}
    for name, path in paths.items():
        page.goto(live_server.url + path)
        page.locator("main h1").first.wait_for()
        assert_no_sideways_scroll(page, name)
        found[name] = axe_violations(page)
    # Signed out: the sign-in screen, its second step and a wrong tracking link.
    phone.clear_cookies()
    page.goto(live_server.url + "/sign-in")
    page.get_by_label("Email address").wait_for()
    assert_no_sideways_scroll(page, "sign-in")
    found["sign-in"] = axe_violations(page)
    page.get_by_label("Email address").fill("nobody@example.com")
    page.get_by_role("button", name="Send me a code").click()
    page.get_by_label("6-digit code").wait_for()
    assert_no_sideways_scroll(page, "sign-in-code")
    found["sign-in-code"] = axe_violations(page)
    page.goto(f"{live_server.url}/auth/link/{live_server.auth.login_link('screens@example.com')}")
    page.get_by_role("button", name="Sign in").wait_for()
    assert_no_sideways_scroll(page, "sign-in-link")
    found["sign-in-link"] = axe_violations(page)
    page.goto(live_server.url + "/t/" + "x" * 32)
    page.get_by_role("heading", level=1).wait_for()
    assert_no_sideways_scroll(page, "not-found")
    found["not-found"] = axe_violations(page)
    assert {k: v for k, v in found.items() if v} == {}


def test_sign_in_works_with_the_keyboard_alone(phone: Any, live_server: LiveServer) -> None:
    email = "keyboard@example.com"
    live_server.order_in_transit(email=email)
    page = phone.new_page()
    page.goto(live_server.url + "/sign-in")
    page.get_by_label("Email address").wait_for()

    def tab_to(element_id: str) -> None:
        for _ in range(15):
            page.keyboard.press("Tab")
            if page.evaluate("() => document.activeElement.id") == element_id:
                return
        raise AssertionError(f"Tab never reached #{element_id}")

    tab_to("email")
    page.keyboard.type(email)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Check your mail").wait_for()
    mail = live_server.smtp.wait_for(email)[-1]
    code = str(mail["Subject"]).rsplit(" ", 1)[1]
    tab_to("code")
    page.keyboard.type(code)
    page.keyboard.press("Enter")
    page.get_by_role("heading", name="Your orders").wait_for()
    assert page.url == live_server.url + "/"
    page.locator(".order-card").first.wait_for()
    assert page.locator(".order-card").count() == 1


def test_dropped_socket_reconnects_and_resumes_what_it_missed(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.order_in_transit()
    page = open_tracking(phone, live_server, order)
    live = page.locator('#live[data-state="live"]')
    live.wait_for()
    hub = live_server.app.extensions["waybill.hub"]
    # "Fell behind, reconnect and resume"; while the hub refuses sockets, a change happens.
    hub.shutdown(code=1013, reason="test", grace=0.5)
    page.locator('#live[data-state="connecting"]').wait_for()
    r = live_server.merchant.scan(
        order["shipment_id"], "attempted", ago(hours=1), location="Berlin"
    )
    assert r.status_code == 201
    with hub.lock:
        hub._shutting_down = False  # the server is back
    page.get_by_role("heading", name="Delivery attempted").wait_for()
    live.wait_for()
