"""The baseline of ``bench/api.py``: bare Flask answering the same bytes to every request.

One route, ``GET /api/me/orders``, returns the body read from ``--body`` (an answer captured
from the real server) without a database, a session or a renderer, under the very gunicorn
settings and gevent worker class of ``waybill serve`` (``waybill.serve.options``): what the
web stack alone costs, so that the rest of a real answer's cost is the app's.

Run by ``bench/api.py`` as ``python bench/baseline_api.py --port P --workers N --body FILE``;
not by ``make bench`` (its name starts with ``baseline_``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flask import Flask, Response
from gunicorn.app.base import BaseApplication

HOST = "127.0.0.1"


def create_app(body: bytes) -> Flask:
    app = Flask(__name__)

    @app.get("/api/me/orders")
    def my_orders() -> Response:
        return Response(body, mimetype="application/json")

    return app


class Baseline(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from code, as ``waybill.serve.Server`` is; the app is built in each
    worker after gevent has patched it (``preload_app`` is off there too)."""

    def __init__(self, options: dict[str, Any], body_file: Path) -> None:
        self.options = options
        self.body_file = body_file
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        return create_app(self.body_file.read_bytes())


def main() -> None:
    from waybill.serve import options, raise_open_files_limit

    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--body", type=Path, required=True)
    args = parser.parse_args()
    files = raise_open_files_limit()
    settings = options(
        host=HOST,
        port=args.port,
        workers=args.workers,
        connections=max(1000, files - 200),  # as waybill.serve.run computes it
    )
    Baseline({**settings, "proc_name": "waybill-baseline-api"}, args.body).run()


if __name__ == "__main__":
    main()
