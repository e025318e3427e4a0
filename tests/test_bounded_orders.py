"""Bounded orders: no answer and no frame grows with an order's history.

Every order answer (merchant, signed-in customer, tracking link) and every socket frame carries
the latest 50 events of each timeline, with ``events_total`` and an ``events_before`` cursor;
``GET …/events?before=`` pages back through the rest, for each reader, with the order's own
access rules."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy.orm import Session as OrmSession

from tests.test_realtime import LiveClient
from tests.test_realtime import connect as connect  # a fixture
from tests.test_realtime import live_server as live_server  # a fixture
from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from waybill.db import session_scope
from waybill.ingest import record_order_event, record_shipment_event
from waybill.models import Order, OrderEventCreate, Shipment, ShipmentEventCreate
from waybill.orders import (
    EVENTS_SHOWN,
    event_cursor,
    parse_event_cursor,
    render_orders,
)
from waybill.realtime.dispatch import Renderer

EMAIL = "long@example.com"
N = 200
START = datetime(2026, 3, 1, 8, 0, tzinfo=UTC)


def _at(i: int) -> datetime:
    # two events share each minute: the cursor must tell them apart by more than the time
    return START + timedelta(minutes=i // 2)


def long_order(app: Flask, merchant: MerchantActions) -> dict[str, Any]:
    """An order with N events of its own, a shipment with N, and a shipment with 3."""
    order = merchant.create_order(email=EMAIL, items=[{"name": "Lamp", "quantity": 1}])
    big = merchant.add_shipment(order["id"])
    small = merchant.add_shipment(order["id"])
    # recorded in one session: the same path as the API, without 600 requests
    with session_scope(app.extensions["waybill.engine"]) as session:
        row = session.get(Order, order["id"])
        big_row = session.get(Shipment, big["id"])
        small_row = session.get(Shipment, small["id"])
        assert row is not None and big_row is not None and small_row is not None
        for i in range(N):
            record_order_event(
                session=session,
                order=row,
                data=OrderEventCreate(status="processing", occurred_at=_at(i), description=f"o{i}"),
            )
            record_shipment_event(
                session=session,
                shipment=big_row,
                data=ShipmentEventCreate(
                    status="in_transit", occurred_at=_at(i), event_id=f"s{i}", location=f"s{i}"
                ),
            )
        for i in range(3):
            record_shipment_event(
                session=session,
                shipment=small_row,
                data=ShipmentEventCreate(
                    status="in_transit", occurred_at=_at(i), event_id=f"t{i}", location=f"t{i}"
                ),
            )
    return {
        "id": order["id"],
        "token": order["tracking_url"].rsplit("/", 1)[1],
        "big": big["id"],
        "small": small["id"],
    }


def _names(events: list[dict[str, Any]]) -> list[str]:
    return [e["description"] or e["location"] for e in events]


def _assert_bounded(body: dict[str, Any], ids: dict[str, Any]) -> None:
    assert len(json.dumps(body)) < 64 * 1024
    assert _names(body["events"]) == [f"o{i}" for i in range(N - EVENTS_SHOWN, N)]
    assert body["events_total"] == N and body["events_truncated"] is True
    assert parse_event_cursor(body["events_before"]) is not None
    big, small = body["shipments"]
    assert big["id"] == ids["big"] and small["id"] == ids["small"]
    assert _names(big["events"]) == [f"s{i}" for i in range(N - EVENTS_SHOWN, N)]
    assert big["events_total"] == N and big["events_truncated"] is True
    assert big["events_before"] is not None
    assert _names(small["events"]) == ["t0", "t1", "t2"]
    assert small["events_total"] == 3
    assert small["events_before"] is None and small["events_truncated"] is False


class Readers:
    """The three readers of one order, each asking through its own route."""

    def __init__(self, client: FlaskClient, merchant: MerchantActions, ids: dict[str, Any]):
        self.client, self.merchant, self.ids = client, merchant, ids

    def order(self, who: str) -> dict[str, Any]:
        r = self.get(who, "")
        assert r.status_code == 200, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    def get(self, who: str, suffix: str) -> Any:
        if who == "merchant":
            return self.merchant.get(f"/orders/{self.ids['id']}{suffix}")
        if who == "customer":
            return self.client.get(f"/api/me/orders/{self.ids['id']}{suffix}")
        return self.client.get(f"/api/track/{self.ids['token']}{suffix}")

    def events(self, who: str, query: str) -> Any:
        return self.get(who, f"/events?{query}")

    def page_back(
        self, who: str, before: str | None, shipment: int | None, limit: int
    ) -> list[dict[str, Any]]:
        """Every event before ``before``, page by page; each page must come oldest first."""
        older: list[dict[str, Any]] = []
        pages = 0
        while True:
            query = f"limit={limit}"
            if before is not None:
                query += f"&before={before}"
            if shipment is not None:
                query += f"&shipment_id={shipment}"
            r = self.events(who, query)
            assert r.status_code == 200, r.get_json()
            page = r.get_json()
            assert set(page) == {"events", "next_before"}
            assert 0 < len(page["events"]) <= limit
            times = [e["occurred_at"] for e in page["events"]]
            assert times == sorted(times)
            older = page["events"] + older
            pages += 1
            assert pages <= N  # it ends
            before = page["next_before"]
            if before is None:
                return older


READERS = ("merchant", "customer", "tracking")


def test_every_reader_gets_the_latest_50_of_each_timeline_and_pages_back_to_the_first(
    app: Flask,
    client: FlaskClient,
) -> None:
    merchant = make_merchant(app, client)
    ids = long_order(app, merchant)
    AuthActions(app, client).sign_in(EMAIL)
    readers = Readers(client, merchant, ids)

    listed = client.get("/api/me/orders").get_json()["orders"]
    _assert_bounded(listed[0], ids)
    for who in READERS:
        body = readers.order(who)
        _assert_bounded(body, ids)
        # back from the answer's cursor: every older event once, in order, then the answer's
        own = readers.page_back(who, body["events_before"], None, limit=37)
        assert _names(own + body["events"]) == [f"o{i}" for i in range(N)]
        big = body["shipments"][0]
        older = readers.page_back(who, big["events_before"], ids["big"], limit=100)
        assert _names(older + big["events"]) == [f"s{i}" for i in range(N)]
        # from the top without a cursor: the newest page first, each page oldest first
        assert _names(readers.page_back(who, None, ids["big"], limit=64)) == [
            f"s{i}" for i in range(N)
        ]
        first = readers.events(who, f"shipment_id={ids['big']}").get_json()
        assert _names(first["events"]) == [f"s{i}" for i in range(N - 50, N)]  # 50 by default
        assert first["next_before"] == big["events_before"]
        small = readers.events(who, f"shipment_id={ids['small']}").get_json()
        assert _names(small["events"]) == ["t0", "t1", "t2"] and small["next_before"] is None

    # the contract's shipment route pages the same timeline
    got = merchant.get(f"/shipments/{ids['big']}/events?limit=100").get_json()
    assert _names(got["events"]) == [f"s{i}" for i in range(100, N)]
    rest = merchant.get(f"/shipments/{ids['big']}/events?before={got['next_before']}").get_json()
    assert _names(rest["events"]) == [f"s{i}" for i in range(50, 100)]


def test_someone_elses_order_is_404_for_its_events_too(
    app: Flask, client: FlaskClient, merchant: MerchantActions, auth: AuthActions
) -> None:
    ids = long_order(app, merchant)
    other_order = merchant.create_order(email="someone@example.com")
    other_shipment = merchant.add_shipment(other_order["id"])
    rival = make_merchant(app, client, name="Rival")

    assert rival.get(f"/orders/{ids['id']}/events").status_code == 404
    assert rival.get(f"/shipments/{ids['big']}/events").status_code == 404
    assert rival.get(f"/orders/{ids['id']}").status_code == 404  # as the order itself
    assert client.get("/api/track/" + "x" * 43 + "/events").status_code == 404
    assert client.get(f"/api/track/{ids['token'][:-2]}zz/events").status_code == 404
    # not signed in, then signed in as someone else
    assert client.get(f"/api/me/orders/{ids['id']}/events").status_code == 401
    auth.sign_in("someone@example.com")
    assert client.get(f"/api/me/orders/{ids['id']}/events").status_code == 404
    assert client.get(f"/api/me/orders/{ids['id']}").status_code == 404
    # a shipment of another order, even one the asker may see, is no shipment of this one
    assert (
        merchant.get(f"/orders/{ids['id']}/events?shipment_id={other_shipment['id']}").status_code
        == 404
    )
    assert (
        client.get(
            f"/api/me/orders/{other_order['id']}/events?shipment_id={ids['big']}"
        ).status_code
        == 404
    )
    assert (
        client.get(
            f"/api/track/{ids['token']}/events?shipment_id={other_shipment['id']}"
        ).status_code
        == 404
    )
    # no key at all
    assert client.get(f"/api/v1/orders/{ids['id']}/events").status_code == 401


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("before=nonsense", "before"),
        ("before=", "before"),
        ("before=" + "A" * 21 + "B", "before"),  # 22 characters, but no 16 bytes end in B
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("limit=-5", "limit"),
        ("shipment_id=0", "shipment_id"),
        ("shipment_id=abc", "shipment_id"),
        ("page=2", "page"),
    ],
)
def test_a_bad_query_is_422_saying_which(
    app: Flask,
    client: FlaskClient,
    merchant: MerchantActions,
    auth: AuthActions,
    query: str,
    field: str,
) -> None:
    order = merchant.create_order(email=EMAIL)
    auth.sign_in(EMAIL)
    token = order["tracking_url"].rsplit("/", 1)[1]
    for r in (
        merchant.get(f"/orders/{order['id']}/events?{query}"),
        client.get(f"/api/me/orders/{order['id']}/events?{query}"),
        client.get(f"/api/track/{token}/events?{query}"),
    ):
        assert r.status_code == 422, (query, r.get_json())
        assert field in r.get_json()["error"]["fields"]


def test_cursors_are_opaque_and_every_well_formed_one_reads() -> None:
    for at, event_id in [
        (datetime(1, 1, 1, tzinfo=UTC), 1),
        (START, 12345),
        (datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=UTC), 2**63 - 1),
        (datetime(2026, 1, 1, 12, tzinfo=timezone(timedelta(hours=2))), 7),
    ]:
        cursor = event_cursor(at, event_id)
        assert len(cursor) == 22 and parse_event_cursor(cursor) == (at, event_id)
    # beyond the last instant and id: the end, so everything comes before it
    end = parse_event_cursor("_" * 21 + "w")
    assert end == (datetime.max.replace(tzinfo=UTC), 2**63 - 1)
    assert parse_event_cursor("A" * 21 + "B") is None and parse_event_cursor("") is None


def test_render_orders_reads_only_the_events_it_shows(
    app: Flask, merchant: MerchantActions, monkeypatch: pytest.MonkeyPatch
) -> None:
    ids = long_order(app, merchant)
    fetched: list[int] = []
    execute = OrmSession.execute

    def counting(self: OrmSession, statement: Any, *args: Any, **kwargs: Any) -> Any:
        frozen = execute(self, statement, *args, **kwargs).freeze()
        fetched.append(len(frozen.data))
        return frozen()

    settings = app.config["WAYBILL_SETTINGS"]
    with session_scope(app.extensions["waybill.engine"]) as session:
        order = session.get(Order, ids["id"])
        assert order is not None
        monkeypatch.setattr(OrmSession, "execute", counting)
        (rendered,) = render_orders(
            session, [order], base_url=settings.base_url, secret_key=settings.secret_key
        )
        monkeypatch.undo()
        # the frame the dispatcher sends for this order: the same renderer, the same bound
        frame = Renderer(base_url=settings.base_url, secret_key=settings.secret_key)(
            session, [order], "de"
        )[ids["id"]]
    # 403 events recorded; 103 shown; a few rows more for the shipments, merchant, cursor
    assert sum(fetched) <= EVENTS_SHOWN * 2 + 3 + 10, fetched
    assert len(rendered.events) == EVENTS_SHOWN and rendered.events_total == N
    assert [len(s.events) for s in rendered.shipments] == [EVENTS_SHOWN, 3]
    body = json.loads(frame)
    assert len(frame) < 64 * 1024
    assert body["events_total"] == N and len(body["events"]) == EVENTS_SHOWN
    assert body["shipments"][0]["events"][0]["status_label"] != "On the way"  # in German


def test_a_socket_frame_of_a_long_order_is_bounded(
    app: Flask, merchant: MerchantActions, connect: Callable[..., LiveClient]
) -> None:
    ids = long_order(app, merchant)
    live = connect(track=ids["token"])
    live.hello()
    r = merchant.scan(ids["big"], "out_for_delivery", "2026-03-02T08:00:00Z", location="last")
    assert r.status_code == 201
    (update,) = live.updates(1)
    assert len(json.dumps(update)) < 64 * 1024
    frame = update["order"]
    big = frame["shipments"][0]
    assert big["events_total"] == N + 1 and len(big["events"]) == EVENTS_SHOWN
    assert big["events"][-1]["location"] == "last" and big["events_before"] is not None
    assert frame["events_total"] == N and len(frame["events"]) == EVENTS_SHOWN
    # the frame is what the tracking link answers now
    assert frame == merchant.client.get(f"/api/track/{ids['token']}").get_json()


def test_the_events_routes_are_documented(client: FlaskClient) -> None:
    paths = client.get("/api/openapi.json").get_json()["paths"]
    for path in (
        "/api/v1/orders/{order_id}/events",
        "/api/v1/shipments/{shipment_id}/events",
        "/api/me/orders/{order_id}/events",
        "/api/track/{token}/events",
    ):
        get = paths[path]["get"]
        assert "newest page first" in get["summary"] and "oldest first" in get["summary"]
        names = {p["name"] for p in get["parameters"] if p["in"] == "query"}
        assert {"before", "limit"} <= names
        assert "422" in get["responses"]


def test_the_contract_fields_are_in_the_schema(client: FlaskClient) -> None:
    schemas = client.get("/api/openapi.json").get_json()["components"]["schemas"]
    for name in ("OrderPublic", "ShipmentPublic"):
        required = set(schemas[name]["required"])
        assert {"events_total", "events_before", "events_truncated"} <= required, name
