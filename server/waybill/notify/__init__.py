"""Notifications: who hears what and when, the durable outbox, Web Push and email."""

from __future__ import annotations

import os
import threading
from datetime import timedelta

from flask import Flask


def init_app(app: Flask) -> None:
    """The VAPID keys and the in-process outbox worker (``create_app`` registers the routes).

    The worker starts with the app and again in any process forked from it (gunicorn workers
    with a preloaded app): the first request a new process serves starts that process's own.
    """
    from waybill.notify.vapid import load_old_vapid, load_vapid

    settings = app.config["WAYBILL_SETTINGS"]
    vapid = load_vapid(settings)
    app.extensions["waybill.vapid"] = vapid
    # the public keys a browser may say it subscribed with: the current one first
    old = [k.public_key for k in load_old_vapid(settings)]
    app.extensions["waybill.vapid_keys"] = tuple(dict.fromkeys([vapid.public_key, *old]))
    if not settings.run_worker:
        return
    lock = threading.Lock()
    started_in: list[int] = []

    def ensure_worker() -> None:
        if started_in and started_in[0] == os.getpid():
            return
        with lock:
            if started_in and started_in[0] == os.getpid():
                return
            start_worker(app)
            started_in[:] = [os.getpid()]

    app.before_request(ensure_worker)
    ensure_worker()


def start_worker(app: Flask) -> object:
    """Start an outbox worker thread for this process, woken by every committed change."""
    from waybill.notify.delivery import Worker

    settings = app.config["WAYBILL_SETTINGS"]
    # A worker that dies leaves its rows leased this long before another claims them.
    worker = Worker(
        app.extensions["waybill.engine"],
        settings,
        lease=timedelta(seconds=settings.outbox_lease_seconds),
        broker=app.extensions["waybill.broker"],
    ).start()
    app.extensions["waybill.broker"].subscribe(worker.notify)
    app.extensions["waybill.worker"] = worker
    return worker
