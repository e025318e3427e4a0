"""Headers on every answer, CORS closed, and each rate limit reached → 429 with Retry-After."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
from flask import Flask

from tests.conftest import database_url_of, make_settings
from tests.utils.factories import AuthActions, make_merchant
from tests.utils.wsgi import files_read_whole
from waybill import close_app, create_app
from waybill.auth import login
from waybill.db import session_scope


def _app(instance_dir: Path, **overrides: object) -> Flask:
    return create_app(make_settings(instance_dir, **overrides))


def _close(app: Flask) -> None:
    close_app(app)


def _assert_security_headers(response, *, hsts: bool = False) -> None:  # type: ignore[no-untyped-def]
    h = response.headers
    csp = h["Content-Security-Policy"]
    directives = {d.split()[0]: d.split()[1:] for d in csp.split("; ")}
    assert directives["script-src"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp
    assert h["X-Content-Type-Options"] == "nosniff"
    assert h["Referrer-Policy"] == "strict-origin-when-cross-origin"
    assert "camera=()" in h["Permissions-Policy"]
    assert ("Strict-Transport-Security" in h) is hsts
    assert "Access-Control-Allow-Origin" not in h


def test_html_and_api_answers_carry_the_security_headers(client, merchant):
    order = merchant.create_order()
    token = order["tracking_url"].rsplit("/", 1)[1]
    for path in (
        "/",
        f"/t/{token}",
        "/api/openapi.json",
        f"/api/track/{token}",
        "/api/me",
        "/no/such/page",
    ):
        _assert_security_headers(client.get(path))
    _assert_security_headers(merchant.get(f"/orders/{order['id']}"))
    _assert_security_headers(client.post("/auth/email", json={"email": "x@example.com"}))


def test_hsts_only_when_the_base_url_is_https(instance_dir):
    app = _app(instance_dir, base_url="https://track.example.com")
    try:
        r = app.test_client().get("/api/openapi.json")
        _assert_security_headers(r, hsts=True)
        assert "max-age=31536000" in r.headers["Strict-Transport-Security"]
        assert "wss://track.example.com" in r.headers["Content-Security-Policy"]
    finally:
        _close(app)


def test_cors_is_closed_even_for_a_preflight(client, merchant):
    evil = {
        "Origin": "https://evil.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    for path in ("/api/v1/orders", "/api/me", "/api/me/orders", "/auth/code"):
        r = client.options(path, headers=evil)
        assert "Access-Control-Allow-Origin" not in r.headers
        assert "Access-Control-Allow-Credentials" not in r.headers
    r = client.get("/api/v1/orders", headers={**merchant.headers, "Origin": "https://evil.example"})
    assert r.status_code == 200
    assert "Access-Control-Allow-Origin" not in r.headers


def _assert_429(response) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 429, response.data
    assert int(response.headers["Retry-After"]) >= 1
    body = response.get_json()
    assert body["error"]["code"] == "too_many_requests"
    assert isinstance(body["error"]["message"], str)


def test_sign_in_mails_are_limited_per_address(client):
    for _ in range(5):
        assert client.post("/auth/email", json={"email": "Someone@Example.com"}).status_code == 202
    _assert_429(client.post("/auth/email", json={"email": "someone@example.com "}))
    # The form post counts against the same address.
    _assert_429(client.post("/auth/email", data={"email": "someone@example.com"}))
    # Another address is still fine from the same IP.
    assert client.post("/auth/email", json={"email": "other@example.com"}).status_code == 202


def test_sign_in_mails_are_limited_per_ip(client):
    for i in range(30):
        r = client.post("/auth/email", json={"email": f"person{i}@example.com"})
        assert r.status_code == 202
    _assert_429(client.post("/auth/email", json={"email": "fresh@example.com"}))
    # Another IP is not affected.
    r = client.post(
        "/auth/email", json={"email": "fresh@example.com"}, environ_base={"REMOTE_ADDR": "10.1.2.3"}
    )
    assert r.status_code == 202


def test_five_wrong_codes_void_the_code(app, client, merchant):
    merchant.create_order(email="coder@example.com")
    settings = app.config["WAYBILL_SETTINGS"]
    with session_scope(app.extensions["waybill.engine"]) as session:
        customer = login.find_customer(session, "coder@example.com")
        assert customer is not None
        code = login.issue(session=session, customer=customer, secret=settings.secret_key).code
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(5):
        r = client.post("/auth/code", json={"email": "coder@example.com", "code": wrong})
        assert r.status_code == 401
    r = client.post("/auth/code", json={"email": "coder@example.com", "code": code})
    assert r.status_code == 401, "the right code must not work after five wrong ones"
    assert client.get("/api/me").status_code == 401


def test_right_code_signs_in_after_fewer_than_five_wrong_tries(app, client, merchant):
    merchant.create_order(email="coder@example.com")
    settings = app.config["WAYBILL_SETTINGS"]
    with session_scope(app.extensions["waybill.engine"]) as session:
        customer = login.find_customer(session, "coder@example.com")
        assert customer is not None
        code = login.issue(session=session, customer=customer, secret=settings.secret_key).code
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    for _ in range(4):
        client.post("/auth/code", json={"email": "coder@example.com", "code": wrong})
    r = client.post("/auth/code", json={"email": "coder@example.com", "code": code})
    assert r.status_code == 200
    assert client.get("/api/me").get_json()["email"] == "coder@example.com"


def test_wrong_tracking_tokens_are_limited_per_ip_and_right_ones_cost_nothing(client, merchant):
    order = merchant.create_order()
    token = order["tracking_url"].rsplit("/", 1)[1]
    for _ in range(30):
        assert client.get(f"/api/track/{token}").status_code == 200
    for i in range(10):
        assert client.get(f"/api/track/{'x' * 20}{i:04d}").status_code == 404
    for i in range(10):
        assert client.get(f"/t/{'y' * 20}{i:04d}").status_code == 404
    _assert_429(client.get(f"/api/track/{'z' * 24}"))
    # Once guessing is blocked, this IP waits even with a right token; others do not.
    _assert_429(client.get(f"/api/track/{token}"))
    _assert_429(client.get(f"/t/{token}"))
    r = client.get(f"/api/track/{token}", environ_base={"REMOTE_ADDR": "10.9.9.9"})
    assert r.status_code == 200


def test_merchant_api_is_limited_per_key(instance_dir):
    app = _app(instance_dir, extra={"rate_limits": {"merchant_api_per_key": "5/minute"}})
    try:
        client = app.test_client()
        first, second = make_merchant(app, client), make_merchant(app, client, "Other")
        for _ in range(5):
            assert first.get("/orders").status_code == 200
        _assert_429(first.get("/orders"))
        _assert_429(first.post("/orders", {"external_id": "A", "customer": {"email": "a@b.co"}}))
        _assert_429(first.get("/orders/1/events"))  # every route a key opens shares the limit
        _assert_429(first.post("/events", {"events": [{"order_id": 1, "status": "processing"}]}))
        assert second.get("/orders").status_code == 200
    finally:
        _close(app)


@pytest.mark.redis
def test_rate_limits_are_shared_across_workers_through_redis(instance_dir, redis_url):
    """Two apps (two workers) on one Redis count together."""
    extra = {"rate_limit_prefix": f"test-{uuid.uuid4().hex}"}
    try:
        apps = [_app(instance_dir, broker_url=redis_url, extra=extra) for _ in range(2)]
    except ValueError as exc:  # the Redis broker is another issue's work
        pytest.skip(f"no Redis broker yet: {exc}")
    try:
        clients = [a.test_client() for a in apps]
        for i in range(5):
            r = clients[i % 2].post("/auth/email", json={"email": "shared@example.com"})
            assert r.status_code == 202
        _assert_429(clients[1].post("/auth/email", json={"email": "shared@example.com"}))
        _assert_429(clients[0].post("/auth/email", json={"email": "shared@example.com"}))
    finally:
        for a in apps:
            _close(a)


def test_wrong_tokens_on_the_socket_share_the_tracking_budget(instance_dir, merchant):
    """``/ws?track=`` with wrong tokens counts with /api/track; the 429 comes at the handshake."""
    import socket
    import threading

    import requests
    import websocket
    from werkzeug.serving import make_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = _app(instance_dir, base_url=f"http://127.0.0.1:{port}")
    if not any(rule.rule == "/ws" for rule in app.url_map.iter_rules()):
        _close(app)
        pytest.skip("no /ws yet")
    server = make_server("127.0.0.1", port, files_read_whole(app), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        client = app.test_client()
        for i in range(10):
            assert client.get(f"/api/track/{'w' * 20}{i:04d}").status_code == 404
        for i in range(10):
            ws = websocket.create_connection(
                f"ws://127.0.0.1:{port}/ws?track={'v' * 20}{i:04d}", timeout=5
            )
            opcode, data = ws.recv_data(control_frame=True)
            assert opcode == websocket.ABNF.OPCODE_CLOSE
            assert int.from_bytes(data[:2], "big") == 4404  # no such order
            ws.shutdown()
        handshake = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        with requests.Session() as http:
            refused = http.get(
                f"http://127.0.0.1:{port}/ws?track={'u' * 24}", headers=handshake, timeout=5
            )
        assert refused.status_code == 429
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["code"] == "too_many_requests"
    finally:
        server.shutdown()
        thread.join(5)
        _close(app)


def test_code_and_passkey_sign_in_attempts_are_limited_per_ip(instance_dir):
    limits = {"sign_in_code_per_ip": "3/hour", "passkey_sign_in_per_ip": "3/hour"}
    app = _app(instance_dir, extra={"rate_limits": limits})
    try:
        client = app.test_client()
        for _ in range(3):
            r = client.post("/auth/code", json={"email": "a@example.com", "code": "123456"})
            assert r.status_code == 401
        _assert_429(client.post("/auth/code", json={"email": "a@example.com", "code": "123456"}))
        for _ in range(3):
            assert client.post("/auth/passkey/options", json={}).status_code == 200
        _assert_429(client.post("/auth/passkey/options", json={}))
        _assert_429(client.post("/auth/passkey", json={"credential": {}}))
    finally:
        _close(app)


def test_sign_in_posts_from_another_site_are_refused(app, client, merchant):
    """Login CSRF: another site's form must not sign a visitor into someone else's account."""
    merchant.create_order(email="victim@example.com")
    auth = AuthActions(app, client)
    for origin in ("https://evil.example", "null"):
        r = client.post(
            f"/auth/link/{auth.login_link('victim@example.com')}", headers={"Origin": origin}
        )
        assert r.status_code == 403
        assert r.get_json()["error"]["code"] == "cross_origin"
        assert "waybill_session" not in r.headers.get("Set-Cookie", "")
        r = client.post(
            "/auth/email", data={"email": "victim@example.com"}, headers={"Origin": origin}
        )
        assert r.status_code == 403
    r = client.post(
        f"/auth/link/{auth.login_link('victim@example.com')}",
        headers={"Origin": "http://localhost"},
    )
    assert r.status_code == 303
    r = client.post(
        f"/auth/link/{auth.login_link('victim@example.com')}",
        headers={"Origin": "http://127.0.0.1:8000"},
    )
    assert r.status_code == 303


def test_behind_a_proxy_limits_count_per_forwarded_client(instance_dir):
    """With WAYBILL_PROXY_HOPS=1 each client behind the balancer has its own budget; without
    it X-Forwarded-For is ignored, so a client cannot dodge a limit by inventing one."""
    proxied = _app(instance_dir, proxy_hops=1)
    direct = _app(instance_dir)
    try:
        for app, separate in ((proxied, True), (direct, False)):
            client = app.test_client()
            balancer = {"REMOTE_ADDR": "10.0.0.1"}
            for i in range(30):
                r = client.post(
                    "/auth/email",
                    json={"email": f"p{i}@example.com"},
                    headers={"X-Forwarded-For": "203.0.113.5"},
                    environ_base=balancer,
                )
                assert r.status_code == 202
            r = client.post(
                "/auth/email",
                json={"email": "next@example.com"},
                headers={"X-Forwarded-For": "198.51.100.7"},
                environ_base=balancer,
            )
            assert r.status_code == (202 if separate else 429)
    finally:
        _close(proxied)
        _close(direct)


def test_proxy_hops_must_be_a_whole_number():
    from waybill.config import ConfigError, Settings

    assert Settings.from_env({"WAYBILL_PROXY_HOPS": "2", "WAYBILL_SECRET_KEY": "k"}).proxy_hops == 2
    with pytest.raises(ConfigError, match="WAYBILL_PROXY_HOPS"):
        Settings.from_env({"WAYBILL_PROXY_HOPS": "yes", "WAYBILL_SECRET_KEY": "k"})


def test_operators_can_tune_the_limits_and_typos_are_refused(instance_dir):
    from waybill.config import ConfigError, Settings

    env = {
        "WAYBILL_SECRET_KEY": "k",
        "WAYBILL_INSTANCE_DIR": str(instance_dir),
        "WAYBILL_DATABASE_URL": database_url_of(instance_dir),
        "WAYBILL_RATE_LIMITS": "merchant_api_per_key=2/minute, sign_in_email_per_ip=40/hour",
    }
    app = create_app(Settings.from_env(env, testing=True))
    try:
        client = app.test_client()
        m = make_merchant(app, client)
        assert m.get("/orders").status_code == 200
        assert m.get("/orders").status_code == 200
        _assert_429(m.get("/orders"))
    finally:
        _close(app)
    for wrong in ("merchant_api=2/minute", "merchant_api_per_key=lots"):
        with pytest.raises(ConfigError, match="WAYBILL_RATE_LIMITS"):
            create_app(Settings.from_env({**env, "WAYBILL_RATE_LIMITS": wrong}, testing=True))


def test_files_a_page_loads_carry_only_the_headers_that_apply_to_them(client):
    """Scripts, style sheets and images are never shown as a page: the headers that govern a
    document are left off them (a phone's first load carried them on every file), nosniff
    stays. The page itself and the service worker (whose own answer's policy is the worker's)
    keep the whole set."""
    page = client.get("/")
    _assert_security_headers(page)
    assets = re.findall(r'(?:href|src)="(/assets/[^"]+\.(?:js|css))"', page.get_data(as_text=True))
    assert any(a.endswith(".js") for a in assets) and any(a.endswith(".css") for a in assets)
    for path in [*assets, "/icons/icon-192.png"]:
        with client.get(path) as r:
            assert r.status_code == 200, path
            assert r.headers["X-Content-Type-Options"] == "nosniff", path
            for name in (
                "Content-Security-Policy",
                "Permissions-Policy",
                "X-Frame-Options",
                "Referrer-Policy",
            ):
                assert name not in r.headers, (path, name)
    with client.get("/sw.js") as worker:  # its answer's policy is the worker's
        _assert_security_headers(worker)
    with client.get("/icons/logo.svg") as svg:  # a picture that, opened alone, is a page
        assert (
            svg.headers["Content-Security-Policy"] == "default-src 'none'; frame-ancestors 'none'"
        )
        assert svg.headers["X-Content-Type-Options"] == "nosniff"
