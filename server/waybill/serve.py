"""``waybill serve``: gunicorn with gevent workers, so that one worker holds thousands of sockets.

Each worker builds its own app after gevent has patched it (no preloading), and on SIGTERM
closes its sockets with 1001 so that clients reconnect (to another worker or host) and resume.
"""

from __future__ import annotations

import logging
import os
import resource
import sys
from typing import Any

import gevent
from gunicorn.app.base import BaseApplication
from gunicorn.workers.ggevent import GeventWorker

from waybill.config import ConfigError, Settings
from waybill.watchdog import LoopWatch

log = logging.getLogger(__name__)


def default_workers(settings: Settings) -> int:
    """One per core with a Redis broker; one alone with the in-process broker."""
    if settings.broker_url.startswith("memory://"):
        return 1
    return os.cpu_count() or 1


def check_workers(settings: Settings, workers: int) -> None:
    if workers < 1:
        raise ConfigError("--workers must be at least 1")
    if workers > 1 and settings.broker_url.startswith("memory://"):
        raise ConfigError(
            f"--workers {workers} needs a shared broker: with WAYBILL_BROKER_URL=memory:// a "
            "change made in one worker would never reach the sockets held by the others. "
            "Set WAYBILL_BROKER_URL=redis://host:6379/0, or run with --workers 1."
        )


def raise_open_files_limit() -> int:
    """Every socket is a file descriptor: take the hard limit (up to 1,000,000)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else 1_000_000
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
            soft = want
        except (ValueError, OSError):
            pass
    return soft


def cooperative_psycopg() -> bool:
    """Make psycopg wait on gevent's ``select.poll`` if it chose its C wait before gevent
    patched this process (the master imports it when it checks the database): that C wait
    blocks the whole loop for every query. True when it was switched."""
    waiting = sys.modules.get("psycopg.waiting")
    if waiting is None or waiting.wait is not getattr(waiting, "wait_c", None):
        return False
    waiting.wait = waiting.wait_poll
    return True


class WebSocketWorker(GeventWorker):
    """gunicorn's gevent worker that says goodbye to its sockets on SIGTERM, and watches its
    event loop for anything that blocks it (:mod:`waybill.watchdog`)."""

    watch: LoopWatch | None = None

    def run(self) -> None:
        cooperative_psycopg()
        settings = getattr(self.wsgi, "config", {}).get("WAYBILL_SETTINGS")
        warn_ms = settings.blocked_loop_warn_ms if settings is not None else 500
        self.watch = LoopWatch(warn_after=warn_ms / 1000).start()
        try:
            super().run()
        finally:
            log.info("worker %s: %s", os.getpid(), self.watch.summary())

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)  # stop accepting; wait for open requests to end
        gevent.spawn(self._close_sockets)

    def handle_quit(self, sig: int, frame: Any) -> None:
        gevent.spawn(self._close_sockets)  # SIGINT/SIGQUIT exit at once: say goodbye first
        super().handle_quit(sig, frame)

    def _close_sockets(self) -> None:
        hub = getattr(self.wsgi, "extensions", {}).get("waybill.hub")
        if hub is not None:
            hub.shutdown()


class Server(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from code rather than a config file."""

    def __init__(self, settings: Settings, options: dict[str, Any]) -> None:
        self.settings = settings
        self.options = options
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from waybill import gctune
        from waybill.app import create_app

        app = create_app(self.settings)
        gctune.tune()  # each worker, once its app is built (see waybill.gctune)
        return app


METRICS_ENV = "PROMETHEUS_MULTIPROC_DIR"


def prepare_metrics_dir(settings: Settings) -> str:
    """Before the workers fork (and before anything imports prometheus-client, which reads
    this at import): the directory each worker writes its metric files to, emptied of an
    earlier run's. ``PROMETHEUS_MULTIPROC_DIR`` when set, else ``<instance>/metrics``."""
    path = os.environ.get(METRICS_ENV) or os.path.join(str(settings.instance_dir), "metrics")
    os.makedirs(path, exist_ok=True)
    for name in os.listdir(path):
        if name.endswith(".db"):
            os.unlink(os.path.join(path, name))
    os.environ[METRICS_ENV] = path
    return path


def _child_exit(server: Any, worker: Any) -> None:
    """A worker ended: its live gauges (open sockets) stop counting."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def options(*, host: str, port: int, workers: int, connections: int) -> dict[str, Any]:
    return {
        "bind": f"{host}:{port}",
        "workers": workers,
        "worker_class": f"{WebSocketWorker.__module__}.{WebSocketWorker.__qualname__}",
        "worker_connections": connections,
        "preload_app": False,  # each worker builds its app after gevent has patched it
        "graceful_timeout": 10,
        "timeout": 30,
        "keepalive": 5,
        "accesslog": None,
        "errorlog": "-",
        "loglevel": "info",
        "proc_name": "waybill",
        "control_socket_disable": True,  # one fixed path would clash between servers
        "child_exit": _child_exit,
    }


def run(settings: Settings, *, host: str, port: int, workers: int | None) -> None:
    """Serve until SIGTERM or SIGINT."""
    count = default_workers(settings) if workers is None else workers
    check_workers(settings, count)
    files = raise_open_files_limit()
    connections = max(1000, files - 200)  # leave room for the database and log files
    print(
        f"Waybill on http://{host}:{port}  (base URL {settings.base_url}; {count} gevent "
        f"worker{'s' if count > 1 else ''}, up to {connections} connections each)",
        flush=True,
    )
    if not settings.smtp_url:
        # Where mail goes is the first thing a newcomer needs: the sign-in code is in it.
        print(
            "No WAYBILL_SMTP_URL: mail is not sent but written below, on standard error "
            "(sign-in codes and links included)",
            file=sys.stderr,
            flush=True,
        )
    prepare_metrics_dir(settings)
    Server(settings, options(host=host, port=port, workers=count, connections=connections)).run()
