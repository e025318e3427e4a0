"""Rotating the secret key as an operator does: every process gets the new key with the old one
in WAYBILL_OLD_SECRET_KEYS, `waybill rotate-secret` seals what is stored again, and the old key
can go. Tracking links, the signed-in browser, unsubscribe links, merchants' webhook secrets and
their endpoint's signing secret keep working throughout; on both databases, the command run as
a real process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from tests.conftest import database_url_of, make_settings
from tests.test_cli import run
from tests.test_integrations import Receiver, connect, fixture, send
from tests.test_notifications import push as push  # fixture
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.push_service import BrowserSubscription
from waybill import close_app, create_app
from waybill.models import Customer
from waybill.notify.delivery import Worker
from waybill.notify.unsubscribe import unsubscribe_url
from waybill.notify.vapid import VapidKeys

OLD = "the-key-before-the-rotation-0123456789"
NEW = "the-key-after-the-rotation-9876543210"
EMAIL = "rosa@example.com"


@contextmanager
def serving(instance: Path, key: str, *old: str, **settings: Any) -> Iterator[Flask]:
    app = create_app(make_settings(instance, secret_key=key, old_secret_keys=old, **settings))
    try:
        yield app
    finally:
        close_app(app)


def as_merchant(app: Flask, merchant: MerchantActions) -> MerchantActions:
    """The same merchant and key, talking to another process."""
    return MerchantActions(
        client=app.test_client(), merchant_id=merchant.merchant_id, api_key=merchant.api_key
    )


def same_browser(app: Flask, browser: FlaskClient) -> FlaskClient:
    """The same browser (its session cookie) talking to another process."""
    client = app.test_client()
    cookie = browser.get_cookie("waybill_session")
    assert cookie is not None
    client.set_cookie("waybill_session", cookie.value)
    return client


def rotate(instance: Path, *old: str, key: str = NEW) -> Any:
    env = {
        "WAYBILL_DATABASE_URL": database_url_of(instance),
        "WAYBILL_SECRET_KEY": key,
        "WAYBILL_OLD_SECRET_KEYS": ",".join(old),
    }
    return run(instance, "rotate-secret", env=env)


def counts(output: str) -> dict[str, tuple[int, int, int]]:
    """The command's table: kind -> (resealed, current, unopened); none changed meanwhile."""
    rows = {}
    for line in output.splitlines():
        *words, a, b, c, d = ["", "", "", "", *line.split()]
        if any(words) and all(n.isdigit() for n in (a, b, c, d)):
            assert d == "0", line
            rows[" ".join(w for w in words if w)] = (int(a), int(b), int(c))
    return rows


def test_rotating_the_secret_key_keeps_links_sessions_and_secrets_working(instance_dir):
    hooks = {"webhook_endpoint_hosts": ("127.0.0.1:*",)}
    receiver = Receiver()
    try:
        with serving(instance_dir, OLD, **hooks) as app:  # before: the old key alone
            browser = app.test_client()
            merchant = as_merchant(app, _new_merchant(app))
            order = merchant.create_order(EMAIL)
            assert connect(merchant, "shopify").status_code == 200
            endpoint = merchant.client.put(
                "/api/v1/webhook-endpoints",
                json={"url": receiver.url, "events": ["order.status_changed"]},
                headers=merchant.headers,
            )
            receiver.secret = endpoint.get_json()["secret"]
            csrf = AuthActions(app, browser).sign_in(EMAIL)
            unsubscribe = _unsubscribe_path(app)

        with serving(instance_dir, NEW, OLD, **hooks) as app:  # every process: new key, old too
            shop, me = as_merchant(app, merchant), same_browser(app, browser)
            assert (
                shop.get(f"/orders/{order['id']}").get_json()["tracking_url"]
                == order["tracking_url"]
            )
            saved = me.put("/api/me/preferences", json=_quiet(me), headers={"X-CSRF-Token": csrf})
            assert saved.status_code == 200, saved.get_json()  # the page's CSRF token still holds
            assert me.get(unsubscribe).status_code == 200  # a link in mail sent before
            newer = shop.create_order("sam@example.com")  # sealed with the new key
            assert shopify_order(shop, 1001).status_code == 202  # its secret opens

        rotated = rotate(instance_dir, OLD)
        assert rotated.returncode == 0, rotated.stderr
        table = counts(rotated.stdout)
        # the old order; the two made under the new key (by the API, by Shopify) are current
        assert table["tracking tokens"] == (1, 2, 0)
        assert table["integration secrets"] == (1, 0, 0)
        assert table["webhook endpoint secrets"] == (1, 0, 0)
        again = counts(rotate(instance_dir, OLD).stdout)
        assert again["tracking tokens"] == (0, 3, 0)  # nothing left to do

        with serving(instance_dir, NEW, **hooks) as app:  # the old key gone
            shop, me = as_merchant(app, merchant), same_browser(app, browser)
            for o in (order, newer):
                shown = shop.get(f"/orders/{o['id']}").get_json()
                assert shown["tracking_url"] == o["tracking_url"]
                token = o["tracking_url"].rsplit("/", 1)[1]
                assert me.get(f"/api/track/{token}").status_code == 200
            assert shopify_order(shop, 1002).status_code == 202
            shop.add_shipment(order["id"])
            worker = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"])
            try:
                worker.run_until_idle()
            finally:
                worker.stop()
            assert [d["data"]["status"] for d in receiver.received] == ["shipped"]  # signed right
            assert me.get("/api/me").status_code == 200  # the sign-in itself was never keyed
    finally:
        receiver.close()


def test_without_the_old_key_nothing_is_resealed_and_the_command_says_so(instance_dir):
    with serving(instance_dir, OLD) as app:
        merchant = as_merchant(app, _new_merchant(app))
        order = merchant.create_order(EMAIL)
    lost = rotate(instance_dir)  # the old key was not given
    assert lost.returncode != 0
    assert "1 stored values open with no key given" in lost.stderr
    assert counts(lost.stdout)["tracking tokens"] == (0, 0, 1)
    with serving(instance_dir, NEW, OLD) as app:  # nothing was written: the old key still opens
        shown = as_merchant(app, merchant).get(f"/orders/{order['id']}").get_json()
        assert shown["tracking_url"] == order["tracking_url"]


def test_a_key_kept_in_the_instance_directory_rotates_with_new(tmp_path):
    instance = tmp_path / "instance"
    assert run(instance, "init").returncode == 0
    assert run(instance, "demo").returncode == 0
    before = (instance / "secret_key").read_text()
    made = run(instance, "rotate-secret", "--new")
    assert made.returncode == 0, made.stderr
    assert "Restart every Waybill process" in made.stdout
    after = (instance / "secret_key").read_text()
    assert after != before and len(after) >= 64
    assert (instance / "old_secret_keys").read_text().split() == [before]
    assert oct((instance / "old_secret_keys").stat().st_mode & 0o777) == "0o600"

    resealed = run(instance, "rotate-secret")
    assert resealed.returncode == 0, resealed.stderr
    demo_orders = counts(resealed.stdout)["tracking tokens"]
    assert demo_orders[0] > 0 and demo_orders[1:] == (0, 0)
    link = run(instance, "login-link", "demo@example.com")  # the demo customer signs in still
    assert link.returncode == 0 and "/auth/link/" in link.stdout

    given = run(instance, "rotate-secret", "--new", env={"WAYBILL_SECRET_KEY": NEW})
    assert given.returncode != 0 and "WAYBILL_SECRET_KEY" in given.stderr
    assert (instance / "secret_key").read_text() == after  # nothing changed


def shopify_order(merchant: MerchantActions, number: int) -> Any:
    """Shopify's orders/create webhook, signed with the secret the merchant connected with."""
    body = json.loads(fixture("shopify", "orders_create.json"))
    body["id"] = number
    raw = json.dumps(body).encode()
    return send(merchant.client, merchant, "shopify", raw, **{"X-Shopify-Topic": "orders/create"})


def _new_merchant(app: Flask) -> MerchantActions:
    return make_merchant(app, app.test_client())


def _unsubscribe_path(app: Flask) -> str:
    with Session(app.extensions["waybill.engine"]) as s:
        customer = s.exec(select(Customer).where(Customer.email == EMAIL)).one()
    return unsubscribe_url("", app.config["WAYBILL_SETTINGS"].secret_key, customer.id)


def _quiet(me: FlaskClient) -> dict[str, Any]:
    prefs: dict[str, Any] = me.get("/api/me/preferences").get_json()
    prefs["channels"]["email"] = False
    return prefs


# --- the VAPID key ----------------------------------------------------------------------------


def vapid_key() -> VapidKeys:
    return VapidKeys(ec.generate_private_key(ec.SECP256R1()))


def vapid_settings(current: VapidKeys, *old: VapidKeys) -> dict[str, Any]:
    return {
        "vapid_private_key": current.raw_private_key,
        "old_vapid_private_keys": tuple(k.raw_private_key for k in old),
        "push_endpoint_hosts": ("127.0.0.1:*",),
    }


def register(client: FlaskClient, csrf: str, sub: BrowserSubscription, key: str | None) -> Any:
    body = {**sub.to_json(), **({"vapid_key": key} if key else {})}
    return client.post("/api/me/push-subscriptions", json=body, headers={"X-CSRF-Token": csrf})


def deliver(app: Flask) -> None:
    worker = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"])
    try:
        worker.run_until_idle()
    finally:
        worker.stop()


def test_after_a_vapid_rotation_each_device_is_signed_for_with_its_key_and_told_to_move(
    instance_dir, push
):
    """The push service takes a message only when it is signed with the key the browser
    subscribed with (FCM answers 403 otherwise): a rotation must not cut off the devices that
    subscribed before it, and must bring them over."""
    old, new = vapid_key(), vapid_key()
    with serving(instance_dir, OLD, **vapid_settings(new, old)) as app:
        browser = app.test_client()
        merchant = as_merchant(app, _new_merchant(app))
        order = merchant.create_order(EMAIL)
        csrf = AuthActions(app, browser).sign_in(EMAIL)
        assert browser.get("/api/push/public-key").get_json()["public_key"] == new.public_key
        before = push.subscribe(server_key=old.public_key)  # subscribed before the rotation
        since = push.subscribe(server_key=new.public_key)  # a browser subscribing now
        assert register(browser, csrf, before, old.public_key).status_code == 201
        assert register(browser, csrf, since, None).status_code == 201  # the current key
        stranger = push.subscribe(server_key=vapid_key().public_key)
        refused = register(browser, csrf, stranger, stranger.server_key)
        assert refused.status_code == 422 and "vapid_key" in refused.get_json()["error"]["fields"]

        shipment = merchant.add_shipment(order["id"])
        deliver(app)
        assert push.errors == []  # every message signed with the subscription's own key
        [told] = [d.payload for d in push.delivered_to(before)]
        [plain] = [d.payload for d in push.delivered_to(since)]
        assert told["status"] == plain["status"] == "shipped"
        assert told["vapid_key"] == new.public_key  # "subscribe again with this key"
        assert "vapid_key" not in plain

        # the service worker does as told: the old subscription goes, a new one comes
        moved = push.subscribe(server_key=new.public_key)
        headers = {"X-CSRF-Token": csrf}
        browser.delete("/api/me/push-subscriptions", json=before.to_json(), headers=headers)
        assert register(browser, csrf, moved, new.public_key).status_code == 201
        merchant.scan(shipment["id"], "out_for_delivery", "2026-12-04T08:00:00Z")
        deliver(app)
        assert push.errors == []
        assert [d.payload["status"] for d in push.delivered_to(moved)] == ["out_for_delivery"]
        assert "vapid_key" not in push.delivered_to(moved)[0].payload
        assert len(push.delivered_to(before)) == 1

    # a device that never moved, once the old key is dropped: never sent a message its push
    # service would refuse; kept (its app moves it when it opens) and tried again later
    late = push.subscribe(server_key=old.public_key)
    with serving(instance_dir, OLD, **vapid_settings(new, old)) as app:
        assert register(same_browser(app, browser), csrf, late, old.public_key).status_code == 201
    with serving(instance_dir, OLD, **vapid_settings(new)) as app:
        me = same_browser(app, browser)
        merchant = as_merchant(app, merchant)
        merchant.scan(shipment["id"], "delivered", "2026-12-04T12:00:00Z")
        deliver(app)
        assert push.errors == [] and push.delivered_to(late) == []
        assert [d.payload["status"] for d in push.delivered_to(moved)][-1] == "delivered"
        devices = me.get("/api/me/push-subscriptions").get_json()["subscriptions"]
        assert len(devices) == 3  # since, moved, and late: not forgotten for a key not held
        key = me.get("/api/push/public-key")
        assert key.headers["Cache-Control"] == "no-cache"  # a rotation is seen at once


def test_rotate_vapid_new_keeps_the_old_key_and_counts_who_has_moved(tmp_path):
    instance = tmp_path / "instance"
    init = run(instance, "init")
    assert init.returncode == 0, init.stderr
    first = init.stdout.split("VAPID public key: ", 1)[1].split()[0]
    made = run(instance, "rotate-vapid", "--new")
    assert made.returncode == 0, made.stderr
    second = made.stdout.split("new VAPID public key: ", 1)[1].split(";")[0]
    assert second != first
    assert oct((instance / "old_vapid_private_keys").stat().st_mode & 0o777) == "0o600"
    again = run(instance, "init")  # serving now uses the new key
    assert again.stdout.split("VAPID public key: ", 1)[1].split()[0] == second

    status = run(instance, "rotate-vapid")
    assert status.returncode == 0, status.stderr
    lines = {
        line.split()[0] + line.split()[1]: line.split() for line in status.stdout.splitlines()[1:3]
    }
    assert lines["current0"][-1] == second and lines["old1"][-1] == first
    assert "0 subscription(s) still on an old key" in status.stdout

    given = run(
        instance,
        "rotate-vapid",
        "--new",
        env={"WAYBILL_VAPID_PRIVATE_KEY": vapid_key().raw_private_key},
    )
    assert given.returncode != 0 and "WAYBILL_VAPID_PRIVATE_KEY" in given.stderr
