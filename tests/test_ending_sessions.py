"""What ending a sign-in does besides the cookie: the push subscriptions registered through it
go (no more order links to a lost phone), and its live sockets close at once, not at the next
keepalive round 25 s later. The real API, a real outbox worker and the loopback push service;
real WebSocket clients against the app under a threaded server (``waybill serve`` with several
workers: tests/test_ending_sessions_server.py)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
import websocket
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from tests.test_notifications import push as push  # fixtures
from tests.test_notifications import settings as settings
from tests.test_notifications import worker as worker
from tests.test_realtime import CLOSED, LiveClient
from tests.test_realtime import connect as connect
from tests.test_realtime import live_server as live_server
from tests.utils.factories import AuthActions, MerchantActions
from tests.utils.push_service import BrowserSubscription, PushService
from waybill.models import AuthSession
from waybill.notify.delivery import Worker
from waybill.notify.models import PushSubscription

EMAIL = "owner@example.com"
PHONE = (
    "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Mobile Safari/537.36"
)
LAPTOP = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
    "Version/17.5 Safari/605.1.15"
)
#: "At once": well under the keepalive round (25 s) that closed them before.
AT_ONCE = 2.0


class Device:
    """One browser of the customer: its own cookie jar and user agent, signed in."""

    def __init__(self, app: Flask, user_agent: str, email: str = EMAIL) -> None:
        self.client: FlaskClient = app.test_client()
        self.client.environ_base["HTTP_USER_AGENT"] = user_agent
        self.csrf = AuthActions(app, self.client).sign_in(email)
        self.sub: BrowserSubscription | None = None

    @property
    def headers(self) -> dict[str, str]:
        return {"X-CSRF-Token": self.csrf}

    @property
    def cookie(self) -> str:
        cookie = self.client.get_cookie("waybill_session")
        assert cookie is not None
        return cookie.value

    @property
    def session_id(self) -> int:
        listed = self.client.get("/api/me/sessions").get_json()["sessions"]
        return next(s["id"] for s in listed if s["current"])

    def turn_push_on(self, push: PushService) -> BrowserSubscription:
        self.sub = push.subscribe()
        r = self.client.post(
            "/api/me/push-subscriptions", json=self.sub.to_json(), headers=self.headers
        )
        assert r.status_code == 201, r.get_json()
        return self.sub


def statuses(push: PushService, sub: BrowserSubscription | None) -> list[str]:
    assert sub is not None
    return [d.payload["status"] for d in push.delivered_to(sub)]


def attempts(push: PushService, sub: BrowserSubscription | None) -> int:
    assert sub is not None
    with push.lock:
        return sum(1 for sid, _ in push.attempts if sid == sub.id)


def rows(app: Flask) -> list[PushSubscription]:
    with Session(app.extensions["waybill.engine"]) as s:
        return list(s.exec(select(PushSubscription)))


def now() -> str:
    return datetime.now(UTC).isoformat()


@pytest.fixture
def two_devices(
    app: Flask, merchant: MerchantActions, push: PushService, worker: Worker
) -> tuple[Device, Device, dict[str, Any]]:
    """A phone and a laptop of one customer, push on for both, and one push each already
    received (so the set-up is known to deliver)."""
    order = merchant.create_order(EMAIL)
    phone, laptop = Device(app, PHONE), Device(app, LAPTOP)
    phone.turn_push_on(push)
    laptop.turn_push_on(push)
    shipment = merchant.add_shipment(order["id"])
    worker.run_until_idle()
    assert statuses(push, phone.sub) == statuses(push, laptop.sub) == ["shipped"]
    return phone, laptop, shipment


# --- push subscriptions ---------------------------------------------------------------------


def test_signing_out_everywhere_removes_every_push_subscription_of_the_account(
    app: Flask,
    merchant: MerchantActions,
    push: PushService,
    worker: Worker,
    two_devices: tuple[Device, Device, dict[str, Any]],
) -> None:
    phone, laptop, shipment = two_devices
    sent_before = attempts(push, phone.sub), attempts(push, laptop.sub)
    assert laptop.client.delete("/api/me/sessions", headers=laptop.headers).status_code == 204
    assert rows(app) == []  # every subscription row of the customer is gone

    r = merchant.scan(shipment["id"], "out_for_delivery", now())
    assert r.status_code == 201
    worker.run_until_idle()
    # the push service was not even asked: nothing for the lost phone, nor for the laptop
    assert (attempts(push, phone.sub), attempts(push, laptop.sub)) == sent_before
    assert statuses(push, phone.sub) == ["shipped"]


def test_signing_one_device_out_removes_the_push_subscription_registered_from_it(
    app: Flask,
    merchant: MerchantActions,
    push: PushService,
    worker: Worker,
    two_devices: tuple[Device, Device, dict[str, Any]],
) -> None:
    phone, laptop, shipment = two_devices
    phone_attempts = attempts(push, phone.sub)
    r = laptop.client.delete(f"/api/me/sessions/{phone.session_id}", headers=laptop.headers)
    assert r.status_code == 204
    assert [row.endpoint for row in rows(app)] == [laptop.sub.endpoint]  # type: ignore[union-attr]
    listed = laptop.client.get("/api/me/push-subscriptions").get_json()["subscriptions"]
    assert [s["label"] for s in listed] == ["Safari on Mac"]

    merchant.scan(shipment["id"], "out_for_delivery", now())
    worker.run_until_idle()
    assert attempts(push, phone.sub) == phone_attempts  # the signed-out phone hears nothing
    assert statuses(push, laptop.sub) == ["shipped", "out_for_delivery"]  # the laptop still does


def test_signing_one_of_two_alike_devices_out_leaves_the_other_ones_push(
    app: Flask, merchant: MerchantActions, push: PushService, worker: Worker
) -> None:
    """Two phones of the same kind: the subscription remembers the sign-in it came through,
    so only the signed-out phone's goes (a device name alone could not tell them apart)."""
    order = merchant.create_order(EMAIL)
    mine, partners = Device(app, PHONE), Device(app, PHONE)
    mine.turn_push_on(push)
    partners.turn_push_on(push)
    r = mine.client.delete(f"/api/me/sessions/{partners.session_id}", headers=mine.headers)
    assert r.status_code == 204
    assert [row.endpoint for row in rows(app)] == [mine.sub.endpoint]  # type: ignore[union-attr]
    merchant.add_shipment(order["id"])
    worker.run_until_idle()
    assert statuses(push, mine.sub) == ["shipped"]
    assert attempts(push, partners.sub) == 0


def test_logout_removes_this_devices_push_subscription_even_when_the_app_could_not(
    app: Flask,
    merchant: MerchantActions,
    push: PushService,
    worker: Worker,
    two_devices: tuple[Device, Device, dict[str, Any]],
) -> None:
    phone, laptop, shipment = two_devices
    phone_attempts = attempts(push, phone.sub)
    # no DELETE /api/me/push-subscriptions first (offline, push permission withdrawn, a page
    # without JavaScript): the server forgets the device's subscription itself
    assert phone.client.post("/auth/logout").status_code == 204
    assert [row.endpoint for row in rows(app)] == [laptop.sub.endpoint]  # type: ignore[union-attr]

    merchant.scan(shipment["id"], "out_for_delivery", now())
    worker.run_until_idle()
    assert attempts(push, phone.sub) == phone_attempts
    assert statuses(push, laptop.sub) == ["shipped", "out_for_delivery"]


def test_someone_else_signing_in_on_the_browser_ends_the_previous_customers_push(
    app: Flask, merchant: MerchantActions, push: PushService, worker: Worker
) -> None:
    first = merchant.create_order(EMAIL)
    merchant.create_order("next@example.com")
    shared = Device(app, PHONE)
    shared.turn_push_on(push)
    # the next person signs in on the same browser without signing the first one out
    AuthActions(app, shared.client).sign_in("next@example.com")
    assert rows(app) == []
    merchant.add_shipment(first["id"])
    worker.run_until_idle()
    assert attempts(push, shared.sub) == 0


def test_the_same_customer_signing_in_again_keeps_the_devices_push(
    app: Flask, merchant: MerchantActions, push: PushService, worker: Worker
) -> None:
    order = merchant.create_order(EMAIL)
    phone = Device(app, PHONE)
    phone.turn_push_on(push)
    AuthActions(app, phone.client).sign_in(EMAIL)  # a new session id, the same person
    merchant.add_shipment(order["id"])
    worker.run_until_idle()
    assert statuses(push, phone.sub) == ["shipped"]


# --- live sockets ---------------------------------------------------------------------------


def closed_at_once(live: LiveClient, since: float) -> None:
    """The next frame closes the socket with 4401, within :data:`AT_ONCE` of ``since``."""
    try:
        frame = live.next_frame()
    except websocket.WebSocketTimeoutException:
        pytest.fail("the socket of the ended session is still open")
    assert frame == (CLOSED, 4401), f"{frame} came instead of the close"
    assert time.monotonic() - since < AT_ONCE


def with_sockets(
    app: Flask, connect: Callable[..., LiveClient]
) -> tuple[Device, Device, LiveClient, LiveClient]:
    """The customer's phone and laptop, signed in, with a socket open on each (the phone's
    waits no longer than a close "at once" may take)."""
    phone, laptop = Device(app, PHONE), Device(app, LAPTOP)
    on_phone = connect(cookie=phone.cookie, timeout=AT_ONCE + 1)
    on_phone.hello()
    on_laptop = connect(cookie=laptop.cookie)
    on_laptop.hello()
    return phone, laptop, on_phone, on_laptop


def updates(live: LiveClient) -> list[dict[str, Any]]:
    return [m for m in live.messages if m["type"] == "order.updated"]


def test_signing_out_everywhere_closes_the_sockets_at_once(
    app: Flask, connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    order = merchant.create_order(EMAIL)
    phone, laptop = Device(app, PHONE), Device(app, LAPTOP)
    sockets = [connect(cookie=d.cookie, timeout=AT_ONCE + 1) for d in (phone, phone, laptop)]
    for s in sockets:
        s.hello()
    tracking = connect(track=order["tracking_url"].rsplit("/", 1)[1])  # a link, not a sign-in
    tracking.hello()

    started = time.monotonic()
    assert laptop.client.delete("/api/me/sessions", headers=laptop.headers).status_code == 204
    merchant.add_shipment(order["id"])  # a change right after: no signed-out socket sees it
    for s in sockets:
        closed_at_once(s, started)
        assert updates(s) == []
    assert [m["order"]["status"] for m in tracking.updates(1)] == ["shipped"]


def test_signing_one_device_out_closes_its_sockets_at_once(
    app: Flask, connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    order = merchant.create_order(EMAIL)
    phone, laptop, lost, kept = with_sockets(app, connect)

    started = time.monotonic()
    r = laptop.client.delete(f"/api/me/sessions/{phone.session_id}", headers=laptop.headers)
    assert r.status_code == 204
    merchant.add_shipment(order["id"])
    closed_at_once(lost, started)
    assert updates(lost) == []
    assert [m["order"]["status"] for m in kept.updates(1)] == ["shipped"]


def test_logout_closes_the_sessions_sockets_at_once(
    app: Flask, connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    order = merchant.create_order(EMAIL)
    phone, laptop, mine, other = with_sockets(app, connect)

    started = time.monotonic()
    assert phone.client.post("/auth/logout").status_code == 204
    merchant.add_shipment(order["id"])
    closed_at_once(mine, started)
    assert updates(mine) == []
    assert [m["order"]["status"] for m in other.updates(1)] == ["shipped"]


def test_a_sign_out_published_by_another_worker_closes_the_sockets_here(
    app: Flask, connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    """What another worker's sign-out sends through the broker (Redis between processes)."""
    order = merchant.create_order(EMAIL)
    phone, laptop, mine, other = with_sockets(app, connect)

    broker = app.extensions["waybill.broker"]
    broker.publish({"type": "sessions_ended", "ids": ["not a number"]})  # ignored, logged
    started = time.monotonic()
    broker.publish({"type": "sessions_ended", "ids": [phone.session_id], "customer_id": None})
    merchant.add_shipment(order["id"])  # other messages still wake the dispatcher
    closed_at_once(mine, started)
    assert [m["order"]["status"] for m in other.updates(1)] == ["shipped"]


def test_a_sign_out_whose_message_never_came_still_keeps_later_changes_from_its_sockets(
    app: Flask, connect: Callable[..., LiveClient], merchant: MerchantActions
) -> None:
    """Another worker committed the sign-out, and its broker message is late or lost (it
    travels apart from the changes): a change committed after the sign-out still never
    reaches the signed-out socket, which closes when that change is dispatched, not at the
    keepalive round."""
    order = merchant.create_order(EMAIL)
    phone, laptop, mine, other = with_sockets(app, connect)

    started = time.monotonic()
    with Session(app.extensions["waybill.engine"]) as s:  # what the other worker committed
        ended = s.get(AuthSession, phone.session_id)
        assert ended is not None
        ended.revoked_at = datetime.now(UTC)
        s.add(ended)
        s.commit()
    merchant.add_shipment(order["id"])
    closed_at_once(mine, started)
    assert updates(mine) == []
    assert [m["order"]["status"] for m in other.updates(1)] == ["shipped"]
