"""Server-side sessions: cookie flags, rotation, listing, revoking, idle expiry; merchant keys."""

from __future__ import annotations

import json
from datetime import timedelta

from click.testing import CliRunner
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import select

from tests.conftest import make_settings
from tests.utils.factories import AuthActions, make_merchant
from tests.utils.stored import stored_bytes
from waybill import close_app, create_app
from waybill.auth import sessions
from waybill.auth.tokens import keyed_digest
from waybill.cli import main
from waybill.db import session_scope
from waybill.models import ApiKey, AuthSession, utcnow

PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_4 like Mac OS X) AppleWebKit/605.1.15 "
    "(KHTML, like Gecko) Version/17.4 Mobile/15E148 Safari/604.1"
)
LAPTOP = (
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/126.0.0.0 Safari/537.36"
)


def _browser(app: Flask, user_agent: str) -> tuple[FlaskClient, AuthActions]:
    client = app.test_client()
    client.environ_base["HTTP_USER_AGENT"] = user_agent
    return client, AuthActions(app, client)


def _session_cookie_header(response) -> str:  # type: ignore[no-untyped-def]
    headers = [
        h for h in response.headers.getlist("Set-Cookie") if h.startswith("waybill_session=")
    ]
    assert len(headers) == 1, response.headers
    return headers[0]


def test_session_cookie_is_httponly_lax_and_not_secure_on_http(app, auth, merchant):
    merchant.create_order(email="flags@example.com")
    r = auth.client.post(f"/auth/link/{auth.login_link('flags@example.com')}")
    cookie = _session_cookie_header(r)
    attrs = [a.strip().lower() for a in cookie.split(";")]
    assert "httponly" in attrs
    assert "samesite=lax" in attrs
    assert "secure" not in attrs
    assert f"max-age={30 * 24 * 3600}" in attrs


def test_session_cookie_is_secure_when_the_base_url_is_https(instance_dir):
    app = create_app(make_settings(instance_dir, base_url="https://track.example.com"))
    try:
        client = app.test_client()
        make_merchant(app, client).create_order(email="tls@example.com")
        auth = AuthActions(app, client)
        r = client.post(
            f"/auth/link/{auth.login_link('tls@example.com')}", base_url="https://track.example.com"
        )
        attrs = [a.strip().lower() for a in _session_cookie_header(r).split(";")]
        assert "secure" in attrs and "httponly" in attrs and "samesite=lax" in attrs
    finally:
        close_app(app)


def test_sign_in_rotates_the_session_id(app, auth, merchant):
    merchant.create_order(email="rot@example.com")
    auth.sign_in("rot@example.com")
    first = auth.client.get_cookie("waybill_session").value
    auth.sign_in("rot@example.com")
    second = auth.client.get_cookie("waybill_session").value
    assert first != second
    stale = app.test_client()
    stale.set_cookie("waybill_session", first)
    assert stale.get("/api/me").status_code == 401
    assert auth.client.get("/api/me").status_code == 200


def test_sessions_are_listed_and_one_can_be_signed_out(app, merchant):
    merchant.create_order(email="two@example.com")
    phone, phone_auth = _browser(app, PHONE)
    laptop, laptop_auth = _browser(app, LAPTOP)
    phone_csrf = phone_auth.sign_in("two@example.com")
    laptop_auth.sign_in("two@example.com")

    listed = phone.get("/api/me/sessions").get_json()["sessions"]
    assert {s["device"] for s in listed} == {"Safari on iPhone", "Chrome on Linux"}
    mine = [s for s in listed if s["current"]]
    assert len(mine) == 1 and mine[0]["device"] == "Safari on iPhone"
    assert all(s["last_seen_at"].endswith(("Z", "+00:00")) for s in listed)

    other = next(s for s in listed if not s["current"])
    r = phone.delete(f"/api/me/sessions/{other['id']}", headers={"X-CSRF-Token": phone_csrf})
    assert r.status_code == 204
    assert laptop.get("/api/me").status_code == 401
    assert phone.get("/api/me").status_code == 200
    assert len(phone.get("/api/me/sessions").get_json()["sessions"]) == 1
    again = phone.delete(f"/api/me/sessions/{other['id']}", headers={"X-CSRF-Token": phone_csrf})
    assert again.status_code == 404


def test_sign_out_everywhere(app, merchant):
    merchant.create_order(email="all@example.com")
    phone, phone_auth = _browser(app, PHONE)
    laptop, laptop_auth = _browser(app, LAPTOP)
    csrf = phone_auth.sign_in("all@example.com")
    laptop_auth.sign_in("all@example.com")
    r = phone.delete("/api/me/sessions", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 204
    assert "waybill_session=;" in r.headers["Set-Cookie"]
    assert phone.get("/api/me").status_code == 401
    assert laptop.get("/api/me").status_code == 401


def test_another_customers_session_cannot_be_revoked(app, merchant):
    merchant.create_order(email="a@example.com")
    merchant.create_order(email="b@example.com")
    a, a_auth = _browser(app, PHONE)
    b, b_auth = _browser(app, LAPTOP)
    csrf = a_auth.sign_in("a@example.com")
    b_auth.sign_in("b@example.com")
    b_id = b.get("/api/me/sessions").get_json()["sessions"][0]["id"]
    r = a.delete(f"/api/me/sessions/{b_id}", headers={"X-CSRF-Token": csrf})
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "not_found"
    assert b.get("/api/me").status_code == 200


def test_session_writes_without_csrf_token_are_refused(app, auth, merchant):
    merchant.create_order(email="csrf@example.com")
    auth.sign_in("csrf@example.com")
    sid = auth.client.get("/api/me/sessions").get_json()["sessions"][0]["id"]
    for headers in ({}, {"X-CSRF-Token": "not-the-token"}):
        assert auth.client.delete("/api/me/sessions", headers=headers).status_code == 403
        r = auth.client.delete(f"/api/me/sessions/{sid}", headers=headers)
        assert r.status_code == 403
        assert r.get_json()["error"]["code"] == "csrf"
    assert auth.client.get("/api/me").status_code == 200


def test_customer_api_writes_without_csrf_token_are_refused(app, auth, merchant):
    order = merchant.create_order(email="csrf2@example.com")
    auth.sign_in("csrf2@example.com")
    # Every non-GET route under /api/me answers 403 before doing anything.
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/me") or not (rule.methods or set()) - {
            "GET",
            "HEAD",
            "OPTIONS",
        }:
            continue
        path = rule.rule
        for name in rule.arguments:
            path = path.replace(f"<int:{name}>", str(order["id"])).replace(f"<{name}>", "x")
        for method in (rule.methods or set()) - {"GET", "HEAD", "OPTIONS"}:
            r = auth.client.open(path, method=method, json={})
            assert r.status_code == 403, (method, path, r.status_code)


def _age_sessions(app: Flask, days: int) -> None:
    with session_scope(app.extensions["waybill.engine"]) as session:
        for s in session.exec(select(AuthSession)):
            s.last_seen_at = utcnow() - timedelta(days=days)
            session.add(s)


def test_a_session_idle_for_thirty_days_is_over(app, auth, merchant):
    merchant.create_order(email="idle@example.com")
    auth.sign_in("idle@example.com")
    _age_sessions(app, 31)
    assert auth.client.get("/api/me").status_code == 401


def test_a_session_used_within_thirty_days_lives_on_and_its_cookie_slides(app, auth, merchant):
    merchant.create_order(email="busy@example.com")
    auth.sign_in("busy@example.com")
    _age_sessions(app, 29)
    r = auth.client.get("/api/me")
    assert r.status_code == 200
    assert (
        f"max-age={int(sessions.IDLE_EXPIRY.total_seconds())}" in _session_cookie_header(r).lower()
    )
    with session_scope(app.extensions["waybill.engine"]) as session:
        seen = session.exec(select(AuthSession)).one().last_seen_at
    assert utcnow() - seen < timedelta(minutes=1)


def test_merchant_keys_cli_add_list_revoke(settings, tmp_path):
    env = {
        "WAYBILL_INSTANCE_DIR": str(settings.instance_dir),
        "WAYBILL_DATABASE_URL": settings.database_url,
        "WAYBILL_SECRET_KEY": settings.secret_key,
    }
    runner = CliRunner(env=env)
    created = runner.invoke(main, ["merchant", "create", "Key Shop"], catch_exceptions=False)
    first = json.loads(created.output)
    merchant_id, key1 = first["merchant_id"], first["api_key"]
    assert key1.startswith("wb_live_") and len(key1) > 40
    added = runner.invoke(main, ["merchant", "keys", "add", merchant_id], catch_exceptions=False)
    key2 = json.loads(added.output)["api_key"]
    assert key2.startswith("wb_live_") and key2 != key1

    app = create_app(settings)
    try:
        with session_scope(app.extensions["waybill.engine"]) as session:
            stored = list(session.exec(select(ApiKey)))
        assert {k.key_hash for k in stored}.isdisjoint({key1, key2})  # stored hashed
        db_bytes = stored_bytes(settings.database_url)
        assert key1.encode() not in db_bytes and key2.encode() not in db_bytes

        def listed() -> list[dict[str, object]]:
            out = runner.invoke(main, ["merchant", "keys", "list", merchant_id]).output
            return [json.loads(line) for line in out.splitlines()]

        assert [k["last_used_at"] for k in listed()] == [None, None]
        client = app.test_client()
        assert (
            client.get("/api/v1/orders", headers={"Authorization": f"Bearer {key1}"}).status_code
            == 200
        )
        used = {k["prefix"]: k for k in listed()}
        assert used[key1[:14]]["last_used_at"] is not None
        assert used[key2[:14]]["last_used_at"] is None

        revoked = runner.invoke(main, ["merchant", "keys", "revoke", merchant_id, key1[:14]])
        assert revoked.exit_code == 0
        r = client.get("/api/v1/orders", headers={"Authorization": f"Bearer {key1}"})
        assert r.status_code == 401
        assert r.get_json()["error"]["code"] == "unauthorized"
        assert (
            client.get("/api/v1/orders", headers={"Authorization": f"Bearer {key2}"}).status_code
            == 200
        )
        assert {k["prefix"]: k["revoked"] for k in listed()} == {key1[:14]: True, key2[:14]: False}
    finally:
        close_app(app)


def test_another_merchants_or_customers_order_is_not_found(app, client, merchant):
    other = make_merchant(app, client, "Other Shop")
    order = merchant.create_order(email="owner@example.com")
    shipment = merchant.add_shipment(order["id"])
    assert other.get(f"/orders/{order['id']}").status_code == 404
    r = other.post(f"/orders/{order['id']}/events", {"status": "processing"})
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    r = other.post(f"/orders/{order['id']}/shipments", {"carrier": "UPS", "tracking_number": "1Z"})
    assert r.status_code == 404
    r = other.post(
        f"/shipments/{shipment['id']}/events",
        {"status": "delivered", "occurred_at": "2026-01-01T10:00:00Z"},
    )
    assert r.status_code == 404
    assert other.get("/orders").get_json()["orders"] == []
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "shipped"

    merchant.create_order(email="stranger@example.com")
    auth = AuthActions(app, client)
    auth.sign_in("stranger@example.com")
    r = client.get(f"/api/me/orders/{order['id']}")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"
    assert all(o["id"] != order["id"] for o in client.get("/api/me/orders").get_json()["orders"])


# --- the CSRF token: derived from the session's id with the server secret, never stored ----


def _stored_session(app: Flask) -> AuthSession:
    with session_scope(app.extensions["waybill.engine"]) as session:
        return session.exec(select(AuthSession).where(AuthSession.revoked_at.is_(None))).one()  # type: ignore[union-attr]


def test_the_csrf_token_is_not_in_the_database(app, auth, merchant, settings):
    merchant.create_order(email="derived@example.com")
    token = auth.sign_in("derived@example.com")
    assert auth.client.get("/api/me").get_json()["csrf_token"] == token  # the same on every ask
    row = _stored_session(app)
    assert row.csrf_token != token
    stored = stored_bytes(settings.database_url)
    assert token.encode() not in stored  # nowhere in the files, their write-ahead log, a dump
    sid = auth.client.get_cookie("waybill_session").value
    assert sid.encode() not in stored  # and neither is what it is derived from


def test_a_csrf_token_made_from_the_database_row_is_refused(app, auth, merchant, settings):
    merchant.create_order(email="forge@example.com")
    token = auth.sign_in("forge@example.com")
    row = _stored_session(app)
    secret = settings.secret_key  # even with the server secret: the row has only the id's hash
    forged = [
        row.csrf_token,  # the column as stored (kept in the schema for now)
        row.id_hash,
        keyed_digest(secret, "csrf", row.id_hash),
        keyed_digest(secret, "csrf", str(row.id)),
    ]
    for guess in forged:
        r = auth.client.delete(f"/api/me/sessions/{row.id}", headers={"X-CSRF-Token": guess})
        assert r.status_code == 403, guess
        assert r.get_json()["error"]["code"] == "csrf"
    assert auth.client.get("/api/me").status_code == 200  # nothing was signed out
    r = auth.client.delete(f"/api/me/sessions/{row.id}", headers={"X-CSRF-Token": token})
    assert r.status_code == 204  # the token from GET /api/me works


def test_each_session_has_its_own_csrf_token_and_it_needs_the_server_secret(
    app, merchant, instance_dir
):
    merchant.create_order(email="own@example.com")
    phone, phone_auth = _browser(app, PHONE)
    laptop, laptop_auth = _browser(app, LAPTOP)
    phone_token = phone_auth.sign_in("own@example.com")
    laptop_token = laptop_auth.sign_in("own@example.com")
    assert phone_token != laptop_token
    r = phone.put(
        "/api/me/preferences", json={}, headers={"X-CSRF-Token": laptop_token}
    )  # another session's token
    assert r.status_code == 403 and r.get_json()["error"]["code"] == "csrf"

    stale = phone_token
    phone_auth.sign_in("own@example.com")  # a new session id: a new token
    r = phone.delete("/api/me/sessions", headers={"X-CSRF-Token": stale})
    assert r.status_code == 403

    other_secret = create_app(make_settings(instance_dir, secret_key="another-secret-key"))
    try:
        other = other_secret.test_client()
        other.set_cookie("waybill_session", laptop.get_cookie("waybill_session").value)
        assert other.get("/api/me").get_json()["csrf_token"] != laptop_token
    finally:
        close_app(other_secret)
