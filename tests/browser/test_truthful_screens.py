"""What the home, order and tracking screens say is what the order's facts say: Waybill's window
("Arriving Tue, Dec 15 – Thu, Dec 17") with the date the shop or carrier gave beside it, today
only when the last scan or an estimate is today, late when the window's "arrives by" has passed,
pickups and attempts first; a split order's bar follows its least advanced parcel; the header's
connection badge, the tracking page's links, retries and live updates tell the truth too."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from tests.browser.conftest import LiveServer, ago, sign_in
from tests.browser.test_pwa import open_tracking, wait_for_offline_copy
from waybill.db import session_scope
from waybill.models import Order, Shipment

pytestmark = pytest.mark.browser


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


#: The browsers' zone (conftest's phone): the viewer's days.
BERLIN = ZoneInfo("Europe/Berlin")


def today_here() -> date:
    return datetime.now(BERLIN).date()


def window_passed(server: LiveServer, order: dict[str, Any], days: int = 3) -> dict[str, date]:
    """Waybill's window for ``order`` made to end ``days`` ago. The server estimates it anew only
    when an event is recorded (from its prior: 1-3 working days to hand over, 1-7 in transit), so
    a past "arrives by" is written straight into the order row (its eta_* columns) before the
    page loads; the order's answers then carry it as they would a real one."""
    latest = today_here() - timedelta(days=days)
    window = {"earliest": latest - timedelta(days=2), "latest": latest, "most_likely": latest}
    with session_scope(server.app.extensions["waybill.engine"]) as session:
        row = session.get(Order, order["id"])
        assert row is not None
        row.eta_earliest, row.eta_latest = window["earliest"], window["latest"]
        row.eta_most_likely = window["most_likely"]
    shown = server.merchant.get(f"/orders/{order['id']}").get_json()["estimated_delivery"]
    assert shown["latest"] == latest.isoformat(), shown
    return window


def day_en(d: date, year: bool = False) -> str:
    """ "Tue, Dec 15": a day as the app writes one in English (Intl, en, short)."""
    return f"{d:%a}, {d:%b} {d.day}" + (f", {d.year}" if year else "")


def long_day_en(d: date) -> str:
    """ "Tuesday, December 15": formatDayIn's English."""
    return f"{d:%A}, {d:%B} {d.day}"


def spaced(text: str) -> str:
    """ICU puts thin spaces around a range's dash in some versions, plain ones in others."""
    return text.replace("\u2009", " ").replace("\u202f", " ")


def window_en(first: date, last: date) -> str:
    """ "Tue, Dec 15 – Thu, Dec 17" (Intl's range, its spaces as ``spaced`` makes them: the
    years only when they differ); one day alone when first is last."""
    if first == last:
        return day_en(first)
    year = first.year != last.year
    return f"{day_en(first, year)} – {day_en(last, year)}"


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
    window_passed(s, orders["late"])
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
    home_of_facts: tuple[Any, dict[str, dict[str, Any]]], live_server: LiveServer
) -> None:
    page, orders = home_of_facts
    latest = date.fromisoformat(
        live_server.merchant.get(f"/orders/{orders['late']['id']}").get_json()[
            "estimated_delivery"
        ]["latest"]
    )
    said = f"Expected {long_day_en(latest)} — late"
    late = card(page, orders["late"])
    assert late.locator("[data-late]").inner_text() == said
    assert late.inner_text().count("Expected") == 1
    # The shop's own date (four days ago) beside it, saying whose it is.
    given = (datetime.now(UTC) - timedelta(days=4)).astimezone(BERLIN).date()
    assert f"Shop’s estimate: {day_en(given)}" in late.inner_text()
    assert group_of(page, orders["late"]) == "On the way"
    page.goto(page.url.rstrip("/") + f"/orders/{orders['late']['id']}")
    estimate = page.locator(".order-head .estimate")
    assert estimate.inner_text() == said
    assert estimate.get_attribute("data-late") is not None  # said in words, marked too


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
    window_passed(live_server, late)
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


def on_its_way(
    server: LiveServer, email: str, given: datetime, source: str = "merchant"
) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order of a customer in Berlin, scanned in transit two hours ago, its parcel with the
    date ``given`` by its shop (or, ``source="carrier"``, by its carrier); and the order as the
    merchant API answers it, whose ``estimated_delivery`` is Waybill's window for it."""
    order = server.merchant.create_order(
        email=email,
        customer={"email": email, "timezone": "Europe/Berlin"},
        items=[{"name": "Kettle", "quantity": 1}],
    )
    parcel = server.merchant.add_shipment(order["id"], estimated_delivery=given.isoformat())
    r = server.merchant.scan(parcel["id"], "in_transit", ago(hours=2), location="Leipzig")
    assert r.status_code == 201, r.get_json()
    if source == "carrier":
        # A carrier's date comes through its integration's webhook: set as one would set it.
        with session_scope(server.app.extensions["waybill.engine"]) as session:
            row = session.get(Shipment, parcel["id"])
            assert row is not None
            row.estimated_delivery_source = "carrier"
    answer = server.merchant.get(f"/orders/{order['id']}").get_json()
    assert answer["estimated_delivery"]["source"] == "waybill"
    assert answer["estimated_delivery_given"]["source"] == source
    return order, answer


def shown_window(answer: dict[str, Any]) -> tuple[date, date]:
    """The days of the answer's window the screen names: none already gone."""
    ours = answer["estimated_delivery"]
    latest = date.fromisoformat(ours["latest"])
    first = max(date.fromisoformat(ours["earliest"]), today_here())
    assert first < latest, f"a window of one day or less would say less: {ours}"
    return first, latest


def test_an_order_on_its_way_shows_our_window_and_the_shops_date_beside_it(
    phone: Any, live_server: LiveServer
) -> None:
    email = "window@example.com"
    given = (datetime.now(UTC) + timedelta(days=3)).replace(hour=14, minute=0, second=0)
    order, answer = on_its_way(live_server, email, given)
    first, latest = shown_window(answer)
    arriving = f"Arriving {window_en(first, latest)}"
    theirs = f"Shop’s estimate: {day_en(given.astimezone(BERLIN).date())}"

    page = open_tracking(phone, live_server, order)
    head = page.locator(".order-head")
    assert spaced(head.locator(".estimate").inner_text()) == arriving
    assert head.locator(".estimate").get_attribute("data-late") is None
    assert head.locator(".note").all_inner_texts() == [theirs]
    assert page.errors == []  # type: ignore[attr-defined]

    sign_in(phone, live_server, email)
    home = phone.new_page()
    home.goto(live_server.url + "/")
    card(home, order).wait_for()
    assert group_of(home, order) == "On the way"
    lines = [spaced(line) for line in card(home, order).locator(".sub").all_inner_texts()]
    assert lines[-2:] == [arriving, theirs]


def test_the_carriers_date_beside_our_window_in_german(
    browser: Any, live_server: LiveServer
) -> None:
    email = "fenster@example.com"
    given = (datetime.now(UTC) + timedelta(days=2)).replace(hour=14, minute=0, second=0)
    order, answer = on_its_way(live_server, email, given, source="carrier")
    first, latest = shown_window(answer)
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        page = open_tracking(context, live_server, order)
        estimate = page.locator(".order-head .estimate").inner_text()
        # "Kommt Di., 15. – Do., 17. Dez.": German's own short days, from the answer's dates.
        assert estimate.startswith("Kommt "), estimate
        assert " – " in spaced(estimate) and f" {first.day}." in estimate.split("–")[0], estimate
        assert f" {latest.day}." in estimate.split("–")[1], estimate
        note = page.locator(".order-head .note").inner_text()
        assert note.startswith("Schätzung des Zustellers: "), note
        assert f" {given.astimezone(BERLIN).day}." in note, note
        widths = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
        assert widths[0] <= widths[1], f"scrolls sideways at 360 px: {widths}"
    finally:
        context.close()


def test_a_window_whose_arrives_by_has_passed_says_late(
    phone: Any, live_server: LiveServer
) -> None:
    email = "window-late@example.com"
    given = datetime.now(UTC) + timedelta(days=2)  # the shop's date is still ahead: ours decides
    order, _ = on_its_way(live_server, email, given)
    window = window_passed(live_server, order, days=2)
    page = open_tracking(phone, live_server, order)
    estimate = page.locator(".order-head .estimate")
    assert estimate.inner_text() == f"Expected {long_day_en(window['latest'])} — late"
    assert estimate.get_attribute("data-late") is not None
    assert "Arriving" not in page.locator(".order-head").inner_text()
    note = page.locator(".order-head .note").inner_text()
    assert note == f"Shop’s estimate: {day_en(given.astimezone(BERLIN).date())}"


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
    # each shown once the answer to "who is signed in" is in (waited for, not sampled)
    page.get_by_role("link", name="Settings").wait_for()
    page.get_by_role("button", name="Notify me").wait_for()
    assert page.get_by_role("link", name="Sign in to see all your orders").count() == 0


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
