"""A parcel of a split order delivered while another is on its way: the customer hears it (the
stage ``partially_delivered``, theirs to turn off), though the order's status stays with its
least advanced parcel; the last parcel is the delivery."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.smtp import SMTPServer
from waybill import close_app, create_app
from waybill.notify.delivery import Worker

EMAIL = "split@example.com"


@pytest.fixture
def app(instance_dir: Path, smtp: SMTPServer) -> Iterator[Flask]:
    app = create_app(make_settings(instance_dir, smtp_url=smtp.url))
    yield app
    close_app(app)


def send_due(app: Flask) -> None:
    worker = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"])
    try:
        worker.run_until_idle()
    finally:
        worker.stop()


def subjects(smtp: SMTPServer, count: int) -> list[str]:
    return [str(m["Subject"]) for m in smtp.wait_for(EMAIL, count)]


def split_order(merchant: MerchantActions, app: Flask) -> tuple[dict, dict, dict]:  # type: ignore[type-arg]
    order = merchant.create_order(EMAIL, external_id="SPLIT-1")
    first = merchant.add_shipment(order["id"], tracking_number="AAA111")
    second = merchant.add_shipment(order["id"], tracking_number="BBB222")
    merchant.scan(first["id"], "in_transit", "2026-11-20T08:00:00Z")
    merchant.scan(second["id"], "in_transit", "2026-11-20T08:05:00Z")
    send_due(app)  # "has shipped" goes first
    return order, first, second


def test_a_parcel_delivered_while_another_travels_is_told_and_the_last_is_the_delivery(
    app: Flask, smtp: SMTPServer
) -> None:
    merchant = make_merchant(app, app.test_client(), name="Split Shop")
    order, first, second = split_order(merchant, app)

    r = merchant.scan(first["id"], "delivered", "2026-11-21T10:00:00Z")
    assert r.status_code == 201
    body = r.get_json()
    assert body["status"] == "in_transit"  # the order goes on with its other parcel
    assert body["packages"]["delivered"] == 1
    send_due(app)
    partial = subjects(smtp, 2)[-1]
    assert partial == "Order #SPLIT-1 is partly delivered"
    mail = smtp.wait_for(EMAIL, 2)[-1]
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert "Split Shop: one package has arrived, the rest is on its way." in text

    merchant.scan(second["id"], "delivered", "2026-11-22T10:00:00Z")
    send_due(app)
    assert subjects(smtp, 3)[-1] == "Order #SPLIT-1 has been delivered"
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "delivered"


def test_a_single_parcel_is_simply_delivered(app: Flask, smtp: SMTPServer) -> None:
    merchant = make_merchant(app, app.test_client())
    order = merchant.create_order(EMAIL, external_id="ONE-1")
    shipment = merchant.add_shipment(order["id"])
    send_due(app)
    merchant.scan(shipment["id"], "delivered", "2026-11-21T10:00:00Z")
    send_due(app)
    assert subjects(smtp, 2) == ["Order #ONE-1 has shipped", "Order #ONE-1 has been delivered"]


def test_the_customer_can_turn_partial_deliveries_off(app: Flask, smtp: SMTPServer) -> None:
    merchant = make_merchant(app, app.test_client())
    phone = app.test_client()
    merchant.create_order(EMAIL, external_id="FIRST")  # the customer exists to sign in
    csrf = AuthActions(app, phone).sign_in(EMAIL)
    prefs = phone.get("/api/me/preferences").get_json()
    assert prefs["statuses"]["partially_delivered"] is True  # on until they choose
    prefs["statuses"]["partially_delivered"] = False
    r = phone.put("/api/me/preferences", json=prefs, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    send_due(app)

    order, first, second = split_order(merchant, app)
    merchant.scan(first["id"], "delivered", "2026-11-21T10:00:00Z")
    send_due(app)
    merchant.scan(second["id"], "delivered", "2026-11-22T10:00:00Z")
    send_due(app)
    # everything that was sent, and no partial delivery among it
    assert subjects(smtp, 2) == ["Order #SPLIT-1 has shipped", "Order #SPLIT-1 has been delivered"]


def test_the_stage_is_in_the_catalogue_in_each_language(app: Flask) -> None:
    client = app.test_client()
    for lang, words in (
        ("en", "One package delivered, others on the way"),
        ("de", "Ein Paket zugestellt, weitere unterwegs"),
    ):
        stages = client.get(f"/api/statuses?lang={lang}").get_json()["stages"]
        names = [s["stage"] for s in stages]
        assert names.index("partially_delivered") == names.index("delivered") - 1
        [partial] = [s for s in stages if s["stage"] == "partially_delivered"]
        assert partial == {"stage": "partially_delivered", "label": words, "default_on": True}
