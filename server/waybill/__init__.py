"""Waybill: order tracking for shoppers and merchants."""

from __future__ import annotations

import logging

import sqlalchemy as sa
from flask import Flask
from sqlmodel import Session

from waybill.config import Settings


def create_app(settings: Settings | None = None) -> Flask:
    """The application factory: everything is built here, nothing at import time."""
    from waybill import db, pages
    from waybill.api import customer, errors, merchant, spec, track
    from waybill.auth import routes as auth_routes
    from waybill.realtime.broker import create_broker

    settings = settings or Settings.from_env()
    app = Flask(__name__, static_folder=None)
    app.config.update(
        WAYBILL_SETTINGS=settings,
        SECRET_KEY=settings.secret_key,
        MAX_CONTENT_LENGTH=1024 * 1024,
        TESTING=settings.testing,
    )
    # Waybill's own INFO lines (mail written to the log, the watchdog's figures) reach the
    # server's output; a process that configured logging itself keeps its set-up.
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )

    app.json.sort_keys = False  # type: ignore[attr-defined]

    engine = db.create_engine(settings)
    db.init_app(app, engine)
    broker = create_broker(settings.broker_url)
    app.extensions["waybill.broker"] = broker

    errors.init_app(app)
    for blueprint in (
        spec.bp,
        merchant.bp,
        customer.bp,
        track.bp,
        auth_routes.bp,
        pages.bp,
    ):
        app.register_blueprint(blueprint)
    from waybill import security
    from waybill.api import account
    from waybill.auth import oidc, passkeys

    for blueprint in (account.bp, oidc.bp, passkeys.account_bp, passkeys.sign_in_bp):  # issue 6
        app.register_blueprint(blueprint)
    oidc.init_app(app)
    from waybill import notify

    notify.init_app(app)  # preferences, push subscriptions, the outbox worker (issue 5)
    from waybill.realtime import hub

    hub.init_app(app)  # /ws live updates (issue 3)
    security.init_app(app)  # last: headers and rate limits attach to every registered route
    return app


@sa.event.listens_for(Session, "after_commit")
def _publish_after_commit(session: Session) -> None:
    """Changes reach the broker only once their transaction is committed."""
    from flask import current_app, has_app_context

    from waybill.ingest import take_published

    published = take_published(session)
    if not published:
        return
    broker = session.info.get("waybill.broker")
    if broker is None and has_app_context():
        broker = current_app.extensions.get("waybill.broker")
    if broker is None:
        return
    for p in published:
        broker.publish(
            {
                "cursor": p.cursor,
                "order_id": p.order_id,
                "customer_id": p.customer_id,
                "status": p.status,
            }
        )


@sa.event.listens_for(Session, "after_rollback")
def _drop_unpublished(session: Session) -> None:
    from waybill.ingest import take_published

    take_published(session)
