"""Notifications end to end: the real API, a real outbox worker, a loopback push service that
verifies VAPID and decrypts, and a real SMTP server."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.push_service import BrowserSubscription, PushService
from tests.utils.smtp import SMTPServer
from waybill import create_app
from waybill.config import Settings
from waybill.notify.delivery import Worker
from waybill.notify.models import OutboxMessage

EMAIL = "shopper@example.com"


@pytest.fixture
def push() -> Iterator[PushService]:
    service = PushService().start()
    yield service
    service.stop()


@pytest.fixture
def settings(instance_dir: Path, smtp: SMTPServer) -> Settings:
    return make_settings(instance_dir, push_endpoint_hosts=("127.0.0.1:*",), smtp_url=smtp.url)


@pytest.fixture
def worker(app: Flask, push: PushService, client: FlaskClient) -> Iterator[Worker]:
    push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
    w = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"], concurrency=4)
    yield w
    w.stop()


class Shopper:
    """A signed-in customer with one browser subscribed, and the merchant's order for them."""

    def __init__(self, merchant: MerchantActions, auth: AuthActions, push: PushService) -> None:
        self.merchant, self.client = merchant, auth.client
        self.order = merchant.create_order(EMAIL)
        self.csrf = auth.sign_in(EMAIL)
        self.browser = push.subscribe()
        r = self.put("/api/me/push-subscriptions", self.browser.to_json(), method="post")
        assert r.status_code == 201, r.get_json()

    def put(self, path: str, body: object, method: str = "put") -> object:
        return getattr(self.client, method)(path, json=body, headers={"X-CSRF-Token": self.csrf})

    def prefs(self, **changes: object) -> dict:
        doc = self.client.get("/api/me/preferences").get_json()
        doc.update(changes)
        r = self.put("/api/me/preferences", doc)
        assert r.status_code == 200, r.get_json()  # type: ignore[attr-defined]
        return r.get_json()  # type: ignore[attr-defined,no-any-return]

    def ship(self, **fields: object) -> dict:
        return self.merchant.add_shipment(self.order["id"], **fields)


def at(minutes: int) -> str:
    return (datetime(2026, 11, 20, 8, 0, tzinfo=UTC) + timedelta(minutes=minutes)).isoformat()


@pytest.fixture
def shopper(merchant: MerchantActions, auth: AuthActions, push: PushService) -> Shopper:
    return Shopper(merchant, auth, push)


def payloads(push: PushService, sub: BrowserSubscription) -> list[dict]:
    return [d.payload for d in push.delivered_to(sub)]


def test_push_payload_and_headers(shopper: Shopper, push: PushService, worker: Worker) -> None:
    shipment = shopper.ship(estimated_delivery=datetime.now(UTC).isoformat())
    assert worker.run_until_idle() == 2  # push and email: both on until preferences are saved
    [first] = push.delivered_to(shopper.browser)
    order_id = shopper.order["id"]
    assert first.payload == {
        "title": f"Order #{shopper.order['external_id']} has shipped",
        "body": "From Test Shop — arriving today",
        "url": shopper.order["tracking_url"],
        "tag": f"order-{order_id}",
        "order_id": order_id,
        "status": "shipped",
        "lang": "en",
    }
    assert first.headers["urgency"] == "normal"
    assert first.headers["topic"] == f"order-{order_id}"
    assert int(first.headers["ttl"]) > 0
    assert first.claims["sub"].startswith("mailto:")

    shopper.merchant.scan(shipment["id"], "out_for_delivery", at(1))
    worker.run_until_idle()
    second = push.delivered_to(shopper.browser)[-1]
    assert second.payload["status"] == "out_for_delivery"
    assert second.payload["title"].endswith("is out for delivery")
    assert second.headers["urgency"] == "high"
    assert push.errors == []


def test_german_customer_gets_german_text(shopper: Shopper, push: PushService, worker: Worker):
    shopper.prefs(language="de")
    shopper.ship()
    worker.run_until_idle()
    [msg] = payloads(push, shopper.browser)
    assert msg["title"] == f"Bestellung #{shopper.order['external_id']} wurde versendet"


def test_only_chosen_statuses_notify(shopper: Shopper, push: PushService, worker: Worker) -> None:
    statuses = shopper.client.get("/api/me/preferences").get_json()["statuses"]
    shopper.prefs(statuses={**statuses, "shipped": False, "in_transit": True})
    shipment = shopper.ship()
    shopper.merchant.scan(shipment["id"], "in_transit", at(1))
    worker.run_until_idle()
    # a second in_transit scan changes the timeline, not the status: no notification
    shopper.merchant.scan(shipment["id"], "in_transit", at(2), location="Hub 2")
    worker.run_until_idle()
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["in_transit"]


def test_muted_order_is_silent_on_every_channel(
    shopper: Shopper, push: PushService, worker: Worker, smtp: SMTPServer
) -> None:
    other = shopper.merchant.create_order(EMAIL)
    path = f"/api/me/orders/{shopper.order['id']}/preferences"
    assert shopper.client.get(path).get_json() == {"order_id": shopper.order["id"], "muted": False}
    r = shopper.put(path, {"muted": True})
    assert r.status_code == 200  # type: ignore[attr-defined]
    assert shopper.client.get(path).get_json() == {"order_id": shopper.order["id"], "muted": True}
    shopper.ship()
    shopper.merchant.add_shipment(other["id"])
    worker.run_until_idle()
    assert [p["order_id"] for p in payloads(push, shopper.browser)] == [other["id"]]
    assert len(smtp.wait_for(EMAIL)) == 1
    assert other["external_id"] in str(smtp.messages[0]["Subject"])


def test_quiet_hours_hold_collapse_then_release_when_preferences_change(
    app: Flask, shopper: Shopper, push: PushService, worker: Worker
) -> None:
    now = datetime.now(UTC)
    quiet = {
        "start": (now - timedelta(hours=1)).strftime("%H:%M"),
        "end": (now + timedelta(hours=2)).strftime("%H:%M"),
    }
    statuses = shopper.client.get("/api/me/preferences").get_json()["statuses"]
    shopper.prefs(
        quiet_hours=quiet,
        timezone="UTC",
        channels={"push": True, "email": False},
        statuses={**statuses, "in_transit": True},
    )
    shipment = shopper.ship()
    shopper.merchant.scan(shipment["id"], "in_transit", at(1))
    shopper.merchant.scan(shipment["id"], "out_for_delivery", at(2))
    assert worker.run_until_idle() == 0
    assert push.delivered_to(shopper.browser) == []
    with Session(app.extensions["waybill.engine"]) as s:
        held = list(s.exec(select(OutboxMessage).where(OutboxMessage.state == "pending")))
    assert [r.status for r in held] == ["out_for_delivery"]  # collapsed to the latest
    assert held[0].due_at > now + timedelta(minutes=90)

    shopper.prefs(quiet_hours=None)  # applies to what is held, at once
    assert worker.run_until_idle() == 1
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["out_for_delivery"]


def test_quiet_hours_release_when_the_window_ends(
    shopper: Shopper, push: PushService, worker: Worker
) -> None:
    now = datetime.now(UTC)
    end = now + timedelta(hours=2)
    shopper.prefs(
        quiet_hours={
            "start": (now - timedelta(hours=1)).strftime("%H:%M"),
            "end": end.strftime("%H:%M"),
        },
        timezone="UTC",
        channels={"push": True, "email": False},
    )
    shopper.ship()
    assert worker.run_until_idle() == 0
    assert worker.run_until_idle(now=end + timedelta(minutes=1)) == 1
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["shipped"]


def test_gone_subscription_is_forgotten(
    shopper: Shopper, push: PushService, worker: Worker
) -> None:
    push.for_subscription(shopper.browser, 410)
    shopper.ship()
    worker.run_until_idle()
    assert shopper.client.get("/api/me/push-subscriptions").get_json() == {"subscriptions": []}
    attempts = len(push.attempts)
    shopper.merchant.create_order(EMAIL)  # another order, another change: nobody to push to
    order = shopper.merchant.create_order(EMAIL)
    shopper.merchant.add_shipment(order["id"])
    worker.run_until_idle()
    assert len(push.attempts) == attempts


def test_429_is_retried_after_retry_after(
    app: Flask, shopper: Shopper, push: PushService, worker: Worker
) -> None:
    shopper.prefs(channels={"push": True, "email": False})
    push.answer_next(429, Retry_After="120")
    shopper.ship()
    start = datetime.now(UTC)
    assert worker.run_until_idle() == 1
    assert push.delivered_to(shopper.browser) == [] and push.attempts[-1][1] == 429
    with Session(app.extensions["waybill.engine"]) as s:
        [row] = s.exec(select(OutboxMessage)).all()
    assert row.state == "pending" and row.due_at >= start + timedelta(seconds=120)
    assert worker.run_until_idle() == 0  # not before Retry-After
    assert worker.run_until_idle(now=row.due_at + timedelta(seconds=1)) == 1
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["shipped"]


def test_server_errors_are_retried_and_400s_are_not(
    app: Flask, shopper: Shopper, push: PushService, worker: Worker
) -> None:
    shopper.prefs(channels={"push": True, "email": False})
    push.answer_next(503)
    shopper.ship()
    worker.run_until_idle()
    later = datetime.now(UTC) + timedelta(minutes=20)
    worker.run_until_idle(now=later)
    assert len(payloads(push, shopper.browser)) == 1

    push.answer_next(400)
    order = shopper.merchant.create_order(EMAIL)
    shopper.merchant.add_shipment(order["id"])
    worker.run_until_idle()
    worker.run_until_idle(now=later + timedelta(hours=1))
    assert [a[1] for a in push.attempts] == [503, 201, 400]
    with Session(app.extensions["waybill.engine"]) as s:
        states = sorted(r.state for r in s.exec(select(OutboxMessage)))
    assert states == ["failed", "sent"]


def test_duplicate_event_sends_once(shopper: Shopper, push: PushService, worker: Worker) -> None:
    shipment = shopper.ship()
    worker.run_until_idle()
    for _ in range(2):
        r = shopper.merchant.scan(shipment["id"], "delivered", at(5), event_id="carrier-77")
        assert r.status_code in (200, 201)
        worker.run_until_idle()
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["shipped", "delivered"]


def test_email_is_multipart_with_one_click_unsubscribe(
    shopper: Shopper, client: FlaskClient, push: PushService, worker: Worker, smtp: SMTPServer
) -> None:
    shopper.ship()
    worker.run_until_idle()
    [mail] = smtp.wait_for(EMAIL)
    assert str(mail["Subject"]) == f"Order #{shopper.order['external_id']} has shipped"
    assert mail.get_body(("plain",)) is not None and mail.get_body(("html",)) is not None
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert shopper.order["tracking_url"] in text
    assert mail["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    url = str(mail["List-Unsubscribe"]).strip("<>")
    path = url.split("127.0.0.1:8000", 1)[1]
    assert path in text
    assert client.get(path).status_code == 200  # a mail scanner's GET changes nothing
    assert client.get("/api/me/preferences").get_json()["channels"]["email"] is True
    assert client.post(path).status_code == 200  # RFC 8058 one-click
    assert client.get("/api/me/preferences").get_json()["channels"]["email"] is False
    assert client.post(path[:-3] + "xyz").status_code == 404


def test_unsubscribe_pages_speak_the_language_the_customer_chose(
    shopper: Shopper, client: FlaskClient, push: PushService, worker: Worker, smtp: SMTPServer
) -> None:
    shopper.prefs(language="de")
    shopper.ship()
    worker.run_until_idle()
    [mail] = smtp.wait_for(EMAIL)
    path = str(mail["List-Unsubscribe"]).strip("<>").split("127.0.0.1:8000", 1)[1]
    browser = {"Accept-Language": "en-US,en;q=0.9"}  # the saved choice wins over the browser's
    page = client.get(path, headers=browser).get_data(as_text=True)
    assert "Keine Benachrichtigungen mehr per E-Mail?" in page and ">Abbestellen<" in page
    assert "Unsubscribe" not in page
    assert '<html lang="de">' in page  # so a screen reader speaks it as German
    done = client.post(path, headers=browser).get_data(as_text=True)
    assert "<h1>Abbestellt</h1>" in done and "Unsubscribed" not in done
    assert "Du erhältst keine Benachrichtigungen mehr per E-Mail." in done  # "du", as the app


def test_unsubscribe_page_follows_the_browser_until_a_language_is_chosen(
    app: Flask, merchant: MerchantActions, client: FlaskClient
) -> None:
    from waybill.models import Customer
    from waybill.notify.unsubscribe import unsubscribe_url

    merchant.create_order("new@example.com")
    with Session(app.extensions["waybill.engine"]) as s:
        customer = s.exec(select(Customer).where(Customer.email == "new@example.com")).one()
    path = unsubscribe_url("", app.config["WAYBILL_SETTINGS"].secret_key, customer.id)
    german = client.get(path, headers={"Accept-Language": "de-DE,de;q=0.9"})
    assert "Keine Benachrichtigungen mehr per E-Mail?" in german.get_data(as_text=True)
    english = client.get(path).get_data(as_text=True)
    assert "Stop notification emails?" in english and ">Unsubscribe<" in english
    assert "Push notifications and your orders stay as they are." in english


def test_tracking_link_subscription_hears_default_statuses_in_browser_language(
    merchant: MerchantActions, client: FlaskClient, push: PushService, worker: Worker
) -> None:
    order = merchant.create_order("anon@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]
    browser = push.subscribe()
    r = client.post(
        f"/api/track/{token}/push-subscriptions",
        json=browser.to_json(),
        headers={"Accept-Language": "de-DE,de;q=0.9"},
    )
    assert r.status_code == 201
    assert (
        client.post(f"/api/track/{'x' * 32}/push-subscriptions", json=browser.to_json()).status_code
        == 404
    )
    shipment = merchant.add_shipment(order["id"])
    worker.run_until_idle()
    merchant.scan(shipment["id"], "in_transit", at(1))  # off by default
    merchant.scan(shipment["id"], "delivered", at(2))
    worker.run_until_idle()
    assert [p["status"] for p in payloads(push, browser)] == ["shipped", "delivered"]
    assert payloads(push, browser)[0]["title"].startswith("Bestellung #")
    r = client.delete(f"/api/track/{token}/push-subscriptions", json=browser.to_json())
    assert r.status_code == 204
    merchant.post(f"/orders/{order['id']}/events", {"status": "cancelled"})
    worker.run_until_idle()
    assert len(payloads(push, browser)) == 2  # forgotten: nothing more


def test_subscriptions_are_listed_and_removed(shopper: Shopper) -> None:
    listed = shopper.client.get("/api/me/push-subscriptions").get_json()["subscriptions"]
    assert len(listed) == 1 and listed[0]["label"]
    # subscribing the same browser again keeps one row
    assert (
        shopper.put(
            "/api/me/push-subscriptions", shopper.browser.to_json(), method="post"
        ).status_code
        == 201
    )  # type: ignore[attr-defined]
    assert len(shopper.client.get("/api/me/push-subscriptions").get_json()["subscriptions"]) == 1
    r = shopper.put("/api/me/push-subscriptions", shopper.browser.to_json(), method="delete")
    assert r.status_code == 204  # type: ignore[attr-defined]
    assert shopper.client.get("/api/me/push-subscriptions").get_json() == {"subscriptions": []}


def test_preferences_defaults_and_validation(shopper: Shopper) -> None:
    prefs = shopper.client.get("/api/me/preferences").get_json()
    assert prefs["channels"] == {"push": True, "email": True}
    assert [s for s, on in prefs["statuses"].items() if not on] == [
        "confirmed",
        "processing",
        "in_transit",
        "estimate_changed",  # a new "arrives by" of the same status: chosen, never by default
    ]
    assert prefs["quiet_hours"] is None and prefs["timezone"] == "UTC"
    bad = {
        **prefs,
        "timezone": "Mars/Olympus",
        "language": "fr",
        "quiet_hours": {"start": "25:00", "end": "07:00"},
    }
    r = shopper.put("/api/me/preferences", bad)
    assert r.status_code == 422  # type: ignore[attr-defined]
    fields = r.get_json()["error"]["fields"]  # type: ignore[attr-defined]
    assert {"timezone", "language", "quiet_hours.start"} <= set(fields)
    r = shopper.put("/api/me/preferences", {"channels": {"push": True}})
    assert r.status_code == 422  # type: ignore[attr-defined]
    assert shopper.client.get("/api/me/preferences").get_json() == prefs  # nothing was saved


def test_subscription_validation(shopper: Shopper, push: PushService) -> None:
    good = push.subscribe().to_json()
    cases = {
        "endpoint": {**good, "endpoint": "https://evil.example.com/push/1"},
        "keys.p256dh": {**good, "keys": {**good["keys"], "p256dh": good["keys"]["auth"]}},
        "keys.auth": {**good, "keys": {**good["keys"], "auth": good["keys"]["p256dh"]}},
    }
    for field, body in cases.items():
        r = shopper.put("/api/me/push-subscriptions", body, method="post")
        assert r.status_code == 422, field  # type: ignore[attr-defined]
        assert field in r.get_json()["error"]["fields"]  # type: ignore[attr-defined]
    fcm = {**good, "endpoint": "https://fcm.googleapis.com/fcm/send/abc"}
    assert shopper.put("/api/me/push-subscriptions", fcm, method="post").status_code == 201  # type: ignore[attr-defined]
    for host in ("evil.example%2f.fcm.googleapis.com", "evil.example\\.fcm.googleapis.com"):
        odd = {**good, "endpoint": f"https://{host}/fcm/send/abc"}
        r = shopper.put("/api/me/push-subscriptions", odd, method="post")
        assert r.status_code == 422, host  # type: ignore[attr-defined]
    plain_http = {**good, "endpoint": "http://fcm.googleapis.com/fcm/send/abc"}
    assert shopper.put("/api/me/push-subscriptions", plain_http, method="post").status_code == 422  # type: ignore[attr-defined]


def test_writes_need_csrf_and_own_orders(shopper: Shopper, app: Flask, push: PushService) -> None:
    c = shopper.client
    prefs = c.get("/api/me/preferences").get_json()
    assert c.put("/api/me/preferences", json=prefs).status_code == 403
    assert c.post("/api/me/push-subscriptions", json=push.subscribe().to_json()).status_code == 403
    assert (
        c.put(f"/api/me/orders/{shopper.order['id']}/preferences", json={"muted": True}).status_code
        == 403
    )
    stranger = make_merchant(app, app.test_client(), "Other").create_order("someone@example.com")
    r = shopper.put(f"/api/me/orders/{stranger['id']}/preferences", {"muted": True})
    assert r.status_code == 404  # type: ignore[attr-defined]
    anonymous = app.test_client()
    assert anonymous.get("/api/me/preferences").status_code == 401
    assert anonymous.get("/api/push/public-key").status_code == 200


def test_openapi_lists_the_notification_routes(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for path in (
        "/api/me/preferences",
        "/api/me/orders/{order_id}/preferences",
        "/api/push/public-key",
        "/api/me/push-subscriptions",
        "/api/track/{token}/push-subscriptions",
    ):
        assert path in paths, path


def test_worker_started_by_the_app_delivers_without_help(
    instance_dir: Path, smtp: SMTPServer, push: PushService
) -> None:
    app = create_app(
        make_settings(
            instance_dir, push_endpoint_hosts=("127.0.0.1:*",), smtp_url=smtp.url, run_worker=True
        )
    )
    try:
        client = app.test_client()
        merchant = make_merchant(app, client)
        shopper = Shopper(merchant, AuthActions(app, client), push)
        shopper.ship()
        assert push.wait_for(lambda: push.delivered_to(shopper.browser), timeout=20)
    finally:
        app.extensions["waybill.worker"].stop()
        app.extensions["waybill.engine"].dispose()


def test_tracking_link_subscription_is_forgotten_30_days_after_delivery(
    app: Flask, merchant: MerchantActions, client: FlaskClient, push: PushService
) -> None:
    from waybill.notify import subscriptions
    from waybill.notify.models import PushSubscription

    order = merchant.create_order("anon@example.com")
    token = order["tracking_url"].rsplit("/", 1)[1]
    assert (
        client.post(
            f"/api/track/{token}/push-subscriptions", json=push.subscribe().to_json()
        ).status_code
        == 201
    )
    merchant.post(f"/orders/{order['id']}/events", {"status": "cancelled"})
    engine = app.extensions["waybill.engine"]
    now = datetime.now(UTC)
    with Session(engine) as s, s.begin():
        assert subscriptions.expire_anonymous(s, now=now + timedelta(days=29)) == 0
    with Session(engine) as s, s.begin():
        assert subscriptions.expire_anonymous(s, now=now + timedelta(days=31)) == 1
    with Session(engine) as s:
        assert s.exec(select(PushSubscription)).all() == []


def test_a_shared_browser_stops_hearing_the_previous_customer(
    shopper: Shopper, auth: AuthActions, push: PushService, worker: Worker
) -> None:
    auth.sign_out()
    shopper.merchant.create_order("next@example.com")
    csrf = auth.sign_in("next@example.com")
    r = auth.client.post(
        "/api/me/push-subscriptions",
        json=shopper.browser.to_json(),
        headers={"X-CSRF-Token": csrf},
    )
    assert r.status_code == 201
    shopper.ship()  # the first customer's order
    worker.run_until_idle()
    assert payloads(push, shopper.browser) == []


def test_one_browser_subscribed_twice_hears_each_change_once(
    shopper: Shopper, client: FlaskClient, push: PushService, worker: Worker
) -> None:
    token = shopper.order["tracking_url"].rsplit("/", 1)[1]
    r = client.post(f"/api/track/{token}/push-subscriptions", json=shopper.browser.to_json())
    assert r.status_code == 201  # "Notify me" on the tracking page of the same browser
    shopper.ship()
    worker.run_until_idle()
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["shipped"]


def test_anonymous_devices_per_order_are_bounded(
    merchant: MerchantActions, client: FlaskClient, push: PushService
) -> None:
    from waybill.notify.subscriptions import MAX_DEVICES_PER_ORDER

    order = merchant.create_order("many@example.com")
    path = f"/api/track/{order['tracking_url'].rsplit('/', 1)[1]}/push-subscriptions"
    browsers = [push.subscribe() for _ in range(MAX_DEVICES_PER_ORDER + 1)]
    for browser in browsers[:-1]:
        assert client.post(path, json=browser.to_json()).status_code == 201
    refused = client.post(path, json=browsers[-1].to_json())
    assert refused.status_code == 429
    assert refused.get_json()["error"]["code"] == "too_many_subscriptions"
    assert client.post(path, json=browsers[0].to_json()).status_code == 201  # a known one renews


def test_a_slow_mail_relay_never_gets_a_message_twice(
    app: Flask, merchant: MerchantActions, smtp: SMTPServer
) -> None:
    """Ten mails through eight sending threads to a relay taking 2 s each: the last two wait
    past the batch's 3 s lease, while a second worker comes looking for expired leases."""
    emails = [f"slow{i}@example.com" for i in range(10)]
    for email in emails:
        merchant.add_shipment(merchant.create_order(email)["id"])
    smtp.inbox.delay = 2.0
    engine, settings = app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"]
    first = Worker(engine, settings, concurrency=4, lease=timedelta(seconds=3))
    second = Worker(engine, settings, concurrency=4, lease=timedelta(seconds=3))
    late = threading.Timer(3.5, second.run_until_idle)  # the first lease has run out by then
    late.start()
    try:
        first.run_until_idle()
        late.join()
    finally:
        first.stop()
        second.stop()
    for email in emails:
        assert len(smtp.wait_for(email)) == 1, email
    assert len(smtp.messages) == len(emails)


def test_pushes_are_recorded_as_the_push_service_takes_them_not_when_the_batch_ends(
    app: Flask, shopper: Shopper, push: PushService, client: FlaskClient
) -> None:
    """A worker that dies mid-batch sends again only what had no answer yet: each push's
    outcome is stored while the rest of its batch is still on its way."""
    for _ in range(5):  # six browsers of hers in all
        browser = push.subscribe()
        r = shopper.put("/api/me/push-subscriptions", browser.to_json(), method="post")
        assert r.status_code == 201  # type: ignore[attr-defined]
    shopper.prefs(channels={"push": True, "email": False})
    push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
    engine = app.extensions["waybill.engine"]
    one_at_a_time = Worker(engine, app.config["WAYBILL_SETTINGS"], concurrency=1)
    push.delay = 0.3  # six pushes, one after another: 1.8 s for the batch
    shopper.ship()

    def states() -> list[str]:
        with Session(engine) as session:
            rows = session.exec(select(OutboxMessage).where(OutboxMessage.channel == "push"))
            return sorted(row.state for row in rows)

    sending = threading.Thread(target=one_at_a_time.run_once)
    sending.start()
    seen: list[list[str]] = []
    try:
        while sending.is_alive():
            seen.append(states())
            sending.join(0.05)
    finally:
        sending.join(10)
        one_at_a_time.stop()
    assert any("sent" in s and "pending" in s for s in seen), seen  # part of the batch stored
    assert states() == ["sent"] * 6
    assert len(push.deliveries) == 6
