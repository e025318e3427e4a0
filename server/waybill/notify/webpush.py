"""Web Push: the VAPID identity and the sender.

pywebpush signs a new JWT on every call, rewrites the claims dict it is given and has no
timeout of its own; so the sender signs one VAPID header per push-service origin and reuses it
until an hour before it expires, and always sets a timeout. Two ways out:

* ``send``: one message through ``pywebpush.WebPusher`` and one shared ``requests.Session``;
* ``send_many``: what the outbox worker uses: a batch with hundreds of requests in flight on
  one event loop over kept-alive connections, because requests costs ~0.8 ms of CPU a message
  (bench/push.py) and a thread per request in flight does not scale to slow push services.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import os
import ssl
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from pathlib import Path
from urllib.parse import urlsplit

import http_ece
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from pywebpush import WebPusher
from requests.adapters import HTTPAdapter

from waybill.config import ConfigError, Settings

log = logging.getLogger("waybill.webpush")

KEY_FILE = "vapid_private_key.pem"
JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_REFRESH_BEFORE = 3600  # re-sign an hour before the header expires
HIGH_URGENCY = frozenset({"out_for_delivery", "delivered", "attempted", "exception"})
#: How long a push service keeps a message for an offline phone, per status (seconds).
TTL_BY_STATUS = {"out_for_delivery": 6 * 3600, "attempted": 24 * 3600, "delivered": 24 * 3600}
DEFAULT_TTL = 2 * 24 * 3600
OPEN_AT_ONCE = 16  # new connections being opened to one push service at a time


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


@dataclass(frozen=True)
class VapidKeys:
    private_key: ec.EllipticCurvePrivateKey

    @property
    def public_key(self) -> str:
        """The application server key the browser subscribes with (uncompressed point)."""
        raw = self.private_key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
        return b64url(raw)


def parse_private_key(text: str) -> ec.EllipticCurvePrivateKey:
    """A P-256 private key given as PEM or as base64url of the raw 32-byte scalar."""
    text = text.strip()
    try:
        if text.startswith("-----BEGIN"):
            key = serialization.load_pem_private_key(text.encode(), password=None)
        else:
            raw = b64url_decode(text)
            if len(raw) != 32:
                raise ValueError("not 32 bytes")
            key = ec.derive_private_key(int.from_bytes(raw, "big"), ec.SECP256R1())
    except ValueError as exc:
        raise ConfigError(f"WAYBILL_VAPID_PRIVATE_KEY is not a P-256 private key: {exc}") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise ConfigError("WAYBILL_VAPID_PRIVATE_KEY must be a P-256 (prime256v1) key")
    return key


def load_vapid(settings: Settings, *, create: bool = True) -> VapidKeys:
    """The VAPID key pair: from the environment, else the instance dir (made once if missing)."""
    if settings.vapid_private_key:
        return VapidKeys(parse_private_key(settings.vapid_private_key))
    path = Path(settings.instance_dir) / KEY_FILE
    if not path.exists():
        if not create:
            raise ConfigError("no VAPID key: set WAYBILL_VAPID_PRIVATE_KEY or run `waybill init`")
        key = ec.generate_private_key(ec.SECP256R1())
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(pem)
            return VapidKeys(key)
    return VapidKeys(parse_private_key(path.read_text()))


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    auth: str


@dataclass(frozen=True)
class PushResult:
    """``sent``; ``gone`` (forget the subscription); ``retry`` (after ``retry_after`` s at
    least); ``rejected`` (logged, never retried)."""

    outcome: str
    status: int | None = None
    retry_after: float | None = None
    detail: str = ""


def retry_after_seconds(value: str | None, now: float | None = None) -> float | None:
    """``Retry-After`` as seconds from now: delta-seconds or an HTTP date."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


def origin_of(endpoint: str) -> str:
    """``scheme://host[:port]``, the JWT audience, without a full URL parse per message."""
    start = endpoint.find("//") + 2
    cuts = [i for i in (endpoint.find(c, start) for c in "/?#") if i >= 0]
    return endpoint[: min(cuts)] if cuts else endpoint


def ttl_for(status: str) -> int:
    return TTL_BY_STATUS.get(status, DEFAULT_TTL)


def urgency_for(status: str) -> str:
    return "high" if status in HIGH_URGENCY else "normal"


def topic_for(order_id: int) -> str:
    """At most 32 URL-safe characters, one per order: a newer status replaces an older one."""
    return f"order-{order_id}"[:32]


class PushSender:
    """Sends encrypted messages; safe to share between the threads of one worker."""

    def __init__(
        self,
        keys: VapidKeys,
        subject: str,
        *,
        timeout: float = 10.0,
        pool_size: int = 64,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self.keys, self.subject, self.timeout = keys, subject, timeout
        self.tls = tls or ssl.create_default_context()  # whom https push services may be
        self._vapid = Vapid02(private_key=keys.private_key)
        self.session = requests.Session()
        adapter = HTTPAdapter(pool_connections=32, pool_maxsize=pool_size, max_retries=0)
        self.session.mount("https://", adapter)
        self.session.mount("http://", adapter)
        self._headers: dict[str, tuple[str, float]] = {}
        self._lock = threading.RLock()
        self.pool_size = pool_size
        self._async: _AsyncTransport | None = None

    def vapid_header(self, endpoint: str, now: float | None = None) -> str:
        """The ``Authorization`` header for the endpoint's origin, signed at most hourly-ish."""
        now = time.time() if now is None else now
        origin = origin_of(endpoint)
        cached = self._headers.get(origin)
        if cached is not None and now < cached[1]:
            return cached[0]
        with self._lock:
            exp = int(now) + JWT_LIFETIME
            # A fresh dict per origin: a shared one would carry one service's aud to another.
            claims = {"sub": self.subject, "aud": origin, "exp": exp}
            header = self._vapid.sign(claims)["Authorization"]
            self._headers[origin] = (header, exp - JWT_REFRESH_BEFORE)
        return header

    def headers_for(self, sub: Subscription, urgency: str, topic: str) -> dict[str, str]:
        auth = self.vapid_header(sub.endpoint)
        return {"Authorization": auth, "Urgency": urgency, "Topic": topic}

    def send(
        self, sub: Subscription, payload: bytes, *, ttl: int, urgency: str, topic: str
    ) -> PushResult:
        """One message through pywebpush and the shared ``requests.Session``."""
        headers = self.headers_for(sub, urgency, topic)
        info = {"endpoint": sub.endpoint, "keys": {"p256dh": sub.p256dh, "auth": sub.auth}}
        try:
            resp = WebPusher(info, requests_session=self.session).send(
                payload, headers, ttl=ttl, timeout=self.timeout
            )
        except requests.RequestException as exc:
            return PushResult("retry", None, None, f"{exc.__class__.__name__}: {exc}"[:300])
        assert isinstance(resp, requests.Response)
        return classify(resp.status_code, resp.headers.get("Retry-After"), resp.text[:200])

    def close(self) -> None:
        self.session.close()
        if self._async is not None:
            self._async.close()
            self._async = None

    def send_many(self, messages: list[Outgoing]) -> list[PushResult]:
        """Send a batch with up to ``pool_size`` requests in flight; results in input order."""
        return self.send_many_async(messages).result()

    def send_many_async(self, messages: list[Outgoing]) -> Future[list[PushResult]]:
        """``send_many`` without waiting: the results arrive on the future."""
        if self._async is None:
            with self._lock:
                if self._async is None:
                    self._async = _AsyncTransport(self, self.pool_size)
        return self._async.send_many(messages)


def encrypt(sub: Subscription, payload: bytes) -> bytes:
    """RFC 8291 aes128gcm for one subscription, with a fresh ephemeral key: exactly what
    ``pywebpush.WebPusher.encode`` does, without its per-call copying of the subscription."""
    return http_ece.encrypt(  # type: ignore[no-any-return]
        payload,
        salt=None,
        private_key=ec.generate_private_key(ec.SECP256R1()),
        dh=b64url_decode(sub.p256dh),
        auth_secret=b64url_decode(sub.auth),
        version="aes128gcm",
    )


@dataclass(frozen=True)
class Outgoing:
    """One message of a batch."""

    subscription: Subscription
    payload: bytes
    ttl: int
    urgency: str
    topic: str


class _AsyncTransport:
    """Many requests in flight on one event loop thread, over kept-alive HTTP/1.1 connections.

    Measured here: pywebpush + requests spends ~0.8 ms of CPU a message and aiohttp ~0.5 ms;
    push services answer small, so a plain keep-alive client on asyncio streams does the same
    for a fraction. The encryption is the same http_ece call pywebpush makes (RFC 8291).
    """

    def __init__(self, sender: PushSender, concurrency: int) -> None:
        self.sender = sender
        self.concurrency = concurrency
        self.idle: dict[
            tuple[str, str, int], list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]
        ] = {}
        self.tls = sender.tls
        self.gate: asyncio.Semaphore | None = None
        self.opening: dict[tuple[str, str, int], asyncio.Semaphore] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="waybill-push-io", daemon=True
        )
        self.thread.start()

    def send_many(self, messages: list[Outgoing]) -> Future[list[PushResult]]:
        return asyncio.run_coroutine_threadsafe(self._all(messages), self.loop)

    async def _all(self, messages: list[Outgoing]) -> list[PushResult]:
        if self.gate is None:  # one limit for every batch in flight, made on the loop
            self.gate = asyncio.Semaphore(self.concurrency)
        gate = self.gate

        async def one(m: Outgoing) -> PushResult:
            async with gate:
                try:
                    return await self._one(m)
                except (OSError, EOFError, TimeoutError, ValueError) as exc:
                    detail = f"{exc.__class__.__name__}: {exc}"[:300]
                    return PushResult("retry", None, None, detail)

        return list(await asyncio.gather(*(one(m) for m in messages)))

    async def _one(self, m: Outgoing) -> PushResult:
        sub = m.subscription
        try:
            body = encrypt(sub, m.payload)
        except Exception as exc:  # a subscription whose keys cannot be used
            return PushResult("rejected", None, None, f"{exc.__class__.__name__}: {exc}")
        parts = urlsplit(sub.endpoint)
        path = parts.path or "/"
        if parts.query:
            path += "?" + parts.query
        auth = self.sender.vapid_header(sub.endpoint)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\n"
            f"Content-Type: application/octet-stream\r\nContent-Encoding: aes128gcm\r\n"
            f"Content-Length: {len(body)}\r\nTTL: {m.ttl}\r\nAuthorization: {auth}\r\n"
            f"Urgency: {m.urgency}\r\nTopic: {m.topic}\r\n\r\n"
        ).encode("latin-1")
        port = parts.port or (443 if parts.scheme == "https" else 80)
        key = (parts.scheme, parts.hostname or "", port)
        async with asyncio.timeout(self.sender.timeout):
            for attempt in (1, 2):
                reused, (reader, writer) = await self._connect(key)
                try:
                    writer.write(head + body)
                    status, answer, keep = await _read_response(reader)
                except (OSError, EOFError, asyncio.IncompleteReadError):
                    writer.close()
                    if reused and attempt == 1:
                        continue  # the service closed an idle connection: once more, fresh
                    raise
                except BaseException:
                    writer.close()
                    raise
                if keep:
                    self.idle.setdefault(key, []).append((reader, writer))
                else:
                    writer.close()
                return classify(status, answer.get("retry-after"))
        raise AssertionError("unreachable")

    async def _connect(
        self, key: tuple[str, str, int]
    ) -> tuple[bool, tuple[asyncio.StreamReader, asyncio.StreamWriter]]:
        """A kept-alive connection to the origin, or a new one. New ones are opened a few at a
        time, so a burst reuses connections that come free rather than opening one each: a
        push service that answers at once needs few, a slow one gets as many as it takes."""
        reused = self._reuse(key)
        if reused is not None:
            return True, reused
        opening = self.opening.setdefault(key, asyncio.Semaphore(OPEN_AT_ONCE))
        async with opening:
            reused = self._reuse(key)
            if reused is not None:
                return True, reused
            scheme, host, port = key
            tls = self.tls if scheme == "https" else None
            return False, await asyncio.open_connection(
                host, port, ssl=tls, server_hostname=host if tls else None
            )

    def _reuse(
        self, key: tuple[str, str, int]
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        pool = self.idle.get(key)
        while pool:
            reader, writer = pool.pop()
            if not writer.is_closing() and not reader.at_eof():
                return reader, writer
            writer.close()
        return None

    def close(self) -> None:
        async def shut() -> None:
            writers = [w for pool in self.idle.values() for _, w in pool]
            self.idle.clear()
            for writer in writers:
                writer.close()
            await asyncio.gather(*(w.wait_closed() for w in writers), return_exceptions=True)

        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bool]:
    """Status, headers and whether the connection can be reused; the body is read and
    dropped (Content-Length, chunked, or up to the close)."""
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    version, _, rest = lines[0].partition(" ")
    status = int(rest[:3])
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if sep:
            headers[name.strip().lower()] = value.strip()
    keep = version == "HTTP/1.1" and headers.get("connection", "").lower() != "close"
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":
                    pass
                break
            await reader.readexactly(size + 2)
    elif "content-length" in headers:
        length = int(headers["content-length"])
        if length:
            await reader.readexactly(length)
    elif status not in (204, 304):
        await reader.read()  # delimited by the close
        keep = False
    return status, headers, keep


def classify(status: int, retry_after: str | None, text: str = "") -> PushResult:
    """What a push service's answer means for the subscription and the message."""
    if 200 <= status < 300:
        return PushResult("sent", status)
    if status in (404, 410):
        return PushResult("gone", status, None, text)
    if status == 429 or status >= 500:
        return PushResult("retry", status, retry_after_seconds(retry_after), text)
    # 400 bad request, 403 wrong VAPID key, 413 too large: sending again cannot help.
    return PushResult("rejected", status, None, text)
