"""A parcel ready for pickup says until when, on a 360 px phone in English and German: the home
card (under "Needs you"), the order screen and the tracking page say "Collect by" the weekday,
date and time in the customer's zone, beside where; once that has passed, that it is over."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import PHONE, LiveServer, sign_in
from tests.browser.test_pwa import open_tracking
from tests.browser.test_text_size import _PAST_THE_EDGE
from tests.browser.test_truthful_screens import ago, card, group_of

pytestmark = pytest.mark.browser

POINT = "Packstation 112, Leipzig"
UNTIL = "2099-12-11T17:00:00Z"  # Friday 18:00 in Berlin, Saturday 02:00 in Tokyo
ENDED = "2026-11-27T17:00:00Z"  # Friday 18:00 in Berlin


def pickups(server: LiveServer, email: str, **order: Any) -> dict[str, dict[str, Any]]:
    """An order waiting at a pickup point until UNTIL, and one whose pickup period ENDED."""
    found = {}
    for name, at, place, until in (
        ("waits", ago(hours=3), POINT, UNTIL),
        ("over", "2026-11-20T09:00:00Z", "Shop 7, Halle", ENDED),
    ):
        created = server.merchant.create_order(email=email, **order)
        parcel = server.merchant.add_shipment(created["id"])
        r = server.merchant.scan(
            parcel["id"], "available_for_pickup", at, location=place, pickup_until=until
        )
        assert r.status_code == 201, r.get_json()
        found[name] = r.get_json()
    return found


def nothing_past_the_edge(page: Any) -> None:
    assert page.evaluate("document.scrollingElement.scrollWidth") <= PHONE["width"]
    assert page.evaluate(_PAST_THE_EDGE) == []


def test_a_pickup_says_until_when_and_where_in_english(phone: Any, live_server: LiveServer) -> None:
    email = "collect-by@example.com"
    orders = pickups(live_server, email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/")
    card(page, orders["waits"]).wait_for()

    collect_by = re.compile(r"^Collect by Friday, December 11(,| at) 6:00\sPM$")
    waits = card(page, orders["waits"])
    assert group_of(page, orders["waits"]) == "Needs you"
    lines = waits.locator(".sub").all_inner_texts()
    assert any(collect_by.match(line) for line in lines), lines
    assert f"Collect it at {POINT}" in lines
    assert "No delivery estimate yet" not in waits.inner_text()
    assert waits.locator("[data-late]").count() == 0

    over = card(page, orders["over"])
    assert group_of(page, orders["over"]) == "Needs you"
    ended = over.locator("[data-late]").inner_text()
    assert re.match(r"^Pickup period ended Friday, November 27(,| at) 6:00\sPM$", ended), ended
    assert "Collect by" not in over.inner_text()
    nothing_past_the_edge(page)

    page.goto(f"{live_server.url}/orders/{orders['waits']['id']}")
    page.locator(".order-head .estimate").wait_for()
    assert collect_by.match(page.locator(".order-head .estimate").inner_text())
    assert f"Collect it at {POINT}" in page.locator(".order-head .note").all_inner_texts()
    nothing_past_the_edge(page)

    tracking = open_tracking(phone, live_server, orders["over"])
    estimate = tracking.locator(".order-head .estimate")
    assert estimate.get_attribute("data-late") is not None
    assert estimate.inner_text().startswith("Pickup period ended Friday, November 27")
    assert "Collect it at Shop 7, Halle" in tracking.locator(".order-head").inner_text()
    nothing_past_the_edge(tracking)
    assert tracking.errors == []  # type: ignore[attr-defined]


def test_a_pickup_says_until_when_in_german_in_the_customers_zone(
    browser: Any, live_server: LiveServer
) -> None:
    email = "abholen@example.com"
    # The customer lives in Tokyo (their orders say so); this phone is set to Berlin.
    orders = pickups(live_server, email, customer={"email": email, "timezone": "Asia/Tokyo"})
    context = browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        sign_in(context, live_server, email)
        page = context.new_page()
        page.goto(live_server.url + "/")
        card(page, orders["waits"]).wait_for()
        assert group_of(page, orders["waits"]) == "Du bist gefragt"
        lines = card(page, orders["waits"]).locator(".sub").all_inner_texts()
        assert "Abholen bis Samstag, 12. Dezember um 02:00" in lines, lines
        assert f"Abholen bei {POINT}" in lines
        ended = card(page, orders["over"]).locator("[data-late]").inner_text()
        assert ended == "Abholfrist endete am Samstag, 28. November um 02:00"
        nothing_past_the_edge(page)

        page.goto(f"{live_server.url}/orders/{orders['waits']['id']}")
        estimate = page.locator(".order-head .estimate")
        estimate.wait_for()
        assert estimate.inner_text() == "Abholen bis Samstag, 12. Dezember um 02:00"
        assert "Noch kein Liefertermin" not in page.locator(".order-head").inner_text()
        nothing_past_the_edge(page)
    finally:
        context.close()
