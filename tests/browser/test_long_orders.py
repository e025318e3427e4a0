"""A long order on a phone: the latest events and the first items, each with a "Show all"
button that the keyboard reaches, that fetches the older events page by page through the
events routes and says how many it added."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.browser.conftest import LiveServer, axe_violations, sign_in
from tests.browser.test_pwa import assert_no_sideways_scroll
from tests.utils.pages import wait_until
from waybill.db import session_scope
from waybill.ingest import record_order_event, record_shipment_event
from waybill.models import Order, OrderEventCreate, Shipment, ShipmentEventCreate

pytestmark = pytest.mark.browser

START = datetime(2026, 4, 1, 6, 0, tzinfo=UTC)
_orders = itertools.count(1)


def long_order(server: LiveServer, email: str) -> dict[str, Any]:
    """30 items; 80 events of the order's own and 120 of its shipment: 200, both timelines
    longer than an answer carries."""
    n = next(_orders)
    order = server.merchant.create_order(
        email=email, items=[{"name": f"Part {i}", "quantity": 1} for i in range(1, 31)]
    )
    shipment = server.merchant.add_shipment(order["id"], carrier="DHL")
    with session_scope(server.app.extensions["waybill.engine"]) as session:
        row = session.get(Order, order["id"])
        parcel = session.get(Shipment, shipment["id"])
        assert row is not None and parcel is not None
        for i in range(200):
            at = START + timedelta(minutes=i)
            if i % 5 < 2:  # 80 of the order's own
                record_order_event(
                    session=session,
                    order=row,
                    data=OrderEventCreate(
                        status="processing", occurred_at=at, description=f"Step {n}-{i}"
                    ),
                )
            else:  # 120 carrier scans
                record_shipment_event(
                    session=session,
                    shipment=parcel,
                    data=ShipmentEventCreate(
                        status="in_transit",
                        occurred_at=at,
                        event_id=f"scan-{n}-{i}",
                        description=f"Step {n}-{i}",
                    ),
                )
    return {**order, "shipment_id": shipment["id"], "n": n}


def tab_to(page: Any, name: str, presses: int = 80) -> None:
    """Press Tab until the focused element is the button named ``name``."""
    for _ in range(presses):
        page.keyboard.press("Tab")
        if page.evaluate("() => document.activeElement.textContent") == name:
            assert page.evaluate("() => document.activeElement.tagName") == "BUTTON"
            return
    raise AssertionError(f"Tab never reached {name!r}")


def shown_steps(page: Any) -> list[str]:
    return page.locator(".timeline li p.small").all_inner_texts()  # type: ignore[no-any-return]


def announced(page: Any, text: str) -> None:
    wait_until(
        page,
        "(text) => document.getElementById('announce').textContent === text",
        f"the announcement {text!r}",
        text,
    )


def test_a_long_order_shows_the_latest_10_events_and_5_items_and_the_keyboard_shows_all(
    phone: Any, live_server: LiveServer
) -> None:
    order = long_order(live_server, "long-track@example.com")
    n = order["n"]
    page = phone.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
    page.get_by_role("heading", level=1).wait_for()

    assert shown_steps(page) == [f"Step {n}-{i}" for i in range(199, 189, -1)]  # newest first
    show_all = page.get_by_role("button", name="Show all 200 events")
    assert show_all.is_visible()
    assert page.locator(".items li").count() == 5
    assert page.get_by_role("button", name="Show all 30 items").is_visible()
    assert_no_sideways_scroll(page, "collapsed")

    # the keyboard alone: Tab to the button, Enter
    tab_to(page, "Show all 200 events")
    page.keyboard.press("Enter")
    announced(page, "190 more events shown, 200 in all")
    assert shown_steps(page) == [f"Step {n}-{i}" for i in range(199, -1, -1)]
    assert page.get_by_role("button", name="Show all 200 events").count() == 0
    # focus is on the first event added, not lost to the page
    assert page.evaluate("() => document.activeElement.matches('.timeline li:nth-child(11)')")

    tab_to(page, "Show all 30 items")
    page.keyboard.press(" ")
    announced(page, "25 more items shown, 30 in all")
    assert page.locator(".items li").all_inner_texts() == [f"1 × Part {i}" for i in range(1, 31)]
    assert page.evaluate("() => document.activeElement.matches('.items li:nth-child(6)')")
    assert_no_sideways_scroll(page, "expanded")

    # a live update keeps the whole timeline open, the new event on top: the event that left
    # the frame's window is the one the screen already had, so nothing is fetched again
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/events" in r.url else None)
    live_server.merchant.scan(
        order["shipment_id"], "out_for_delivery", "2026-04-02T07:00:00Z", description="Last mile"
    )
    page.get_by_role("heading", name="Out for delivery").wait_for()
    wait_until(
        page,
        "() => document.querySelectorAll('.timeline li').length === 201",
        "all 201 events after the live update",
    )
    assert shown_steps(page)[:2] == ["Last mile", f"Step {n}-199"]
    assert shown_steps(page)[-1] == f"Step {n}-0"
    assert page.locator(".items li").count() == 30
    assert fetched == []
    # a late scan among the older events: those are fetched again, the scan in its place
    live_server.merchant.scan(
        order["shipment_id"], "in_transit", "2026-04-01T06:30:30Z", description="Late scan"
    )
    wait_until(
        page,
        "() => document.querySelectorAll('.timeline li').length === 202",
        "all 202 events after the late scan",
    )
    steps = shown_steps(page)
    late = steps.index("Late scan")  # newest first: after minute 31, before minute 30
    assert steps[late - 1 : late + 2] == [f"Step {n}-31", "Late scan", f"Step {n}-30"]
    assert len(set(steps)) == 202 and fetched
    assert axe_violations(page) == []
    assert errors == []


def test_the_signed_in_order_screen_pages_through_its_own_route(
    phone: Any, live_server: LiveServer
) -> None:
    email = "long-me@example.com"
    order = long_order(live_server, email)
    n = order["n"]
    sign_in(phone, live_server, email)
    page = phone.new_page()
    fetched: list[str] = []
    page.on("request", lambda r: fetched.append(r.url) if "/events" in r.url else None)
    page.goto(f"{live_server.url}/orders/{order['id']}")
    page.get_by_role("heading", level=1).wait_for()
    assert len(shown_steps(page)) == 10
    page.get_by_role("button", name="Show all 200 events").click()
    announced(page, "190 more events shown, 200 in all")
    assert shown_steps(page) == [f"Step {n}-{i}" for i in range(199, -1, -1)]
    assert fetched and all(f"/api/me/orders/{order['id']}/events?" in url for url in fetched)


def focused(page: Any) -> dict[str, str | None]:
    return page.evaluate(  # type: ignore[no-any-return]
        """() => ({tag: document.activeElement.tagName,
                  controls: document.activeElement.getAttribute('aria-controls'),
                  order: document.activeElement.dataset.order || null})"""
    )


def test_a_live_update_leaves_the_keyboard_where_it_was(
    phone: Any, live_server: LiveServer
) -> None:
    """The screen is drawn again on every change; the button or order the keyboard had reached
    keeps the focus (a screen-reader user is not thrown back to the top of the page)."""
    email = "long-focus@example.com"
    order = long_order(live_server, email)
    page = phone.new_page()
    page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
    page.get_by_role("heading", level=1).wait_for()
    tab_to(page, "Show all 30 items")
    live_server.merchant.scan(
        order["shipment_id"], "out_for_delivery", "2026-04-02T07:00:00Z", description="Last mile"
    )
    page.get_by_role("heading", name="Out for delivery").wait_for()
    assert focused(page) == {"tag": "BUTTON", "controls": "item-list", "order": None}
    page.keyboard.press("Enter")
    announced(page, "25 more items shown, 30 in all")

    # the list of orders: the order card reached stays reached when its order moves group
    live_server.merchant.create_order(email=email)
    sign_in(phone, live_server, email)
    page.goto(f"{live_server.url}/")
    wait_until(page, "() => document.querySelectorAll('.order-card').length === 2", "two orders")
    for _ in range(20):
        page.keyboard.press("Tab")
        if focused(page)["order"] == str(order["id"]):
            break
    else:
        raise AssertionError("Tab never reached the order's card")
    live_server.merchant.scan(order["shipment_id"], "delivered", "2026-04-02T09:00:00Z")
    wait_until(
        page,
        f"""() => document.querySelector('a[data-order="{order["id"]}"] strong')
                   ?.textContent === 'Delivered'""",
        "the order's card saying Delivered",
    )
    assert focused(page) == {"tag": "A", "controls": None, "order": str(order["id"])}


def test_german_says_how_many(browser: Any, live_server: LiveServer) -> None:
    order = long_order(live_server, "lang-lieferung@example.com")
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        page = context.new_page()
        page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
        page.get_by_role("heading", level=1).wait_for()
        page.get_by_role("button", name="Alle 30 Artikel anzeigen").wait_for()
        page.get_by_role("button", name="Alle 200 Ereignisse anzeigen").click()
        announced(page, "190 weitere Ereignisse angezeigt, 200 insgesamt")
        assert page.locator(".timeline li").count() == 200
    finally:
        context.close()


KEPT_URLS = """async () => {
  const cache = await caches.open('waybill-api');
  return (await cache.keys()).map((request) => new URL(request.url).pathname);
}"""


def test_older_events_are_shown_but_never_kept_offline(phone: Any, live_server: LiveServer) -> None:
    """What the service worker keeps for offline does not grow with an order's history: the
    order's answer (its latest events) is kept, the "Show all" pages are not."""
    order = long_order(live_server, "long-offline@example.com")
    page = phone.new_page()
    page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
    wait_until(page, "() => navigator.serviceWorker.controller", "a worker in control")
    page.reload()  # this load's answers go through the worker
    page.get_by_role("button", name="Show all 200 events").click()
    announced(page, "190 more events shown, 200 in all")
    kept = page.evaluate(KEPT_URLS)
    assert any(p == f"/api/track/{live_server.token_of(order)}" for p in kept), kept
    assert not [p for p in kept if p.endswith("/events")], kept
