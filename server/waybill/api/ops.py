"""For operators and load balancers: ``/healthz``, ``/readyz``, ``/metrics``, and the JSON
line every request leaves in the log (with its request id, also on the outbox rows it queued)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from flask import Blueprint, Flask, Response, current_app, g, jsonify, request

from waybill import observe
from waybill.db import get_engine, read_engine, schema_heads, schema_revisions
from waybill.models.types import utcnow
from waybill.notify.models import OutboxMessage

bp = Blueprint("ops", __name__)

#: Outbox figures are a query: computed at most this often, whatever the scrape interval.
OUTBOX_EVERY_S = 5.0


@bp.get("/healthz")
def healthz() -> Any:
    """The process is up and answering (nothing else is asked)."""
    return jsonify({"status": "ok"})


@bp.get("/readyz")
def readyz() -> Any:
    """Ready for traffic: the database answers, its schema is this code's, the broker answers."""
    problems = []
    engine = get_engine()
    try:
        at = schema_revisions(engine)
        if at != schema_heads():
            problems.append(
                f"database schema at {', '.join(sorted(at)) or 'nothing'}, this code needs "
                f"{', '.join(sorted(schema_heads()))}: run `waybill init`"
            )
    except sa.exc.SQLAlchemyError as exc:
        problems.append(f"database not reachable ({exc.__class__.__name__})")
    broker = current_app.extensions.get("waybill.broker")
    ping = getattr(broker, "ping", None)
    if ping is not None:
        try:
            ping()
        except Exception as exc:  # noqa: BLE001 - any failure means: not ready
            problems.append(f"broker not reachable ({exc.__class__.__name__})")
    if problems:
        return jsonify({"status": "unready", "reasons": problems}), 503
    return jsonify({"status": "ready"})


@bp.get("/metrics")
def metrics() -> Any:
    """Prometheus text: every worker's counters, and the outbox as it stands."""
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    body, content_type = observe.exposition(observe.OutboxCollector(lambda: _outbox(app)))
    return Response(body, content_type=content_type)


def _outbox(app: Flask) -> tuple[int, float]:
    cached = app.extensions.get("waybill.outbox_figures")
    if cached and time.monotonic() - cached[0] < OUTBOX_EVERY_S:
        return cached[1]  # type: ignore[no-any-return]
    now = utcnow()
    X = OutboxMessage  # noqa: N806
    with read_engine(app.extensions["waybill.engine"]).connect() as conn:
        due, oldest = conn.execute(
            sa.select(sa.func.count(), sa.func.min(X.due_at)).where(
                X.state == "pending", X.due_at <= now
            )
        ).one()
    age = 0.0
    if oldest is not None:
        oldest = oldest if oldest.tzinfo else oldest.replace(tzinfo=now.tzinfo)
        age = max((now - oldest) / timedelta(seconds=1), 0.0)
    figures = (int(due or 0), age)
    app.extensions["waybill.outbox_figures"] = (time.monotonic(), figures)
    return figures


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)

    @app.before_request
    def _start() -> None:
        g.request_id = observe.new_request_id(request.headers.get("X-Request-ID"))
        g.request_started = time.perf_counter()

    @app.after_request
    def _log(response: Response) -> Response:
        request_id = g.get("request_id")
        if request_id is None:  # a request that failed before its first hook
            return response
        response.headers["X-Request-ID"] = request_id
        rule = request.url_rule.rule if request.url_rule is not None else "<unmatched>"
        observe.log_request(
            request_id=request_id,
            method=request.method,
            path=observe.logged_path(request.path, request.view_args),
            route=rule,
            status=response.status_code,
            seconds=time.perf_counter() - g.get("request_started", time.perf_counter()),
        )
        return response
