"""The application factory: everything is built here, nothing at import time."""

from __future__ import annotations

import logging

from flask import Flask
from werkzeug.routing import IntegerConverter

from waybill import db, notify, pages, security
from waybill.api import (
    account,
    customer,
    errors,
    events,
    find_order,
    integrations,
    merchant,
    ops,
    order_preferences,
    preferences,
    push_key,
    push_subscriptions,
    spec,
    track,
    track_subscriptions,
    unsubscribe,
)
from waybill.api import live as live_api
from waybill.api import oidc as oidc_api
from waybill.api import passkeys as passkeys_api
from waybill.api import sign_in as sign_in_api
from waybill.api import statuses as statuses_api
from waybill.auth import oidc
from waybill.config import Settings
from waybill.realtime import hub
from waybill.realtime.broker import create_broker


class RowIdConverter(IntegerConverter):
    """``<int:…>``: a row id. One past what an id column holds names no row: it becomes 0, which
    no row has, so the route answers its own 404 (PostgreSQL would refuse the number)."""

    def to_python(self, value: str) -> int:
        number = int(super().to_python(value))
        return number if number <= ROW_ID_MAX else 0


ROW_ID_MAX = 2**31 - 1  # PostgreSQL's integer


def close_app(app: Flask, timeout: float = 5.0) -> None:
    """Stop what the app started in this process (the hub's threads, an outbox worker), then
    close its broker and engine. For tests and embedders that make many apps in one process;
    a server process simply ends."""
    from waybill.auth.login import BackgroundQueue

    parts = app.extensions
    BackgroundQueue.wait_all_idle(timeout)  # sign-in and find-my-order mails still to send
    if "waybill.hub" in parts:
        parts["waybill.hub"].close(timeout)
    if "waybill.worker" in parts:
        parts["waybill.worker"].stop(timeout)
    if "waybill.broker" in parts:
        parts["waybill.broker"].close()
    if "waybill.engine" in parts:
        parts["waybill.engine"].dispose()


def create_app(settings: Settings | None = None) -> Flask:
    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        WAYBILL_SETTINGS=settings,
        SECRET_KEY=str(settings.secret_key),
        SECRET_KEY_FALLBACKS=list(settings.secret_key.old),  # type: ignore[attr-defined]
        MAX_CONTENT_LENGTH=1024 * 1024,
        TESTING=settings.testing,
    )
    # Waybill's own INFO lines (mail written to the log, the watchdog's figures) reach the
    # server's output; a process that configured logging itself keeps its set-up.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app.json.sort_keys = False  # type: ignore[attr-defined]

    try:
        _assemble(app, settings)
    except BaseException:  # a refused setting: nothing it opened stays open
        close_app(app)
        raise
    return app


def _assemble(app: Flask, settings: Settings) -> None:
    # What every request stands on: the database (its sessions publish what they commit to
    # the broker), the broker, one error shape.
    engine = db.create_engine(settings)
    db.init_app(app, engine)
    app.extensions["waybill.broker"] = create_broker(settings.broker_url)
    errors.init_app(app)

    # ``<int:…>`` in a path is a row id: past what the id columns hold (PostgreSQL's integer)
    # it names no row, so it is the route's 404 rather than the database's range error.
    app.url_map.converters["int"] = RowIdConverter

    # Every route of the app, in one list.
    for blueprint in (
        spec.bp,
        merchant.bp,
        events.merchant_bp,
        integrations.merchant_bp,
        integrations.webhooks_bp,
        customer.bp,
        track.bp,
        find_order.bp,
        statuses_api.bp,
        account.bp,
        preferences.bp,
        order_preferences.bp,
        push_key.bp,
        push_subscriptions.bp,
        track_subscriptions.bp,
        unsubscribe.bp,
        sign_in_api.bp,
        oidc_api.bp,
        passkeys_api.account_bp,
        passkeys_api.sign_in_bp,
        live_api.bp,
        pages.bp,
    ):
        app.register_blueprint(blueprint)

    # The services the routes use, each started by its own module.
    oidc.init_app(app)
    notify.init_app(app)  # VAPID keys, the outbox worker
    hub.init_app(app)  # live updates over /ws
    ops.init_app(app)  # /healthz, /readyz, /metrics; a JSON log line per request
    security.init_app(app)  # last: headers and rate limits attach to every registered route
