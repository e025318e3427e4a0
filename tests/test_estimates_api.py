"""Waybill's delivery estimates in the product: every order on its way carries a window that
narrows as the parcel moves, the merchant's or carrier's date beside it, a model learned from
the database's delivered orders (``waybill eta train``, and the worker daily), and a revised
"arrives by" a customer can choose to hear about."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from flask import Flask

from tests.utils.factories import AuthActions, MerchantActions
from waybill.notify.delivery import Worker

NOW = datetime.now(UTC).replace(microsecond=0)


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def window(doc: dict[str, Any]) -> tuple[date, date, date]:
    e = doc["estimated_delivery"]
    assert e["source"] == "waybill"
    return (
        date.fromisoformat(e["earliest"]),
        date.fromisoformat(e["most_likely"]),
        date.fromisoformat(e["latest"]),
    )


def width(w: tuple[date, date, date]) -> int:
    return (w[2] - w[0]).days


def test_an_order_on_its_way_carries_a_window_that_narrows_as_the_parcel_moves(
    merchant: MerchantActions,
) -> None:
    order = merchant.create_order(placed_at=iso(NOW))
    placed = window(order)
    earliest, likely, latest = placed
    assert NOW.date() <= earliest <= likely <= latest  # a window, not before it was bought
    assert order["estimated_delivery_given"] is None  # nobody else gave a date

    parcel = merchant.add_shipment(order["id"])
    merchant.scan(parcel["id"], "in_transit", iso(NOW + timedelta(hours=1)))
    moving = window(merchant.get(f"/orders/{order['id']}").get_json())
    merchant.scan(parcel["id"], "out_for_delivery", iso(NOW + timedelta(hours=2)))
    on_the_van = window(merchant.get(f"/orders/{order['id']}").get_json())
    assert width(on_the_van) <= width(moving) <= width(placed)
    assert width(on_the_van) < width(placed)
    assert on_the_van[2] <= (NOW + timedelta(days=4)).date()  # the last mile is short

    merchant.scan(parcel["id"], "delivered", iso(NOW + timedelta(hours=3)))
    delivered = merchant.get(f"/orders/{order['id']}").get_json()
    assert delivered["estimated_delivery"] is None  # nothing left to estimate


def test_the_merchants_date_is_shown_beside_ours(merchant: MerchantActions) -> None:
    order = merchant.create_order()
    given = NOW + timedelta(days=3)
    merchant.add_shipment(order["id"], estimated_delivery=iso(given))
    shown = merchant.get(f"/orders/{order['id']}").get_json()
    theirs = shown["estimated_delivery_given"]
    assert theirs["source"] == "merchant" and theirs["at"] == iso(given)
    assert theirs["latest"] == given.date().isoformat()
    assert shown["shipments"][0]["estimated_delivery"] == theirs
    assert shown["estimated_delivery"]["source"] == "waybill"  # ours stays, beside it


def test_the_model_is_learned_from_delivered_orders(
    app: Flask, merchant: MerchantActions, settings: Any
) -> None:
    """Two months ago every parcel of this shop took two days: once trained, a new order's
    most likely day is soon after, where the untrained estimate spread over weeks."""
    untrained = window(merchant.create_order(placed_at=iso(NOW)))
    start = NOW - timedelta(days=60)
    for n in range(40):
        bought = start + timedelta(days=n % 10, hours=n)
        order = merchant.create_order(placed_at=iso(bought))
        parcel = merchant.add_shipment(order["id"])
        merchant.scan(parcel["id"], "in_transit", iso(bought + timedelta(hours=2)))
        merchant.scan(parcel["id"], "delivered", iso(bought + timedelta(days=2)))
    env = {
        "WAYBILL_INSTANCE_DIR": str(settings.instance_dir),
        "WAYBILL_DATABASE_URL": settings.database_url,
        "WAYBILL_SECRET_KEY": settings.secret_key,
        "PATH": "/usr/bin:/bin",
    }
    out = subprocess.run(
        [sys.executable, "-m", "waybill.cli", "eta", "train"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout)["deliveries"] == 40
    from waybill import eta

    eta._loaded.forget()  # this process looks for a new model every minute: now
    trained = window(merchant.create_order(placed_at=iso(NOW)))
    assert width(trained) < width(untrained)
    assert (trained[1] - NOW.date()).days <= 5  # two working days, and a weekend at most


def test_the_worker_retrains_once_a_day(app: Flask) -> None:
    engine = app.extensions["waybill.engine"]
    worker = Worker(engine, app.config["WAYBILL_SETTINGS"])
    models = sa.text("SELECT count(*) FROM eta_model")
    with engine.connect() as conn:
        assert conn.execute(models).scalar_one() == 0
    worker._retrain()  # no model yet: trained now
    worker._retrain()  # ten minutes have not passed: not even looked at
    with engine.connect() as conn:
        assert conn.execute(models).scalar_one() == 1
    from waybill import eta

    assert not eta.due_for_training(engine)
    assert eta.due_for_training(engine, now=datetime.now(UTC) + timedelta(days=1, minutes=1))


def test_a_revised_arrives_by_is_heard_only_by_who_chose_it(
    app: Flask, merchant: MerchantActions, auth: AuthActions
) -> None:
    """A second in-transit scan days later says nothing new about the status, but the parcel
    is later than it was: the "arrives by" moves, as a change of its own."""
    email = "patient@example.com"
    order = merchant.create_order(email, placed_at=iso(NOW - timedelta(days=6)))
    parcel = merchant.add_shipment(order["id"])
    merchant.scan(parcel["id"], "in_transit", iso(NOW - timedelta(days=6)))
    engine = app.extensions["waybill.engine"]

    def rows(stage: str) -> list[str]:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    sa.text("SELECT channel FROM notify_outbox WHERE status = :s"), {"s": stage}
                ).scalars()
            )

    before = merchant.get(f"/orders/{order['id']}").get_json()
    merchant.scan(parcel["id"], "in_transit", iso(NOW), location="Still in the hub")
    after = merchant.get(f"/orders/{order['id']}").get_json()
    assert after["status"] == before["status"] == "in_transit"
    assert window(after)[2] > window(before)[2]  # later than promised: a new "arrives by"
    assert after["cursor"] > before["cursor"]
    assert rows("estimate_changed") == []  # off until chosen

    csrf = auth.sign_in(email)
    prefs = auth.client.get("/api/me/preferences").get_json()
    assert prefs["statuses"]["estimate_changed"] is False
    prefs["statuses"]["estimate_changed"] = True
    r = auth.client.put("/api/me/preferences", json=prefs, headers={"X-CSRF-Token": csrf})
    assert r.status_code == 200, r.get_json()
    merchant.scan(parcel["id"], "in_transit", iso(NOW + timedelta(days=4)), location="Hub 3")
    assert rows("estimate_changed") == ["email"]
