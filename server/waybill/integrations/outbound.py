"""The merchant's own webhook: their orders' changes POSTed to a URL they choose, signed.

One endpoint per merchant (``PUT /api/v1/webhook-endpoints``). A status change queues one
outbox row for it in the change's transaction (``notify.outbox``); the worker sends it with
``requests``, signed ``Waybill-Signature: t=<unix>,v1=<hex HMAC-SHA256(secret, "<t>.<body>")>``,
and retries with backoff until a 2xx, for up to 24 hours. Every delivery of one change carries
the same ``id`` (``evt_<change id>``): a receiver that saw it already can drop it.

The URL is the merchant's choice, so it is held to what a public webhook is: https, on a public
address — checked when it is set and again, resolving the host, before every delivery (a name
may point somewhere else by then). ``WAYBILL_WEBHOOK_ENDPOINT_HOSTS`` admits others.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import secrets
import socket
import time
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import requests
from sqlmodel import Session, select

from waybill.auth.tokens import open_secret, seal_secret
from waybill.models import Merchant, WebhookEndpoint, utcnow

EVENT_TYPES = ("order.status_changed",)
#: A delivery waits this long for the merchant's answer.
TIMEOUT = (3.05, 10.0)
_HOSTNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789.-")


def seal_context(merchant_id: str) -> str:
    return f"webhook_endpoint:{merchant_id}"


def _allowed_by(host: str, port: int, extra_hosts: Sequence[str]) -> bool:
    for pattern in extra_hosts:
        want_host, _, want_port = pattern.rpartition(":")
        if want_host.lower() == host and want_port in ("*", str(port)):
            return True
    return False


def url_error(url: str, extra_hosts: Sequence[str], *, resolve: bool = True) -> str | None:
    """Why ``url`` is not a webhook URL Waybill will POST to, or None when it is."""
    if len(url) > 2048:
        return "is longer than 2048 characters"
    if any(not (0x21 <= ord(ch) <= 0x7E) for ch in url):
        return "must be a URL of printable ASCII, without spaces or control characters"
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        return "is not a URL"
    if parts.scheme not in ("http", "https") or not host or parts.username or parts.password:
        return "must be an https URL without credentials"
    if _allowed_by(host, port, extra_hosts):
        return None
    if parts.scheme != "https":
        return "must be an https URL"
    try:
        ipaddress.ip_address(host.strip("[]"))
        literal = True
    except ValueError:
        literal = False
        if not set(host) <= _HOSTNAME_CHARS or ".." in host or "." not in host:
            return "has a host name that is not plain letters, digits, dots and hyphens"
    if not resolve and not literal:
        return None
    try:
        addresses = {info[4][0] for info in socket.getaddrinfo(host.strip("[]"), port)}
    except OSError:
        return "has a host name that does not resolve"
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if not ip.is_global or ip.is_multicast:
            return "points to a private, loopback or link-local address"
    return None


def set_endpoint(
    session: Session,
    *,
    merchant: Merchant,
    url: str,
    events: Sequence[str],
    server_key: str,
    now: datetime | None = None,
) -> tuple[WebhookEndpoint, str | None]:
    """Create or change the merchant's endpoint; returns it and its secret when it is new
    (shown once: later changes keep the secret the merchant has)."""
    now = now or utcnow()
    row = session.exec(
        select(WebhookEndpoint).where(WebhookEndpoint.merchant_id == merchant.id)
    ).first()
    secret = None
    if row is None:
        secret = "whsec_" + secrets.token_urlsafe(32)
        row = WebhookEndpoint(
            merchant_id=merchant.id,
            url=url,
            events="",
            secret_sealed=seal_secret(server_key, secret, seal_context(merchant.id)),
            created_at=now,
        )
    row.url, row.events, row.updated_at = url, " ".join(sorted(set(events))), now
    session.add(row)
    session.flush()
    return row, secret


def endpoint_json(row: WebhookEndpoint, secret: str | None) -> dict[str, Any]:
    return {
        "id": row.id,
        "url": row.url,
        "events": row.events.split(),
        "secret": secret,
        "updated_at": row.updated_at.isoformat(),
    }


def signature(secret: str, body: bytes, at: int) -> str:
    mac = hmac.new(secret.encode(), f"{at}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={at},v1={mac}"


def payload(
    change_id: int, created_at: datetime, order: dict[str, Any], before: str | None
) -> bytes:
    return json.dumps(
        {
            "id": f"evt_{change_id}",
            "type": "order.status_changed",
            "created_at": created_at.isoformat(),
            "data": {"order": order, "status_before": before, "status": order.get("status")},
        },
        separators=(",", ":"),
    ).encode()


class Delivery:
    """What became of one POST: ``sent``, ``retry`` (with the server's Retry-After, if any)
    or ``rejected`` (the URL is no longer one Waybill posts to)."""

    def __init__(self, result: str, detail: str = "", retry_after: float | None = None) -> None:
        self.result, self.detail, self.retry_after = result, detail, retry_after


def deliver(
    row: WebhookEndpoint,
    body: bytes,
    *,
    server_key: str,
    extra_hosts: Sequence[str],
    session: requests.Session,
) -> Delivery:
    """POST one event to the merchant's endpoint, signed; never raises."""
    problem = url_error(row.url, extra_hosts)
    if problem:
        return Delivery("retry", f"endpoint URL {problem}")
    secret = open_secret(server_key, row.secret_sealed, seal_context(row.merchant_id))
    try:
        answer = session.post(
            row.url,
            data=body,
            headers={
                "Content-Type": "application/json",
                "User-Agent": "Waybill-Webhooks/1",
                "Waybill-Signature": signature(secret, body, int(time.time())),
            },
            timeout=TIMEOUT,
            allow_redirects=False,  # a redirect could lead anywhere: not followed
        )
    except requests.RequestException as exc:
        return Delivery("retry", f"{type(exc).__name__}")
    with answer:
        if 200 <= answer.status_code < 300:
            return Delivery("sent", str(answer.status_code))
        retry_after = answer.headers.get("Retry-After", "")
        return Delivery(
            "retry",
            f"answered {answer.status_code}",
            float(retry_after) if retry_after.isdigit() else None,
        )
