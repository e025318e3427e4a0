"""The baseline for bench/live.py: a minimal flask-sock app under the same gunicorn/gevent
settings as ``waybill serve``, with no database work at all.

``GET /ws?c=<customer>`` registers a socket (flask-sock's usual receive loop, ping every 25 s);
``POST /publish`` ``{"c": customer, "status": s, "size": bytes}`` sends that customer's sockets
an ``order.updated`` frame with that order status, padded to ``size`` bytes (bench/live.py
passes the size of Waybill's frames; without it, about one rendered order), with ``ws.send``,
and answers ``{"cursor": n}``.

Run: ``python bench/baseline_ws.py --port 8001`` (one worker).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import sys
import threading
from pathlib import Path
from typing import Any

from flask import Flask, request
from flask_sock import ConnectionClosed, Sock

# about the size of one rendered order with one shipment and two events
ORDER = {
    "id": 0,
    "external_id": "BENCH-0",
    "status": "processing",
    "status_label": "Processing",
    "merchant": {"id": "mer_0000000000000000", "name": "Bench Shop"},
    "tracking_url": "http://127.0.0.1:8000/t/" + "x" * 43,
    "items": [{"name": "Lamp", "quantity": 1, "image_url": None}],
    "packages": {"total": 0, "delivered": 0, "summary": None},
    "shipments": [],
    "events": [
        {
            "status": "processing",
            "status_label": "Processing",
            "occurred_at": "2026-01-01T10:00:00Z",
            "location": None,
            "description": None,
        }
    ]
    * 2,
    "estimated_delivery": None,
    "placed_at": None,
    "created_at": "2026-01-01T10:00:00Z",
    "updated_at": "2026-01-01T10:00:00Z",
    "cursor": 0,
}


def create_app() -> Flask:
    app = Flask(__name__)
    app.config["SOCK_SERVER_OPTIONS"] = {"ping_interval": 25}
    sock = Sock(app)
    clients: dict[int, set[Any]] = {}
    lock = threading.Lock()
    cursor = itertools.count(1)

    @sock.route("/ws")
    def live(ws: Any) -> None:
        customer = int(request.args["c"])
        with lock:
            clients.setdefault(customer, set()).add(ws)
        try:
            ws.send(json.dumps({"type": "hello", "cursor": 0}))
            while True:
                ws.receive()
        except ConnectionClosed:
            pass
        finally:
            with lock:
                clients[customer].discard(ws)

    @app.post("/publish")
    def publish() -> Any:
        body = request.get_json()
        customer = int(body["c"])
        n = next(cursor)
        order = {**ORDER, "id": customer, "status": body.get("status", ORDER["status"])}
        frame = json.dumps({"type": "order.updated", "cursor": n, "order": order})
        if len(frame) < int(body.get("size") or 0):  # as large as the server's own frames
            order["padding"] = "x" * (int(body["size"]) - len(frame) - 15)
            frame = json.dumps({"type": "order.updated", "cursor": n, "order": order})
        with lock:
            targets = list(clients.get(customer, ()))
        for ws in targets:
            with contextlib.suppress(ConnectionClosed):
                ws.send(frame)
        return {"cursor": n}

    return app


def main() -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "server"))
    from gunicorn.app.base import BaseApplication

    from waybill.serve import options, raise_open_files_limit

    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args()
    files = raise_open_files_limit()
    opts = options(host=args.host, port=args.port, workers=1, connections=max(1000, files - 200))
    opts["worker_class"] = "gevent"  # gunicorn's own, as a plain flask-sock app would use

    class Baseline(BaseApplication):  # type: ignore[misc]
        def load_config(self) -> None:
            for key, value in opts.items():
                self.cfg.set(key, value)

        def load(self) -> Flask:
            return create_app()

    Baseline().run()


if __name__ == "__main__":
    main()
