"""Settings and sign-in as a customer meets them: the saved language on a new device, times
in the chosen language's format, a time-zone list one can find a zone in, the code field
ready for typing, a new code on request, and "saved" still said after a language change."""

from __future__ import annotations

import re
from typing import Any

import pytest

from tests.browser.conftest import PHONE, LiveServer, sign_in
from tests.browser.test_screens import api

pytestmark = pytest.mark.browser


def new_device(browser: Any, *, locale: str = "en-GB", zone: str = "Europe/Berlin") -> Any:
    """A phone that has never seen Waybill: no cookies, no local storage."""
    return browser.new_context(
        viewport=PHONE, is_mobile=True, has_touch=True, locale=locale, timezone_id=zone
    )


def save_preferences(context: Any, server: LiveServer, **changes: Any) -> None:
    prefs = context.request.get(server.url + "/api/me/preferences").json()
    r = api(context, server, "PUT", "/api/me/preferences", {**prefs, **changes})
    assert r.status == 200, r.text()


def code_in(mail: Any) -> str:
    return re.search(r"\b(\d{6})\b", str(mail["Subject"]))[1]  # type: ignore[index]


def test_a_new_device_speaks_the_saved_language_after_the_code(
    browser: Any, phone: Any, live_server: LiveServer
) -> None:
    email = "neues-geraet@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    save_preferences(phone, live_server, language="de", timezone="Europe/Berlin")

    laptop = new_device(browser, zone="America/New_York")  # an English browser elsewhere
    try:
        page = laptop.new_page()
        page.goto(live_server.url + "/sign-in")
        page.get_by_label("Email address").fill(email)
        page.get_by_role("button", name="Send me a code").click()
        page.get_by_label("6-digit code").wait_for()
        assert page.evaluate("() => document.activeElement.id") == "code"  # ready for typing
        live_server.smtp.wait_for(email)

        page.get_by_role("button", name="Send a new code").click()
        page.locator("#code-sent").filter(has_text="A new code is on its way").wait_for()
        assert page.evaluate("() => document.activeElement.id") == "code"
        newest = live_server.smtp.wait_for(email, 2)[-1]
        assert str(newest["Subject"]).startswith("Dein Waybill-Anmeldecode")  # the saved choice
        page.keyboard.type(code_in(newest))
        page.keyboard.press("Enter")

        page.get_by_role("heading", name="Deine Bestellungen").wait_for()
        assert page.evaluate("() => document.documentElement.lang") == "de"
        assert page.locator("#nav-settings").inner_text() == "Einstellungen"
        page.locator("#nav-settings").click()
        page.get_by_role("heading", name="Einstellungen").wait_for()
        assert page.get_by_label("Sprache").input_value() == "de"
        # The saved zone, not this browser's New York.
        assert page.locator("#timezone").input_value() == "Europe/Berlin"
        assert laptop.request.get(live_server.url + "/api/me").json()["locale"] == "de"
    finally:
        laptop.close()


def test_quiet_hours_are_written_as_the_chosen_language_writes_times(
    browser: Any, live_server: LiveServer
) -> None:
    email = "ruhezeit@example.com"
    live_server.order_in_transit(email=email)
    context = new_device(browser, locale="en-US")  # a browser that writes 10:00 PM
    try:
        sign_in(context, live_server, email)
        save_preferences(context, live_server, language="de")
        page = context.new_page()
        page.goto(live_server.url + "/settings")
        page.get_by_role("heading", name="Einstellungen").wait_for()
        start = page.get_by_label("Von", exact=True)
        assert start.locator("option:checked").inner_text() == "22:00"
        labels = start.locator("option").all_inner_texts()
        assert len(labels) == 96 and "07:45" in labels and "23:30" in labels
        assert not [text for text in labels if "AM" in text or "PM" in text]
        page.get_by_role("switch", name="Mitteilungen nachts zurückhalten").check()
        start.select_option("23:30")
        page.get_by_label("Bis", exact=True).select_option("06:15")
        page.get_by_role("button", name="Einstellungen speichern").click()
        page.locator("#settings-status").filter(has_text="Einstellungen gespeichert").wait_for()
        saved = context.request.get(live_server.url + "/api/me/preferences").json()
        assert saved["quiet_hours"] == {"start": "23:30", "end": "06:15"}

        # In English the field says 11:10 PM: a time off the quarter hours stays as saved.
        quiet = {"start": "23:10", "end": "06:15"}
        save_preferences(context, live_server, language="en", quiet_hours=quiet)
        page.reload()
        page.get_by_role("heading", name="Settings").wait_for()
        assert page.get_by_label("From", exact=True).locator("option:checked").inner_text() == (
            "11:10 PM"
        )
        assert page.get_by_label("Until", exact=True).input_value() == "06:15"
    finally:
        context.close()


def test_the_time_zone_list_is_grouped_suggests_the_browsers_and_can_be_searched(
    phone: Any, live_server: LiveServer
) -> None:
    email = "zeitzone@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/settings")
    page.get_by_role("heading", name="Settings").wait_for()
    zone = page.get_by_label("Time zone", exact=True)
    groups = zone.locator("optgroup")
    assert groups.first.get_attribute("label") == "Suggested"
    assert groups.first.locator("option").first.get_attribute("value") == "Europe/Berlin"
    labels = [groups.nth(i).get_attribute("label") for i in range(groups.count())]
    assert {"Europe", "Americas", "Asia", "Africa", "Pacific"} <= set(labels)
    # Chromium lists ICU's names (America/Buenos_Aires), which the server knows too.
    americas = zone.locator('optgroup[label="Americas"]')
    assert americas.locator('option[value="America/Buenos_Aires"]').inner_text() == "Buenos Aires"
    assert zone.locator('optgroup[label="Other"] option[value="UTC"]').count() == 1
    assert zone.locator("option").count() > 300

    search = page.get_by_label("Search time zones")
    search.fill("buenos aires")
    assert zone.locator("option").count() == 2  # the zone in use stays, and the one found
    assert zone.input_value() == "Europe/Berlin"  # searching changes nothing by itself
    zone.select_option("America/Buenos_Aires")
    search.fill("europa")  # no such word here: nothing found, so everything is shown
    page.get_by_text("No time zone matches; showing all.").wait_for()
    assert zone.locator("option").count() > 300
    assert zone.input_value() == "America/Buenos_Aires"
    page.get_by_role("button", name="Save preferences").click()
    page.locator("#settings-status").filter(has_text="Preferences saved").wait_for()
    saved = phone.request.get(live_server.url + "/api/me/preferences").json()
    assert saved["timezone"] == "America/Buenos_Aires"


def test_changing_the_language_still_says_saved(phone: Any, live_server: LiveServer) -> None:
    email = "gespeichert@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    page = phone.new_page()
    page.goto(live_server.url + "/settings")
    page.get_by_label("Language").select_option("de")
    page.get_by_role("button", name="Save preferences").click()
    page.get_by_role("heading", name="Einstellungen").wait_for()
    saved = page.locator("#settings-status")
    saved.filter(has_text="Einstellungen gespeichert").wait_for()
    assert saved.is_visible()


def test_a_new_device_signed_in_by_the_link_speaks_the_saved_language(
    browser: Any, phone: Any, live_server: LiveServer
) -> None:
    """Whichever way the customer signs in (here the emailed link, on an English browser), the
    app speaks the language they saved on another device."""
    email = "link-geraet@example.com"
    live_server.order_in_transit(email=email)
    sign_in(phone, live_server, email)
    save_preferences(phone, live_server, language="de")

    laptop = new_device(browser, zone="America/New_York")
    try:
        sign_in(laptop, live_server, email)
        page = laptop.new_page()
        page.goto(live_server.url + "/")
        page.get_by_role("heading", name="Deine Bestellungen").wait_for()
        assert page.evaluate("() => document.documentElement.lang") == "de"
        assert page.locator("#nav-settings").inner_text() == "Einstellungen"
    finally:
        laptop.close()
