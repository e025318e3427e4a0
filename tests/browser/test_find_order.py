"""A wrong tracking link is no dead end: at 360 px, by keyboard, in English and German (at 200%
text too), the page offers signing in and "Find my order", which mails the order's link (read
from the live server's real SMTP server) and says so, the same whether or not it exists."""

from __future__ import annotations

import itertools
import re
from typing import Any

import pytest

from tests.browser.conftest import LiveServer, axe_violations, sign_in

pytestmark = pytest.mark.browser

_tokens = itertools.count(1)

# Every element whose box reaches past the screen's edge: what would need sideways scrolling.
_PAST_THE_EDGE = """() => [...document.body.querySelectorAll('*')]
  .filter((el) => !el.closest('.visually-hidden, .skip, [hidden]'))
  .map((el) => [el, el.getBoundingClientRect()])
  .filter(([, r]) => r.width > 0 && (r.right > innerWidth + 0.5 || r.left < -0.5))
  .map(([el, r]) => `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${r.right}`)"""


def open_wrong_link(context: Any, server: LiveServer) -> Any:
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{server.url}/t/no-such-order-{next(_tokens):012d}")
    page.locator("#find-order").wait_for()
    page.errors = errors  # type: ignore[attr-defined]
    return page


def tab_to(page: Any, selector: str, *, most: int = 15) -> None:
    """Press Tab until ``selector`` has the focus, as a keyboard user gets there."""
    for _ in range(most):
        page.keyboard.press("Tab")
        if page.evaluate("(s) => document.activeElement?.matches(s)", selector):
            return
    raise AssertionError(f"{selector} is not reachable with {most} presses of Tab")


def focused_id(page: Any) -> str:
    return page.evaluate("() => document.activeElement?.id || ''")  # type: ignore[no-any-return]


def fits(page: Any) -> None:
    widths = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"scrolls sideways: {widths}"
    assert page.evaluate(_PAST_THE_EDGE) == []


def links_mailed_to(server: LiveServer, email: str) -> tuple[str, str]:
    msg = server.smtp.wait_for(email)[-1]
    return str(msg["Subject"]), msg.get_body(("plain",)).get_content()


def test_a_wrong_link_offers_sign_in_and_mails_the_order_by_keyboard(
    phone: Any, live_server: LiveServer
) -> None:
    email = "lost-link@example.com"
    order = live_server.merchant.create_order(email=email)
    page = open_wrong_link(phone, live_server)
    assert page.get_by_role("heading", level=1).inner_text() == "We could not find this order"
    sign_in_link = page.get_by_role("link", name="Sign in to see all your orders")
    assert sign_in_link.get_attribute("href") == "/sign-in"
    assert page.get_by_role("heading", level=2, name="Find my order").is_visible()
    fits(page)
    assert axe_violations(page) == []

    # Nothing typed: the alert says what is missing, and the cursor goes there.
    tab_to(page, "#find-order button[type=submit]")
    page.keyboard.press("Enter")
    alert = page.get_by_role("alert")
    assert alert.inner_text() == "Enter the order number as the shop wrote it."
    assert focused_id(page) == "find-number"
    assert page.get_by_label("Order number").get_attribute("aria-invalid") == "true"

    page.keyboard.type(order["external_id"])
    page.keyboard.press("Tab")
    assert focused_id(page) == "find-email"
    page.keyboard.type("not-an-address")
    page.keyboard.press("Enter")
    assert alert.inner_text() == "Enter a valid email address."
    assert focused_id(page) == "find-email"

    page.keyboard.press("ControlOrMeta+a")
    page.keyboard.type(email.upper())
    page.keyboard.press("Tab")
    assert page.evaluate("() => document.activeElement.textContent") == "Email me the link"
    page.keyboard.press("Enter")
    sent = page.locator("#find-sent")
    sent.wait_for()
    assert sent.inner_text() == f"If that order is yours, we’ve sent its link to {email.upper()}."
    assert focused_id(page) == "find-sent"  # read out at once
    assert page.get_by_role("heading", level=2).inner_text() == "Check your mail"
    fits(page)

    subject, text = links_mailed_to(live_server, email)
    assert subject == f"Your tracking link for order {order['external_id']}"
    assert order["tracking_url"] in text

    # Another go starts on the number, the address kept.
    page.get_by_role("button", name="Find another order").click()
    assert focused_id(page) == "find-number"
    assert page.get_by_label("Email address").input_value() == email.upper()
    assert page.errors == []  # type: ignore[attr-defined]


def test_an_unknown_order_gets_the_same_words_and_no_mail(
    phone: Any, live_server: LiveServer
) -> None:
    page = open_wrong_link(phone, live_server)
    page.get_by_label("Order number").fill("NOPE-1")
    page.get_by_label("Email address").fill("nobody-here@example.com")
    page.get_by_role("button", name="Email me the link").click()
    text = page.locator("#find-sent").inner_text()
    assert text == "If that order is yours, we’ve sent its link to nobody-here@example.com."
    from waybill.api.find_order import found_order_mails

    assert found_order_mails.wait_idle(10)
    assert not [m for m in live_server.smtp.messages if "nobody-here" in str(m["To"])]


def test_in_german_at_200_percent_text(browser: Any, live_server: LiveServer) -> None:
    email = "verloren@example.com"
    order = live_server.merchant.create_order(email=email)
    context = browser.new_context(
        viewport={"width": 360, "height": 740}, locale="de-DE", timezone_id="Europe/Berlin"
    )
    try:
        page = context.new_page()
        cdp = context.new_cdp_session(page)  # the browser's own text size setting, 16 → 32 px
        cdp.send("Page.enable")
        cdp.send("Page.setFontSizes", {"fontSizes": {"standard": 32, "fixed": 26}})
        page.goto(f"{live_server.url}/t/kein-solcher-link-{next(_tokens):012d}")
        heading = page.get_by_role("heading", level=1)
        heading.wait_for()
        assert heading.inner_text() == "Diese Bestellung haben wir nicht gefunden"
        assert page.evaluate("() => getComputedStyle(document.documentElement).fontSize") == "32px"
        assert page.get_by_role("link", name="Anmelden, um alle Bestellungen zu sehen").is_visible()
        fits(page)

        tab_to(page, "#find-number")
        page.keyboard.type(order["external_id"])
        page.keyboard.press("Tab")
        page.keyboard.type(email)
        page.keyboard.press("Enter")
        sent = page.locator("#find-sent")
        sent.wait_for()
        assert sent.inner_text() == (
            f"Wenn diese Bestellung dir gehört, haben wir ihren Link an {email} geschickt."
        )
        assert page.get_by_role("heading", level=2).inner_text() == "Sieh in dein Postfach"
        fits(page)

        # She never chose a language: the mail speaks her browser's.
        subject, text = links_mailed_to(live_server, email)
        assert subject == f"Dein Sendungslink für Bestellung {order['external_id']}"
        assert f"Sendung verfolgen: {order['tracking_url']}" in text
    finally:
        context.close()


def test_a_signed_in_customer_is_sent_to_all_their_orders(
    phone: Any, live_server: LiveServer
) -> None:
    email = "signed-in-lost@example.com"
    live_server.merchant.create_order(email=email)
    sign_in(phone, live_server, email)
    page = open_wrong_link(phone, live_server)
    page.get_by_role("link", name="All your orders", exact=True).wait_for()
    assert page.get_by_role("link", name="Sign in to see all your orders").count() == 0
    from playwright.sync_api import expect  # as the fixtures do: only where Chromium runs

    expect(page.get_by_label("Email address")).to_have_value(email)


def test_asking_too_often_is_announced(phone: Any, live_server: LiveServer) -> None:
    email = "too-often@example.com"
    page = open_wrong_link(phone, live_server)
    body = {"email": email, "order_number": "1"}
    for _ in range(5):  # the address's budget for the hour, spent elsewhere
        assert page.request.post(f"{live_server.url}/api/track/find", data=body).status == 202
    page.get_by_label("Order number").fill("1")
    page.get_by_label("Email address").fill(email)
    page.get_by_role("button", name="Email me the link").click()
    alert = page.get_by_role("alert")
    alert.filter(has_text=re.compile("Too many tries")).wait_for()
    assert alert.inner_text() == "Too many tries. Wait a while, then try again."
    assert page.locator("#find-sent").count() == 0
