"""The notification rules without a server: preferences, quiet hours, wording, VAPID, endpoints."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from tests.utils.push_service import unb64url
from waybill.notify import content, preferences
from waybill.notify.preferences import ChangeInfo, InvalidPreferences, should_notify
from waybill.notify.subscriptions import endpoint_error, key_errors
from waybill.notify.vapid import VapidKeys
from waybill.notify.webpush import PushSender, classify, origin_of, retry_after_seconds


def change(status: str, before: str | None = "shipped", muted: bool = False) -> ChangeInfo:
    return ChangeInfo(order_id=7, status=status, status_before=before, muted=muted)


NOON = datetime(2026, 7, 1, 12, 0, tzinfo=UTC)


def test_defaults_notify_the_default_statuses_on_both_channels() -> None:
    prefs = preferences.defaults()
    assert should_notify(change("out_for_delivery"), prefs, NOON).channels == {"push", "email"}
    assert should_notify(change("in_transit"), prefs, NOON).silent
    assert should_notify(change("shipped", before="shipped"), prefs, NOON).silent
    assert should_notify(change("delivered", muted=True), prefs, NOON).silent


def test_quiet_hours_across_midnight_hold_until_morning_in_the_customers_zone() -> None:
    prefs = preferences.parse(
        {"quiet_hours": {"start": "22:00", "end": "07:00"}, "timezone": "Europe/Berlin"}
    )
    late = datetime(2026, 7, 1, 21, 30, tzinfo=UTC)  # 23:30 in Berlin (summer time)
    decision = should_notify(change("delivered"), prefs, late)
    assert decision.hold_until == datetime(2026, 7, 2, 5, 0, tzinfo=UTC)  # 07:00 Berlin
    assert should_notify(change("delivered"), prefs, NOON).hold_until is None
    early = datetime(2026, 1, 15, 5, 30, tzinfo=UTC)  # 06:30 in Berlin (winter time)
    assert should_notify(change("delivered"), prefs, early).hold_until == datetime(
        2026, 1, 15, 6, 0, tzinfo=UTC
    )


def test_quiet_hours_within_one_day() -> None:
    prefs = preferences.parse({"quiet_hours": {"start": "13:00", "end": "15:00"}})
    assert should_notify(change("delivered"), prefs, NOON).hold_until is None
    assert should_notify(change("delivered"), prefs, NOON + timedelta(hours=2)).hold_until == (
        NOON + timedelta(hours=3)
    )


def test_invalid_preferences_name_every_field() -> None:
    with pytest.raises(InvalidPreferences) as info:
        preferences.parse(
            {
                "channels": {"push": "yes", "sms": True},
                "statuses": {"teleported": True},
                "quiet_hours": {"start": "7:00", "end": "24:00"},
                "timezone": "Europe/Atlantis",
                "language": "fr",
            }
        )
    assert set(info.value.fields) == {
        "channels.push",
        "channels.sms",
        "statuses.teleported",
        "quiet_hours.start",
        "quiet_hours.end",
        "timezone",
        "language",
    }


def test_wording_in_english_and_german_with_the_estimate() -> None:
    facts = content.OrderFacts(
        7, "1042", "Acme", "out_for_delivery", "https://x/t/abc", estimated_delivery=NOON
    )
    en = content.message(facts, language="en", now=NOON)
    assert (en.title, en.body) == ("Order #1042 is out for delivery", "From Acme — arriving today")
    de = content.message(facts, language="de", now=NOON - timedelta(days=1))
    assert (de.title, de.body) == ("Bestellung #1042 ist in Zustellung", "Von Acme — kommt morgen")


def test_payload_always_fits_one_push_message() -> None:
    facts = content.OrderFacts(7, "1042", "Ä" * 5000, "shipped", "https://x/t/abc")
    msg = content.message(facts, language="en", now=NOON)
    data = content.push_payload(facts, msg)
    assert len(data) <= content.MAX_PAYLOAD
    assert json.loads(data)["tag"] == "order-7"


def test_vapid_header_signed_once_per_origin_and_renewed_before_expiry() -> None:
    sender = PushSender(VapidKeys(ec.generate_private_key(ec.SECP256R1())), "mailto:ops@x.test")
    a1 = sender.vapid_header("https://fcm.googleapis.com/fcm/send/1", now=1_000_000)
    a2 = sender.vapid_header("https://fcm.googleapis.com/fcm/send/2", now=1_000_000 + 3600)
    b = sender.vapid_header("https://updates.push.services.mozilla.com/wpush/v2/x", now=1_000_000)
    assert a1 == a2 and a1 != b

    def claims(header: str) -> dict:
        token = header.split("t=", 1)[1].split(",", 1)[0]
        return json.loads(unb64url(token.split(".")[1]))

    assert claims(a1)["aud"] == "https://fcm.googleapis.com"
    assert origin_of("http://127.0.0.1:9000?x") == "http://127.0.0.1:9000"
    assert origin_of("https://h.example:8443/p/q#f") == "https://h.example:8443"
    assert claims(b)["aud"] == "https://updates.push.services.mozilla.com"
    assert claims(a1)["exp"] - 1_000_000 <= 24 * 3600
    renewed = sender.vapid_header("https://fcm.googleapis.com/x", now=claims(a1)["exp"] - 1800)
    assert renewed != a1 and claims(renewed)["exp"] > claims(a1)["exp"]
    sender.close()


def test_push_service_answers_are_classified() -> None:
    assert classify(201, None).outcome == "sent"
    assert classify(410, None).outcome == "gone" and classify(404, None).outcome == "gone"
    assert classify(429, "30").retry_after == 30 and classify(502, None).outcome == "retry"
    for status in (400, 403, 413):
        assert classify(status, None).outcome == "rejected"
    assert retry_after_seconds("Wed, 01 Jul 2026 12:00:30 GMT", now=NOON.timestamp()) == 30


def test_only_known_push_services_and_configured_hosts_are_accepted() -> None:
    assert endpoint_error("https://fcm.googleapis.com/fcm/send/x", ()) is None
    assert endpoint_error("https://web.push.apple.com/QX", ()) is None
    assert endpoint_error("https://db5p.notify.windows.com/w/?token=1", ()) is None
    assert endpoint_error("https://updates.push.services.mozilla.com/wpush/v2/x", ()) is None
    assert endpoint_error("http://fcm.googleapis.com/fcm/send/x", ())  # not https
    assert endpoint_error("https://fcm.googleapis.com.evil.test/x", ())
    assert endpoint_error("https://169.254.169.254/latest", ())
    assert endpoint_error("http://127.0.0.1:9000/push/1", ("127.0.0.1:*",)) is None
    assert endpoint_error("http://127.0.0.1:9000/push/1", ("127.0.0.1:9001",))
    assert endpoint_error("http://user@127.0.0.1:9000/push/1", ("127.0.0.1:*",))
    assert key_errors("AAAA", "AAAA") == {
        "keys.p256dh": "must be base64url of a 65-byte uncompressed P-256 point",
        "keys.auth": "must be base64url of 16 bytes",
    }


def test_https_push_service_over_kept_alive_connections(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from tests.utils.push_service import PushService, self_signed_tls
    from waybill.notify.webpush import Outgoing, Subscription

    server_tls, client_tls = self_signed_tls(tmp_path)
    push = PushService(tls=server_tls).start()
    keys = VapidKeys(ec.generate_private_key(ec.SECP256R1()))
    push.expected_key = keys.public_key
    sender = PushSender(keys, "mailto:ops@x.test", pool_size=4, tls=client_tls)
    try:
        browsers = [push.subscribe() for _ in range(10)]
        batch = [
            Outgoing(
                Subscription(b.endpoint, **b.to_json()["keys"]),
                b'{"title": "hi"}',
                60,
                "normal",
                "order-1",
            )
            for b in browsers
        ]
        assert [r.outcome for r in sender.send_many(batch)] == ["sent"] * 10
        assert [r.outcome for r in sender.send_many(batch)] == ["sent"] * 10
        assert push.errors == [] and len(push.deliveries) == 20
        assert {d.payload["title"] for d in push.deliveries} == {"hi"}
    finally:
        sender.close()
        push.stop()


def test_a_message_carries_its_headers_and_a_410_forgets_the_subscription() -> None:
    from tests.utils.push_service import PushService
    from waybill.notify.webpush import Outgoing, Subscription

    push = PushService().start()
    keys = VapidKeys(ec.generate_private_key(ec.SECP256R1()))
    push.expected_key = keys.public_key
    sender = PushSender(keys, "mailto:ops@x.test", timeout=5)
    try:
        browser = push.subscribe()
        sub = Subscription(browser.endpoint, **browser.to_json()["keys"])
        [result] = sender.send_many([Outgoing(sub, b'{"title": "one"}', 60, "high", "order-9")])
        assert result.outcome == "sent" and push.errors == []
        [delivery] = push.delivered_to(browser)
        assert delivery.payload == {"title": "one"}
        assert (delivery.headers["topic"], delivery.headers["urgency"]) == ("order-9", "high")
        assert delivery.headers["ttl"] == "60"
        push.for_subscription(browser, 410)
        [gone] = sender.send_many([Outgoing(sub, b"{}", 60, "normal", "t")])
        assert gone.outcome == "gone"
    finally:
        sender.close()
        push.stop()


def test_connections_the_push_service_dropped_are_replaced_and_nothing_goes_twice() -> None:
    from tests.utils.push_service import PushService
    from waybill.notify.webpush import Outgoing, Subscription

    push = PushService().start()
    keys = VapidKeys(ec.generate_private_key(ec.SECP256R1()))
    push.expected_key = keys.public_key
    sender = PushSender(keys, "mailto:ops@x.test", pool_size=4)
    try:
        browser = push.subscribe()
        sub = Subscription(browser.endpoint, **browser.to_json()["keys"])
        one = [Outgoing(sub, b'{"n": 1}', 60, "normal", "order-1")] * 4
        assert [r.outcome for r in sender.send_many(one)] == ["sent"] * 4
        push.drop_idle = True  # every kept-alive connection is closed behind our back
        sent = 4
        for _ in range(3):
            # A connection the service closed just as it was reused fails that POST: the
            # client never re-sends it on its own (it may have arrived); the outbox retries.
            outcomes = [r.outcome for r in sender.send_many(one)]
            assert set(outcomes) <= {"sent", "retry"}, outcomes
            sent += outcomes.count("sent")
        assert len(push.delivered_to(browser)) == sent and push.errors == []
    finally:
        sender.close()
        push.stop()
