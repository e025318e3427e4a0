"""What an operator sees: Prometheus metrics and one JSON log line per request.

Metrics are prometheus-client's, in its multiprocess mode under ``waybill serve`` (gunicorn's
workers each write their own files into ``PROMETHEUS_MULTIPROC_DIR``, which ``serve`` sets and
empties at start, and ``/metrics`` adds them up); in one process (tests, ``flask run``) the
default registry. Labels are route templates (``/t/<token>``), never paths: no token, key or
email ever becomes a label, and the number of series stays bounded.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import sys
import time
from collections.abc import Iterator
from datetime import datetime

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

REQUESTS = Counter(
    "waybill_http_requests_total", "HTTP requests answered", ["route", "method", "status"]
)
LATENCY = Histogram(
    "waybill_http_request_duration_seconds",
    "Time to answer an HTTP request",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
INGEST = Histogram(
    "waybill_event_ingest_seconds",
    "Time to record one tracking event (fold, change log, outbox), in its transaction",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
)
SOCKETS = Gauge("waybill_open_sockets", "WebSocket connections open", multiprocess_mode="livesum")
DISPATCH_LAG = Histogram(
    "waybill_dispatch_lag_seconds",
    "From a change's commit to its frames being queued on the sockets",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
NOTIFICATIONS = Counter(
    "waybill_notifications_total",
    "Notifications tried, by channel (push, mail, webhook) and outcome",
    ["channel", "outcome"],
)
LOOP_BLOCKS = Counter(
    "waybill_event_loop_blocks_total",
    "Times a serve worker's event loop was blocked past WAYBILL_BLOCKED_LOOP_WARN_MS",
)
LOOP_BLOCKED = Counter(
    "waybill_event_loop_blocked_seconds_total", "Time the event loop spent blocked, in all"
)

request_log = logging.getLogger("waybill.request")


class _JsonLines(logging.Handler):
    """Each record's message is already a JSON object: one line on standard error."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            sys.stderr.write(record.getMessage() + "\n")
            sys.stderr.flush()
        except Exception:  # noqa: BLE001 - logging never takes a request down
            self.handleError(record)


def _set_up_request_log() -> None:
    if not any(isinstance(h, _JsonLines) for h in request_log.handlers):
        request_log.addHandler(_JsonLines())
    request_log.setLevel(logging.INFO)
    request_log.propagate = False  # not through the text format of the root logger


_set_up_request_log()


def new_request_id(given: str | None) -> str:
    """The caller's ``X-Request-ID`` when it is a sane token, else a new one."""
    if given and re.fullmatch(r"[A-Za-z0-9._-]{8,64}", given):
        return given
    return secrets.token_hex(8)


#: View arguments whose values are secrets: replaced in the logged path by their name.
_SECRET_ARGS = re.compile(r"token|secret|key|code", re.IGNORECASE)


def logged_path(path: str, view_args: dict[str, object] | None) -> str:
    """The request path with every token-like segment named instead of shown."""
    for name, value in (view_args or {}).items():
        if _SECRET_ARGS.search(name) and value:
            path = path.replace(str(value), f"<{name}>")
    return path


def log_request(
    *, request_id: str, method: str, path: str, route: str, status: int, seconds: float
) -> None:
    REQUESTS.labels(route, method, str(status)).inc()
    LATENCY.labels(route).observe(seconds)
    request_log.info(
        json.dumps(
            {
                "at": datetime.now().astimezone().isoformat(timespec="milliseconds"),
                "request_id": request_id,
                "method": method,
                "path": path,
                "route": route,
                "status": status,
                "duration_ms": round(seconds * 1000, 1),
            },
            separators=(",", ":"),
        )
    )


def loop_blocked(seconds: float) -> None:
    LOOP_BLOCKS.inc()
    LOOP_BLOCKED.inc(seconds)


class timed:
    """``with timed(INGEST): …`` observes how long the block took."""

    def __init__(self, histogram: Histogram) -> None:
        self.histogram = histogram

    def __enter__(self) -> None:
        self.started = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.histogram.observe(time.perf_counter() - self.started)


class OutboxCollector:
    """The outbox as it stands, read at each scrape: rows due now, and the age of the oldest."""

    def __init__(self, read: object) -> None:
        self.read = read  # () -> (due, oldest_due_seconds)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        due, oldest = self.read()  # type: ignore[operator]
        yield GaugeMetricFamily("waybill_outbox_due", "Notifications due and not yet sent", due)
        yield GaugeMetricFamily(
            "waybill_outbox_oldest_due_seconds",
            "How long the oldest due notification has waited",
            oldest,
        )


def exposition(extra: object) -> tuple[bytes, str]:
    """Every process's metrics (multiprocess mode) or this one's, and ``extra``'s."""
    if os.environ.get(MULTIPROC_ENV):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    own = CollectorRegistry()
    own.register(extra)  # type: ignore[arg-type]
    return body + generate_latest(own), CONTENT_TYPE_LATEST
