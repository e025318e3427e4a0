"""The Web Push transport on a real (loopback) network: what a push service and the outbox see.

``tests/utils/raw_push.py`` answers with every reply framing, drops kept-alive connections the
way a NAT does, stalls, and counts the requests per path and per connection; so these tests
assert on the wire: every message POSTed exactly once, never twice after a failure on a reused
connection, never lost without the outbox being told to retry.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import http_ece
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.utils.proxy import ForwardProxy
from tests.utils.push_service import BrowserSubscription, b64url
from tests.utils.raw_push import Answer, RawPushReceiver
from waybill.notify.vapid import VapidKeys
from waybill.notify.webpush import Outgoing, PushResult, PushSender, Subscription

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def keys() -> VapidKeys:
    return VapidKeys(ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def no_proxy_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No proxy from the machine running the tests: these talk to 127.0.0.1 directly."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("all_proxy", raising=False)


def browser(rx: RawPushReceiver, path: str) -> BrowserSubscription:
    """A subscription as a browser makes it (P-256 key pair, 16-byte auth) at ``rx``'s path."""
    return BrowserSubscription(
        path.rsplit("/", 1)[-1],
        rx.url(path),
        ec.generate_private_key(ec.SECP256R1()),
        os.urandom(16),
    )


def outgoing(b: BrowserSubscription, payload: bytes | None = None) -> Outgoing:
    body = payload if payload is not None else b'{"title": "%s"}' % b.id.encode()
    return Outgoing(Subscription(b.endpoint, **b.to_json()["keys"]), body, 60, "normal", "order-1")


def batch(rx: RawPushReceiver, prefix: str, n: int) -> list[BrowserSubscription]:
    return [browser(rx, f"/push/{prefix}-{i}") for i in range(n)]


def path_of(b: BrowserSubscription) -> str:
    return "/" + b.endpoint.split("/", 3)[3]


def timed_send(
    sender: PushSender, messages: list[Outgoing], limit: float = 15.0
) -> list[PushResult]:
    """``send_many`` that can never hang the test run."""
    return sender.send_many_async(messages).result(limit)


def assert_received_once_and_intact(
    rx: RawPushReceiver, browsers: list[BrowserSubscription]
) -> None:
    for b in browsers:
        [request] = rx.requests_for(path_of(b))  # exactly one POST per message
        assert request.method == "POST"
        assert request.headers["content-encoding"] == "aes128gcm"
        assert request.headers["authorization"].startswith("vapid t=")
        plain = http_ece.decrypt(
            request.body, private_key=b.private_key, auth_secret=b.auth, version="aes128gcm"
        )
        assert plain == b'{"title": "%s"}' % b.id.encode()


# --- reply framings -------------------------------------------------------------------------


@pytest.mark.parametrize("framing", ["length", "chunked", "close", "http10"])
def test_every_reply_framing_is_sent_and_the_next_batch_works(
    framing: str, keys: VapidKeys, no_proxy_env: None
) -> None:
    body = b'{"id": "msg-0123456789abcdef", "note": "accepted for delivery"}'
    rx = RawPushReceiver(Answer(201, {"Location": "/m/1"}, body, framing)).start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        first, second = batch(rx, "a", 20), batch(rx, "b", 20)
        results = timed_send(sender, [outgoing(b) for b in first])
        assert [(r.outcome, r.status) for r in results] == [("sent", 201)] * 20
        results = timed_send(sender, [outgoing(b) for b in second])
        assert [(r.outcome, r.status) for r in results] == [("sent", 201)] * 20
        assert len(rx.requests) == 40 and rx.dropped == []
        assert_received_once_and_intact(rx, first + second)
        if framing in ("close", "http10"):  # the server closes: one connection per message
            assert rx.connection_count == 40
            assert all(len(paths) == 1 for paths in rx.per_connection().values())
    finally:
        sender.close()
        rx.stop()


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param(Answer(201, {}, b'{"id": "m-1"}'), id="length"),
        pytest.param(
            Answer(201, {}, b'{"id": "m-1"}', "chunked"),
            id="chunked",
        ),
        pytest.param(
            Answer(201, {}, b'{"id": "m-1"}', split=True),
            id="length-split",
        ),
    ],
)
def test_kept_alive_connections_are_reused_whatever_the_reply_body(
    answer: Answer, keys: VapidKeys, no_proxy_env: None
) -> None:
    """A push service that keeps its connections alive gets at most ``pool_size`` of them
    for two batches of 20, each serving several messages."""
    rx = RawPushReceiver(answer).start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        for prefix in ("a", "b"):
            results = timed_send(sender, [outgoing(b) for b in batch(rx, prefix, 20)])
            assert [r.outcome for r in results] == ["sent"] * 20
        assert max(rx.per_path_counts().values()) == 1 and len(rx.requests) == 40
        assert rx.connection_count <= 4, rx.per_connection()
    finally:
        sender.close()
        rx.stop()


@pytest.mark.parametrize(
    "framing,split", [("chunked", False), ("length", True)], ids=["chunked", "length-split"]
)
def test_the_detail_holds_the_reply_body(
    framing: str, split: bool, keys: VapidKeys, no_proxy_env: None
) -> None:
    rx = RawPushReceiver(Answer(400, {}, b"missing TTL header", framing, split)).start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        [result] = timed_send(sender, [outgoing(browser(rx, "/push/x"))])
        assert (result.outcome, result.status) == ("rejected", 400)
        assert result.detail == "missing TTL header"
    finally:
        sender.close()
        rx.stop()


# --- kept-alive connections dropped by the other side ---------------------------------------


def assert_once_or_retry(
    rx: RawPushReceiver, browsers: list[BrowserSubscription], results: list[PushResult]
) -> None:
    """Per message: POSTed at most once; ``sent`` only if received; never lost silently."""
    assert len(results) == len(browsers)
    for b, r in zip(browsers, results, strict=True):
        n = rx.received(path_of(b))
        assert n <= 1, f"{path_of(b)} was POSTed {n} times"
        assert r.outcome in ("sent", "retry"), r
        if r.outcome == "sent":
            assert n == 1, f"{path_of(b)} reported sent but never received"
        if n == 0:
            assert r.outcome == "retry", f"{path_of(b)} lost without a retry: {r}"


@pytest.mark.parametrize("with_reset", [False, True], ids=["fin", "rst"])
def test_idle_connections_dropped_by_the_server_are_never_posted_twice(
    with_reset: bool, keys: VapidKeys, no_proxy_env: None
) -> None:
    """The receiver forgets a kept-alive connection idle for 150 ms (FIN or RST, no notice
    before). Batches are sent just before, at and after that moment, to hit the race."""
    rx = RawPushReceiver(idle_drop_ms=150, drop_with_reset=with_reset).start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=3, pool_size=4)
    try:
        warm = batch(rx, "warm", 8)
        assert [r.outcome for r in timed_send(sender, [outgoing(b) for b in warm])] == ["sent"] * 8
        outcomes: list[str] = []
        for round_, pause in enumerate([0.05, 0.13, 0.145, 0.15, 0.155, 0.17, 0.3, 0.5]):
            time.sleep(pause)
            browsers = batch(rx, f"r{round_}", 8)
            results = timed_send(sender, [outgoing(b) for b in browsers])
            assert_once_or_retry(rx, browsers, results)
            outcomes += [r.outcome for r in results]
        # After a pause well past the drop, the client must have replaced the connections.
        time.sleep(0.4)
        last = batch(rx, "last", 8)
        assert [r.outcome for r in timed_send(sender, [outgoing(b) for b in last])] == ["sent"] * 8
        assert_received_once_and_intact(rx, last)
        assert max(rx.per_path_counts().values()) == 1
        assert outcomes.count("sent") >= len(outcomes) // 2, outcomes
    finally:
        sender.close()
        rx.stop()


def test_a_reused_connection_reset_on_write_gives_retry_and_no_duplicate(
    keys: VapidKeys, no_proxy_env: None
) -> None:
    """The receiver resets a kept-alive connection when the next request arrives on it, before
    reading it: the client learns only after writing. Those messages must come back "retry"
    (a POST is not re-sent by the client), the rest "sent", none twice; then it recovers."""
    rx = RawPushReceiver().start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=3, pool_size=4)
    try:
        warm = batch(rx, "warm", 8)
        assert [r.outcome for r in timed_send(sender, [outgoing(b) for b in warm])] == ["sent"] * 8
        assert rx.connection_count <= 4
        rx.reset_on_reuse = True
        hit = batch(rx, "hit", 12)
        results = timed_send(sender, [outgoing(b) for b in hit])
        assert_once_or_retry(rx, hit, results)
        retried = [b for b, r in zip(hit, results, strict=True) if r.outcome == "retry"]
        assert retried and len(rx.dropped) == len(retried), (rx.dropped, results)
        assert all(rx.received(path_of(b)) == 0 for b in retried)
        assert all(r.status is None and r.detail for r in results if r.outcome == "retry")
        rx.reset_on_reuse = False
        # The outbox sends the retried ones again, with new messages: each arrives once.
        again = batch(rx, "new", 8)
        results = timed_send(sender, [outgoing(b) for b in retried + again])
        assert [r.outcome for r in results] == ["sent"] * (len(retried) + 8)
        assert max(rx.per_path_counts().values()) == 1
        assert_received_once_and_intact(rx, retried + again)
    finally:
        sender.close()
        rx.stop()


# --- a receiver that never answers ----------------------------------------------------------


def test_a_stalled_push_service_times_out_alone(keys: VapidKeys, no_proxy_env: None) -> None:
    stalled = RawPushReceiver(Answer(framing="stall")).start()
    healthy = RawPushReceiver().start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=1.0, pool_size=8)
    try:
        slow = batch(stalled, "slow", 5)
        fine = batch(healthy, "fine", 15)
        mixed = [x for pair in zip(fine[:5], slow, strict=True) for x in pair] + fine[5:]
        started = time.monotonic()
        results = timed_send(sender, [outgoing(b) for b in mixed])
        took = time.monotonic() - started
        assert took < 4.0, took
        by_endpoint = {b.endpoint: r for b, r in zip(mixed, results, strict=True)}
        for b in slow:
            r = by_endpoint[b.endpoint]
            assert (r.outcome, r.status) == ("retry", None), r
            assert "Timeout" in r.detail, r.detail
        assert [by_endpoint[b.endpoint].outcome for b in fine] == ["sent"] * 15
        assert_received_once_and_intact(healthy, fine)
        assert stalled.wait_for(5, timeout=2)  # the stalled one did get each request, once
        assert max(stalled.per_path_counts().values()) == 1 and len(stalled.requests) == 5
        # The timed-out connections are not reused: the next batch is unaffected.
        after = batch(healthy, "after", 5)
        results = timed_send(sender, [outgoing(b) for b in after])
        assert [r.outcome for r in results] == ["sent"] * 5
    finally:
        sender.close()
        stalled.stop()
        healthy.stop()


# --- what the answers mean ------------------------------------------------------------------


def test_status_codes_and_retry_after(keys: VapidKeys, no_proxy_env: None) -> None:
    rx = RawPushReceiver().start()
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 120))
    answers = {
        "s503": Answer(503, {"Retry-After": "30"}, b"busy"),
        "s500": Answer(500, {"Retry-After": "5"}, b"oops", "chunked"),
        "s429": Answer(429, {"Retry-After": soon}),
        "s502": Answer(502, framing="http10"),
        "s410": Answer(410, {}, b"unsubscribed", "close"),
        "s404": Answer(404),
        "s400": Answer(400, {}, b"missing TTL header"),
        "s403": Answer(403, {}, b"VAPID key mismatch", "chunked"),
        "s413": Answer(413),
        "s201": Answer(201),
    }
    browsers = {name: browser(rx, f"/push/{name}") for name in answers}
    for name, answer in answers.items():
        rx.answer(f"/push/{name}", answer)
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        results = dict(
            zip(
                answers,
                timed_send(sender, [outgoing(b) for b in browsers.values()]),
                strict=True,
            )
        )
        assert results["s503"] == PushResult("retry", 503, 30.0, "busy")
        assert (results["s500"].outcome, results["s500"].retry_after) == ("retry", 5.0)
        r429 = results["s429"]
        assert r429.outcome == "retry" and r429.status == 429
        assert r429.retry_after is not None and 100 <= r429.retry_after <= 121
        assert (results["s502"].outcome, results["s502"].retry_after) == ("retry", None)
        assert (results["s410"].outcome, results["s410"].status) == ("gone", 410)
        assert results["s410"].detail == "unsubscribed"
        assert (results["s404"].outcome, results["s404"].status) == ("gone", 404)
        for name in ("s400", "s403", "s413"):
            assert (results[name].outcome, results[name].status) == ("rejected", int(name[1:]))
        assert results["s400"].detail == "missing TTL header"
        assert results["s403"].detail == "VAPID key mismatch"
        assert results["s201"] == PushResult("sent", 201)
        assert rx.per_path_counts() == {f"/push/{name}": 1 for name in answers}
    finally:
        sender.close()
        rx.stop()


def test_unusable_keys_reject_only_that_message(keys: VapidKeys, no_proxy_env: None) -> None:
    rx = RawPushReceiver().start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        good = batch(rx, "good", 6)
        auth = b64url(os.urandom(16))
        bad = {
            "short": Subscription(rx.url("/push/short"), b64url(os.urandom(33)), auth),
            "off-curve": Subscription(rx.url("/push/off-curve"), b64url(b"\x04" + bytes(64)), auth),
            "not-base64": Subscription(rx.url("/push/not-base64"), "!!!not base64!!!", auth),
        }
        messages = [outgoing(b) for b in good[:3]]
        messages += [Outgoing(s, b"{}", 60, "normal", "order-1") for s in bad.values()]
        messages += [outgoing(b) for b in good[3:]]
        results = timed_send(sender, messages)
        outcomes = [r.outcome for r in results]
        assert outcomes == ["sent"] * 3 + ["rejected"] * 3 + ["sent"] * 3, results
        assert all(r.status is None and r.detail for r in results[3:6])
        for name in bad:
            assert rx.received(f"/push/{name}") == 0  # never put on the wire
        assert_received_once_and_intact(rx, good)
    finally:
        sender.close()
        rx.stop()


# --- through a forward proxy ----------------------------------------------------------------


@pytest.fixture
def proxy_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[ForwardProxy]:
    proxy = ForwardProxy().start()
    try:
        for name in ("NO_PROXY", "no_proxy", "REQUEST_METHOD", "ALL_PROXY", "all_proxy"):
            monkeypatch.delenv(name, raising=False)
        # urllib.request.getproxies (behind aiohttp's get_env_proxy_for_url) prefers lower case.
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.setenv("http_proxy", proxy.url)
        yield proxy
    finally:
        proxy.stop()


def test_http_proxy_from_the_environment_carries_the_messages(
    keys: VapidKeys, proxy_env: ForwardProxy
) -> None:
    rx = RawPushReceiver().start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)  # after the env
    try:
        browsers = batch(rx, "via", 10)
        results = timed_send(sender, [outgoing(b) for b in browsers])
        assert [(r.outcome, r.status) for r in results] == [("sent", 201)] * 10
        assert_received_once_and_intact(rx, browsers)
        expected = sorted(f"POST {b.endpoint} HTTP/1.1" for b in browsers)
        assert sorted(proxy_env.request_lines) == expected  # absolute URIs, one each
        assert sorted(line for line, _ in proxy_env.relayed) == expected
        assert sorted(r.request_line for r in rx.requests) == sorted(
            f"POST {path_of(b)} HTTP/1.1" for b in browsers
        )
        assert all("proxy-connection" not in r.headers for r in rx.requests)
    finally:
        sender.close()
        rx.stop()


def test_no_proxy_bypasses_the_proxy(
    keys: VapidKeys, proxy_env: ForwardProxy, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("no_proxy", "127.0.0.1")
    rx = RawPushReceiver().start()
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5, pool_size=4)
    try:
        browsers = batch(rx, "direct", 4)
        results = timed_send(sender, [outgoing(b) for b in browsers])
        assert [r.outcome for r in results] == ["sent"] * 4
        assert_received_once_and_intact(rx, browsers)
        assert proxy_env.request_lines == [] and proxy_env.connection_count == 0
    finally:
        sender.close()
        rx.stop()
