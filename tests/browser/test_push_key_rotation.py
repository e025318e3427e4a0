"""After the VAPID key is rotated, the app's service worker subscribes again with the new key,
replaces its registration at the server, and the next notification arrives signed with the new
key: when the app opens, and when a notification tells it to.

Headless Chromium cannot reach a real push service (subscribing fails there), so the service
worker's ``pushManager`` is replaced by one that hands out subscriptions of the loopback push
service (which, like FCM, takes only messages signed with the key a subscription was made
with). Everything else is the real app: its service worker, the server, the outbox worker.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from flask import request
from sqlmodel import Session, select

from tests.browser.conftest import LiveServer, _serve, ago, push_to_worker, sign_in
from tests.browser.test_screens import api
from tests.conftest import Backend
from tests.utils.push_service import BrowserSubscription, PushService
from waybill.notify.delivery import Worker
from waybill.notify.models import PushSubscription
from waybill.notify.vapid import VapidKeys

pytestmark = pytest.mark.browser

OLD, NEW = (VapidKeys(ec.generate_private_key(ec.SECP256R1())) for _ in range(2))
TARGET = "/api/me/push-subscriptions"

#: Installed in the service worker: a pushManager whose subscriptions are the loopback push
#: service's, recording which key each was made with.
FAKE_PUSH_MANAGER = """({ current, next }) => {
  const bytes = (key) => {
    const pad = key.replace(/-/g, '+').replace(/_/g, '/') + '='.repeat((4 - key.length % 4) % 4);
    return Uint8Array.from(atob(pad), (c) => c.charCodeAt(0)).buffer;
  };
  const text = (buffer) => btoa(String.fromCharCode(...new Uint8Array(buffer)))
    .replace(/\\+/g, '-').replace(/\\//g, '_').replace(/=+$/, '');
  const state = { current: null, subscribedWith: [], unsubscribed: 0 };
  const make = (json, key) => ({
    endpoint: json.endpoint,
    options: { userVisibleOnly: true, applicationServerKey: bytes(key) },
    toJSON: () => json,
    unsubscribe: async () => { state.current = null; state.unsubscribed += 1; return true; },
  });
  state.current = make(current.json, current.key);
  const manager = {
    getSubscription: async () => state.current,
    subscribe: async ({ applicationServerKey }) => {
      if (state.current) throw new DOMException('subscribed with another key', 'InvalidStateError');
      const given = applicationServerKey;
      const key = typeof given === 'string' ? given : text(given);
      state.subscribedWith.push(key);
      state.current = make(next, key);
      return state.current;
    },
  };
  Object.defineProperty(self.registration, 'pushManager', { value: manager, configurable: true });
  self.fakePush = state;
}"""


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory, backend: Backend) -> Iterator[LiveServer]:
    """The server after a rotation: NEW is the key, OLD is still held."""
    instance: Path = tmp_path_factory.mktemp("rotated")
    with backend.database(instance):
        yield from _serve(
            instance,
            vapid_private_key=NEW.raw_private_key,
            old_vapid_private_keys=(OLD.raw_private_key,),
        )


@pytest.fixture
def push() -> Iterator[PushService]:
    service = PushService().start()
    yield service
    service.stop()


def subscribed_before_the_rotation(
    phone: Any, server: LiveServer, push: PushService, email: str
) -> tuple[Any, Any, BrowserSubscription, BrowserSubscription]:
    """A signed-in phone whose service worker holds a subscription made with OLD, registered
    at the server; and the subscription its push service will hand out next."""
    order = server.order_in_transit(email=email)
    sign_in(phone, server, email)
    page = phone.new_page()
    page.goto(server.url + "/")
    page.get_by_role("heading", name="Your orders").wait_for()
    page.wait_for_function("() => navigator.serviceWorker.controller !== null")
    before = push.subscribe(server_key=OLD.public_key)
    added = api(phone, server, "POST", TARGET, {**before.to_json(), "vapid_key": OLD.public_key})
    assert added.status == 201, added.text()
    moved = push.subscribe(server_key=NEW.public_key)
    worker = phone.service_workers[0]
    worker.evaluate(f"rememberTarget({json.dumps(TARGET)})")
    worker.evaluate(
        FAKE_PUSH_MANAGER,
        {"current": {"json": before.to_json(), "key": OLD.public_key}, "next": moved.to_json()},
    )
    return order, page, before, moved


def registered(server: LiveServer) -> dict[str, str | None]:
    with Session(server.app.extensions["waybill.engine"]) as s:
        return {p.endpoint: p.vapid_key for p in s.exec(select(PushSubscription))}


def wait_for_move(
    server: LiveServer, before: BrowserSubscription, moved: BrowserSubscription
) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        now = registered(server)
        if moved.endpoint in now and before.endpoint not in now:
            assert now[moved.endpoint] == NEW.public_key
            return
        time.sleep(0.1)
    raise AssertionError(f"the service worker did not move its subscription: {registered(server)}")


def the_next_notification_arrives(
    server: LiveServer, push: PushService, order: dict[str, Any], moved: BrowserSubscription
) -> None:
    shipped = server.merchant.scan(order["shipment_id"], "out_for_delivery", ago(seconds=1))
    assert shipped.status_code == 201
    worker = Worker(server.app.extensions["waybill.engine"], server.app.config["WAYBILL_SETTINGS"])
    try:
        worker.run_until_idle()
    finally:
        worker.stop()
    assert push.errors == []  # signed with NEW, the key the new subscription was made with
    assert [d.payload["status"] for d in push.delivered_to(moved)] == ["out_for_delivery"]


def test_opening_the_app_after_a_rotation_moves_the_subscription_to_the_new_key(
    phone: Any, live_server: LiveServer, push: PushService
) -> None:
    order, page, before, moved = subscribed_before_the_rotation(
        phone, live_server, push, "opens@example.com"
    )
    page.reload()  # the app opens again: it asks its worker to check the key
    page.get_by_role("heading", name="Your orders").wait_for()
    wait_for_move(live_server, before, moved)
    state = phone.service_workers[0].evaluate("self.fakePush")
    assert state["subscribedWith"] == [NEW.public_key] and state["unsubscribed"] == 1
    the_next_notification_arrives(live_server, push, order, moved)


def test_a_notification_sent_with_the_old_key_moves_the_subscription(
    phone: Any, live_server: LiveServer, push: PushService
) -> None:
    order, page, before, moved = subscribed_before_the_rotation(
        phone, live_server, push, "told@example.com"
    )
    phone.grant_permissions(["notifications"], origin=live_server.url)
    push_message = push_to_worker(phone, page, live_server.url)
    told = {
        "title": "Shipped",
        "body": "Test Shop",
        "url": f"{live_server.url}/",
        "tag": f"order-{order['id']}",
        "order_id": order["id"],
        "status": "shipped",
        "vapid_key": NEW.public_key,  # what the server adds for a device on an old key
    }
    push_message(json.dumps(told))
    wait_for_move(live_server, before, moved)
    the_next_notification_arrives(live_server, push, order, moved)


def test_a_move_the_server_did_not_take_is_finished_at_the_next_opening(
    phone: Any, live_server: LiveServer, push: PushService
) -> None:
    """The old subscription has to go before the new one is made; if the server then refuses
    the new one (a process not yet restarted with the new key answers 422), the device must not
    end up registered nowhere: the next opening of the app finishes the move."""
    order, page, before, moved = subscribed_before_the_rotation(
        phone, live_server, push, "refused@example.com"
    )
    refused: list[str] = []
    views = live_server.app.view_functions
    endpoint = "push_subscriptions_api.add_subscription"
    add = views[endpoint]

    def refuse_once() -> Any:
        if not refused:
            refused.append(request.get_json()["endpoint"])
            return {"error": {"code": "unavailable", "message": "restarting"}}, 503
        return add()

    views[endpoint] = refuse_once
    try:
        page.reload()
        page.get_by_role("heading", name="Your orders").wait_for()
        deadline = time.monotonic() + 10
        while not refused and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        views[endpoint] = add
    assert refused == [moved.endpoint], "the service worker never tried the new subscription"
    state = phone.service_workers[0].evaluate("self.fakePush")
    assert state["subscribedWith"] == [NEW.public_key]  # subscribed again, not yet registered
    assert moved.endpoint not in registered(live_server)

    page.reload()  # the next opening
    page.get_by_role("heading", name="Your orders").wait_for()
    wait_for_move(live_server, before, moved)
    assert phone.service_workers[0].evaluate("self.fakePush")["subscribedWith"] == [NEW.public_key]
    the_next_notification_arrives(live_server, push, order, moved)
