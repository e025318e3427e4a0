# ruff: noqa: F811  (pytest fixtures imported from test_notifications, then named as arguments)
"""One bad row never stalls the others, and one device hears about one order in order.

Poison rows are made the way an instance can still hold them (written before the input checks
existed, straight into the database); the API itself now refuses them.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient
from sqlmodel import Session, select

from tests.test_notifications import (  # noqa: F401  (fixtures)
    EMAIL,
    Shopper,
    at,
    payloads,
    push,
    settings,
    shopper,
    worker,
)
from tests.utils.factories import make_merchant
from tests.utils.push_service import PushService
from tests.utils.smtp import SMTPServer
from waybill.models import Customer, Order
from waybill.notify import outbox
from waybill.notify.delivery import Worker
from waybill.notify.models import OutboxMessage, PushSubscription


def _rows(app: Flask) -> list[OutboxMessage]:
    with Session(app.extensions["waybill.engine"]) as s:
        return list(s.exec(select(OutboxMessage).order_by(OutboxMessage.id)))  # type: ignore[arg-type]


def test_the_api_refuses_what_would_poison_a_notification(
    client: FlaskClient, shopper: Shopper, push: PushService
) -> None:
    browser = push.subscribe().to_json()
    for bad in (" ", "\t", "\x01"):
        r = shopper.put(
            "/api/me/push-subscriptions",
            {**browser, "endpoint": bad + browser["endpoint"]},
            method="post",
        )
        assert r.status_code == 422, bad  # type: ignore[attr-defined]
        token = shopper.order["tracking_url"].rsplit("/", 1)[1]
        r = client.post(
            f"/api/track/{token}/push-subscriptions",
            json={**browser, "endpoint": bad + browser["endpoint"]},
        )
        assert r.status_code == 422, bad
    for bad in ("CR-1\r\nBcc: victim@example.com", "LS-1\u2028x", "TAB\t1", "\u202e2401"):
        r = shopper.merchant.client.post(
            "/api/v1/orders",
            json={"external_id": bad, "customer": {"email": "x@example.com"}},
            headers=shopper.merchant.headers,
        )
        assert r.status_code == 422
        assert r.get_json()["error"]["fields"]["external_id"] == (
            "must be one line of text, without line breaks, control or bidirectional characters"
        )


def test_poison_rows_fail_alone_and_healthy_ones_arrive_once_at_once(
    app: Flask,
    client: FlaskClient,
    shopper: Shopper,
    push: PushService,
    smtp: SMTPServer,
    worker: Worker,
) -> None:
    engine = app.extensions["waybill.engine"]
    # Another merchant with two customers of its own, one of them stored with a broken address.
    other = make_merchant(app, client, name="Other Shop")
    healthy = other.create_order("healthy@example.com")
    broken = other.create_order("broken@example.com")
    header = other.create_order("header@example.com")
    with Session(engine) as s, s.begin():
        # A device registered with a leading space, and values stored with line breaks.
        good = s.exec(select(PushSubscription)).one()
        s.add(
            PushSubscription(
                scope=good.scope,
                customer_id=good.customer_id,
                endpoint=" " + push.subscribe().endpoint,
                endpoint_hash="poison",
                p256dh=good.p256dh,
                auth=good.auth,
            )
        )
        s.exec(  # type: ignore[call-overload]
            sa.update(Customer)
            .where(Customer.email == "broken@example.com")
            .values(email="broken@example.com\nBcc: victim@example.com")
        )
        s.exec(  # type: ignore[call-overload]
            sa.update(Order)
            .where(Order.id == header["id"])
            .values(external_id="CR-1\r\nBcc: victim@example.com")
        )

    shopper.ship()
    for order in (healthy, broken, header):
        other.add_shipment(order["id"])
    worker.run_until_idle()

    assert [p["status"] for p in payloads(push, shopper.browser)] == ["shipped"]
    got = {str(m["To"]): m for m in smtp.messages}
    assert set(got) == {EMAIL, "healthy@example.com", "header@example.com"}
    assert got["header@example.com"]["Bcc"] is None  # no header was injected
    assert "\n" not in str(got["header@example.com"]["Subject"])
    states = {(r.channel, r.destination.split("\n")[0]): r for r in _rows(app)}
    poisoned_push = next(r for r in _rows(app) if r.channel == "push" and r.state != "sent")
    assert poisoned_push.state == "failed" and poisoned_push.last_error
    broken_mail = states[("email", "broken@example.com")]
    assert (broken_mail.state, broken_mail.attempts) == ("pending", 1)
    assert "linefeed" in (broken_mail.last_error or "")

    # It goes on failing alone, then is dead-lettered with its error for the operator.
    later = datetime.now(UTC)
    for _ in range(outbox.MAX_ATTEMPTS + 1):
        later += timedelta(hours=1)
        worker.run_until_idle(now=later)
    with Session(engine) as s:
        dead = outbox.dead_letters(s)
    assert [(r.channel, r.attempts) for r in dead] == [("email", outbox.MAX_ATTEMPTS)]
    assert "linefeed" in (dead[0].last_error or "")
    assert len(smtp.messages) == 3 and len(push.delivered_to(shopper.browser)) == 1


def test_a_newer_status_waits_while_an_older_one_is_in_flight(
    app: Flask, shopper: Shopper, push: PushService, worker: Worker
) -> None:
    """Pushes of one order share a tag: whatever arrives last is what the phone shows."""
    engine = app.extensions["waybill.engine"]
    shopper.prefs(channels={"push": True, "email": False})
    shipment = shopper.ship()
    # Another worker has claimed "shipped" and is still sending it...
    now = datetime.now(UTC)
    [row_id] = outbox.claim(engine, owner="slow", limit=10, now=now, lease=timedelta(minutes=2))
    shopper.merchant.scan(shipment["id"], "out_for_delivery", at(1))
    # ...so "out for delivery" may not overtake it.
    assert worker.run_until_idle() == 0
    # The slow one fails and would be retried: the newer status goes instead.
    with Session(engine) as s, s.begin():
        outbox.record(
            s, owner="slow", outcomes=[outbox.Outcome(row_id, "retry", "503")], now=utcnow()
        )
    assert worker.run_until_idle() == 1
    assert [p["status"] for p in payloads(push, shopper.browser)] == ["out_for_delivery"]
    assert [r.state for r in _rows(app)] == ["superseded", "sent"]


def test_many_fast_changes_reach_a_device_in_order(
    app: Flask, shopper: Shopper, push: PushService, worker: Worker
) -> None:
    shopper.prefs(
        channels={"push": True, "email": False},
        statuses=dict.fromkeys(
            ["shipped", "in_transit", "out_for_delivery", "attempted", "exception", "delivered"],
            True,
        ),
    )
    route = ["in_transit", "out_for_delivery", "attempted", "exception"] * 5 + ["delivered"]
    rng = random.Random(7)
    push.delay = 0.02
    for _ in range(6):  # some answers fail and are retried later
        push.answer_next(rng.choice([201, 503, 201]))
    app.extensions["waybill.broker"].subscribe(worker.notify)
    worker.poll_interval = 0.05
    worker.start()
    shipment = shopper.ship()
    for i, status in enumerate(route):
        shopper.merchant.scan(shipment["id"], status, at(i + 1))
    final = "delivered"

    def settled() -> bool:
        got = payloads(push, shopper.browser)
        return bool(got) and got[-1]["status"] == final

    later = datetime.now(UTC)
    for _ in range(40):  # retries back off: move the clock on until everything has settled
        if push.wait_for(settled, timeout=0.5):
            break
        later += timedelta(minutes=20)
        worker.run_until_idle(now=later)
    statuses = [p["status"] for p in payloads(push, shopper.browser)]
    assert statuses and statuses[-1] == final, statuses
    sent = ["shipped", *route]
    it = iter(sent)
    assert all(any(s == r for s in it) for r in statuses), statuses  # never older after newer


def utcnow() -> datetime:
    return datetime.now(UTC)
