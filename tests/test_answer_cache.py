"""Opening the app again serves the answer rendered at the latest change (``AnswerCache``): never
an answer older than what the change log says, never one reader's or language's for another."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.utils.factories import AuthActions, MerchantActions
from waybill.api import customer as customer_api
from waybill.api import track as track_api
from waybill.orders import AnswerCache

EMAIL = "cache@example.com"


def test_every_change_is_in_the_next_answer(
    app: Flask, merchant: MerchantActions, auth: AuthActions, client: FlaskClient
) -> None:
    order = merchant.create_order(EMAIL)
    shipment = merchant.add_shipment(order["id"])
    csrf = auth.sign_in(EMAIL)
    first = client.get("/api/me/orders").get_json()["orders"]
    assert [o["status"] for o in first] == ["shipped"]
    assert client.get("/api/me/orders").get_json()["orders"] == first  # nothing changed

    merchant.scan(shipment["id"], "out_for_delivery", "2026-11-20T08:00:00Z")
    [now] = client.get("/api/me/orders").get_json()["orders"]
    assert (now["status"], now["cursor"]) != (first[0]["status"], first[0]["cursor"])
    assert now["status"] == "out_for_delivery"
    one = client.get(f"/api/me/orders/{order['id']}").get_json()
    assert one["status"] == "out_for_delivery"

    second = merchant.create_order(EMAIL)  # a new order is a change of the customer's list
    assert [o["id"] for o in client.get("/api/me/orders").get_json()["orders"]] == [
        second["id"],
        order["id"],
    ]

    # The language they choose is the answer's at once, though no order changed.
    prefs = client.get("/api/me/preferences").get_json()
    r = client.put(
        "/api/me/preferences", json={**prefs, "language": "de"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200
    labels = [o["status_label"] for o in client.get("/api/me/orders").get_json()["orders"]]
    assert labels == ["Bestellung bestätigt", "In Zustellung"]


def test_a_tracking_link_answers_each_browser_in_its_language(
    merchant: MerchantActions, client: FlaskClient
) -> None:
    order = merchant.create_order(EMAIL)
    token = order["tracking_url"].rsplit("/", 1)[1]
    german = client.get(f"/api/track/{token}", headers={"Accept-Language": "de"}).get_json()
    english = client.get(f"/api/track/{token}", headers={"Accept-Language": "en"}).get_json()
    assert (german["status_label"], english["status_label"]) == (
        "Bestellung bestätigt",
        "Order confirmed",
    )
    assert "customer" not in german  # the merchant's view is never what a link gets


def test_customers_never_see_each_others_lists(app: Flask, merchant: MerchantActions) -> None:
    answers = []
    for email in ("a@example.com", "b@example.com"):
        merchant.create_order(email, external_id=f"FOR-{email}")
        reader = app.test_client()
        AuthActions(app, reader).sign_in(email)
        answers.append(reader.get("/api/me/orders").get_json()["orders"])
    assert [[o["external_id"] for o in a] for a in answers] == [
        ["FOR-a@example.com"],
        ["FOR-b@example.com"],
    ]


def test_the_cache_keeps_the_newest_and_a_bounded_number() -> None:
    cache = AnswerCache(size=2)
    cache.put("a", 5, b"five")
    assert cache.get("a", 5) == b"five"
    assert cache.get("a", 6) is None  # the log moved on: render again
    cache.put("a", 4, b"four")  # a slower reader's older render does not win
    assert cache.get("a", 5) == b"five" and cache.get("a", 4) is None
    cache.put("b", 1, b"b")
    cache.get("a", 5)  # read: "b" is now the least recently read
    cache.put("c", 1, b"c")
    assert cache.get("b", 1) is None
    assert (cache.get("a", 5), cache.get("c", 1)) == (b"five", b"c")


def test_a_change_committed_while_an_answer_is_read_is_never_hidden_under_its_cursor(
    app: Flask,
    merchant: MerchantActions,
    auth: AuthActions,
    client: FlaskClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The order is found, then a scan commits, then the change log's cursor is read: the
    answer must not show the order as it was under the newer cursor (on PostgreSQL each
    statement sees what was committed when it began). The app would take such an answer for
    the newer state and go back to the old status; the cache would keep it until the next
    change."""
    order = merchant.create_order(EMAIL)
    shipment = merchant.add_shipment(order["id"])
    auth.sign_in(EMAIL)
    token = order["tracking_url"].rsplit("/", 1)[1]
    scans = iter(["in_transit", "out_for_delivery"])

    def meanwhile(found: Any) -> Any:
        """After the request has found its order, another request commits a scan."""

        def run(*args: Any, **kwargs: Any) -> Any:
            row = found(*args, **kwargs)
            other = threading.Thread(
                target=merchant.scan,
                args=(shipment["id"], next(scans), "2026-11-20T08:00:00Z"),
            )
            other.start()
            other.join()
            return row

        return run

    for module, name, path, status in (
        (track_api, "tracked_order", f"/api/track/{token}", "in_transit"),
        (customer_api, "owned_or_404", f"/api/me/orders/{order['id']}", "out_for_delivery"),
    ):
        with monkeypatch.context() as patch:
            patch.setattr(module, name, meanwhile(getattr(module, name)))
            raced = client.get(path).get_json()
        fresh = client.get(path).get_json()  # from the cache, if it kept the raced answer
        assert fresh["status"] == status, path
        # the raced answer shows the order before or after the scan, as its cursor says
        assert raced["cursor"] < fresh["cursor"] or raced["status"] == status, path
