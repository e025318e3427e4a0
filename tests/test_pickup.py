"""A parcel ready for pickup says until when it waits: the merchant sends ``pickup_until`` with
the ``available_for_pickup`` event (alone or in a batch), every order answer and socket frame
carries it on the shipment while the parcel waits, it goes once the parcel moves on, the
mail says it in the customer's language and zone, and the migration adds it to a database
that has shipments already."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from flask import Flask
from flask.testing import FlaskClient

from tests.conftest import make_settings
from tests.test_realtime import LiveClient
from tests.test_realtime import connect as connect  # a fixture
from tests.test_realtime import live_server as live_server  # a fixture
from tests.utils.factories import AuthActions, MerchantActions, make_merchant, row_counts
from tests.utils.smtp import SMTPServer
from waybill import close_app, create_app
from waybill.auth.merchant_keys import create_merchant
from waybill.db import alembic_config, create_engine, migrate, session_scope
from waybill.ingest import create_order
from waybill.models import OrderCreate, UTCDateTime
from waybill.notify.content import OrderFacts, message
from waybill.notify.delivery import Worker

ARRIVED = "2026-12-03T09:30:00+01:00"
UNTIL = "2026-12-10T18:00:00+01:00"  # a Thursday, 17:00 UTC
UNTIL_UTC = datetime(2026, 12, 10, 17, 0, tzinfo=UTC)
POINT = "Packstation 112, Leipzig"


def at(value: str | None) -> datetime | None:
    """A timestamp of an answer, whichever way it spells UTC."""
    return datetime.fromisoformat(value) if value is not None else None


def pickup_until(answer: dict[str, Any], index: int = 0) -> datetime | None:
    return at(answer["shipments"][index]["pickup_until"])


@pytest.fixture
def shop(app: Flask) -> tuple[Flask, MerchantActions]:
    """The app (on each backend) and a merchant with its key."""
    return app, make_merchant(app, app.test_client())


def waiting(merchant: MerchantActions, **order: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """An order whose one parcel travelled and now waits at a pickup point until UNTIL."""
    created = merchant.create_order(**order)
    parcel = merchant.add_shipment(created["id"])
    assert merchant.scan(parcel["id"], "in_transit", "2026-12-02T08:00:00Z").status_code == 201
    r = merchant.scan(
        parcel["id"], "available_for_pickup", ARRIVED, location=POINT, pickup_until=UNTIL
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json(), parcel


# --- recorded, shown, cleared --------------------------------------------------------------


def test_a_pickup_deadline_is_recorded_and_every_reader_sees_it(
    shop: tuple[Flask, MerchantActions],
) -> None:
    app, merchant = shop
    answer, parcel = waiting(merchant, email="collect@example.com")
    assert answer["status"] == "available_for_pickup"
    assert pickup_until(answer) == UNTIL_UTC
    assert answer["shipments"][0]["events"][-1]["location"] == POINT

    assert pickup_until(merchant.get(f"/orders/{answer['id']}").get_json()) == UNTIL_UTC
    token = answer["tracking_url"].rsplit("/", 1)[1]
    anyone = app.test_client()
    assert pickup_until(anyone.get(f"/api/track/{token}").get_json()) == UNTIL_UTC
    customer = app.test_client()
    AuthActions(app, customer).sign_in("collect@example.com")
    assert pickup_until(customer.get(f"/api/me/orders/{answer['id']}").get_json()) == UNTIL_UTC
    (listed,) = customer.get("/api/me/orders").get_json()["orders"]
    assert pickup_until(listed) == UNTIL_UTC


def test_the_deadline_goes_once_the_parcel_is_collected(
    shop: tuple[Flask, MerchantActions],
) -> None:
    _, merchant = shop
    answer, parcel = waiting(merchant)
    r = merchant.scan(parcel["id"], "delivered", "2026-12-05T16:00:00+01:00")
    assert r.status_code == 201
    assert r.get_json()["status"] == "delivered"
    assert r.get_json()["shipments"][0]["pickup_until"] is None
    # a late copy of the pickup scan does not bring it back: the parcel is collected
    late = merchant.scan(
        parcel["id"], "available_for_pickup", "2026-12-04T10:00:00Z", pickup_until=UNTIL
    )
    assert late.status_code == 201
    assert late.get_json()["shipments"][0]["pickup_until"] is None


def test_the_deadline_goes_when_the_parcel_travels_on_and_a_new_pickup_sets_its_own(
    shop: tuple[Flask, MerchantActions],
) -> None:
    _, merchant = shop
    answer, parcel = waiting(merchant)
    # uncollected: on its way back
    back = merchant.scan(parcel["id"], "in_transit", "2026-12-11T08:00:00Z")
    assert back.get_json()["status"] == "in_transit"
    assert pickup_until(back.get_json()) is None
    # at another point, without a word on until when: nothing is made up
    again = merchant.scan(
        parcel["id"], "available_for_pickup", "2026-12-12T09:00:00Z", location="Shop 7"
    )
    assert again.get_json()["status"] == "available_for_pickup"
    assert pickup_until(again.get_json()) is None
    later = "2026-12-19T12:00:00Z"
    r = merchant.scan(
        parcel["id"], "available_for_pickup", "2026-12-12T10:00:00Z", pickup_until=later
    )
    assert pickup_until(r.get_json()) == at(later)
    # a later reminder scan without one keeps it; an older scan's deadline is not the newest
    r = merchant.scan(parcel["id"], "available_for_pickup", "2026-12-13T09:00:00Z")
    assert pickup_until(r.get_json()) == at(later)
    r = merchant.scan(
        parcel["id"],
        "available_for_pickup",
        "2026-12-12T09:30:00Z",
        pickup_until="2026-12-18T12:00:00Z",
    )
    assert r.status_code == 201
    assert pickup_until(r.get_json()) == at(later)


def test_a_scan_sent_again_changes_nothing(shop: tuple[Flask, MerchantActions]) -> None:
    app, merchant = shop
    created = merchant.create_order()
    parcel = merchant.add_shipment(created["id"])
    first = merchant.scan(
        parcel["id"], "available_for_pickup", ARRIVED, event_id="p1", pickup_until=UNTIL
    )
    assert first.status_code == 201
    before = row_counts(app)
    again = merchant.scan(
        parcel["id"],
        "available_for_pickup",
        ARRIVED,
        event_id="p1",
        pickup_until="2026-12-20T18:00:00Z",
    )
    assert again.status_code == 200
    assert pickup_until(again.get_json()) == UNTIL_UTC
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("fields", "why"),
    [
        ({"status": "available_for_pickup", "pickup_until": "next Friday"}, "datetime"),
        ({"status": "available_for_pickup", "pickup_until": "2026-12-10T18:00:00"}, "timezone"),
        ({"status": "in_transit", "pickup_until": UNTIL}, "only with status available_for_pickup"),
        (
            {"status": "available_for_pickup", "pickup_until": "2026-12-01T18:00:00Z"},
            "not be before occurred_at",
        ),
    ],
)
def test_a_bad_deadline_or_one_on_another_status_is_refused_and_writes_nothing(
    shop: tuple[Flask, MerchantActions], fields: dict[str, Any], why: str
) -> None:
    app, merchant = shop
    created = merchant.create_order()
    parcel = merchant.add_shipment(created["id"])
    before = row_counts(app)
    r = merchant.post(f"/shipments/{parcel['id']}/events", {"occurred_at": ARRIVED, **fields})
    assert r.status_code == 422, r.get_json()
    error = r.get_json()["error"]
    assert error["code"] and error["message"]
    assert set(error["fields"]) == {"pickup_until"}
    assert why in error["fields"]["pickup_until"].lower() or why in error["fields"]["pickup_until"]
    assert row_counts(app) == before
    assert merchant.get(f"/orders/{created['id']}").get_json()["shipments"][0]["status"] == (
        "shipped"
    )


# --- many at once ---------------------------------------------------------------------------


def test_a_batch_takes_the_deadline_and_refuses_it_where_it_does_not_belong(
    shop: tuple[Flask, MerchantActions],
) -> None:
    app, merchant = shop
    created = merchant.create_order()
    first = merchant.add_shipment(created["id"], carrier="DHL", tracking_number="JD0101")
    second = merchant.add_shipment(created["id"])
    later = "2026-12-11T12:00:00Z"
    r = merchant.post(
        "/events",
        {
            "events": [
                {
                    "shipment_id": first["id"],
                    "status": "available_for_pickup",
                    "occurred_at": ARRIVED,
                    "location": POINT,
                    "pickup_until": UNTIL,
                },
                {
                    "carrier": "dhl",
                    "tracking_number": "JD0101",
                    "status": "in_transit",
                    "occurred_at": "2026-12-03T10:00:00Z",
                    "pickup_until": UNTIL,
                },
                {"order_id": created["id"], "status": "processing", "pickup_until": UNTIL},
                {
                    "shipment_id": second["id"],
                    "status": "available_for_pickup",
                    "occurred_at": ARRIVED,
                    "pickup_until": "soon",
                },
                {
                    "shipment_id": second["id"],
                    "status": "available_for_pickup",
                    "occurred_at": "2026-12-03T11:00:00Z",
                    "pickup_until": later,
                },
            ]
        },
    )
    assert r.status_code == 200, r.get_json()
    results = r.get_json()["results"]
    assert [x["status"] for x in results] == [201, 422, 422, 422, 201]
    for refused in results[1:4]:
        assert set(refused["error"]["fields"]) == {"pickup_until"}, refused
    assert "only with status available_for_pickup" in results[1]["error"]["fields"]["pickup_until"]
    assert "shipment" in results[2]["error"]["fields"]["pickup_until"]
    got = merchant.get(f"/orders/{created['id']}").get_json()
    assert got["status"] == "available_for_pickup"
    assert [at(s["pickup_until"]) for s in got["shipments"]] == [UNTIL_UTC, at(later)]
    assert [len(s["events"]) for s in got["shipments"]] == [1, 1]  # the refused left nothing
    assert got["events"] == []


def test_the_openapi_document_says_where_the_deadline_goes(client: FlaskClient) -> None:
    doc = client.get("/api/openapi.json").get_json()
    schemas = doc["components"]["schemas"]
    sent = schemas["ShipmentEventCreate"]["properties"]["pickup_until"]
    assert "available_for_pickup" in sent["description"]
    assert "pickup_until" in schemas["ShipmentPublic"]["properties"]
    assert "pickup_until" in schemas["ShipmentPublic"]["required"]  # always there, maybe null


# --- live -----------------------------------------------------------------------------------


def test_the_socket_frame_carries_the_deadline(
    merchant: MerchantActions, client: FlaskClient, connect: Callable[..., LiveClient]
) -> None:
    created = merchant.create_order()
    parcel = merchant.add_shipment(created["id"])
    token = created["tracking_url"].rsplit("/", 1)[1]
    live = connect(track=token)
    live.hello()
    r = merchant.scan(parcel["id"], "available_for_pickup", ARRIVED, pickup_until=UNTIL)
    assert r.status_code == 201
    (frame,) = live.updates(1)
    assert pickup_until(frame["order"]) == UNTIL_UTC
    assert frame["order"] == client.get(f"/api/track/{token}").get_json()
    merchant.scan(parcel["id"], "delivered", "2026-12-04T10:00:00Z")
    (frame,) = live.updates(1)
    assert frame["order"]["shipments"][0]["pickup_until"] is None


# --- the mail -------------------------------------------------------------------------------


@pytest.fixture
def mailing_app(instance_dir: Path, smtp: SMTPServer) -> Iterator[Flask]:
    app = create_app(make_settings(instance_dir, smtp_url=smtp.url))
    yield app
    close_app(app)


def send_due(app: Flask) -> None:
    worker = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"])
    try:
        worker.run_until_idle()  # now: rows are due from when they were written
    finally:
        worker.stop()


@pytest.mark.parametrize(
    ("locale", "subject", "words"),
    [
        ("en", "is ready for pickup", "Pickup Shop: collect it with your ID by Thu 10 Dec, 18:00."),
        (
            "de",
            "liegt zur Abholung bereit",
            "Pickup Shop: Bitte bis Do. 10.12., 18:00 mit Ausweis abholen.",
        ),
    ],
)
def test_the_pickup_mail_says_until_when_in_the_customers_language_and_zone(
    mailing_app: Flask, smtp: SMTPServer, locale: str, subject: str, words: str
) -> None:
    app = mailing_app
    merchant = make_merchant(app, app.test_client(), name="Pickup Shop")
    email = f"pickup-{locale}@example.com"
    customer = {"email": email, "locale": locale, "timezone": "Europe/Berlin"}
    created = merchant.post("/orders", {"external_id": f"PU-{locale}", "customer": customer})
    assert created.status_code == 201
    parcel = merchant.add_shipment(created.get_json()["id"])
    send_due(app)  # "has shipped" first
    r = merchant.scan(
        parcel["id"], "available_for_pickup", ARRIVED, location=POINT, pickup_until=UNTIL
    )
    assert r.status_code == 201
    send_due(app)
    mail = smtp.wait_for(email, 2)[-1]
    assert str(mail["Subject"]).endswith(subject)
    text = mail.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    html = mail.get_body(("html",)).get_content()  # type: ignore[union-attr]
    assert words in text
    assert words in html


def test_the_message_says_when_the_pickup_period_is_over_and_names_utc() -> None:
    facts = OrderFacts(
        order_id=1,
        number="1042",
        merchant="Shop",
        status="available_for_pickup",
        url="https://example.com/t/x",
        pickup_until=UNTIL_UTC,
    )
    after = datetime(2026, 12, 11, tzinfo=UTC)
    over = message(facts, language="en", now=after, timezone="Europe/Berlin")
    assert over.body == "Shop: the pickup period ended Thu 10 Dec, 18:00."
    over_de = message(facts, language="de", now=after, timezone="Europe/Berlin")
    assert over_de.body == "Shop: Die Abholfrist ist am Do. 10.12., 18:00 abgelaufen."
    # the zone we assume until the customer tells us theirs is named
    before = datetime(2026, 12, 4, tzinfo=UTC)
    assert message(facts, language="en", now=before).body == (
        "Shop: collect it with your ID by Thu 10 Dec, 17:00 UTC."
    )


# --- migration 0007 -------------------------------------------------------------------------


@pytest.fixture
def before_0007(empty_instance: Path) -> Iterator[tuple[Any, str, int]]:
    """A database at 0006 with an order and a shipment waiting at a pickup point, recorded
    before shipments knew until when."""
    settings = make_settings(empty_instance)
    engine = create_engine(settings)
    # The order is made by today's code (it writes today's tables), then the schema goes back
    command.upgrade(alembic_config(engine, settings.secret_key), "head")
    with session_scope(engine) as session:
        shop, key = create_merchant(session=session, name="Old Shop")
        order, _ = create_order(
            session=session,
            merchant=shop,
            data=OrderCreate.model_validate(
                {"external_id": "OLD-PICKUP", "customer": {"email": "old@example.com"}}
            ),
            secret_key=settings.secret_key,
        )
        order_id = order.id
        assert order_id is not None
    command.downgrade(alembic_config(engine, settings.secret_key), "0006_one_shipment_per_number")
    shipment = sa.table(
        "shipment",
        *(sa.column(c) for c in ("id", "order_id", "carrier", "carrier_key", "tracking_number")),
        sa.column("status"),
        sa.column("created_at", UTCDateTime()),
    )
    with engine.begin() as conn:
        conn.execute(
            shipment.insert(),
            {
                "id": 21,
                "order_id": order_id,
                "carrier": "DHL",
                "carrier_key": "dhl",
                "tracking_number": "OLD1",
                "status": "available_for_pickup",
                "created_at": datetime.now(UTC),
            },
        )
    engine.dispose()
    yield settings, key, order_id


def shipment_columns(engine: sa.Engine) -> set[str]:
    return {c["name"] for c in sa.inspect(engine).get_columns("shipment")}


def test_the_migration_adds_the_deadline_to_existing_shipments_and_downgrades(
    before_0007: tuple[Any, str, int],
) -> None:
    settings, key, order_id = before_0007
    engine = create_engine(settings)
    assert "pickup_until" not in shipment_columns(engine)
    migrate(engine, secret_key=settings.secret_key)
    assert "pickup_until" in shipment_columns(engine)
    engine.dispose()

    app = create_app(settings)
    try:
        client = app.test_client()
        headers = {"Authorization": f"Bearer {key}"}
        order = client.get(f"/api/v1/orders/{order_id}", headers=headers).get_json()
        assert [(s["id"], s["status"], s["pickup_until"]) for s in order["shipments"]] == [
            (21, "available_for_pickup", None)
        ]
        r = client.post(
            "/api/v1/shipments/21/events",
            json={"status": "available_for_pickup", "occurred_at": ARRIVED, "pickup_until": UNTIL},
            headers=headers,
        )
        assert r.status_code == 201, r.get_json()
        assert pickup_until(r.get_json()) == UNTIL_UTC
    finally:
        close_app(app)

    engine = create_engine(settings)
    command.downgrade(alembic_config(engine, settings.secret_key), "0006_one_shipment_per_number")
    assert "pickup_until" not in shipment_columns(engine)
    with engine.connect() as conn:
        kept = conn.exec_driver_sql("SELECT id, status FROM shipment").all()
    assert [tuple(r) for r in kept] == [(21, "available_for_pickup")]
    migrate(engine, secret_key=settings.secret_key)  # and up again
    assert "pickup_until" in shipment_columns(engine)
    engine.dispose()
