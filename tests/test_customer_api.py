"""What a signed-in customer, and anyone holding a tracking link, can see."""

from __future__ import annotations


def test_me_needs_sign_in(client):
    r = client.get("/api/me")
    assert r.status_code == 401
    assert r.get_json()["error"]["code"] == "unauthorized"
    assert client.get("/api/me/orders").status_code == 401


def test_customer_sees_own_orders_newest_first(merchant, auth, client):
    first = merchant.create_order(
        email="Pat@Example.com", customer={"email": "pat@example.com", "name": "Pat"}
    )
    merchant.create_order(email="someone-else@example.com")
    second = merchant.create_order(email="PAT@example.com")
    auth.sign_in("pat@EXAMPLE.com")
    me = client.get("/api/me").get_json()
    assert me["email"] == "pat@example.com"
    assert me["name"] == "Pat"
    orders = client.get("/api/me/orders").get_json()["orders"]
    assert [o["id"] for o in orders] == [second["id"], first["id"]]
    assert "customer" not in orders[0]


def test_order_detail_has_shipments_and_events(merchant, auth, client):
    order = merchant.create_order(email="sam@example.com")
    shipment = merchant.add_shipment(order["id"])
    merchant.scan(shipment["id"], "in_transit", "2026-11-20T09:00:00Z", location="Hub")
    auth.sign_in("sam@example.com")
    detail = client.get(f"/api/me/orders/{order['id']}").get_json()
    assert detail["status"] == "in_transit"
    assert detail["shipments"][0]["events"][0]["location"] == "Hub"


def test_another_customers_order_is_not_found(merchant, auth, client):
    mine = merchant.create_order(email="me@example.com")
    theirs = merchant.create_order(email="them@example.com")
    auth.sign_in("me@example.com")
    assert client.get(f"/api/me/orders/{mine['id']}").status_code == 200
    r = client.get(f"/api/me/orders/{theirs['id']}")
    assert r.status_code == 404 and r.get_json()["error"]["code"] == "not_found"


def test_logout_ends_the_session(merchant, auth, client):
    merchant.create_order(email="out@example.com")
    auth.sign_in("out@example.com")
    assert client.post("/auth/logout").status_code == 204
    assert client.get("/api/me").status_code == 401


def test_cookie_authenticated_write_needs_the_csrf_token(merchant, auth, client):
    order = merchant.create_order(email="csrf@example.com")
    csrf = auth.sign_in("csrf@example.com")
    path = f"/api/me/orders/{order['id']}/preferences"
    refused = client.put(path, json={"muted": True})
    assert refused.status_code == 403
    assert refused.get_json()["error"]["code"] == "csrf"
    wrong = client.put(path, json={"muted": True}, headers={"X-CSRF-Token": csrf[::-1]})
    assert wrong.status_code == 403
    assert client.put(path, json={"muted": True}, headers={"X-CSRF-Token": csrf}).status_code == 200


def test_tracking_link_shows_order_without_customer_details(merchant, client):
    order = merchant.create_order(customer={"email": "private@example.com", "name": "Priv"})
    token = order["tracking_url"].rsplit("/", 1)[1]
    r = client.get(f"/api/track/{token}")
    assert r.status_code == 200
    assert r.get_json()["id"] == order["id"]
    assert b"private@example.com" not in r.data and b"Priv" not in r.data
    page = client.get(f"/t/{token}")
    assert page.status_code == 200
    assert b"private@example.com" not in page.data


def test_wrong_tracking_token_is_404(client, merchant):
    merchant.create_order()
    for token in ("nope", "A" * 32, "x" * 500):
        assert client.get(f"/api/track/{token}").status_code == 404
        assert client.get(f"/t/{token}").status_code == 404
