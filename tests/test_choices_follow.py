"""The customer's choices follow them: a language and time zone saved on one device are what a
new device is told after signing in (``/api/me``), and what the mails speak."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, make_merchant
from tests.utils.smtp import SMTPServer
from waybill import close_app, create_app

EMAIL = "jana@example.com"


@pytest.fixture
def app(instance_dir: Path, smtp: SMTPServer) -> Iterator[Flask]:
    app = create_app(make_settings(instance_dir, smtp_url=smtp.url))
    yield app
    close_app(app)


def test_a_new_device_is_told_the_saved_language_and_zone(app: Flask, smtp: SMTPServer) -> None:
    merchant = make_merchant(app, app.test_client())
    merchant.create_order(EMAIL)  # the shop said no language: the first device is English

    phone = app.test_client()
    csrf = AuthActions(app, phone).sign_in(EMAIL)
    assert phone.get("/api/me").get_json()["locale"] in (None, "en")
    prefs = phone.get("/api/me/preferences").get_json()
    r = phone.put(
        "/api/me/preferences",
        json={**prefs, "language": "de", "timezone": "Europe/Berlin"},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 200, r.get_json()
    me = phone.get("/api/me").get_json()
    assert (me["locale"], me["timezone"]) == ("de", "Europe/Berlin")

    # A new device with an English browser signs in with the mailed code...
    laptop = app.test_client()
    english = {"Accept-Language": "en-GB,en;q=0.9"}
    assert laptop.post("/auth/email", json={"email": EMAIL}, headers=english).status_code == 202
    [mail] = smtp.wait_for(EMAIL)
    assert str(mail["Subject"]).startswith("Dein Waybill-Anmeldecode: ")  # the saved choice
    code = re.search(r"\b(\d{6})\b", str(mail["Subject"]))[1]  # type: ignore[index]
    r = laptop.post("/auth/code", json={"email": EMAIL, "code": code}, headers=english)
    assert r.status_code == 200, r.get_json()

    # ...and is told the saved language and zone, and speaks them.
    me = laptop.get("/api/me", headers=english).get_json()
    assert (me["locale"], me["timezone"]) == ("de", "Europe/Berlin")
    saved = laptop.get("/api/me/preferences").get_json()
    assert (saved["language"], saved["timezone"]) == ("de", "Europe/Berlin")


def test_a_later_order_does_not_undo_the_choice(app: Flask) -> None:
    merchant = make_merchant(app, app.test_client())
    merchant.create_order(EMAIL, customer={"email": EMAIL, "locale": "en", "timezone": "UTC"})
    phone = app.test_client()
    csrf = AuthActions(app, phone).sign_in(EMAIL)
    prefs = phone.get("/api/me/preferences").get_json()
    r = phone.put(
        "/api/me/preferences",
        json={**prefs, "language": "de", "timezone": "Europe/Berlin"},
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 200
    # The shop sends the next order with its own (English) idea of the customer.
    merchant.create_order(EMAIL, customer={"email": EMAIL, "locale": "en", "timezone": "UTC"})
    me = phone.get("/api/me").get_json()
    assert (me["locale"], me["timezone"]) == ("de", "Europe/Berlin")


def test_preferences_saved_before_the_locale_was_kept_still_win(app: Flask) -> None:
    """A customer who saved settings before the choice was also written to their row: what
    the saved preferences say is what ``/api/me`` reports."""
    from sqlmodel import select

    from waybill.db import session_scope
    from waybill.models import Customer

    merchant = make_merchant(app, app.test_client())
    merchant.create_order(EMAIL, customer={"email": EMAIL, "locale": "en", "timezone": "UTC"})
    with session_scope(app.extensions["waybill.engine"]) as session:
        customer = session.exec(select(Customer).where(Customer.email == EMAIL)).one()
        customer.preferences = {"language": "de", "timezone": "Europe/Berlin"}
    phone = app.test_client()
    AuthActions(app, phone).sign_in(EMAIL)
    me = phone.get("/api/me").get_json()
    assert (me["locale"], me["timezone"]) == ("de", "Europe/Berlin")
