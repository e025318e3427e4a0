"""The PWA speaks the server's catalogue: the labels a German customer reads are the ones the API
gives, the settings list exactly the stages the API names, and the app's paths are one list."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.browser.conftest import PHONE, LiveServer
from tests.browser.test_pwa import wait_for_offline_copy

pytestmark = pytest.mark.browser

SWITCHES = """() => [...document.querySelectorAll('#preferences input[id^="st-"]')]
  .map((i) => [i.id.slice(3), i.closest('label').textContent, i.checked])"""


@pytest.fixture
def german(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport=PHONE, locale="de-DE", timezone_id="Europe/Berlin")
    yield context
    context.close()


def sign_in(context: Any, server: LiveServer, email: str) -> None:
    """The emailed link's page, its one button pressed (whatever language it speaks)."""
    page = context.new_page()
    page.goto(f"{server.url}/auth/link/{server.auth.login_link(email)}")
    page.locator("form[method=post] button[type=submit]").click()
    page.wait_for_url(f"{server.url}/")
    page.close()


def shipped_order(server: LiveServer, email: str) -> dict[str, Any]:
    """A German customer's order with a parcel handed to the carrier and not scanned yet."""
    order = server.merchant.create_order(customer={"email": email, "locale": "de-DE"})
    server.merchant.add_shipment(order["id"], carrier="DHL")
    return order


def test_a_german_customer_reads_the_catalogues_label_the_api_gives(
    german: Any, live_server: LiveServer
) -> None:
    email = "versand@example.com"
    order = shipped_order(live_server, email)
    sign_in(german, live_server, email)
    answer = german.request.get(f"{live_server.url}/api/me/orders/{order['id']}").json()
    assert (answer["status"], answer["status_label"]) == ("shipped", "Versendet")

    page = german.new_page()
    page.goto(f"{live_server.url}/")
    card = page.locator(f'[data-order="{order["id"]}"] strong')
    card.wait_for()
    assert card.inner_text() == answer["status_label"]
    card.click()
    page.wait_for_url(f"{live_server.url}/orders/{order['id']}")
    heading = page.get_by_role("heading", level=1)
    heading.filter(has_text=answer["status_label"]).wait_for()
    assert heading.inner_text() == "Versendet"
    assert page.title().startswith("Versendet · ")

    # Offline, the kept answers say the same.
    wait_for_offline_copy(page)
    page.reload()  # this load goes through the worker, which keeps the labels too
    heading.filter(has_text="Versendet").wait_for()
    german.set_offline(True)
    try:
        page.reload()
        heading.filter(has_text="Versendet").wait_for()
        assert "Offline" in page.locator(".freshness").inner_text()
    finally:
        german.set_offline(False)


def test_settings_list_exactly_the_stages_the_api_gives(
    german: Any, live_server: LiveServer
) -> None:
    email = "stufen@example.com"
    shipped_order(live_server, email)
    sign_in(german, live_server, email)
    catalogue = german.request.get(f"{live_server.url}/api/statuses?lang=de").json()
    page = german.new_page()
    page.goto(f"{live_server.url}/settings")
    page.get_by_role("heading", name="Einstellungen").wait_for()
    page.locator("#preferences").wait_for()
    assert page.evaluate(SWITCHES) == [
        [s["stage"], s["label"], s["default_on"]] for s in catalogue["stages"]
    ]
    labels = [s[1] for s in page.evaluate(SWITCHES)]
    assert "Zurück an Absender" in labels and "Verzögert" in labels
    assert "Ein Paket zugestellt, weitere unterwegs" in labels  # a moment, not a status
    # A new "arrives by" is a moment too, listed from the catalogue, and off until chosen.
    estimate = page.get_by_role("switch", name="Neuer voraussichtlicher Liefertermin")
    assert estimate.count() == 1 and not estimate.is_checked()
    # Saving sends every stage back as shown.
    page.get_by_role("switch", name="Wird vorbereitet").check()
    page.get_by_role("button", name="Einstellungen speichern").click()
    page.get_by_role("status").filter(has_text="Einstellungen gespeichert").wait_for()
    saved = german.request.get(f"{live_server.url}/api/me/preferences").json()["statuses"]
    expected = {s["stage"]: s["default_on"] for s in catalogue["stages"]}
    assert saved == {**expected, "processing": True}


def test_a_failed_passkey_says_du(german: Any, live_server: LiveServer) -> None:
    page = german.new_page()
    # The authenticator refuses, as one does when the customer cancels.
    page.add_init_script(
        "navigator.credentials.get = () =>"
        " Promise.reject(new DOMException('no', 'NotAllowedError'));"
    )
    page.goto(f"{live_server.url}/sign-in")
    page.get_by_role("button", name="Mit Passkey anmelden").click()
    error = page.locator("#passkey-error")
    error.filter(has_text="Passkey").wait_for()
    assert error.inner_text() == (
        "Dieser Passkey hat hier nicht funktioniert. "
        "Versuche es erneut oder nutze deine E-Mail-Adresse."
    )


def test_the_app_and_its_worker_read_the_same_paths(phone: Any, live_server: LiveServer) -> None:
    """routes.js's match() (the app) and the patterns the server stamps into sw.js agree."""
    from waybill.pages import page_pattern, screens

    order = live_server.order_in_transit()
    page = phone.new_page()
    page.goto(f"{live_server.url}/t/{live_server.token_of(order)}")
    page.get_by_role("heading", level=1).wait_for()
    version = page.evaluate("() => document.getElementById('main').dataset.version")
    paths = [
        "/",
        "/t/abcDEF123",
        "/t/abc%20def/",
        "/orders/42",
        "/orders/42/",
        "/settings",
        "/settings/",
        "/sign-in",
        "/orders/abc",
        "/t/a/b",
        "/auth/link/x",
        "//",
        "/settingsx",
    ]
    found = page.evaluate(
        """async ([url, paths, patterns]) => {
          const { match } = await import(url);
          return paths.map((p) => [
            match(p)?.view ?? null,
            patterns.some((source) => new RegExp(source).test(p)),
          ]);
        }""",
        [
            f"/assets/{version}/js/routes.js",
            paths,
            [page_pattern(s.path) for s in screens()],
        ],
    )
    for path, (view, offline) in zip(paths, found, strict=True):
        assert (view is not None) == offline, path
    assert dict(zip(paths, [v for v, _ in found], strict=True)) == {
        "/": "home",
        "/t/abcDEF123": "track",
        "/t/abc%20def/": "track",
        "/orders/42": "track",
        "/orders/42/": "track",
        "/settings": "settings",
        "/settings/": "settings",
        "/sign-in": "sign-in",
        "/orders/abc": None,
        "/t/a/b": None,
        "/auth/link/x": None,
        "//": None,
        "/settingsx": None,
    }
