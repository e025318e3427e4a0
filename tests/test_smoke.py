from __future__ import annotations


def test_order_created_and_tracked_by_link(merchant, client):
    order = merchant.create_order(items=[{"name": "Lamp", "quantity": 1}])
    token = order["tracking_url"].rsplit("/", 1)[1]
    r = client.get(f"/api/track/{token}")
    assert r.status_code == 200
    assert r.get_json()["status"] == "confirmed"
