"""Polling AfterShip for merchants without webhooks, against a loopback AfterShip (2024-10).

Sleeps inside the poller go through an injected fake, so backoff and rate limiting are
asserted as numbers, not waited for; only the stalled-request test waits for a real timeout.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.utils.fake_aftership import FakeAfterShip, sample_checkpoints
from waybill.integrations.base import PayloadError, TrackingUpdate
from waybill.integrations.polling import (
    AFTERSHIP_BASE_URL,
    HOUR,
    MINUTE,
    AfterShipPoller,
    ProviderError,
    RateLimiter,
    carrier_slug,
    limiter_for,
    next_poll_delay,
    poller_for,
)
from waybill.tracking.statuses import Status

KEY = "as-key-0123456789abcdef-SECRET"


class FakeTime:
    """A monotonic clock that only the fake sleep moves; every sleep is kept."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []
        self._lock = threading.Lock()

    def clock(self) -> float:
        with self._lock:
            return self.now

    def sleep(self, seconds: float) -> None:
        with self._lock:
            self.sleeps.append(seconds)
            self.now += seconds


@pytest.fixture
def fake() -> Iterator[FakeAfterShip]:
    with FakeAfterShip(KEY) as server:
        yield server


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def poller(fake: FakeAfterShip, fake_time: FakeTime) -> Iterator[AfterShipPoller]:
    limiter = RateLimiter(1000, 1000, clock=fake_time.clock, sleep=fake_time.sleep)
    with AfterShipPoller(
        KEY,
        base_url=fake.base_url,
        timeout=(1.0, 2.0),
        limiter=limiter,
        sleep=fake_time.sleep,
    ) as p:
        yield p


def parse(obj: dict) -> TrackingUpdate:
    from waybill.integrations.aftership import parse_tracking

    return parse_tracking(obj)


# -- fetching ----------------------------------------------------------------------------------


def test_fetch_returns_the_mapped_update_with_every_checkpoint(fake, poller, fake_time):
    stored = fake.add_tracking("usps", "9400111899562537683144")

    update = poller.fetch("USPS", "9400111899562537683144")

    assert isinstance(update, TrackingUpdate)
    assert update == parse(stored)  # exactly the tracking AfterShip holds, through the mapping
    assert update.tracking_number == "9400111899562537683144"
    assert len(update.checkpoints) == len(stored["checkpoints"]) == 4
    assert {c.status for c in update.checkpoints} <= {s.value for s in Status}
    assert all(c.occurred_at.tzinfo is not None for c in update.checkpoints)
    assert update.checkpoints[-1].status == Status.OUT_FOR_DELIVERY
    [get] = fake.requests
    assert (get.method, get.path) == ("GET", "/tracking/2024-10/trackings")
    assert get.query == {"tracking_numbers": "9400111899562537683144", "slug": "usps"}
    assert get.headers["as-api-key"] == KEY
    assert fake_time.sleeps == []


def test_delivered_history_maps_to_delivered(fake, poller):
    fake.add_tracking(
        "usps", "9400111899562537600001", checkpoints=sample_checkpoints(delivered=True)
    )
    update = poller.fetch("usps", "9400111899562537600001")
    assert update is not None and len(update.checkpoints) == 5
    assert update.checkpoints[-1].status == Status.DELIVERED


def test_same_number_at_another_carrier_is_not_taken(fake, poller):
    fake.add_tracking("ups", "SAME12345")
    assert poller.fetch("Royal Mail", "SAME12345") is None  # registered for royal-mail instead
    assert fake.of("POST")[0].body == {"tracking_number": "SAME12345", "slug": "royal-mail"}


def test_unknown_tracking_is_registered_and_found_next_time(fake, poller):
    fake.carrier_data[("royal-mail", "RN123456785GB")] = sample_checkpoints("royal-mail")

    assert poller.fetch("Royal Mail", "RN123456785GB") is None

    get, post = fake.requests
    assert get.method == "GET" and get.query["slug"] == "royal-mail"
    assert (post.method, post.path) == ("POST", "/tracking/2024-10/trackings")
    assert post.body == {"tracking_number": "RN123456785GB", "slug": "royal-mail"}
    assert post.headers["as-api-key"] == KEY
    assert post.headers["content-type"].startswith("application/json")

    again = poller.fetch("Royal Mail", "RN123456785GB")
    assert again is not None and len(again.checkpoints) == 4
    assert again == parse(fake.tracking("royal-mail", "RN123456785GB"))
    assert len(fake.of("POST")) == 1  # registered once


def test_not_found_as_404_4004_also_registers(poller):
    with (
        FakeAfterShip(KEY, unknown_as_404=True) as strict,
        AfterShipPoller(KEY, base_url=strict.base_url, limiter=poller.limiter) as p,
    ):
        assert p.fetch("DHL Express", "1234567890") is None
        assert len(strict.of("GET")) == 1
        assert strict.of("POST")[0].body == {"tracking_number": "1234567890", "slug": "dhl"}
        assert p.fetch("DHL Express", "1234567890") is not None


def test_already_exists_on_create_is_fine(fake, poller):
    fake.script(
        status=400,
        body={"meta": {"code": 4003, "type": "BadRequest", "message": "Tracking already exists."}},
        method="POST",
    )
    assert poller.fetch("usps", "9400111899562537699999") is None
    assert [r.method for r in fake.requests] == ["GET", "POST"]


def test_bad_tracking_number_is_not_retryable(fake, poller):
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "no!")
    assert caught.value.retryable is False
    assert caught.value.code == 4005 and caught.value.status == 400
    assert "tracking_number is invalid" in str(caught.value)
    assert len(fake.of("POST")) == 1  # not retried


def test_comma_in_number_refused_before_asking(fake, poller):
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "A123,B456")
    assert caught.value.retryable is False
    assert fake.requests == []


# -- retries -----------------------------------------------------------------------------------


def test_429_with_retry_after_waits_that_long_then_succeeds(fake, poller, fake_time):
    fake.add_tracking("usps", "9400100000000000000001")
    fake.rate_limit(retry_after=2)

    assert poller.fetch("usps", "9400100000000000000001") is not None

    assert len(fake.of("GET")) == 2
    [slept] = fake_time.sleeps
    assert 2.0 <= slept < 2.5


def test_429_with_only_the_rate_limit_reset_header_waits_until_reset(fake, poller, fake_time):
    fake.add_tracking("usps", "9400100000000000000002")
    fake.rate_limit(retry_after=None, reset_in=3)

    assert poller.fetch("usps", "9400100000000000000002") is not None

    [slept] = fake_time.sleeps
    assert 2.0 <= slept <= 4.5  # a whole-second Unix timestamp, rounded up


def test_429_asking_for_too_long_raises_with_retry_after(fake, poller, fake_time):
    fake.rate_limit(retry_after=120)
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "9400100000000000000003")
    assert caught.value.retryable is True
    assert caught.value.retry_after == pytest.approx(120)
    assert caught.value.status == 429
    assert fake_time.sleeps == []  # not slept inside fetch: the scheduler waits instead
    assert len(fake.requests) == 1


def test_5xx_twice_then_200_succeeds_with_backoff(fake, poller, fake_time):
    fake.add_tracking("usps", "9400100000000000000004")
    fake.fail(1, 500)
    fake.fail(1, 503)

    assert poller.fetch("usps", "9400100000000000000004") is not None

    assert len(fake.of("GET")) == 3
    first, second = fake_time.sleeps
    assert 0.25 <= first <= 0.5  # backoff 0.5 s · 2^0, equal jitter
    assert 0.5 <= second <= 1.0  # 0.5 s · 2^1


def test_5xx_beyond_retries_is_retryable_error(fake, poller, fake_time):
    fake.fail(3, 503)
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "9400100000000000000005")
    assert caught.value.retryable is True
    assert caught.value.status == 503
    assert len(fake.requests) == 3  # the first try and retries=2
    assert len(fake_time.sleeps) == 2


def test_stalled_request_times_out_and_is_retried(fake, fake_time):
    fake.add_tracking("usps", "9400100000000000000006")
    fake.stall(1, seconds=5)
    limiter = RateLimiter(100, 100, clock=fake_time.clock, sleep=fake_time.sleep)
    with AfterShipPoller(
        KEY, base_url=fake.base_url, timeout=(1.0, 0.3), limiter=limiter, sleep=fake_time.sleep
    ) as p:
        started = time.monotonic()
        assert p.fetch("usps", "9400100000000000000006") is not None
        assert time.monotonic() - started < 3
    assert len(fake.of("GET")) == 2
    assert len(fake_time.sleeps) == 1


def test_connection_refused_is_retryable(fake_time):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    limiter = RateLimiter(100, 100, clock=fake_time.clock, sleep=fake_time.sleep)
    with (
        AfterShipPoller(
            KEY,
            base_url=f"http://127.0.0.1:{port}/tracking/2024-10",
            limiter=limiter,
            sleep=fake_time.sleep,
            retries=1,
        ) as p,
        pytest.raises(ProviderError) as caught,
    ):
        p.fetch("usps", "9400100000000000000007")
    assert caught.value.retryable is True and caught.value.status is None
    assert KEY not in str(caught.value)


# -- the key stays secret ----------------------------------------------------------------------


def test_bad_key_is_not_retryable_and_never_shown(fake, fake_time, caplog):
    caplog.set_level(logging.DEBUG)
    limiter = RateLimiter(100, 100, clock=fake_time.clock, sleep=fake_time.sleep)
    wrong = "as-key-WRONG-0000-SECRET"
    p = AfterShipPoller(wrong, base_url=fake.base_url, limiter=limiter, sleep=fake_time.sleep)
    with p, pytest.raises(ProviderError) as caught:
        p.fetch("usps", "9400100000000000000008")
    assert wrong not in repr(p) and wrong not in str(vars(p))
    error = caught.value
    assert error.retryable is False and error.status == 401
    assert "API key" in str(error)
    for text in (str(error), repr(error), caplog.text):
        assert wrong not in text
    assert len(fake.requests) == 1  # a bad key is not retried
    assert fake.requests[0].headers["as-api-key"] == wrong


def test_key_absent_from_logs_of_retries(fake, poller, caplog):
    caplog.set_level(logging.DEBUG)
    fake.fail(3, 500)
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "9400100000000000000009")
    assert KEY not in caplog.text and KEY not in repr(caught.value)
    assert "retry" in caplog.text


# -- rate limiting -----------------------------------------------------------------------------


def test_limiter_spaces_25_calls_at_10_per_second(fake_time):
    limiter = RateLimiter(10, 10, clock=fake_time.clock, sleep=fake_time.sleep)
    times = []
    for _ in range(25):
        limiter.acquire()
        times.append(fake_time.clock())
    assert sum(fake_time.sleeps) >= 1.5 - 1e-9
    assert times[9] == times[0]  # the burst goes at once
    gaps = [b - a for a, b in zip(times[9:], times[10:], strict=False)]
    assert all(g >= 0.1 - 1e-9 for g in gaps)


def test_limiter_is_thread_safe_with_a_real_clock():
    limiter = RateLimiter(50, 5)
    stamps: list[float] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(5):
            limiter.acquire()
            with lock:
                stamps.append(time.monotonic())

    threads = [threading.Thread(target=work) for _ in range(4)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(5)
    assert len(stamps) == 20
    assert max(stamps) - started >= (20 - 5) / 50 - 0.02  # 15 calls beyond the burst at 50/s


def test_poller_requests_go_through_its_limiter(fake, fake_time):
    fake.add_tracking("usps", "9400100000000000000010")
    limiter = RateLimiter(10, 10, clock=fake_time.clock, sleep=fake_time.sleep)
    with AfterShipPoller(KEY, base_url=fake.base_url, limiter=limiter, sleep=fake_time.sleep) as p:
        for _ in range(25):
            assert p.fetch("usps", "9400100000000000000010") is not None
    assert len(fake.requests) == 25
    assert sum(fake_time.sleeps) >= 1.5 - 1e-9


def test_limiter_registry_shares_per_provider_and_key():
    a = limiter_for("aftership", "key-one", 6, 6)
    assert limiter_for("aftership", "key-one", 99, 99) is a
    assert limiter_for("aftership", "key-two", 6, 6) is not a
    assert limiter_for("other", "key-one", 6, 6) is not a


def test_default_limiter_is_shared_by_pollers_of_one_key():
    with AfterShipPoller(KEY) as one, AfterShipPoller(KEY) as two:
        assert one.limiter is two.limiter
        assert KEY not in repr(one.limiter)


# -- names, factory, policy --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("carrier", "slug"),
    [
        ("DHL Express", "dhl"),
        ("Royal Mail", "royal-mail"),
        ("USPS", "usps"),
        ("UPS", "ups"),
        ("FedEx", "fedex"),
        ("  royal   mail ", "royal-mail"),
        ("royal-mail", "royal-mail"),
        ("Australia Post", "australia-post"),
        ("Some New Courier", "some-new-courier"),
        ("dhl_express", "dhl"),
    ],
)
def test_carrier_names_map_to_aftership_slugs(carrier, slug):
    assert carrier_slug(carrier) == slug


def test_poller_for_aftership_and_nothing_else():
    p = poller_for("aftership", KEY)
    assert isinstance(p, AfterShipPoller) and p.provider == "aftership"
    assert p.base_url == AFTERSHIP_BASE_URL == "https://api.aftership.com/tracking/2024-10"
    p.close()
    q = poller_for("AfterShip", KEY, base_url="http://127.0.0.1:9/tracking/2024-10")
    assert isinstance(q, AfterShipPoller) and q.base_url.startswith("http://127.0.0.1:9")
    q.close()
    with pytest.raises(ValueError, match="shippo"):
        poller_for("shippo", KEY)


@pytest.mark.parametrize(
    ("attempts", "status", "retry_after", "expected"),
    [
        (0, "in_transit", None, 2 * HOUR),
        (0, "out_for_delivery", None, 30 * MINUTE),
        (0, "attempted", None, 1 * HOUR),
        (0, "exception", None, 2 * HOUR),
        (0, "available_for_pickup", None, 2 * HOUR),
        (0, "shipped", None, 4 * HOUR),
        (0, None, None, 4 * HOUR),
        (0, "something_new", None, 4 * HOUR),
        (0, "delivered", None, 24 * HOUR),
        (1, "in_transit", None, 5 * MINUTE),
        (2, "in_transit", None, 10 * MINUTE),
        (3, None, None, 20 * MINUTE),
        (7, "out_for_delivery", None, 5 * MINUTE * 64),
        (8, None, None, 6 * HOUR),
        (500, None, None, 6 * HOUR),
        (0, "out_for_delivery", 3600.0, 3600.0),
        (1, None, 900.0, 900.0),
        (0, "in_transit", 60.0, 2 * HOUR),
    ],
)
def test_next_poll_delay_policy(attempts, status, retry_after, expected):
    assert next_poll_delay(attempts, status, retry_after) == pytest.approx(expected)


def test_next_poll_delay_refuses_negative_attempts():
    with pytest.raises(ValueError):
        next_poll_delay(-1, None, None)


def test_a_tracking_the_mapping_cannot_read_is_retried_later_not_now(fake, poller, monkeypatch):
    def unreadable(obj: dict) -> TrackingUpdate:
        raise PayloadError("checkpoints[0].checkpoint_time is not a time: 'soon'")

    from waybill.integrations import aftership

    monkeypatch.setattr(aftership, "parse_tracking", unreadable)
    fake.add_tracking("usps", "9400100000000000000011")
    with pytest.raises(ProviderError) as caught:
        poller.fetch("usps", "9400100000000000000011")
    assert caught.value.retryable is True  # by the scheduler, with its error backoff
    assert "cannot read" in str(caught.value)
    assert len(fake.requests) == 1  # not retried inside fetch, and not registered again
