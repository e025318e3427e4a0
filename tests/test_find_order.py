"""“Find my order”: ``POST /api/track/find`` mails an order's tracking link to the address it
was placed with, read here from a real SMTP server, and tells nobody whether such an order
exists: every miss answers like a hit, takes no other work in the request, and mails nothing."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import make_settings
from tests.utils.factories import MerchantActions, make_merchant, row_counts
from tests.utils.smtp import SMTPServer
from waybill import close_app, create_app
from waybill.api.find_order import found_order_mails

FIND = "/api/track/find"


def make_app(instance_dir: Any, smtp: SMTPServer, **overrides: Any) -> Flask:
    return create_app(
        make_settings(
            instance_dir, smtp_url=smtp.url, mail_from="Waybill <t@waybill.test>", **overrides
        )
    )


@pytest.fixture
def app(instance_dir, smtp) -> Iterator[Flask]:
    app = make_app(instance_dir, smtp)
    yield app
    close_app(app)


def order_for(
    merchant: MerchantActions, email: str, number: str, **customer: Any
) -> dict[str, Any]:
    r = merchant.post("/orders", {"external_id": number, "customer": {"email": email, **customer}})
    assert r.status_code == 201, r.get_json()
    return r.get_json()  # type: ignore[no-any-return]


def settled() -> None:
    """Every request handed over so far has been looked up, and its mail (if any) delivered."""
    assert found_order_mails.wait_idle(10)


def parts(msg: EmailMessage) -> tuple[str, str]:
    return msg.get_body(("plain",)).get_content(), msg.get_body(("html",)).get_content()


def test_the_mail_brings_the_orders_tracking_link(client, merchant, smtp):
    order = order_for(merchant, "Kim@Example.com", "1042")
    other = order_for(merchant, "kim@example.com", "1043")
    r = client.post(FIND, json={"email": " KIM@example.COM ", "order_number": "1042"})
    assert (r.status_code, r.get_json()) == (202, {"sent": True})

    [msg] = smtp.wait_for("kim@example.com")
    text, html = parts(msg)
    assert str(msg["To"]) == "kim@example.com"
    assert str(msg["Subject"]) == "Your tracking link for order 1042"
    assert "Order 1042 is confirmed" in text and "From Test Shop" in text
    assert f"Track your order: {order['tracking_url']}" in text
    assert f'href="{order["tracking_url"]}"' in html and 'lang="en"' in html
    assert other["tracking_url"] not in text + html
    # The link opens the order.
    token = order["tracking_url"].rsplit("/", 1)[1]
    assert client.get(f"/api/track/{token}").get_json()["external_id"] == "1042"


def test_one_number_at_several_shops_is_one_mail_with_each_link(app, client, merchant, smtp):
    other_shop = make_merchant(app, client, name="Other Shop")
    here = order_for(merchant, "ana@example.com", "A-7")
    there = order_for(other_shop, "ana@example.com", "#a-7")  # the shop writes it its own way
    unrelated = order_for(other_shop, "ana@example.com", "A-8")
    r = client.post(FIND, json={"email": "ana@example.com", "order_number": "a-7"})
    assert r.status_code == 202

    [msg] = smtp.wait_for("ana@example.com")
    text, html = parts(msg)
    assert str(msg["Subject"]) == "Your tracking links for order #a-7"  # the newest first
    assert "2 of your orders have that number" in text
    for order, shop in ((here, "Test Shop"), (there, "Other Shop")):
        assert order["tracking_url"] in text and order["tracking_url"] in html
        assert f"From {shop}" in text
    assert text.index(there["tracking_url"]) < text.index(here["tracking_url"])
    assert unrelated["tracking_url"] not in text + html
    settled()
    assert len(smtp.messages) == 1


def test_a_number_beyond_ascii_is_found_as_written(client, merchant, smtp):
    order = order_for(merchant, "ute@example.com", "ÄÖ-12")
    client.post(FIND, json={"email": "ute@example.com", "order_number": "ÄÖ-12"})
    [msg] = smtp.wait_for("ute@example.com")
    assert order["tracking_url"] in parts(msg)[0]


def test_the_mail_speaks_the_customers_language_else_the_browsers(client, merchant, smtp):
    order_for(merchant, "jana@example.com", "500", locale="de-DE")
    order_for(merchant, "sam@example.com", "501")  # never said a language
    client.post(
        FIND,
        json={"email": "jana@example.com", "order_number": "500"},
        headers={"Accept-Language": "en"},
    )
    client.post(
        FIND,
        json={"email": "sam@example.com", "order_number": "501"},
        headers={"Accept-Language": "de-AT,de;q=0.9"},
    )
    for to, number in (("jana@example.com", "500"), ("sam@example.com", "501")):
        [msg] = smtp.wait_for(to)
        text, html = parts(msg)
        assert str(msg["Subject"]) == f"Dein Sendungslink für Bestellung {number}"
        assert f"Bestellung {number} ist bestätigt" in text and "Sendung verfolgen: " in text
        assert 'lang="de"' in html and "Track your order" not in text + html


def test_a_miss_answers_like_a_hit_and_mails_nothing(app, client, merchant, smtp):
    other_shop = make_merchant(app, client, name="Other Shop")
    order_for(merchant, "kim@example.com", "1042")
    order_for(other_shop, "lee@example.com", "2000")

    def ask(email: str, number: str) -> tuple[int, Any, list[tuple[str, str]]]:
        r = client.post(FIND, json={"email": email, "order_number": number})
        # every answer has its own Date and request id; nothing else may differ
        headers = sorted((k, v) for k, v in r.headers.items() if k not in ("Date", "X-Request-ID"))
        return r.status_code, r.get_json(), headers

    hit = ask("kim@example.com", "1042")
    misses = {
        "unknown order": ask("kim@example.com", "9999"),
        "wrong email": ask("lee@example.com", "1042"),
        "nobody's address": ask("stranger@example.com", "1042"),
        "another shop's order of another customer": ask("kim@example.com", "2000"),
    }
    for what, answer in misses.items():
        assert answer == hit, what
    smtp.wait_for("kim@example.com")
    settled()
    assert [str(m["To"]) for m in smtp.messages] == ["kim@example.com"]


def test_the_request_does_the_same_work_whether_or_not_the_order_exists(app, client, merchant):
    """No timing oracle: the request itself asks the database nothing; the worker does."""
    order_for(merchant, "kim@example.com", "1042")
    engine = app.extensions["waybill.engine"]
    here = threading.get_ident()
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if threading.get_ident() == here:  # the background worker runs in its own thread
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        for email, number in (("kim@example.com", "1042"), ("stranger@example.com", "1")):
            r = client.post(FIND, json={"email": email, "order_number": number})
            assert r.status_code == 202
            assert seen == [], (email, seen)
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    settled()


def _assert_429(r: Any) -> None:
    assert r.status_code == 429, r.get_json()
    assert int(r.headers["Retry-After"]) >= 1
    assert r.get_json()["error"]["code"] == "too_many_requests"


@pytest.fixture
def strict_app(instance_dir, smtp) -> Iterator[Flask]:
    limits = (("find_order_per_address", "2/hour"), ("find_order_per_ip", "4/hour"))
    app = make_app(instance_dir, smtp, rate_limits=limits)
    yield app
    close_app(app)


def test_asking_too_often_for_one_address_gets_429(strict_app, smtp):
    client: FlaskClient = strict_app.test_client()
    merchant = make_merchant(strict_app, client)
    order_for(merchant, "kim@example.com", "1042")
    for _ in range(2):
        body = {"email": "kim@example.com", "order_number": "1042"}
        assert client.post(FIND, json=body).status_code == 202
    # The same address however it is written, and whatever the number.
    _assert_429(client.post(FIND, json={"email": " Kim@EXAMPLE.com", "order_number": "1"}))
    settled()
    assert len(smtp.wait_for("kim@example.com", 2)) == 2
    # Another address is still served; sign-in mails are counted apart.
    body = {"email": "other@example.com", "order_number": "1042"}
    assert client.post(FIND, json=body).status_code == 202
    assert client.post("/auth/email", json={"email": "kim@example.com"}).status_code == 202


def test_asking_too_often_from_one_ip_gets_429(strict_app, smtp):
    client = strict_app.test_client()
    for i in range(4):
        body = {"email": f"person{i}@example.com", "order_number": "1"}
        assert client.post(FIND, json=body).status_code == 202
    _assert_429(client.post(FIND, json={"email": "fresh@example.com", "order_number": "1"}))
    # Bad requests count too: guessing with junk is no way round the limit.
    _assert_429(client.post(FIND, json={"email": "junk"}))
    r = client.post(
        FIND,
        json={"email": "fresh@example.com", "order_number": "1"},
        environ_base={"REMOTE_ADDR": "10.1.2.3"},
    )
    assert r.status_code == 202


@pytest.mark.redis
def test_every_worker_counts_together_through_redis(instance_dir, smtp, redis_url):
    extra = {"rate_limit_prefix": f"test-{uuid.uuid4().hex}"}
    limits = (("find_order_per_address", "2/hour"),)
    apps = [
        make_app(instance_dir, smtp, broker_url=redis_url, extra=extra, rate_limits=limits)
        for _ in range(2)
    ]
    try:
        clients = [a.test_client() for a in apps]
        body = {"email": "shared@example.com", "order_number": "1"}
        for c in clients:
            assert c.post(FIND, json=body).status_code == 202
        _assert_429(clients[0].post(FIND, json=body))
        _assert_429(clients[1].post(FIND, json=body))
    finally:
        settled()
        for a in apps:
            close_app(a)


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"email": "not an address", "order_number": "1042"}, "email"),
        ({"email": "kim@", "order_number": "1042"}, "email"),
        ({"email": "kim@example.com", "order_number": ""}, "order_number"),
        ({"email": "kim@example.com", "order_number": "   "}, "order_number"),
        ({"email": "kim@example.com", "order_number": "1" * 201}, "order_number"),
        ({"email": "kim@example.com", "order_number": "10\n42"}, "order_number"),
        ({"email": "kim@example.com", "order_number": 1042}, "order_number"),
        ({"email": "kim@example.com"}, "order_number"),
        ({"email": "kim@example.com", "order_number": "1042", "name": "Kim"}, "name"),
    ],
)
def test_bad_input_is_422_and_mails_nothing(app, client, merchant, smtp, body, field):
    order_for(merchant, "kim@example.com", "1042")
    before = row_counts(app)
    r = client.post(FIND, json=body)
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] == "invalid" and field in error["fields"], error
    settled()
    assert smtp.messages == [] and row_counts(app) == before


def test_only_json_is_taken_so_no_other_site_can_post_it(app, client, merchant, smtp):
    order_for(merchant, "kim@example.com", "1042")
    form = {"email": "kim@example.com", "order_number": "1042"}
    assert client.post(FIND, data=form).status_code == 415  # what a cross-site form can send
    r = client.post(FIND, data="{", headers={"Content-Type": "application/json"})
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed_json"
    settled()
    assert smtp.messages == []


def test_the_openapi_document_describes_it(client):
    doc = client.get("/api/openapi.json").get_json()
    post = doc["paths"][FIND]["post"]
    assert post["tags"] == ["tracking"] and "security" not in post
    assert {"202", "400", "415", "422", "429"} <= set(post["responses"])
    schema = doc["components"]["schemas"]["FindOrder"]
    assert set(schema["properties"]) == {"email", "order_number"}
    assert set(schema["required"]) == {"email", "order_number"}
