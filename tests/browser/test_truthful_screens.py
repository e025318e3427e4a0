"""What the home, order and tracking screens say is what the order's facts say: today only when
the last scan or the estimate is today, late when the estimate has passed, pickups and attempts
first; a split order's bar follows its least advanced parcel; the header's connection badge,
the tracking page's links, retries and live updates tell the truth too."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.browser.conftest import LiveServer, sign_in
from tests.browser.test_pwa import open_tracking, wait_for_offline_copy

pytestmark = pytest.mark.browser


def ago(**delta: float) -> str:
    return (datetime.now(UTC) - timedelta(**delta)).isoformat()


def order_with(
    server: LiveServer, email: str, *scans: tuple[str, str, dict[str, Any]], **shipment: Any
) -> dict[str, Any]:
    """An order with one shipment and these scans (status, when, fields), oldest first."""
    order = server.merchant.create_order(email=email, items=[{"name": "Kettle", "quantity": 1}])
    parcel = server.merchant.add_shipment(order["id"], carrier="DHL", **shipment)
    for status, at, fields in scans:
        r = server.merchant.scan(parcel["id"], status, at, **fields)
        assert r.status_code == 201, r.get_json()
    return {**order, "shipment_id": parcel["id"]}


def card(page: Any, order: dict[str, Any]) -> Any:
    return page.locator(f'[data-order="{order["id"]}"]')


def group_of(page: Any, order: dict[str, Any]) -> str:
    return card(page, order).evaluate(  # type: ignore[no-any-return]
        "(a) => a.closest('section.group').querySelector('h2').textContent"  # not uppercased
    )


@pytest.fixture
def home_of_facts(phone: Any, live_server: LiveServer) -> tuple[Any, dict[str, dict[str, Any]]]:
    """One customer's home with an order for each fact worth wording."""
    email = "facts@example.com"
    s = live_server
    orders = {
        "stale_out": order_with(
            s,
            email,
            ("in_transit", ago(days=6), {}),
            ("out_for_delivery", ago(days=5), {"location": "Berlin"}),
        ),
        "out_today": order_with(
            s, email, ("out_for_delivery", ago(minutes=1), {"location": "Berlin"})
        ),
        "attempted": order_with(
            s,
            email,
            (
                "attempted",
                ago(minutes=2),
                {"description": "Recipient not at home, we will try again tomorrow"},
            ),
            estimated_delivery=ago(seconds=-60),
        ),
        "late": order_with(
            s, email, ("in_transit", ago(days=5), {}), estimated_delivery=ago(days=4)
        ),
        "pickup": order_with(
            s,
            email,
            (
                "available_for_pickup",
                ago(hours=3),
                {"location": "Packstation 112, Leipzig", "description": "Collect by 9 December"},
            ),
        ),
    }
    sign_in(phone, s, email)
    page = phone.new_page()
    page.goto(s.url + "/")
    card(page, orders["pickup"]).wait_for()
    return page, orders


def test_arriving_today_only_when_the_last_scan_or_the_estimate_is_today(
    home_of_facts: tuple[Any, dict[str, dict[str, Any]]],
) -> None:
    page, orders = home_of_facts
    assert group_of(page, orders["out_today"]) == "Arriving today"
    assert "Arriving today" in card(page, orders["out_today"]).inner_text()
    # Scanned out for delivery five days ago: not today, and the card says since when.
    stale = card(page, orders["stale_out"]).inner_text()
    assert group_of(page, orders["stale_out"]) == "On the way"
    assert "Arriving today" not in stale
    assert "Out for delivery since" in stale
    # An attempt is not an arrival, even with today's estimate; its note is shown.
    attempted = card(page, orders["attempted"]).inner_text()
    assert group_of(page, orders["attempted"]) == "Needs you"
    assert "Arriving today" not in attempted
    assert "Delivery attempted" in attempted and "try again tomorrow" in attempted


def test_a_passed_estimate_says_late(
    home_of_facts: tuple[Any, dict[str, dict[str, Any]]],
) -> None:
    page, orders = home_of_facts
    late = card(page, orders["late"])
    assert late.locator("[data-late]").inner_text().endswith("— late")
    assert late.inner_text().count("Expected") == 1
    page.goto(page.url.rstrip("/") + f"/orders/{orders['late']['id']}")
    assert page.locator(".estimate").inner_text().endswith("— late")


def test_pickups_and_attempts_come_first_and_a_pickup_says_where(
    home_of_facts: tuple[Any, dict[str, dict[str, Any]]],
) -> None:
    page, orders = home_of_facts
    headings = page.locator("#orders section.group > h2").all_text_contents()
    assert headings[0] == "Needs you"
    assert group_of(page, orders["pickup"]) == "Needs you"
    pickup = card(page, orders["pickup"]).inner_text()
    assert "Collect it at Packstation 112, Leipzig" in pickup
    assert "Collect by 9 December" in pickup
    assert "No delivery estimate yet" not in pickup
    page.goto(page.url.rstrip("/") + f"/orders/{orders['pickup']['id']}")
    head = page.locator(".order-head").inner_text()
    assert "Collect it at Packstation 112, Leipzig" in head
    assert "No delivery estimate yet" not in head


def test_german_says_late_and_du_bist_gefragt(browser: Any, live_server: LiveServer) -> None:
    email = "spaet@example.com"
    late = order_with(
        live_server, email, ("in_transit", ago(days=5), {}), estimated_delivery=ago(days=4)
    )
    pickup = order_with(live_server, email, ("available_for_pickup", ago(hours=1), {}))
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        sign_in(context, live_server, email)
        page = context.new_page()
        page.goto(live_server.url + "/")
        card(page, late).wait_for()
        assert card(page, late).locator("[data-late]").inner_text().startswith("Erwartet am ")
        assert card(page, late).locator("[data-late]").inner_text().endswith("– verspätet")
        assert group_of(page, pickup) == "Du bist gefragt"
        assert "Noch kein Liefertermin" not in card(page, pickup).inner_text()
    finally:
        context.close()


def test_a_split_order_shows_its_least_advanced_parcel_and_whose_each_event_is(
    phone: Any, live_server: LiveServer
) -> None:
    order = live_server.merchant.create_order(email="split@example.com")
    first = live_server.merchant.add_shipment(order["id"], carrier="DHL", tracking_number="AAA111")
    second = live_server.merchant.add_shipment(order["id"], carrier="UPS", tracking_number="BBB222")
    m = live_server.merchant
    assert m.scan(second["id"], "in_transit", ago(hours=5), location="Kassel").status_code == 201
    assert m.scan(first["id"], "delivered", ago(hours=1), location="Berlin").status_code == 201
    page = open_tracking(phone, live_server, order)
    assert page.locator("h1").inner_text() == "On the way"
    stepper = page.locator("ol.stepper")
    label = stepper.get_attribute("aria-label") or ""
    assert "6 of 6" not in label
    assert label == "Least advanced of 2 packages: step 4 of 6"
    filled = stepper.locator('li[data-state="done"], li[data-state="current"]').count()
    assert filled == 4
    events = page.locator(".timeline li")
    assert "Package 1 of 2 · DHL AAA111" in events.nth(0).inner_text()  # delivered, newest
    assert "Package 2 of 2 · UPS BBB222" in events.nth(1).inner_text()


def test_the_connection_badge_is_right_on_every_screen(phone: Any, live_server: LiveServer) -> None:
    email = "badge@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/")
    page.locator('#live[data-state="live"]').wait_for()
    wait_for_offline_copy(page)
    # Moving inside the app to settings, online: never "Offline".
    page.get_by_role("link", name="Settings").click()
    page.get_by_role("heading", name="Settings").wait_for()
    page.wait_for_timeout(300)
    assert not page.locator("#live").is_visible()
    # Settings opened directly, then the connection goes: it says so.
    page.goto(live_server.url + "/settings")
    page.get_by_role("heading", name="Settings").wait_for()
    phone.set_offline(True)
    try:
        page.locator('#live[data-state="offline"]').wait_for()
        assert page.locator("#live").inner_text() == "Offline"
    finally:
        phone.set_offline(False)
    page.locator("#live").wait_for(state="hidden")


def test_tracking_page_links_a_signed_in_customer_to_their_orders(
    phone: Any, live_server: LiveServer
) -> None:
    email = "signedin-track@example.com"
    order = live_server.order_in_transit(email=email)
    page = open_tracking(phone, live_server, order)
    page.get_by_role("link", name="Sign in to see all your orders").wait_for()
    sign_in(phone, live_server, email)
    home = phone.new_page()  # where signing in lands
    home.goto(live_server.url + "/")
    home.locator(f'[data-order="{order["id"]}"]').wait_for()
    page = open_tracking(phone, live_server, order)
    page.get_by_role("link", name="All your orders").wait_for()
    assert page.get_by_role("link", name="Settings").is_visible()
    assert page.get_by_role("link", name="Sign in to see all your orders").count() == 0
    assert page.get_by_role("button", name="Notify me").is_visible()


@pytest.mark.parametrize("final", ["delivered", "cancelled"])
def test_no_notify_me_on_a_finished_order(phone: Any, live_server: LiveServer, final: str) -> None:
    order = live_server.order_in_transit(email=f"{final}@example.com")
    if final == "delivered":
        r = live_server.merchant.scan(order["shipment_id"], "delivered", ago(minutes=5))
    else:
        r = live_server.merchant.post(
            f"/orders/{order['id']}/events", {"status": "cancelled", "occurred_at": ago(minutes=5)}
        )
    assert r.status_code == 201, r.get_json()
    page = open_tracking(phone, live_server, order)
    assert page.locator("h1").inner_text() in ("Delivered", "Cancelled")
    assert page.get_by_role("button", name="Notify me").count() == 0


def test_an_offline_error_screen_retries_when_the_connection_returns(
    phone: Any, live_server: LiveServer
) -> None:
    seen = live_server.order_in_transit(email="retry@example.com")
    page = open_tracking(phone, live_server, seen)
    wait_for_offline_copy(page)
    unseen = live_server.order_in_transit(email="retry@example.com")
    phone.set_offline(True)
    try:
        page.goto(f"{live_server.url}/t/{live_server.token_of(unseen)}")
        page.get_by_role("heading", name="We could not load this order").wait_for()
    finally:
        phone.set_offline(False)
    # No button pressed: the screen loads the order once the browser is online.
    page.get_by_role("heading", name="On the way").wait_for()
    assert unseen["external_id"] in page.locator(".merchant").inner_text()


def test_a_live_update_is_marked_for_sighted_customers_too(
    phone: Any, live_server: LiveServer
) -> None:
    email = "marked@example.com"
    order = live_server.order_in_transit(email=email)
    page = open_tracking(phone, live_server, order)
    page.locator('#live[data-state="live"]').wait_for()
    assert page.locator(".updated").count() == 0
    r = live_server.merchant.scan(order["shipment_id"], "out_for_delivery", ago(minutes=1))
    assert r.status_code == 201
    page.get_by_role("heading", name="Out for delivery").wait_for()
    assert page.locator(".order-head.updated").is_visible()
    assert page.locator(".order-head .updated-note").inner_text() == "Updated just now"

    sign_in(phone, live_server, email)
    home = phone.new_page()
    home.goto(live_server.url + "/")
    home.locator('#live[data-state="live"]').wait_for()
    assert home.locator(".updated").count() == 0
    r = live_server.merchant.scan(order["shipment_id"], "delivered", ago(seconds=10))
    assert r.status_code == 201
    marked = card(home, order)
    home.locator(f'.order-card.updated[data-order="{order["id"]}"]').wait_for()
    assert "Updated just now" in marked.inner_text()
    assert home.locator("#announce").inner_text() == f"Order {order['external_id']}: Delivered"
