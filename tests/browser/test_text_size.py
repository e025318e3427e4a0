"""The home, order, tracking, settings and sign-in screens at a phone's 360 px with the browser's
text size at 200%, and at page zoom 200% (180 CSS px), in English and German, light and dark:
nothing scrolls sideways or sticks out past the screen's edge, the header keeps Waybill and
Settings on screen, and no word breaks in the middle.

The text size is set the way the browser's own setting sets it: Chromium's default font size
(``Page.setFontSizes``, what Settings › Appearance › Font size changes), 16 px → 32 px. Unlike
``html { font-size: 200% }`` injected by the test, it has an effect only if the app's root font
size follows the browser's (rem/em, not px). Page zoom 200% on a 360 px phone is a 180 CSS px
viewport at the default text size.
"""

from __future__ import annotations

from typing import Any

import pytest

from tests.browser.conftest import LiveServer, ago, sign_in
from tests.browser.test_screens import api, push_subscription
from tests.browser.test_settings_screens import save_preferences
from tests.browser.test_truthful_screens import order_with, window_passed

pytestmark = [pytest.mark.browser, pytest.mark.layout]

# Every word of the screen's text, and on how many lines it lies: a word on two lines was
# broken inside (e.g. "Deli/very"). Shop data (.merchant, items, tracking numbers) may break.
_BROKEN_WORDS = """() => {
  const broken = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    const data = '.visually-hidden, .merchant, .items, .shipment, .sub, .parcel';
    if (!el || !el.offsetParent || el.closest(data)) continue;
    for (const m of node.textContent.matchAll(/[\\p{L}\\p{N}]+/gu)) {
      const range = document.createRange();
      range.setStart(node, m.index);
      range.setEnd(node, m.index + m[0].length);
      const rects = [...range.getClientRects()].filter((r) => r.width > 0);
      const tops = new Set(rects.map((r) => Math.round(r.top)));
      if (tops.size > 1) broken.push(`${m[0]} (${el.tagName.toLowerCase()}.${el.className})`);
    }
  }
  return broken;
}"""

_HEADER = """() => {
  const bar = document.querySelector('.bar').getBoundingClientRect();
  const inside = (el) => {
    const r = el.getBoundingClientRect();
    return r.left >= 0 && r.right <= innerWidth + 0.5;
  };
  const brand = document.querySelector('.brand span');
  const settings = document.getElementById('nav-settings');
  return {
    brandOneLine:
      brand.getBoundingClientRect().height < 2 * parseFloat(getComputedStyle(brand).lineHeight),
    brandInside: inside(brand),
    settingsInside: settings.hidden || inside(settings),
    // Above the screen until focused, however many lines "Zum Inhalt springen" wraps to.
    skipAbove: document.querySelector('.skip').getBoundingClientRect().bottom <= 0,
    barWidth: bar.width,
  };
}"""


# Every element whose box reaches past the viewport's edge: what a reader would have to scroll
# sideways to see even where the page itself is kept from scrolling.
_PAST_THE_EDGE = """() => [...document.body.querySelectorAll('*')]
  .filter((el) => !el.closest('.visually-hidden, .skip, [hidden], option, optgroup'))
  .map((el) => [el, el.getBoundingClientRect()])
  .filter(([, r]) => r.width > 0 && (r.right > innerWidth + 0.5 || r.left < -0.5))
  .map(([el, r]) => `${el.tagName.toLowerCase()}#${el.id}.${el.className} ${r.right}`)"""


# Settings' rows and boxes as a reader sees them: every switch at the end of its row (never
# under the start of its words), every legend inside its box (never across its border).
_SETTINGS_LAYOUT = """() => {
  const box = (el) => el.getBoundingClientRect();
  return {
    switchesNotAtTheEnd: [...document.querySelectorAll('.switch')]
      .filter((row) => {
        const input = row.querySelector('input');
        const end = box(input).right + parseFloat(getComputedStyle(input).marginRight);
        return Math.abs(end - box(row).right) > 1;
      })
      .map((row) => row.textContent),
    legendsAcrossTheBorder: [...document.querySelectorAll('fieldset > legend')]
      .filter((legend) => box(legend).top < box(legend.parentElement).top + 1)
      .map((legend) => legend.textContent),
  };
}"""


def big_text(context: Any, page: Any) -> None:
    """The browser's text size at 200%: its default font size, 16 → 32 px."""
    cdp = context.new_cdp_session(page)
    cdp.send("Page.enable")
    cdp.send("Page.setFontSizes", {"fontSizes": {"standard": 32, "fixed": 26}})


def check(page: Any, name: str, *, whole_words: bool = True) -> None:
    page.locator("main h1").first.wait_for()
    page.wait_for_timeout(100)
    widths = page.evaluate("() => [document.documentElement.scrollWidth, innerWidth]")
    assert widths[0] <= widths[1], f"{name} scrolls sideways: {widths}"
    assert page.evaluate(_PAST_THE_EDGE) == [], f"{name}: past the edge of {widths[1]} px"
    header = page.evaluate(_HEADER)
    assert all(header[k] for k in ("brandOneLine", "brandInside", "settingsInside", "skipAbove")), (
        f"{name} header: {header}"
    )
    if whole_words:
        assert page.evaluate(_BROKEN_WORDS) == [], f"{name}: words broken inside"


def screens(server: LiveServer, email: str) -> dict[str, str]:
    """A late order, a pickup, an attempt and a split order, on every screen they show on."""
    late = order_with(
        server,
        email,
        ("in_transit", ago(days=5), {"location": "Leipzig"}),
        estimated_delivery=ago(days=4),
    )
    window_passed(server, late)  # late by Waybill's window, not only by the shop's date
    attempted = order_with(
        server,
        email,
        ("attempted", ago(hours=2), {"description": "Recipient not at home, next try tomorrow"}),
    )
    pickup = order_with(
        server,
        email,
        ("available_for_pickup", ago(hours=3), {"location": "Packstation 112, Leipzig"}),
    )
    split = server.merchant.create_order(
        email=email, items=[{"name": "Long-distance trail running shoes", "quantity": 1}]
    )
    for carrier in ("DHL", "Deutsche Post"):
        parcel = server.merchant.add_shipment(split["id"], carrier=carrier)
        server.merchant.scan(parcel["id"], "in_transit", ago(hours=6))
    return {
        "home": "/",
        "late": f"/orders/{late['id']}",
        "attempted": f"/t/{server.token_of(attempted)}",
        "pickup": f"/orders/{pickup['id']}",
        "split": f"/t/{server.token_of(split)}",
    }


@pytest.mark.parametrize(
    ("locale", "scheme"), [("en-GB", "light"), ("de-DE", "dark")], ids=["en-light", "de-dark"]
)
def test_200_percent_text_at_360_px(
    browser: Any, live_server: LiveServer, locale: str, scheme: str
) -> None:
    email = f"bigtext-{locale}@example.com"
    paths = screens(live_server, email)
    context = browser.new_context(
        viewport={"width": 360, "height": 740},
        locale=locale,
        color_scheme=scheme,
        timezone_id="Europe/Berlin",
    )
    try:
        sign_in(context, live_server, email)
        page = context.new_page()
        big_text(context, page)
        for name, path in paths.items():
            page.goto(live_server.url + path)
            check(page, name)
        # The text really is twice the size: the app follows the browser's setting.
        assert page.evaluate("() => getComputedStyle(document.documentElement).fontSize") == "32px"
    finally:
        context.close()


@pytest.mark.parametrize("locale", ["en-GB", "de-DE"])
def test_page_zoom_200_percent_180_css_px(
    browser: Any, live_server: LiveServer, locale: str
) -> None:
    email = f"zoom-{locale}@example.com"
    paths = screens(live_server, email)
    context = browser.new_context(
        viewport={"width": 180, "height": 370}, locale=locale, timezone_id="Europe/Berlin"
    )
    try:
        sign_in(context, live_server, email)
        page = context.new_page()
        for name, path in paths.items():
            page.goto(live_server.url + path)
            # 180 px is narrower than WCAG's 320: a long German word may break, never overflow.
            check(page, name, whole_words=False)
    finally:
        context.close()


def account_screens(
    context: Any, page: Any, server: LiveServer, email: str, **check_options: Any
) -> None:
    """Settings with everything it can show (quiet hours on, so the time fields are there; a push
    device; a second signed-in browser), then, signed out, both steps of sign-in."""
    server.order_in_transit(email=email)
    other = context.browser.new_context()  # a second signed-in browser, listed with "Sign out"
    sign_in(other, server, email)
    other.close()
    sign_in(context, server, email)
    # Saved as a whole object: the browser's language too, else the server's default is saved.
    language = page.evaluate("() => navigator.language.slice(0, 2)")
    quiet = {"start": "22:00", "end": "07:00"}
    save_preferences(context, server, quiet_hours=quiet, language=language)
    added = api(context, server, "POST", "/api/me/push-subscriptions", push_subscription(server))
    assert added.status == 201, added.text()

    page.goto(server.url + "/settings")
    page.locator("#devices li.device").wait_for()
    page.locator("#session-list li button").wait_for()  # the other session's "Sign out"
    page.locator("#passkey-list li").wait_for()
    assert page.locator("#quiet-start").is_visible() and page.locator("#quiet-end").is_visible()
    check(page, "settings", **check_options)
    assert page.evaluate("() => document.documentElement.lang") == language
    assert page.evaluate(_SETTINGS_LAYOUT) == {
        "switchesNotAtTheEnd": [],
        "legendsAcrossTheBorder": [],
    }

    context.clear_cookies()
    page.goto(server.url + "/sign-in")
    page.locator("#email").wait_for()
    check(page, "sign-in", **check_options)
    page.locator("#email").fill(email)
    page.locator("form button[type=submit]").click()
    page.locator("#code").wait_for()
    check(page, "sign-in code", **check_options)


@pytest.mark.parametrize(
    ("locale", "scheme"), [("en-GB", "light"), ("de-DE", "dark")], ids=["en-light", "de-dark"]
)
def test_settings_and_sign_in_at_200_percent_text_at_360_px(
    browser: Any, live_server: LiveServer, locale: str, scheme: str
) -> None:
    context = browser.new_context(
        viewport={"width": 360, "height": 740},
        locale=locale,
        color_scheme=scheme,
        timezone_id="Europe/Berlin",
    )
    try:
        page = context.new_page()
        big_text(context, page)
        account_screens(context, page, live_server, f"bigtext-settings-{locale}@example.com")
        assert page.evaluate("() => getComputedStyle(document.documentElement).fontSize") == "32px"
    finally:
        context.close()


@pytest.mark.parametrize(
    ("locale", "scheme"), [("en-GB", "dark"), ("de-DE", "light")], ids=["en-dark", "de-light"]
)
def test_settings_and_sign_in_at_page_zoom_200_percent_180_css_px(
    browser: Any, live_server: LiveServer, locale: str, scheme: str
) -> None:
    context = browser.new_context(
        viewport={"width": 180, "height": 370},
        locale=locale,
        color_scheme=scheme,
        timezone_id="Europe/Berlin",
    )
    try:
        page = context.new_page()
        email = f"zoom-settings-{locale}@example.com"
        # 180 px is narrower than WCAG's 320: a long German word may break, never overflow.
        account_screens(context, page, live_server, email, whole_words=False)
    finally:
        context.close()


def test_30_long_items_are_collapsed_and_fit_at_200_percent_text(
    browser: Any, live_server: LiveServer
) -> None:
    name = "Ergonomic stainless-steel insulated water bottle with a leak-proof lid, 750 ml"
    order = live_server.merchant.create_order(
        email="long-items@example.com",
        items=[{"name": f"{name} #{i}", "quantity": i} for i in range(1, 31)],
    )
    context = browser.new_context(viewport={"width": 360, "height": 740}, locale="en-GB")
    try:
        page = context.new_page()
        big_text(context, page)
        page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
        page.locator("main h1").wait_for()
        # one evaluation: the screen may be drawn again (the service worker's answer) between
        # finding the item and reading its style, and a detached item has no style
        assert (
            page.evaluate(
                "() => getComputedStyle(document.querySelector('#item-list > li')).fontSize"
            )
            == "32px"
        )  # the browser's text size reaches the items
        assert page.locator("#item-list > li").count() == 5
        show = page.get_by_role("button", name="Show all 30 items")
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
        show.click()
        assert page.locator("#item-list > li").count() == 30
        assert page.evaluate("() => document.documentElement.scrollWidth <= innerWidth")
    finally:
        context.close()
