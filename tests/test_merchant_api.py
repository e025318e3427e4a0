"""The merchant API as a merchant's shop uses it, errors included."""

from __future__ import annotations

import base64

import pytest

from tests.utils.factories import make_merchant, row_counts

SCAN_TIME = "2026-11-20T09:00:00+01:00"


def test_create_order_returns_the_contract_shape(merchant):
    body = {
        "external_id": "1042",
        "customer": {
            "email": "Ana@Example.COM",
            "name": "Ana",
            "locale": "de-DE",
            "timezone": "Europe/Berlin",
        },
        "items": [{"name": "Kettle", "quantity": 2, "image_url": "https://img.example/k.png"}],
        "placed_at": "2026-11-20T08:00:00+01:00",
    }
    r = merchant.post("/orders", body)
    assert r.status_code == 201
    order = r.get_json()
    assert order["external_id"] == "1042"
    assert order["status"] == "confirmed"
    assert order["customer"] == {"email": "ana@example.com", "name": "Ana"}
    assert order["shipments"] == []
    assert order["items"][0]["name"] == "Kettle"
    token = order["tracking_url"].removeprefix("http://127.0.0.1:8000/t/")
    assert len(token) >= 22  # 128 bits in base64url
    assert order["created_at"].endswith(("Z", "+00:00"))


def test_same_external_id_same_body_is_idempotent_different_body_conflicts(merchant, app):
    body = {"external_id": "A-1", "customer": {"email": "a@example.com"}}
    first = merchant.post("/orders", body)
    again = merchant.post("/orders", body)
    assert (first.status_code, again.status_code) == (201, 200)
    assert again.get_json()["id"] == first.get_json()["id"]
    before = row_counts(app)
    clash = merchant.post("/orders", {**body, "customer": {"email": "b@example.com"}})
    assert clash.status_code == 409
    assert clash.get_json()["error"]["code"] == "conflict"
    assert row_counts(app) == before


def test_order_progresses_through_shipment_events(merchant):
    order = merchant.create_order()
    r = merchant.post(f"/orders/{order['id']}/events", {"status": "processing"})
    assert (r.status_code, r.get_json()["status"]) == (201, "processing")
    shipment = merchant.add_shipment(order["id"], carrier="UPS", tracking_number="1Z999")
    assert shipment["status"] == "shipped"
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "shipped"
    r = merchant.scan(
        shipment["id"],
        "in_transit",
        SCAN_TIME,
        location="Leipzig",
        description="Sorted",
        event_id="ups-1",
    )
    assert r.status_code == 201
    assert r.get_json()["status"] == "in_transit"
    event = r.get_json()["shipments"][0]["events"][0]
    assert event["location"] == "Leipzig" and event["description"] == "Sorted"
    assert event["occurred_at"] in ("2026-11-20T08:00:00Z", "2026-11-20T08:00:00+00:00")


def test_duplicate_event_id_changes_nothing(merchant, app):
    order = merchant.create_order()
    shipment = merchant.add_shipment(order["id"])
    assert merchant.scan(shipment["id"], "in_transit", SCAN_TIME, event_id="e1").status_code == 201
    before = row_counts(app)
    again = merchant.scan(shipment["id"], "delivered", "2026-11-21T09:00:00Z", event_id="e1")
    assert again.status_code == 200
    assert again.get_json()["status"] == "in_transit"
    assert row_counts(app) == before


def test_late_event_does_not_roll_status_back(merchant):
    order = merchant.create_order()
    shipment = merchant.add_shipment(order["id"])
    merchant.scan(shipment["id"], "out_for_delivery", "2026-11-21T07:00:00Z")
    late = merchant.scan(shipment["id"], "in_transit", "2026-11-20T07:00:00Z")
    assert late.status_code == 201
    body = late.get_json()
    assert body["status"] == "out_for_delivery"
    assert [e["status"] for e in body["shipments"][0]["events"]] == [
        "in_transit",
        "out_for_delivery",
    ]


def test_split_shipments_report_packages_delivered(merchant):
    order = merchant.create_order()
    ships = [merchant.add_shipment(order["id"]) for _ in range(3)]
    merchant.scan(ships[0]["id"], "delivered", "2026-11-21T07:00:00Z")
    merchant.scan(ships[1]["id"], "delivered", "2026-11-21T08:00:00Z")
    r = merchant.scan(ships[2]["id"], "in_transit", "2026-11-21T06:00:00Z")
    body = r.get_json()
    assert body["status"] == "in_transit"
    assert body["packages"] == {"total": 3, "delivered": 2, "summary": "2 of 3 packages delivered"}


def test_list_is_newest_first_paginated_and_filtered(merchant):
    ids = [merchant.create_order()["id"] for _ in range(5)]
    merchant.post(f"/orders/{ids[0]}/events", {"status": "cancelled"})
    seen, cursor = [], None
    while True:
        page = merchant.get("/orders?limit=2" + (f"&cursor={cursor}" if cursor else "")).get_json()
        seen += [o["id"] for o in page["orders"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert seen == sorted(ids, reverse=True)
    cancelled = merchant.get("/orders?status=cancelled").get_json()["orders"]
    assert [o["id"] for o in cancelled] == [ids[0]]
    by_ext = merchant.get(f"/orders?external_id={cancelled[0]['external_id']}").get_json()
    assert [o["id"] for o in by_ext["orders"]] == [ids[0]]


def test_list_rejects_bad_parameters(merchant):
    for query in ("limit=0", "limit=x", "status=lost", "cursor=!!!", "=false", "sort=id"):
        r = merchant.get(f"/orders?{query}")
        assert r.status_code == 422, query
        assert r.get_json()["error"]["fields"]
    fields = merchant.get("/orders?sort=id").get_json()["error"]["fields"]
    assert fields == {"sort": "not a query parameter of this request"}


def test_another_merchants_order_is_not_found(app, client, merchant):
    other = make_merchant(app, client, "Other Shop")
    theirs = other.create_order()
    shipment = other.add_shipment(theirs["id"])
    before = row_counts(app)
    assert merchant.get(f"/orders/{theirs['id']}").status_code == 404
    assert (
        merchant.post(f"/orders/{theirs['id']}/events", {"status": "cancelled"}).status_code == 404
    )
    assert (
        merchant.post(
            f"/orders/{theirs['id']}/shipments", {"carrier": "DHL", "tracking_number": "1"}
        ).status_code
        == 404
    )
    r = merchant.scan(shipment["id"], "delivered", SCAN_TIME)
    assert r.status_code == 404
    assert r.get_json()["error"]["code"] == "not_found"
    assert merchant.get("/orders").get_json()["orders"] == []
    assert row_counts(app) == before


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wb_live_wrong"}, {"Authorization": "Basic abc"}],
)
def test_missing_or_bad_key_is_401_and_writes_nothing(client, app, headers):
    before = row_counts(app)
    r = client.post(
        "/api/v1/orders",
        json={"external_id": "x", "customer": {"email": "a@b.co"}},
        headers=headers,
    )
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert row_counts(app) == before


def test_revoked_key_is_refused(app, merchant):
    from waybill.auth.merchant_keys import revoke_key
    from waybill.db import session_scope

    with session_scope(app.extensions["waybill.engine"]) as session:
        assert revoke_key(
            session=session, merchant_id=merchant.merchant_id, prefix=merchant.api_key[:14]
        )
    assert merchant.get("/orders").status_code == 401


def test_malformed_json_is_400(client, merchant, app):
    before = row_counts(app)
    for raw in (b"{not json", b"[1, 2]", b'"text"'):
        r = client.post(
            "/api/v1/orders",
            data=raw,
            headers={**merchant.headers, "Content-Type": "application/json"},
        )
        assert r.status_code == 400, raw
        assert set(r.get_json()["error"]) >= {"code", "message"}
    assert row_counts(app) == before


def test_wrong_content_type_is_415(client, merchant, app):
    before = row_counts(app)
    r = client.post(
        "/api/v1/orders",
        data="external_id=1",
        headers={**merchant.headers, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert r.status_code == 415
    assert row_counts(app) == before


def test_body_over_one_mebibyte_is_413(client, merchant, app):
    before = row_counts(app)
    huge = b'{"external_id": "' + b"x" * (1024 * 1024) + b'"}'
    r = client.post(
        "/api/v1/orders",
        data=huge,
        headers={**merchant.headers, "Content-Type": "application/json"},
    )
    assert r.status_code == 413
    assert r.get_json()["error"]["code"] == "payload_too_large"
    assert row_counts(app) == before


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"customer": {"email": "a@example.com"}}, "external_id"),
        ({"external_id": "1", "customer": {"email": "not-an-address"}}, "customer.email"),
        (
            {"external_id": "1", "customer": {"email": "a@example.com", "timezone": "Mars/Base"}},
            "customer.timezone",
        ),
        (
            {
                "external_id": "1",
                "customer": {"email": "a@example.com"},
                "items": [{"name": "x", "quantity": 0}],
            },
            "items.0.quantity",
        ),
        (
            {
                "external_id": "1",
                "customer": {"email": "a@example.com"},
                "placed_at": "2026-11-20T08:00:00",
            },
            "placed_at",
        ),
        ({"external_id": "1", "customer": {"email": "a@example.com"}, "surprise": 1}, "surprise"),
        ({"external_id": "x" * 201, "customer": {"email": "a@example.com"}}, "external_id"),
    ],
)
def test_invalid_order_values_are_422_with_fields(merchant, app, body, field):
    before = row_counts(app)
    r = merchant.post("/orders", body)
    assert r.status_code == 422
    assert field in r.get_json()["error"]["fields"]
    assert row_counts(app) == before


def test_invalid_event_is_422_and_leaves_the_order_as_it_was(merchant, app):
    order = merchant.create_order()
    shipment = merchant.add_shipment(order["id"])
    before = row_counts(app)
    r = merchant.scan(shipment["id"], "teleported", "yesterday")
    assert r.status_code == 422
    assert set(r.get_json()["error"]["fields"]) == {"status", "occurred_at"}
    assert row_counts(app) == before
    assert merchant.get(f"/orders/{order['id']}").get_json()["status"] == "shipped"


def test_unknown_ids_are_404(merchant):
    assert merchant.get("/orders/999999").status_code == 404
    assert merchant.get(f"/orders/{2**70}").status_code == 404
    assert merchant.scan(999999, "delivered", SCAN_TIME).status_code == 404


def test_another_merchants_shipment_answers_exactly_as_a_missing_one(app, client, merchant):
    """Shipment ids are sequential: the answer must not tell "exists, not yours" apart."""
    order = merchant.create_order("a@example.com")
    theirs = merchant.add_shipment(order["id"])
    other = make_merchant(app, client, name="Other Shop")
    before = row_counts(app)
    foreign = other.scan(theirs["id"], "delivered", SCAN_TIME)
    missing = other.scan(theirs["id"] + 1000, "delivered", SCAN_TIME)
    assert foreign.status_code == missing.status_code == 404
    assert foreign.get_json() == missing.get_json()
    assert foreign.get_json()["error"]["message"] == "no such shipment"
    assert row_counts(app) == before


def test_no_merchant_sees_or_rewrites_what_another_merchant_said_about_a_customer(
    app, client, merchant, auth
):
    a = merchant.create_order(
        customer={"email": "carol@example.com", "name": "Carol Secretname-Smith"}
    )
    other = make_merchant(app, client, name="Other Shop")
    c = other.create_order(customer={"email": "Carol@Example.com"})
    assert c["customer"] == {"email": "carol@example.com", "name": None}  # not A's
    renamed = other.create_order(customer={"email": "carol@example.com", "name": "C. Renamed"})
    assert renamed["customer"]["name"] == "C. Renamed"  # what this merchant said
    # A still sees what A said, and the customer what they were first told
    assert merchant.get(f"/orders/{a['id']}").get_json()["customer"]["name"] == (
        "Carol Secretname-Smith"
    )
    listed = other.get("/orders").get_json()["orders"]
    assert "Carol Secretname-Smith" not in str(listed)
    auth.sign_in("carol@example.com")
    assert auth.client.get("/api/me").get_json()["name"] == "Carol Secretname-Smith"


def test_openapi_documents_every_api_route(client, app):
    doc = client.get("/api/openapi.json").get_json()
    assert doc["openapi"].startswith("3.1")
    documented = {(p, m.upper()) for p, ops in doc["paths"].items() for m in ops}
    for rule in app.url_map.iter_rules():
        if rule.rule.startswith("/api/") and rule.rule != "/api/openapi.json":
            path = rule.rule.replace("<int:", "<").replace("<", "{").replace(">", "}")
            for method in rule.methods - {"HEAD", "OPTIONS"}:
                assert (path, method) in documented, (path, method)


def test_hostile_bodies_get_clear_errors_not_500(merchant, client, app):
    before = row_counts(app)
    deep = b"[" * 100_000 + b"]" * 100_000
    for path in ("/api/v1/orders", "/auth/email", "/auth/code"):
        r = client.post(
            path, data=deep, headers={**merchant.headers, "Content-Type": "application/json"}
        )
        assert r.status_code == 400, path
    for stamp in ("0001-01-01T00:00:00+05:00", "9999-12-31T23:59:59-05:00"):
        r = merchant.post(
            "/orders",
            {"external_id": "far", "customer": {"email": "a@example.com"}, "placed_at": stamp},
        )
        assert r.status_code == 422 and "placed_at" in r.get_json()["error"]["fields"], stamp
    huge_cursor = base64.urlsafe_b64encode(b"9" * 25).decode().rstrip("=")
    assert merchant.get(f"/orders?cursor={huge_cursor}").status_code == 422
    assert row_counts(app) == before
    # NUL, which no database keeps (PostgreSQL refuses it), is dropped from text on the way in.
    nul = merchant.post(
        "/orders", {"external_id": "A\u0000B", "customer": {"email": "a@example.com"}}
    )
    assert nul.status_code == 201 and nul.get_json()["external_id"] == "AB"
    found = merchant.get("/orders?external_id=A%00B").get_json()["orders"]
    assert [o["id"] for o in found] == [nul.get_json()["id"]]
