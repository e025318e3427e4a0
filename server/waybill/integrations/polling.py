"""Polling a tracking provider for merchants without webhooks: one small interface, one adapter.

A :class:`Poller` answers "what does the provider know of this parcel now?" with the same
:class:`~waybill.integrations.base.TrackingUpdate` a webhook would have given, so a polled
history goes through the one ingest path and dedupes against anything already recorded.

:class:`AfterShipPoller` targets the AfterShip Tracking API **2024-10**
(``https://api.aftership.com/tracking/2024-10``), authenticated with the ``as-api-key`` header:

* ``GET /trackings?tracking_numbers=<n>&slug=<slug>`` finds a tracking. 2024-10 removed the
  legacy ``GET /trackings/{slug}/{tracking_number}``; the list endpoint answers 200 with no
  trackings for a number it does not know (a 404 with meta code 4004 is handled the same way).
* ``POST /trackings`` with ``{"tracking_number", "slug"}`` (the flat body of 2024-04 and later)
  registers an unknown parcel; meta code 4003 (already exists) counts as success. ``fetch`` then
  returns None: AfterShip fetches the carrier in the background and the next poll finds it.

Failures are a :class:`ProviderError`: ``retryable`` for 429, 5xx, timeouts and connection
errors (after ``fetch``'s own retries), not for a bad key (401/403) or a bad number (400/422).
The API key is never logged and never part of a message or a repr.

When to poll what is the scheduler's business, not this module's; :func:`next_poll_delay` is
the policy it applies.
"""

from __future__ import annotations

import email.utils
import hashlib
import logging
import random
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import requests

from waybill.integrations.base import PayloadError, TrackingUpdate

log = logging.getLogger(__name__)

AFTERSHIP = "aftership"
AFTERSHIP_API_VERSION = "2024-10"
AFTERSHIP_BASE_URL = f"https://api.aftership.com/tracking/{AFTERSHIP_API_VERSION}"
#: From 2024-07 AfterShip limits each endpoint separately, per organisation: GET /trackings is
#: the tightest we use (6 requests/s; POST /trackings allows 20). One bucket for both keeps a
#: fetch (GET, maybe POST, GET) under every limit.
AFTERSHIP_RATE = 6.0
AFTERSHIP_BURST = 6

#: AfterShip meta codes the adapter acts on (Tracking API "Request Errors").
META_ALREADY_EXISTS = 4003
META_NOT_FOUND = 4004

#: Common carrier names whose AfterShip slug is not just the name lowercased and dashed.
CARRIER_SLUGS: dict[str, str] = {
    "dhl express": "dhl",
    "dhl ecommerce": "dhl-global-mail",
    "royal mail": "royal-mail",
    "parcelforce": "parcel-force",
    "parcelforce worldwide": "parcel-force",
    "usps": "usps",
    "us postal service": "usps",
    "united states postal service": "usps",
    "fedex": "fedex",
    "fed ex": "fedex",
    "ups": "ups",
    "dpd uk": "dpd-uk",
    "evri": "hermes",
    "hermes uk": "hermes",
    "canada post": "canada-post",
    "australia post": "australia-post",
    "china post": "china-post",
    "la poste": "la-poste-colissimo",
}


def carrier_slug(carrier: str) -> str:
    """AfterShip's courier slug for a carrier name as merchants type it ("DHL Express" → "dhl").

    Unknown names are lowercased with runs of spaces/underscores as dashes, which is already
    right for most couriers ("Australia Post" → "australia-post") and keeps a slug a slug.
    """
    name = " ".join(carrier.replace("_", " ").split()).lower()
    return CARRIER_SLUGS.get(name) or name.replace(" ", "-")


class ProviderError(Exception):
    """The provider could not answer. ``retryable`` says whether asking later may help;
    ``retry_after`` (seconds) is the earliest the provider wants to be asked again, if it said.
    """

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        status: int | None = None,
        code: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.retryable = retryable
        self.retry_after = retry_after
        self.status = status  # the HTTP status, when there was an answer
        self.code = code  # the provider's own error code (AfterShip meta.code)

    def __repr__(self) -> str:
        return (
            f"ProviderError({self.message!r}, retryable={self.retryable}, "
            f"retry_after={self.retry_after}, status={self.status}, code={self.code})"
        )


class Poller(Protocol):
    """What the scheduler polls: one provider, one account."""

    provider: str

    def fetch(self, carrier: str, tracking_number: str) -> TrackingUpdate | None:
        """The parcel's history as the provider knows it now, or None when the provider did not
        know it yet (the poller has registered it, so a later poll finds it). Raises
        :class:`ProviderError` once its own retries are used up."""
        ...


class RateLimiter:
    """A thread-safe token bucket: ``rate`` tokens a second, at most ``burst`` saved up.

    ``acquire`` reserves the next token under the lock and sleeps (through the injected
    ``sleep``) outside it, so callers are served in order and the lock is never held while
    waiting. ``clock`` must be monotonic; tests pass a fake clock that their fake sleep advances.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float] = time.monotonic,
        sleep: Callable[[float], object] = time.sleep,
    ) -> None:
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.rate = float(rate)
        self.burst = int(burst)
        self._clock = clock
        self._sleep = sleep
        self._lock = threading.Lock()
        self._tokens = float(burst)
        self._stamp = clock()

    def acquire(self) -> float:
        """Take one token, blocking until it is free; returns the seconds waited."""
        with self._lock:
            now = self._clock()
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= 1.0  # may go below zero: a reservation on a future token
            wait = -self._tokens / self.rate if self._tokens < 0 else 0.0
        if wait > 0:
            self._sleep(wait)
        return wait

    def __repr__(self) -> str:
        return f"RateLimiter(rate={self.rate}, burst={self.burst})"


_limiters: dict[tuple[str, str], RateLimiter] = {}
_limiters_lock = threading.Lock()


def limiter_for(provider: str, key_id: str, rate: float, burst: int) -> RateLimiter:
    """The process-wide limiter for one provider account, made on first use.

    The registry is a module-level dict guarded by a lock, so every poller of the same account
    in this process (worker threads, several merchants sharing a key) draws from one bucket.
    ``key_id`` names the account without being the secret (see :func:`key_id`); the first
    caller's ``rate``/``burst`` win. Other processes have their own buckets: run one poller
    process per account, or give each a share of the rate.
    """
    with _limiters_lock:
        limiter = _limiters.get((provider, key_id))
        if limiter is None:
            limiter = _limiters[(provider, key_id)] = RateLimiter(rate, burst)
        return limiter


def key_id(api_key: str) -> str:
    """A short, stable, non-secret name for an API key (registry keys, log lines)."""
    return hashlib.sha256(api_key.encode()).hexdigest()[:12]


class _Secret:
    """Holds the API key so that no repr, ``vars()`` dump or traceback local shows it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "<redacted>"

    __str__ = __repr__


class _Retry(Exception):
    """Internal: this attempt failed in a way worth another try."""

    def __init__(self, message: str, *, status: int | None, retry_after: float | None) -> None:
        super().__init__(message)
        self.message, self.status, self.retry_after = message, status, retry_after


class AfterShipPoller:
    """:class:`Poller` for the AfterShip Tracking API (see the module docstring for endpoints).

    Each HTTP request waits for a token from ``limiter`` (by default the shared bucket of this
    key, :data:`AFTERSHIP_RATE` per second) and is retried up to ``retries`` times on 429, 5xx,
    timeouts and connection errors, with exponential backoff and jitter, never sooner than the
    ``Retry-After`` / ``X-RateLimit-Reset`` the answer names. A wait that would take ``fetch``
    past ``max_wait`` seconds of sleeping is not slept: ``fetch`` raises a retryable
    :class:`ProviderError` carrying ``retry_after`` for the scheduler instead.
    """

    provider = AFTERSHIP

    def __init__(
        self,
        api_key: str,
        *,
        base_url: str = AFTERSHIP_BASE_URL,
        session: requests.Session | None = None,
        timeout: tuple[float, float] = (3.05, 10.0),
        retries: int = 2,
        limiter: RateLimiter | None = None,
        sleep: Callable[[float], object] = time.sleep,
        max_wait: float = 30.0,
        backoff: float = 0.5,
    ) -> None:
        if not api_key:
            raise ValueError("an AfterShip API key is required")
        self._key = _Secret(api_key)
        self.key_id = key_id(api_key)
        self.base_url = base_url.rstrip("/")
        self._own_session = session is None
        self.session = session if session is not None else requests.Session()
        self.timeout = timeout
        self.retries = max(0, retries)
        self.limiter = limiter or limiter_for(
            AFTERSHIP, self.key_id, AFTERSHIP_RATE, AFTERSHIP_BURST
        )
        self.sleep = sleep
        self.max_wait = max_wait
        self.backoff = backoff

    def __repr__(self) -> str:
        return f"AfterShipPoller(base_url={self.base_url!r}, key_id={self.key_id!r})"

    def close(self) -> None:
        """Close the HTTP session if this poller made it."""
        if self._own_session:
            self.session.close()

    def __enter__(self) -> AfterShipPoller:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the interface ---------------------------------------------------------------------

    def fetch(self, carrier: str, tracking_number: str) -> TrackingUpdate | None:
        from waybill.integrations.aftership import parse_tracking

        slug = carrier_slug(carrier)
        number = tracking_number.strip()
        if not number or "," in number or not slug:
            # The list endpoint takes comma-separated numbers: a comma would ask for two.
            raise ProviderError(
                f"not a tracking number AfterShip can look up: {number!r} ({slug or carrier!r})",
                retryable=False,
            )
        budget = [0.0]  # seconds slept so far inside this fetch, shared by its requests
        status, body = self._request(
            "GET",
            "/trackings",
            params={"tracking_numbers": number, "slug": slug},
            budget=budget,
            what=f"looking up {slug} {number}",
        )
        found = None if status == 404 else _pick(body, slug, number)
        if found is not None:
            try:
                update: TrackingUpdate = parse_tracking(found)
            except PayloadError as exc:
                # Retryable: the next checkpoint, or a fixed mapping, may make it readable;
                # the scheduler's error backoff keeps that to a few asks a day.
                raise ProviderError(
                    f"AfterShip sent a tracking Waybill cannot read ({slug} {number}): {exc}",
                    retryable=True,
                ) from None
            return update
        self._register(slug, number, budget)
        return None

    # -- internals -------------------------------------------------------------------------

    def _register(self, slug: str, number: str, budget: list[float]) -> None:
        """Create the tracking so AfterShip starts fetching it from the carrier."""
        status, body = self._request(
            "POST",
            "/trackings",
            json={"tracking_number": number, "slug": slug},
            budget=budget,
            what=f"registering {slug} {number}",
        )
        if _meta_code(body) == META_ALREADY_EXISTS:
            log.info("aftership: %s %s already registered (key %s)", slug, number, self.key_id)
        else:
            log.info("aftership: registered %s %s (key %s)", slug, number, self.key_id)

    def _request(
        self,
        method: str,
        path: str,
        *,
        budget: list[float],
        what: str,
        params: Mapping[str, str] | None = None,
        json: Mapping[str, Any] | None = None,
    ) -> tuple[int, Any]:
        """One API call with its retries: (HTTP status, parsed body) for a 2xx, a 404 with meta
        4004, or a 4003 "already exists"; a :class:`ProviderError` for anything else."""
        url = self.base_url + path
        headers = {
            "as-api-key": self._key.reveal(),
            "Accept": "application/json",
            "User-Agent": "waybill-poller",
        }
        if json is not None:
            headers["Content-Type"] = "application/json"
        attempt = 0
        while True:
            self.limiter.acquire()
            try:
                return self._attempt(method, url, headers, params, json, what)
            except _Retry as failure:
                if attempt >= self.retries:
                    raise ProviderError(
                        f"AfterShip: {failure.message} while {what}, {attempt + 1} attempt(s) made",
                        retryable=True,
                        retry_after=failure.retry_after,
                        status=failure.status,
                    ) from None
                delay = self._backoff(attempt)
                if failure.retry_after is not None:
                    delay = max(delay, failure.retry_after)
                if budget[0] + delay > self.max_wait:
                    raise ProviderError(
                        f"AfterShip: {failure.message} while {what}; asked to wait "
                        f"{delay:.1f}s, more than this poll may sleep",
                        retryable=True,
                        retry_after=delay,
                        status=failure.status,
                    ) from None
                log.warning(
                    "aftership: %s while %s; retry %d/%d in %.2fs",
                    failure.message,
                    what,
                    attempt + 1,
                    self.retries,
                    delay,
                )
                self.sleep(delay)
                budget[0] += delay
                attempt += 1

    def _attempt(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        params: Mapping[str, str] | None,
        json: Mapping[str, Any] | None,
        what: str,
    ) -> tuple[int, Any]:
        try:
            response = self.session.request(
                method, url, headers=headers, params=params, json=json, timeout=self.timeout
            )
        except requests.Timeout:
            raise _Retry("timed out", status=None, retry_after=None) from None
        except requests.ConnectionError as exc:
            # urllib3 reports a read timeout in the body as a connection error.
            reason = "timed out" if "timed out" in str(exc).lower() else "connection failed"
            raise _Retry(reason, status=None, retry_after=None) from None
        except requests.RequestException as exc:
            raise ProviderError(
                f"AfterShip: request failed while {what} ({type(exc).__name__})",
                retryable=False,
            ) from None
        with response:
            status = response.status_code
            try:
                body = response.json()
            except ValueError:
                body = None
            headers_in = response.headers
        code = _meta_code(body)
        message = self._scrub(_meta_message(body))
        if status == 429 or status >= 500:
            label = "rate limited (429)" if status == 429 else f"server error ({status})"
            # X-RateLimit-Reset comes on every answer; it is a wait only on a 429.
            wait = _retry_after(headers_in, rate_limited=status == 429)
            raise _Retry(label, status=status, retry_after=wait)
        if 200 <= status < 300:
            if not isinstance(body, dict):
                raise _Retry(f"unreadable answer ({status})", status=status, retry_after=None)
            return status, body
        if status == 404 and code == META_NOT_FOUND:
            return status, body
        if code == META_ALREADY_EXISTS:
            return status, body
        if status in (401, 403):
            raise ProviderError(
                f"AfterShip refused the API key ({status}"
                f"{', meta ' + str(code) if code else ''}): check the key and its permissions",
                retryable=False,
                status=status,
                code=code,
            )
        if status in (400, 422):
            raise ProviderError(
                f"AfterShip rejected the tracking while {what} ({status}, meta {code}): "
                f"{message or 'bad request'}",
                retryable=False,
                status=status,
                code=code,
            )
        raise ProviderError(
            f"AfterShip answered {status} while {what}"
            f"{f' (meta {code}): {message}' if code or message else ''}",
            retryable=False,
            status=status,
            code=code,
        )

    def _backoff(self, attempt: int) -> float:
        """Exponential backoff with "equal jitter": half fixed, half random."""
        base = min(self.max_wait, self.backoff * 2.0**attempt)
        return base / 2 + random.uniform(0, base / 2)

    def _scrub(self, text: str) -> str:
        key = self._key.reveal()
        return text.replace(key, "<redacted>") if key and text else text


def _meta_code(body: Any) -> int | None:
    meta = body.get("meta") if isinstance(body, dict) else None
    code = meta.get("code") if isinstance(meta, dict) else None
    return code if isinstance(code, int) else None


def _meta_message(body: Any) -> str:
    meta = body.get("meta") if isinstance(body, dict) else None
    message = meta.get("message") if isinstance(meta, dict) else None
    return message if isinstance(message, str) else ""


def _pick(body: Any, slug: str, number: str) -> dict[str, Any] | None:
    """The tracking for this slug and number in a GET /trackings answer (latest if several)."""
    data = body.get("data") if isinstance(body, dict) else None
    trackings = data.get("trackings") if isinstance(data, dict) else None
    if not isinstance(trackings, list):
        return None
    matches = [
        t
        for t in trackings
        if isinstance(t, dict)
        and str(t.get("tracking_number", "")).strip().lower() == number.lower()
        and str(t.get("slug", slug)).lower() == slug
    ]
    if not matches:
        return None
    return max(matches, key=lambda t: str(t.get("updated_at") or ""))


def _retry_after(headers: Mapping[str, str], *, rate_limited: bool) -> float | None:
    """Seconds until the provider wants another request, from ``Retry-After`` (seconds or an
    HTTP date) or, on a 429, AfterShip's documented ``X-RateLimit-Reset`` (a Unix timestamp);
    the later of the two."""
    waits: list[float] = []
    value = headers.get("Retry-After")
    if value:
        try:
            waits.append(float(value))
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value)
                waits.append(when.timestamp() - time.time())
            except (TypeError, ValueError):
                pass
    reset = headers.get("X-RateLimit-Reset") if rate_limited else None
    if reset:
        try:
            number = float(reset)
        except ValueError:
            number = None
        if number is not None:
            # A Unix timestamp as documented; a small number is a delta (IETF draft style).
            waits.append(number - time.time() if number > 1_000_000_000 else number)
    waits = [max(0.0, w) for w in waits]
    return max(waits) if waits else None


# -- scheduling policy ---------------------------------------------------------------------

MINUTE = 60.0
HOUR = 60 * MINUTE

#: How long to wait before polling again after a successful poll, by the parcel's Waybill status.
POLL_INTERVALS: dict[str, float] = {
    "out_for_delivery": 30 * MINUTE,
    "attempted": 1 * HOUR,
    "available_for_pickup": 2 * HOUR,
    "exception": 2 * HOUR,
    "in_transit": 2 * HOUR,
    "shipped": 4 * HOUR,
    "processing": 4 * HOUR,
    "confirmed": 4 * HOUR,
}
PRE_TRANSIT_INTERVAL = 4 * HOUR  # no status yet, or one this table does not know
TERMINAL_INTERVAL = 24 * HOUR  # delivered/returned/cancelled: the scheduler should have stopped
ERROR_BASE = 5 * MINUTE
ERROR_CAP = 6 * HOUR


def next_poll_delay(attempts: int, status: str | None, retry_after: float | None) -> float:
    """Seconds until the next poll of one parcel. The policy:

    * ``attempts`` is the number of consecutive failed polls. After a failure the delay is
      exponential from 5 min (5, 10, 20, 40 min, …), capped at 6 h, whatever the status:
      a provider that is down or refusing us gains nothing from being asked sooner.
    * After a successful poll (``attempts == 0``) it follows the status: out for delivery every
      30 min (the day it matters), attempted delivery hourly, in transit / exception /
      available for pickup every 2 h, pre-transit (confirmed, processing, shipped, or no status
      yet, or one not in :data:`POLL_INTERVALS`) every 4 h. Terminal statuses (delivered,
      returned, cancelled) should not be polled at all; if asked, once a day.
    * Never before ``retry_after`` (what the provider asked for, e.g. a 429's Retry-After).

    Deterministic on purpose, so the table is testable: the scheduler adds its own jitter.
    """
    if attempts < 0:
        raise ValueError("attempts must be >= 0")
    if attempts:
        delay = min(ERROR_CAP, ERROR_BASE * 2.0 ** min(attempts - 1, 32))
    elif status in ("delivered", "returned", "cancelled"):
        delay = TERMINAL_INTERVAL
    else:
        delay = POLL_INTERVALS.get(status or "", PRE_TRANSIT_INTERVAL)
    return max(delay, retry_after or 0.0)


def poller_for(provider: str, api_key: str, *, base_url: str | None = None) -> Poller:
    """The poller for a provider by name ("aftership" only, for now); ValueError otherwise."""
    name = provider.strip().lower()
    if name == AFTERSHIP:
        if base_url is None:
            return AfterShipPoller(api_key)
        return AfterShipPoller(api_key, base_url=base_url)
    raise ValueError(f"no poller for provider {provider!r}; known: {AFTERSHIP}")
