"""What every answer carries and how often anyone may ask: security headers and rate limits.

Headers: a strict Content-Security-Policy (no inline script or style, no framing), nosniff, a
referrer policy, a permissions policy, HSTS on https. No CORS headers are ever sent: the PWA is
same-origin and the merchant API is called server to server, which needs none, so a browser on
another origin can read nothing.

Rate limits (flask-limiter; memory storage, or Redis when the broker is Redis so that every
worker counts together): sign-in mails per address and per IP, code attempts per IP, wrong
tracking tokens per IP (a right token costs nothing), the merchant API per key. A limit reached
answers 429 with ``Retry-After`` and the contract's error JSON.
"""

from __future__ import annotations

import hashlib
import math
import time
from typing import Any
from urllib.parse import urlsplit

from flask import Flask, Response, current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from limits import parse as parse_limit
from werkzeug.middleware.proxy_fix import ProxyFix

from waybill.api.errors import render_error
from waybill.config import ConfigError, Settings
from waybill.errors import ApiError

# Operators may override any of these through ``Settings.extra["rate_limits"]``.
DEFAULT_LIMITS: dict[str, str] = {
    "sign_in_email_per_address": "5/hour",
    "sign_in_email_per_ip": "30/hour",
    "sign_in_code_per_ip": "60/hour",
    "passkey_sign_in_per_ip": "120/hour",  # options and answer count together
    "tracking_wrong_token_per_ip": "20/minute;200/day",
    "find_order_per_address": "5/hour",  # "find my order" mails, per address asked for
    "find_order_per_ip": "30/hour",
    "merchant_api_per_key": "6000/minute",
}
_TRACKING_SCOPE = "tracking-token"


def limits_for(settings: Settings) -> dict[str, str]:
    """The defaults, overridden by ``WAYBILL_RATE_LIMITS`` (``name=5/hour,name=...``) and
    then by ``Settings.extra["rate_limits"]`` (tests)."""
    extra = settings.extra.get("rate_limits") or {}
    assert isinstance(extra, dict)
    chosen = {**DEFAULT_LIMITS, **dict(settings.rate_limits), **extra}
    for name, value in chosen.items():
        if name not in DEFAULT_LIMITS:
            known = ", ".join(DEFAULT_LIMITS)
            raise ConfigError(f"WAYBILL_RATE_LIMITS: unknown limit {name!r}; known: {known}")
        try:
            [parse_limit(part) for part in str(value).split(";") if part.strip()]
        except ValueError:
            raise ConfigError(
                f"WAYBILL_RATE_LIMITS: {name}={value!r} is not a rate such as 5/hour"
            ) from None
    return chosen


#: What a page loads and never shows as a page of its own: scripts (not the service worker,
#: whose own answer's policy is the worker's), style sheets and raster images. The headers that
#: govern a document (CSP, referrer policy, Permissions-Policy, framing, COOP) do nothing on
#: them (the page's own govern what it loads); on the tracking page's first load they were
#: 650 bytes on each of 16 files, a sixth of its weight.
_SUBRESOURCE_TYPES = frozenset(
    {"text/javascript", "application/javascript", "text/css", "image/png", "image/x-icon"}
)


#: An SVG opened on its own is a document: it may load and run nothing, nor be framed.
IMAGE_POLICY = "default-src 'none'; frame-ancestors 'none'"


def _subresource(response: Response) -> bool:
    # any service worker script, under whatever path it is served
    return response.mimetype in _SUBRESOURCE_TYPES and not request.path.endswith("/sw.js")


def content_security_policy(settings: Settings) -> str:
    """The policy the PWA is written for: every script, style and worker from our own files."""
    base = urlsplit(settings.base_url)
    ws = ("wss://" if base.scheme == "https" else "ws://") + base.netloc
    form_action = "'self'"
    if settings.oidc_issuer:  # the sign-in form may hand over to the OpenID provider
        issuer = urlsplit(settings.oidc_issuer)
        form_action += f" {issuer.scheme}://{issuer.netloc}"
    return "; ".join(
        [
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            "img-src 'self' data: https:",
            "font-src 'self'",
            f"connect-src 'self' {ws}",
            "worker-src 'self'",
            "manifest-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            f"form-action {form_action}",
            "frame-ancestors 'none'",
        ]
    )


PERMISSIONS_POLICY = (  # only features Chromium knows: unknown ones log a console warning
    "camera=(), microphone=(), geolocation=(), payment=(), usb=(), serial=(), "
    "magnetometer=(), gyroscope=(), accelerometer=(), "
    "publickey-credentials-get=(self), publickey-credentials-create=(self)"
)
_CORS_HEADERS = (
    "Access-Control-Allow-Origin",
    "Access-Control-Allow-Credentials",
    "Access-Control-Allow-Methods",
    "Access-Control-Allow-Headers",
)


def _origin_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}"


def _client_ip() -> str:
    """The client's address: the peer's, or with WAYBILL_PROXY_HOPS the proxies' X-Forwarded-For."""
    return request.remote_addr or "unknown"


def _email_of_request() -> str:
    try:
        data: Any = request.get_json(silent=True) if request.is_json else None
    except RecursionError:  # absurdly nested JSON: parse_body answers 400 for it
        data = None
    email = data.get("email") if isinstance(data, dict) else request.form.get("email")
    if not isinstance(email, str) or not email.strip():
        return "none"
    return "email:" + hashlib.sha256(email.strip().lower().encode()).hexdigest()[:32]


def _api_key_of_request() -> str:
    """Counted per key (its hash); requests without a key share one bucket per IP."""
    header = request.headers.get("Authorization", "")
    _, _, key = header.partition(" ")
    key = key.strip()
    if not key:
        return "ip:" + _client_ip()
    return "key:" + hashlib.sha256(key.encode()).hexdigest()[:32]


def _wrong_token(response: Response) -> bool:
    return response.status_code == 404


def _retry_after(limiter: Limiter) -> int:
    current = limiter.current_limit
    reset_at = current.reset_at if current is not None else time.time() + 60
    return max(1, math.ceil(reset_at - time.time()))


def too_many(retry_after: int) -> ApiError:
    return ApiError(
        429,
        "too_many_requests",
        f"too many requests; try again in {retry_after} s",
        headers={"Retry-After": str(retry_after)},
    )


def init_app(app: Flask) -> Limiter:
    """Install headers and rate limits; call once every blueprint is registered."""
    settings: Settings = app.config["WAYBILL_SETTINGS"]
    broker = settings.broker_url
    storage = broker if broker.startswith(("redis://", "rediss://")) else "memory://"
    app.config.update(
        SESSION_COOKIE_NAME="waybill_flow",  # Flask's own signed cookie: OIDC and passkey flows
        SESSION_COOKIE_HTTPONLY=True,
        SESSION_COOKIE_SAMESITE="Lax",
        SESSION_COOKIE_SECURE=settings.secure_cookies,
    )
    prefix = str(settings.extra.get("rate_limit_prefix", "waybill"))
    limiter = Limiter(
        _client_ip,
        storage_uri=storage,
        strategy="moving-window",
        key_prefix=prefix,
        headers_enabled=False,
        swallow_errors=not settings.testing,  # a broken Redis must not take sign-in down
    )
    if settings.proxy_hops:  # behind a load balancer the peer is the balancer, not the client
        app.wsgi_app = ProxyFix(  # type: ignore[method-assign]
            app.wsgi_app, x_for=settings.proxy_hops, x_proto=settings.proxy_hops
        )
    limiter.init_app(app)
    app.extensions["waybill.limiter"] = limiter
    limits = limits_for(settings)
    _limit_routes(app, limiter, limits)

    @app.errorhandler(RateLimitExceeded)
    def _too_many(exc: RateLimitExceeded) -> Response:
        return render_error(too_many(_retry_after(limiter)))

    hsts = settings.base_url.startswith("https://")
    csp = content_security_policy(settings)

    own_origin = _origin_of(settings.base_url)

    @app.before_request
    def _same_origin_sign_in() -> None:
        """Sign-in forms work without a session, so no CSRF token guards them: a page on
        another site could sign a visitor into the attacker's account (login CSRF). Browsers
        say where a form comes from; refuse other origins (clients without Origin pass)."""
        if request.method == "POST" and request.path.startswith("/auth/"):
            origin = request.headers.get("Origin")
            if origin and origin not in (own_origin, _origin_of(request.host_url)):
                raise ApiError(403, "cross_origin", "sign-in is only accepted from this site")

    @app.before_request
    def _socket_tracking_limit() -> None:
        if request.path == "/ws" and "track" in request.args:
            _check_socket_token(limiter, prefix, limits["tracking_wrong_token_per_ip"])

    @app.after_request
    def _headers(response: Response) -> Response:
        h = response.headers
        h["X-Content-Type-Options"] = "nosniff"
        if response.mimetype == "image/svg+xml":  # a picture that, opened alone, is a page
            h.setdefault("Content-Security-Policy", IMAGE_POLICY)
        elif not _subresource(response):
            h.setdefault("Content-Security-Policy", csp)
            h["Referrer-Policy"] = "strict-origin-when-cross-origin"
            h["Permissions-Policy"] = PERMISSIONS_POLICY
            h["X-Frame-Options"] = "DENY"
            h["Cross-Origin-Opener-Policy"] = "same-origin"
        if hsts:
            h["Strict-Transport-Security"] = "max-age=31536000"  # this host only
        for name in _CORS_HEADERS:
            h.pop(name, None)
        if request.path.startswith(("/api/", "/auth/")) and "Cache-Control" not in h:
            h["Cache-Control"] = "no-store"
        return response

    return limiter


def _limit_routes(app: Flask, limiter: Limiter, limits: dict[str, str]) -> None:
    """Attach limits to the routes by their paths, whichever blueprint serves them."""
    from waybill.api import events, merchant

    per_key = limiter.shared_limit(
        limits["merchant_api_per_key"], scope="merchant-api", key_func=_api_key_of_request
    )
    for blueprint in (merchant.bp, events.merchant_bp):  # every route a merchant key opens
        per_key(blueprint)
    for rule in list(app.url_map.iter_rules()):
        endpoint = rule.endpoint
        view = app.view_functions[endpoint]
        methods = rule.methods or set()
        wrapped = view
        if rule.rule == "/auth/email" and "POST" in methods:
            wrapped = limiter.limit(
                limits["sign_in_email_per_address"],
                key_func=_email_of_request,
                methods=["POST"],
                scope="address",
            )(wrapped)
            wrapped = limiter.limit(limits["sign_in_email_per_ip"], methods=["POST"], scope="ip")(
                wrapped
            )
        elif rule.rule == "/auth/code" and "POST" in methods:
            wrapped = limiter.limit(limits["sign_in_code_per_ip"], methods=["POST"])(wrapped)
        elif rule.rule.startswith("/auth/passkey") and "POST" in methods:
            wrapped = limiter.shared_limit(
                limits["passkey_sign_in_per_ip"], scope="passkey-sign-in", methods=["POST"]
            )(wrapped)
        elif rule.rule.startswith(("/api/track/<", "/t/<")):
            wrapped = limiter.shared_limit(
                limits["tracking_wrong_token_per_ip"],
                scope=_TRACKING_SCOPE,
                deduct_when=_wrong_token,
            )(wrapped)
        if wrapped is not view:
            app.view_functions[endpoint] = wrapped


def _check_socket_token(limiter: Limiter, prefix: str, limit_value: str) -> None:
    """``/ws?track=`` shares the tracking-token budget; a wrong token costs one try."""
    from waybill.db import get_session
    from waybill.orders import order_by_token

    items = [parse_limit(part) for part in limit_value.split(";") if part.strip()]
    # The same bucket flask-limiter fills for the shared limit on /api/track and /t.
    args = [prefix, _client_ip(), _TRACKING_SCOPE] if prefix else [_client_ip(), _TRACKING_SCOPE]
    strategy = limiter.limiter
    for item in items:
        if not strategy.test(item, *args):
            stats = strategy.get_window_stats(item, *args)
            raise too_many(max(1, math.ceil(stats.reset_time - time.time())))
    if order_by_token(get_session(), request.args.get("track", "")) is None:
        for item in items:
            strategy.hit(item, *args)


def limiter_of(app: Flask | None = None) -> Limiter:
    return (app or current_app).extensions["waybill.limiter"]  # type: ignore[no-any-return]
