"""Email sign-in end to end, with a real SMTP server reading the delivered mail."""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import timedelta

import pytest
from flask import Flask
from sqlmodel import select

from tests.conftest import make_settings
from tests.utils.smtp import SMTPServer
from tests.utils.stored import stored_bytes
from waybill import create_app
from waybill.db import session_scope
from waybill.models import LoginToken


@pytest.fixture
def app(instance_dir, smtp) -> Iterator[Flask]:
    app = create_app(
        make_settings(instance_dir, smtp_url=smtp.url, mail_from="Shop <t@waybill.test>")
    )
    yield app
    app.extensions["waybill.engine"].dispose()


def mailed_link_and_code(smtp: SMTPServer, to: str, count: int = 1) -> tuple[str, str]:
    msg = smtp.wait_for(to, count)[-1]
    text = msg.get_body(("plain",)).get_content()
    link = re.search(r"http://127\.0\.0\.1:8000(/auth/link/\S+)", text).group(1)
    code = re.search(r"\b(\d{6})\b", text).group(1)
    html = msg.get_body(("html",)).get_content()
    assert link in html and code in html
    return link, code


def test_link_from_the_mail_signs_in_only_after_pressing_the_button(merchant, client, smtp):
    merchant.create_order(email="Kim@Example.com")
    r = client.post("/auth/email", json={"email": "kim@EXAMPLE.com"})
    assert (r.status_code, r.get_json()) == (202, {"sent": True})
    link, _ = mailed_link_and_code(smtp, "kim@example.com")

    # A mail scanner opening the link consumes nothing.
    for _ in range(2):
        page = client.get(link)
        assert page.status_code == 200
        assert b"Sign in" in page.data and b'method="post"' in page.data
    assert client.get("/api/me").status_code == 401

    r = client.post(link)
    assert r.status_code == 303 and r.headers["Location"] == "/"
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" not in cookie
    me = client.get("/api/me").get_json()
    assert me["email"] == "kim@example.com" and me["csrf_token"]

    # Used: the link now offers a new one.
    client.post("/auth/logout")
    gone = client.post(link)
    assert gone.status_code == 410
    assert b"new link" in gone.data
    assert client.get(link).status_code == 410


def test_code_from_the_mail_signs_in_once(merchant, client, smtp):
    merchant.create_order(email="lee@example.com")
    client.post("/auth/email", json={"email": "lee@example.com"})
    _, code = mailed_link_and_code(smtp, "lee@example.com")
    r = client.post("/auth/code", json={"email": "LEE@example.com", "code": code})
    assert r.status_code == 200 and r.get_json()["signed_in"] is True
    assert client.get("/api/me/orders").status_code == 200
    client.post("/auth/logout")
    assert client.get("/api/me").status_code == 401
    again = client.post("/auth/code", json={"email": "lee@example.com", "code": code})
    assert again.status_code == 401


def test_a_german_customer_gets_the_sign_in_mail_in_german(merchant, auth, client, smtp):
    merchant.create_order(email="jana@example.com")
    csrf = auth.sign_in("jana@example.com")
    prefs = client.get("/api/me/preferences").get_json()
    r = client.put(
        "/api/me/preferences", json={**prefs, "language": "de"}, headers={"X-CSRF-Token": csrf}
    )
    assert r.status_code == 200, r.get_json()
    auth.sign_out()

    # Her saved language wins over the English browser she asks from.
    client.post(
        "/auth/email", json={"email": "jana@example.com"}, headers={"Accept-Language": "en"}
    )
    msg = smtp.wait_for("jana@example.com")[-1]
    text = msg.get_body(("plain",)).get_content()
    html = msg.get_body(("html",)).get_content()
    assert str(msg["Subject"]).startswith("Dein Waybill-Anmeldecode: ")
    assert "Melde dich bei Waybill an" in text and "Oder gib diesen Code in der App ein" in text
    assert 'lang="de"' in html and ">Anmelden</a>" in html
    assert "Sign in" not in text + html
    _, code = mailed_link_and_code(smtp, "jana@example.com")
    r = client.post("/auth/code", json={"email": "jana@example.com", "code": code})
    assert r.status_code == 200


def test_sign_in_mail_follows_the_asking_browser_else_english(merchant, client, smtp):
    merchant.create_order(email="alex@example.com")
    client.post(
        "/auth/email",
        json={"email": "alex@example.com"},
        headers={"Accept-Language": "de-AT,de;q=0.9,en;q=0.5"},
    )
    german = smtp.wait_for("alex@example.com")[-1]
    assert "Melde dich bei Waybill an" in german.get_body(("plain",)).get_content()

    client.post(
        "/auth/email", json={"email": "alex@example.com"}, headers={"Accept-Language": "fr"}
    )
    english = smtp.wait_for("alex@example.com", 2)[-1]
    assert str(english["Subject"]).startswith("Your Waybill sign-in code: ")
    text = english.get_body(("plain",)).get_content()
    assert "Sign in to Waybill to see all your orders:" in text
    assert "Or type this code in the app:" in text
    assert 'lang="en"' in english.get_body(("html",)).get_content()


def test_five_wrong_codes_void_the_code(merchant, client, smtp):
    merchant.create_order(email="max@example.com")
    client.post("/auth/email", json={"email": "max@example.com"})
    _, code = mailed_link_and_code(smtp, "max@example.com")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(5):
        assert (
            client.post("/auth/code", json={"email": "max@example.com", "code": wrong}).status_code
            == 401
        )
    r = client.post("/auth/code", json={"email": "max@example.com", "code": code})
    assert r.status_code == 401


def test_unknown_address_gets_the_same_answer_and_no_mail(client, smtp, merchant):
    r = client.post("/auth/email", json={"email": "stranger@example.com"})
    assert (r.status_code, r.get_json()) == (202, {"sent": True})
    merchant.create_order(email="known@example.com")
    client.post("/auth/email", json={"email": "known@example.com"})
    smtp.wait_for("known@example.com")
    assert not [m for m in smtp.messages if "stranger" in str(m["To"])]


def test_expired_link_and_code_are_refused(app, merchant, client, smtp):
    merchant.create_order(email="old@example.com")
    client.post("/auth/email", json={"email": "old@example.com"})
    link, code = mailed_link_and_code(smtp, "old@example.com")
    with session_scope(app.extensions["waybill.engine"]) as session:
        for login in session.exec(select(LoginToken)).all():
            login.expires_at -= timedelta(minutes=16)
            session.add(login)
    assert client.get(link).status_code == 410
    assert client.post(link).status_code == 410
    assert (
        client.post("/auth/code", json={"email": "old@example.com", "code": code}).status_code
        == 401
    )


def test_tokens_are_stored_only_as_hashes(app, merchant, client, smtp):
    merchant.create_order(email="hash@example.com")
    client.post("/auth/email", json={"email": "hash@example.com"})
    link, code = mailed_link_and_code(smtp, "hash@example.com")
    token = link.rsplit("/", 1)[1]
    assert token.encode() not in stored_bytes(app.config["WAYBILL_SETTINGS"].database_url)


def test_bad_sign_in_requests_get_the_error_shape(client):
    r = client.post("/auth/code", json={"email": "a@example.com", "code": "12"})
    assert r.status_code == 422 and "code" in r.get_json()["error"]["fields"]
    r = client.post("/auth/email", data="x", headers={"Content-Type": "text/plain"})
    assert r.status_code == 415


def test_secure_cookie_when_base_url_is_https(instance_dir, merchant):
    app = create_app(make_settings(instance_dir, base_url="https://track.example"))
    client = app.test_client()
    from tests.utils.factories import AuthActions

    merchant.create_order(email="sec@example.com")
    link = AuthActions(app, client).login_link("sec@example.com")
    r = client.post(f"/auth/link/{link}")
    assert "Secure" in r.headers["Set-Cookie"]
    app.extensions["waybill.engine"].dispose()
