"""The Web Push transport: encrypts each message and POSTs it to its push service.

It signs with ``vapid.py``'s identity and sends the TTL, urgency and topic ``push_policy.py``
chose. pywebpush signs a new JWT on every call, rewrites the claims dict it is given and has
no timeout of its own; so the sender signs one VAPID header per push-service origin and reuses
it until an hour before it expires, encrypts with the same ``http_ece`` call pywebpush makes
(RFC 8291, aes128gcm), and sends over aiohttp: one event loop thread with hundreds of requests
in flight on pooled keep-alive connections. One send path, the one the outbox worker uses.

What aiohttp gives here, rather than a client of ours: idle connections expire
(``KEEPALIVE``) before a NAT can drop them silently; a POST is never sent twice by the client
(it retries only idempotent methods); any reply framing (bodies, chunked, ``Connection:
close``, HTTP/1.0); ``HTTPS_PROXY``/``HTTP_PROXY`` from the environment; one timeout per request.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
import http_ece
from aiohttp.helpers import get_env_proxy_for_url
from cryptography.hazmat.primitives.asymmetric import ec
from py_vapid import Vapid02
from yarl import URL

from waybill.notify.vapid import VapidKeys, b64url_decode

log = logging.getLogger("waybill.webpush")

JWT_LIFETIME = 12 * 3600  # seconds; RFC 8292 allows at most 24 h
JWT_REFRESH_BEFORE = 3600  # re-sign an hour before the header expires
KEEPALIVE = 15.0  # seconds an idle connection is kept: well under what NATs and services allow
MAX_REPLY = 64 * 1024  # bytes of a push service's reply body read (they answer small)


@dataclass(frozen=True)
class Subscription:
    endpoint: str
    p256dh: str
    auth: str
    # the VAPID public key the browser subscribed with; None: the current one
    vapid_key: str | None = None


class UnknownVapidKey(Exception):
    """The subscription was made with a VAPID key this process does not hold: its push service
    refuses anything signed with another, so nothing is sent to it from here."""


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


class PushSender:
    """Sends encrypted messages in batches; safe to share between the threads of one worker."""

    def __init__(
        self,
        keys: VapidKeys,
        subject: str,
        *,
        timeout: float = 10.0,
        pool_size: int = 64,
        tls: ssl.SSLContext | None = None,
        old_keys: Sequence[VapidKeys] = (),
    ) -> None:
        self.keys, self.subject, self.timeout = keys, subject, timeout
        self.tls = tls or ssl.create_default_context()  # whom https push services may be
        # one signer per key: the current one, and the old ones devices may still be on
        self._signers = {k.public_key: Vapid02(private_key=k.private_key) for k in old_keys}
        self._signers[keys.public_key] = Vapid02(private_key=keys.private_key)
        self._headers: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.RLock()
        self.pool_size = pool_size
        self._async: _AsyncTransport | None = None

    def vapid_header(
        self, endpoint: str, key: str | None = None, *, now: float | None = None
    ) -> str:
        """The ``Authorization`` header for the endpoint's origin, signed at most hourly-ish
        with ``key`` (a VAPID public key the subscription was made with; default: the current
        one). :class:`UnknownVapidKey` for a key this server does not hold."""
        now = time.time() if now is None else now
        key = key or self.keys.public_key
        cache = (origin_of(endpoint), key)
        cached = self._headers.get(cache)
        if cached is not None and now < cached[1]:
            return cached[0]
        signer = self._signers.get(key)
        if signer is None:
            raise UnknownVapidKey("subscribed with a VAPID key this server no longer holds")
        with self._lock:
            exp = int(now) + JWT_LIFETIME
            # A fresh dict per origin: a shared one would carry one service's aud to another.
            claims = {"sub": self.subject, "aud": cache[0], "exp": exp}
            header = signer.sign(claims)["Authorization"]
            self._headers[cache] = (header, exp - JWT_REFRESH_BEFORE)
        return header

    def close(self) -> None:
        if self._async is not None:
            self._async.close()
            self._async = None

    def send_many(self, messages: list[Outgoing]) -> list[PushResult]:
        """Send a batch with up to ``pool_size`` requests in flight; results in input order.
        Every message succeeds or fails alone: nothing a message does fails the batch."""
        return self.send_many_async(messages).result()

    def send_many_async(
        self,
        messages: list[Outgoing],
        on_result: Callable[[int, PushResult], None] | None = None,
    ) -> Future[list[PushResult]]:
        """``send_many`` without waiting: the results arrive on the future, and each one as
        soon as it is known to ``on_result(index, result)`` (called on the sender's thread:
        keep it short)."""
        if self._async is None:
            with self._lock:
                if self._async is None:
                    self._async = _AsyncTransport(self, self.pool_size)
        return self._async.send_many(messages, on_result)


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
    """An event loop thread of its own, and one aiohttp session on it for every batch."""

    def __init__(self, sender: PushSender, concurrency: int) -> None:
        self.sender = sender
        self.concurrency = concurrency
        self.session: aiohttp.ClientSession | None = None
        self.gate: asyncio.Semaphore | None = None
        self.proxies: dict[str, tuple[Any, Any]] = {}
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="waybill-push-io", daemon=True
        )
        self.thread.start()

    def send_many(
        self,
        messages: list[Outgoing],
        on_result: Callable[[int, PushResult], None] | None = None,
    ) -> Future[list[PushResult]]:
        return asyncio.run_coroutine_threadsafe(self._all(messages, on_result), self.loop)

    def _open(self) -> tuple[aiohttp.ClientSession, asyncio.Semaphore]:
        """Made on the loop, once: the connection pool and the limit on requests in flight."""
        if self.session is None or self.gate is None:
            connector = aiohttp.TCPConnector(
                limit=self.concurrency,
                keepalive_timeout=KEEPALIVE,
                ssl=self.sender.tls,
                ttl_dns_cache=300,
            )
            self.session = aiohttp.ClientSession(
                connector=connector,
                timeout=aiohttp.ClientTimeout(total=self.sender.timeout),
                # Proxies come from the environment through proxy_for(), once per origin:
                # trust_env would also look for a ~/.netrc on a thread for every request.
                trust_env=False,
                auto_decompress=False,
                skip_auto_headers=("Accept-Encoding", "User-Agent"),
                cookie_jar=aiohttp.DummyCookieJar(),  # push services set none worth keeping
            )
            self.gate = asyncio.Semaphore(self.concurrency)
        return self.session, self.gate

    async def _all(
        self, messages: list[Outgoing], on_result: Callable[[int, PushResult], None] | None
    ) -> list[PushResult]:
        session, gate = self._open()

        async def one(i: int, m: Outgoing) -> PushResult:
            async with gate:
                try:
                    result = await self._one(session, m)
                except Exception as exc:  # noqa: BLE001 - each message fails alone
                    result = PushResult("retry", None, None, describe_error(exc))
            if on_result is not None:
                on_result(i, result)
            return result

        results = await asyncio.gather(
            *(one(i, m) for i, m in enumerate(messages)), return_exceptions=True
        )
        return [
            r if isinstance(r, PushResult) else PushResult("retry", None, None, describe_error(r))
            for r in results
        ]

    async def _one(self, session: aiohttp.ClientSession, m: Outgoing) -> PushResult:
        sub = m.subscription
        try:
            body = encrypt(sub, m.payload)
            auth = self.sender.vapid_header(sub.endpoint, sub.vapid_key)
        except UnknownVapidKey as exc:
            # Not ours to judge gone: a process not yet restarted after a rotation lacks the
            # new key, and a device on a dropped key moves when its app opens. Tried again later.
            return PushResult("retry", None, 300.0, str(exc))
        except Exception as exc:  # keys or an endpoint that cannot be used: never will be
            return PushResult("rejected", None, None, describe_error(exc))
        headers = {
            "Content-Type": "application/octet-stream",
            "Content-Encoding": "aes128gcm",
            "TTL": str(m.ttl),
            "Authorization": auth,
            "Urgency": m.urgency,
            "Topic": m.topic,
        }
        try:
            proxy, proxy_auth = self.proxy_for(sub.endpoint)
            # The endpoint was checked to be printable ASCII when it was stored: no quoting.
            url = URL(sub.endpoint, encoded=True)
            async with session.post(
                url, data=body, headers=headers, proxy=proxy, proxy_auth=proxy_auth
            ) as resp:
                reply = await _read_reply(resp)
                return classify(resp.status, resp.headers.get("Retry-After"), reply[:200])
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            # Not answered (refused, reset, timed out, a reply that is not HTTP): maybe
            # delivered, maybe not; the outbox tries again later and counts the attempt.
            return PushResult("retry", None, None, describe_error(exc))

    def proxy_for(self, endpoint: str) -> tuple[Any, Any]:
        """``HTTPS_PROXY``/``HTTP_PROXY`` for the endpoint's origin unless ``NO_PROXY`` names
        it, read from the environment once per origin."""
        origin = origin_of(endpoint)
        if origin not in self.proxies:
            try:
                self.proxies[origin] = get_env_proxy_for_url(URL(origin))
            except LookupError:
                self.proxies[origin] = (None, None)
        return self.proxies[origin]

    def close(self) -> None:
        async def shut() -> None:
            if self.session is not None:
                await self.session.close()

        try:
            asyncio.run_coroutine_threadsafe(shut(), self.loop).result(5)
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(5)
            self.loop.close()


async def _read_reply(resp: aiohttp.ClientResponse) -> str:
    """The reply body, read to its end (so the connection can be reused) up to ``MAX_REPLY``
    bytes; ``read(n)`` alone returns whatever chunk has arrived."""
    body = bytearray()
    while len(body) < MAX_REPLY:
        chunk = await resp.content.read(MAX_REPLY - len(body))
        if not chunk:
            break
        body += chunk
    return body.decode("utf-8", "replace")


def describe_error(exc: BaseException) -> str:
    return f"{exc.__class__.__name__}: {exc}"[:300]


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
