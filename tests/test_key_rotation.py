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

from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import database_url_of, make_settings
from tests.test_cli import run
from tests.test_integrations import Receiver, connect, fixture, send
from tests.utils.factories import AuthActions, MerchantActions
from waybill import close_app, create_app
from waybill.models import Customer
from waybill.notify.delivery import Worker
from waybill.notify.unsubscribe import unsubscribe_url

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
    """The command's table: kind -> (resealed, current, unopened)."""
    rows = {}
    for line in output.splitlines():
        *words, a, b, c = line.split() or [""]
        if words and a.isdigit() and b.isdigit() and c.isdigit():
            rows[" ".join(words)] = (int(a), int(b), int(c))
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
    from tests.utils.factories import make_merchant

    return make_merchant(app, app.test_client())


def _unsubscribe_path(app: Flask) -> str:
    from sqlmodel import Session, select

    with Session(app.extensions["waybill.engine"]) as s:
        customer = s.exec(select(Customer).where(Customer.email == EMAIL)).one()
    return unsubscribe_url("", app.config["WAYBILL_SETTINGS"].secret_key, customer.id)


def _quiet(me: FlaskClient) -> dict[str, Any]:
    prefs: dict[str, Any] = me.get("/api/me/preferences").get_json()
    prefs["channels"]["email"] = False
    return prefs
