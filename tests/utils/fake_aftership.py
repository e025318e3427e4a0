"""A loopback AfterShip Tracking API (version 2024-10) for the endpoints the poller uses.

It answers the way AfterShip documents it: every request needs the ``as-api-key`` header (401
with meta 401 otherwise); ``GET /trackings?tracking_numbers=…&slug=…`` lists matching
trackings (200 with an empty list for an unknown number, or 404 with meta 4004 when
``unknown_as_404`` is set); ``GET /trackings/{id}`` gives one or 404/4004; ``POST /trackings``
with a flat ``{"tracking_number", "slug"}`` body creates one (201), or answers 400 with meta 4003
when it exists, 4007 without a number, 4005 for a number of the wrong shape. Trackings carry
checkpoints with the documented fields (``checkpoint_time``, ``tag``, ``subtag``, ``location``,
``city``, ``country_region``, …) and every answer has the ``X-RateLimit-*`` headers.

Tests script trouble for the next N requests (optionally of one method): a status of their
choice with headers (429 with ``Retry-After`` / ``X-RateLimit-Reset``, 500, 503), or a stall
longer than the client's timeout after which the connection is dropped unanswered. Every
request is kept in ``requests``. ``stop()`` (or leaving the ``with`` block) ends every thread.
"""

from __future__ import annotations

import json
import math
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

VERSION = "2024-10"
PREFIX = f"/tracking/{VERSION}"
RATE_LIMIT = 6  # GET /trackings' documented limit per second
NUMBER_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-")


@dataclass
class Recorded:
    """One request as the server received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lowercased
    body: Any = None  # the parsed JSON body, if any


@dataclass
class Scripted:
    """An answer for one coming request, instead of the normal one."""

    status: int = 500
    headers: dict[str, str] = field(default_factory=dict)
    body: Any = None
    stall: float = 0.0  # seconds to hold the request, then drop the connection unanswered
    method: str | None = None  # only requests of this method take it


def meta(code: int, type_: str, message: str) -> dict[str, Any]:
    return {"code": code, "type": type_, "message": message}


def error_body(code: int, type_: str, message: str) -> dict[str, Any]:
    """AfterShip's error envelope."""
    return {"meta": meta(code, type_, message), "data": {}}


def ok_body(data: Any, code: int = 200) -> dict[str, Any]:
    """AfterShip's success envelope."""
    if code == 201:
        return {"meta": meta(201, "Created", "The request was successful."), "data": data}
    return {"meta": meta(code, "OK", "Request response is successful."), "data": data}


def _iso(ts: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(ts))


def checkpoint(
    tag: str,
    subtag: str,
    subtag_message: str,
    message: str,
    checkpoint_time: str,
    *,
    slug: str = "usps",
    city: str | None = None,
    state: str | None = None,
    zip: str | None = None,  # noqa: A002 - AfterShip's field name
    country_region: str | None = "USA",
    country_region_name: str | None = "United States",
    location: str | None = None,
    raw_tag: str | None = None,
) -> dict[str, Any]:
    """One checkpoint object with the fields of the 2024-10 Checkpoint model."""
    where = location or ", ".join(p for p in (city, state, zip, country_region) if p) or None
    return {
        "created_at": checkpoint_time,
        "slug": slug,
        "checkpoint_time": checkpoint_time,
        "location": where,
        "city": city,
        "state": state,
        "zip": zip,
        "coordinate": None,
        "country_region": country_region,
        "country_region_name": country_region_name,
        "message": message,
        "tag": tag,
        "subtag": subtag,
        "subtag_message": subtag_message,
        "raw_tag": raw_tag,
        "events": [],
        "source": "carrier",
    }


def sample_checkpoints(slug: str = "usps", *, delivered: bool = False) -> list[dict[str, Any]]:
    """A parcel's journey as AfterShip reports it: label, acceptance, departure, out for delivery
    (and delivered, if asked). Times carry the checkpoint's own offset, as carriers give them."""
    points = [
        checkpoint(
            "InfoReceived",
            "InfoReceived_001",
            "Info received",
            "Shipping Label Created, USPS Awaiting Item",
            "2024-11-04T08:12:00-06:00",
            slug=slug,
            city="Houston",
            state="TX",
            zip="77002",
            raw_tag="GX",
        ),
        checkpoint(
            "InTransit",
            "InTransit_002",
            "Acceptance scan",
            "USPS in possession of item",
            "2024-11-04T17:40:00-06:00",
            slug=slug,
            city="Houston",
            state="TX",
            zip="77002",
            raw_tag="03",
        ),
        checkpoint(
            "InTransit",
            "InTransit_007",
            "Departure Scan",
            "Departed USPS Regional Facility",
            "2024-11-05T02:05:00-06:00",
            slug=slug,
            city="North Houston",
            state="TX",
            raw_tag="L1",
        ),
        checkpoint(
            "OutForDelivery",
            "OutForDelivery_001",
            "Out for Delivery",
            "Out for Delivery, Expected Delivery by 9:00pm",
            "2024-11-06T07:31:00-05:00",
            slug=slug,
            city="Atlanta",
            state="GA",
            zip="30303",
            raw_tag="OF",
        ),
    ]
    if delivered:
        points.append(
            checkpoint(
                "Delivered",
                "Delivered_001",
                "Delivered",
                "Delivered, In/At Mailbox",
                "2024-11-06T14:02:00-05:00",
                slug=slug,
                city="Atlanta",
                state="GA",
                zip="30303",
                raw_tag="01",
            )
        )
    return points


class FakeAfterShip:
    """The server. ``base_url`` is what ``AfterShipPoller(base_url=…)`` takes."""

    def __init__(self, api_key: str = "test-aftership-key", *, unknown_as_404: bool = False):
        self.api_key = api_key
        self.unknown_as_404 = unknown_as_404
        self.requests: list[Recorded] = []
        self.trackings: dict[tuple[str, str], dict[str, Any]] = {}
        #: What a carrier will report once a tracking is created: (slug, number) → checkpoints.
        self.carrier_data: dict[tuple[str, str], list[dict[str, Any]]] = {}
        self.lock = threading.Lock()
        self._script: deque[Scripted] = deque()
        self._stopping = threading.Event()
        fake = self

        class Handler(_Handler):
            server_fake = fake

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = False  # so server_close() joins every handler thread
        self.port = self._server.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}{PREFIX}"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    # -- lifecycle --------------------------------------------------------------------------

    def start(self) -> FakeAfterShip:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wakes stalled handlers
        if self._thread.is_alive():
            self._server.shutdown()
            self._thread.join(5)
        self._server.server_close()

    def __enter__(self) -> FakeAfterShip:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- test setup -------------------------------------------------------------------------

    def add_tracking(
        self,
        slug: str,
        tracking_number: str,
        *,
        checkpoints: list[dict[str, Any]] | None = None,
        estimated_delivery_date: str | None = "2024-11-06",
    ) -> dict[str, Any]:
        """Put a tracking in the account (as if created earlier); returns the stored object."""
        points = sample_checkpoints(slug) if checkpoints is None else checkpoints
        tracking = self._make_tracking(slug, tracking_number, points)
        if estimated_delivery_date:
            tracking["courier_estimated_delivery_date"] = {
                "estimated_delivery_date": estimated_delivery_date,
                "estimated_delivery_date_min": None,
                "estimated_delivery_date_max": None,
            }
        with self.lock:
            self.trackings[(slug, tracking_number)] = tracking
        return tracking

    def tracking(self, slug: str, tracking_number: str) -> dict[str, Any] | None:
        with self.lock:
            return self.trackings.get((slug, tracking_number))

    def script(self, count: int = 1, **answer: Any) -> None:
        """The next ``count`` requests (of ``method=`` if given) get this answer instead."""
        with self.lock:
            self._script.extend(Scripted(**answer) for _ in range(count))

    def fail(self, count: int = 1, status: int = 500, *, method: str | None = None) -> None:
        reason = {500: "InternalError", 502: "BadGateway", 503: "ServiceUnavailable"}
        body = error_body(status, reason.get(status, "InternalError"), "Something went wrong.")
        self.script(count, status=status, body=body, method=method)

    def rate_limit(
        self,
        count: int = 1,
        *,
        retry_after: float | None = 1,
        reset_in: float | None = None,
        method: str | None = None,
    ) -> None:
        """429 TooManyRequests, with ``Retry-After`` and/or ``X-RateLimit-Reset`` (set at the
        moment of answering, ``reset_in`` seconds ahead, rounded up as a Unix timestamp)."""
        headers = {"X-RateLimit-Limit": str(RATE_LIMIT), "X-RateLimit-Remaining": "0"}
        if retry_after is not None:
            headers["Retry-After"] = str(retry_after)
        if reset_in is not None:
            headers["X-RateLimit-Reset"] = f"+{reset_in}"  # resolved when answering
        body = error_body(
            429,
            "TooManyRequests",
            "You have exceeded the API call rate limit. Please retry again later.",
        )
        self.script(count, status=429, headers=headers, body=body, method=method)

    def stall(self, count: int = 1, seconds: float = 2.0, *, method: str | None = None) -> None:
        self.script(count, stall=seconds, method=method)

    def of(self, method: str) -> list[Recorded]:
        """The requests of one method, in order."""
        with self.lock:
            return [r for r in self.requests if r.method == method]

    # -- behaviour --------------------------------------------------------------------------

    def _make_tracking(
        self, slug: str, number: str, points: list[dict[str, Any]]
    ) -> dict[str, Any]:
        now = _iso(time.time())
        last = points[-1] if points else None
        return {
            "id": uuid.uuid4().hex[:24],
            "legacy_id": uuid.uuid4().hex[:24],
            "tracking_number": number,
            "slug": slug,
            "active": not (last and last["tag"] == "Delivered"),
            "created_at": now,
            "updated_at": now,
            "title": number,
            "tag": last["tag"] if last else "Pending",
            "subtag": last["subtag"] if last else "Pending_001",
            "subtag_message": last["subtag_message"] if last else "Pending",
            "shipment_type": "USPS Ground Advantage" if slug == "usps" else None,
            "origin_country_region": "USA",
            "destination_country_region": "USA",
            "courier_estimated_delivery_date": None,
            "aftership_estimated_delivery_date": None,
            "signed_by": None,
            "source": "api",
            "tracked_count": 1 if points else 0,
            "checkpoints": points,
        }

    def _take_script(self, method: str) -> Scripted | None:
        with self.lock:
            for i, item in enumerate(self._script):
                if item.method is None or item.method == method:
                    del self._script[i]
                    return item
        return None

    def answer(self, rec: Recorded) -> tuple[int, dict[str, str], Any]:
        """The normal answer to one request: (status, headers, JSON body)."""
        if rec.headers.get("as-api-key") != self.api_key:
            return 401, {}, error_body(401, "Unauthorized", "Invalid API key.")
        path = rec.path
        if not path.startswith(PREFIX + "/"):
            return 404, {}, error_body(404, "NotFound", "The URI requested is invalid.")
        resource = path[len(PREFIX) :]
        if resource == "/trackings" and rec.method == "GET":
            return self._list(rec)
        if resource == "/trackings" and rec.method == "POST":
            return self._create(rec)
        if resource.startswith("/trackings/") and rec.method == "GET":
            wanted = resource.split("/", 2)[2]
            with self.lock:
                hit = next((t for t in self.trackings.values() if t["id"] == wanted), None)
            if hit is None:
                return 404, {}, error_body(4004, "NotFound", "Tracking does not exist.")
            return 200, {}, ok_body(hit)
        return 404, {}, error_body(404, "NotFound", "The URI requested is invalid.")

    def _list(self, rec: Recorded) -> tuple[int, dict[str, str], Any]:
        numbers = {n for n in rec.query.get("tracking_numbers", "").split(",") if n}
        slugs = {s for s in rec.query.get("slug", "").split(",") if s}
        with self.lock:
            found = [
                t
                for (slug, number), t in self.trackings.items()
                if (not numbers or number in numbers) and (not slugs or slug in slugs)
            ]
        if not found and numbers and self.unknown_as_404:
            return 404, {}, error_body(4004, "NotFound", "Tracking does not exist.")
        data = {
            "pagination": {"total": len(found), "next_cursor": None, "has_next_page": False},
            "trackings": found,
        }
        return 200, {}, ok_body(data)

    def _create(self, rec: Recorded) -> tuple[int, dict[str, str], Any]:
        body = rec.body
        if not isinstance(body, dict):
            return 400, {}, error_body(4001, "BadRequest", "Invalid JSON data.")
        number = body.get("tracking_number")
        slug = body.get("slug")
        if not number or not isinstance(number, str):
            return 400, {}, error_body(4007, "BadRequest", "tracking_number is required.")
        if not (4 <= len(number) <= 40) or not set(number) <= NUMBER_CHARS:
            invalid = "The value of tracking_number is invalid."
            return 400, {}, error_body(4005, "BadRequest", invalid)
        if not slug or not isinstance(slug, str):
            # The real API would detect the courier; the fake knows none.
            return 400, {}, error_body(4012, "BadRequest", "Cannot detect courier.")
        with self.lock:
            if (slug, number) in self.trackings:
                return 400, {}, error_body(4003, "BadRequest", "Tracking already exists.")
            points = self.carrier_data.get((slug, number), [])
            tracking = self._make_tracking(slug, number, points)
            self.trackings[(slug, number)] = tracking
        return 201, {}, ok_body(tracking, 201)


class _Handler(BaseHTTPRequestHandler):
    server_fake: FakeAfterShip
    protocol_version = "HTTP/1.0"  # one request a connection: nothing left open at stop()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        pass

    def _handle(self) -> None:
        fake = self.server_fake
        parts = urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = raw  # kept as bytes; POST answers 4001
        rec = Recorded(
            method=self.command,
            path=parts.path,
            query={k: v[-1] for k, v in parse_qs(parts.query).items()},
            headers={k.lower(): v for k, v in self.headers.items()},
            body=body,
        )
        with fake.lock:
            fake.requests.append(rec)
        scripted = fake._take_script(self.command)
        if scripted is not None and scripted.stall:
            fake._stopping.wait(scripted.stall)
            self.close_connection = True
            return  # dropped unanswered, as a stuck upstream would
        if scripted is not None:
            status, headers, payload = scripted.status, dict(scripted.headers), scripted.body
        else:
            status, headers, payload = fake.answer(rec)
        reset = headers.get("X-RateLimit-Reset", "")
        if reset.startswith("+"):
            headers["X-RateLimit-Reset"] = str(math.ceil(time.time() + float(reset[1:])))
        headers.setdefault("X-RateLimit-Limit", str(RATE_LIMIT))
        headers.setdefault("X-RateLimit-Remaining", str(RATE_LIMIT - 1))
        headers.setdefault("X-RateLimit-Reset", str(math.ceil(time.time()) + 1))
        headers["as-api-version"] = VERSION
        data = json.dumps(payload if payload is not None else {}).encode()
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            for name, value in headers.items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(data)
        except OSError:
            pass  # the client gave up (its timeout); nothing to tell it

    do_GET = _handle  # noqa: N815
    do_POST = _handle  # noqa: N815
    do_PUT = _handle  # noqa: N815
    do_DELETE = _handle  # noqa: N815
