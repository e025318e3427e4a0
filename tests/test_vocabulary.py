"""One vocabulary: every status label comes from the server's catalogue (``GET /api/statuses``
for the PWA), the app's paths are named once (``web/js/routes.js``), German says "du"."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from waybill import catalogue
from waybill.notify import preferences
from waybill.pages import page_pattern, screens
from waybill.tracking.statuses import ALL_STATUSES, PackageCounts

WEB = Path(__file__).resolve().parents[1] / "web"


def test_statuses_lists_every_status_with_its_label_and_whether_it_notifies(client):
    r = client.get("/api/statuses?lang=de")
    assert r.status_code == 200
    body = r.get_json()
    assert body["language"] == "de"
    defaults = preferences.defaults().statuses
    assert body["statuses"] == [
        {
            "status": s.value,
            "label": catalogue.label(s, "de"),
            "notifiable": True,
            "default_on": defaults[s.value],
        }
        for s in ALL_STATUSES
    ]
    labels = {s["status"]: s["label"] for s in body["statuses"]}
    assert labels["shipped"] == "Versendet"
    assert labels["returned"] == "Zurück an Absender"


def test_statuses_speaks_the_language_asked_for_or_the_browsers(client):
    assert client.get("/api/statuses?lang=en").get_json()["statuses"][2]["label"] == "Shipped"
    german = client.get("/api/statuses", headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert german.get_json()["language"] == "de"
    assert "Accept-Language" in german.headers["Vary"]
    # The first language the browser names that we speak, as the app picks it.
    english_first = client.get("/api/statuses", headers={"Accept-Language": "en-GB,de;q=0.5"})
    assert english_first.get_json()["language"] == "en"
    french = client.get("/api/statuses", headers={"Accept-Language": "fr"})
    assert french.get_json()["language"] == "en"


@pytest.mark.parametrize("query", ["lang=fr", "lang=", "language=de"])
def test_statuses_refuses_what_it_does_not_know(client, query):
    r = client.get(f"/api/statuses?{query}")
    assert r.status_code == 422
    assert r.get_json()["error"]["fields"]


def test_statuses_is_public_and_revalidated(client):
    r = client.get("/api/statuses?lang=en")
    assert r.headers["Cache-Control"] == "public, no-cache"
    again = client.get("/api/statuses?lang=en", headers={"If-None-Match": r.headers["ETag"]})
    assert again.status_code == 304


def test_a_german_customers_orders_carry_the_catalogues_german_labels(client, merchant, auth):
    order = merchant.create_order(customer={"email": "de@example.com", "locale": "de-DE"})
    merchant.add_shipment(order["id"])
    auth.sign_in("de@example.com")
    shown = client.get(f"/api/me/orders/{order['id']}").get_json()
    assert (shown["status"], shown["status_label"]) == ("shipped", "Versendet")
    assert shown["shipments"][0]["status_label"] == catalogue.label("shipped", "de")


def test_the_pwa_keeps_no_status_labels_of_its_own():
    for lang in ("en", "de"):
        text = (WEB / "js" / "i18n" / f"{lang}.js").read_text()
        assert not re.findall(r"'status\.\w+'", text), lang
    for path in WEB.rglob("*.js"):
        text = path.read_text()
        for old in ("Versandt", "Zurückgesandt", "Delayed or held up"):
            assert old not in text, (path, old)


def test_german_says_du_throughout():
    formal = re.compile(r"\b(Sie|Ihnen|Ihr|Ihre|Ihrem|Ihren|Ihrer|Ihres)\b")
    for path in [*WEB.rglob("*.js"), WEB / "index.html"]:
        assert not formal.findall(path.read_text()), path
    for words in [
        *catalogue.LABELS["de"].values(),
        catalogue.packages_text(PackageCounts(3, 1), "de"),
    ]:
        assert not formal.findall(words), words
    # what the server writes in German: mails, notifications, pages
    from waybill.api.unsubscribe import _TEXT as PAGES
    from waybill.auth.login import _MAIL_WORDS
    from waybill.notify.content import _TEXT as MESSAGES

    for table in (PAGES["de"], _MAIL_WORDS["de"], MESSAGES["de"]):
        for words in table.values():
            assert not formal.findall(str(words)), words


def test_no_scaffolding_comment_names_an_issue():
    server = WEB.parent / "server" / "waybill"
    for path in [
        *WEB.rglob("*.js"),
        *WEB.rglob("*.html"),
        *WEB.rglob("*.css"),
        *server.rglob("*.py"),
        *(WEB.parent / "tests").rglob("*.py"),
    ]:
        assert not re.search(r"\bissue\s*#?\d", path.read_text(), re.I), path


def test_each_screen_of_routes_js_is_served_and_answered_offline(client, merchant):
    order = merchant.create_order()
    token = order["tracking_url"].rsplit("/", 1)[1]
    worker = client.get("/sw.js").get_data(as_text=True)
    stamped = json.loads(re.search(r"const APP_PAGES = (\[.*?\])\.map", worker)[1])  # type: ignore[index]
    assert stamped == [page_pattern(s.path) for s in screens()]
    assert {s.view for s in screens()} == {"home", "track", "settings", "sign-in"}
    for screen in screens():
        path = screen.path.replace("<token>", token).replace("<int:orderId>", str(order["id"]))
        r = client.get(path)
        assert r.status_code == 200, path
        assert '<main id="main"' in r.get_data(as_text=True)
        # The worker's patterns, read as JavaScript reads these (the same syntax here).
        assert any(re.match(p, path) for p in stamped), path
        if path != "/":
            assert any(re.match(p, path + "/") for p in stamped), path
    for other in ("/auth/link/abc", "/api/me", "/assets/x/app.css", "/orders/abc", "/t/a/b"):
        assert not any(re.match(p, other) for p in stamped), other


def test_a_tracking_link_answers_in_the_browsers_language(app, client):
    from tests.utils.factories import make_merchant

    shop = make_merchant(app, client)
    order = shop.create_order()
    shop.add_shipment(order["id"])
    shop.add_shipment(order["id"])
    path = "/api/track/" + order["tracking_url"].rsplit("/", 1)[1]
    german = client.get(path, headers={"Accept-Language": "de-DE,de;q=0.9,en;q=0.5"}).get_json()
    assert german["status_label"] == catalogue.label("shipped", "de") == "Versendet"
    assert german["packages"]["summary"] == catalogue.packages_text(PackageCounts(2, 0), "de")
    english = client.get(path, headers={"Accept-Language": "fr, en;q=0.5"}).get_json()
    assert english["status_label"] == "Shipped"
