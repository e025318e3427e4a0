"""Test factories: merchants with keys, orders, signed-in customers — through the real API."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

from flask import Flask
from flask.testing import FlaskClient

from waybill.auth import login
from waybill.auth.merchant_keys import create_merchant
from waybill.db import session_scope

_ids = itertools.count(1)


@dataclass
class MerchantActions:
    """A merchant calling the API with its key."""

    client: FlaskClient
    merchant_id: str
    api_key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"}

    def post(self, path: str, body: Any) -> Any:
        return self.client.post(f"/api/v1{path}", json=body, headers=self.headers)

    def get(self, path: str) -> Any:
        return self.client.get(f"/api/v1{path}", headers=self.headers)

    def create_order(self, email: str = "shopper@example.com", **fields: Any) -> dict[str, Any]:
        body = {"external_id": f"EXT-{next(_ids)}", "customer": {"email": email}, **fields}
        r = self.post("/orders", body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    def add_shipment(self, order_id: int, **fields: Any) -> dict[str, Any]:
        body = {"carrier": "DHL", "tracking_number": f"TN{next(_ids):08d}", **fields}
        r = self.post(f"/orders/{order_id}/shipments", body)
        assert r.status_code == 201, r.get_json()
        return r.get_json()  # type: ignore[no-any-return]

    def scan(self, shipment_id: int, status: str, occurred_at: str, **fields: Any) -> Any:
        return self.post(
            f"/shipments/{shipment_id}/events",
            {"status": status, "occurred_at": occurred_at, **fields},
        )


def make_merchant(app: Flask, client: FlaskClient, name: str = "Test Shop") -> MerchantActions:
    with session_scope(app.extensions["waybill.engine"]) as session:
        merchant, key = create_merchant(session=session, name=name)
        merchant_id = merchant.id
    return MerchantActions(client=client, merchant_id=merchant_id, api_key=key)


class AuthActions:
    """Signs a customer in on a test client, the way the emailed link does."""

    def __init__(self, app: Flask, client: FlaskClient) -> None:
        self.app, self.client = app, client

    def login_link(self, email: str) -> str:
        settings = self.app.config["WAYBILL_SETTINGS"]
        with session_scope(self.app.extensions["waybill.engine"]) as session:
            customer = login.find_customer(session, email)
            assert customer is not None, f"no customer {email}"
            return login.issue(
                session=session, customer=customer, secret=settings.secret_key
            ).link_token

    def sign_in(self, email: str) -> str:
        """Sign in and return the CSRF token."""
        r = self.client.post(f"/auth/link/{self.login_link(email)}")
        assert r.status_code == 303, r.data
        me = self.client.get("/api/me")
        assert me.status_code == 200
        return me.get_json()["csrf_token"]  # type: ignore[no-any-return]

    def sign_out(self) -> None:
        self.client.post("/auth/logout")


def row_counts(app: Flask) -> dict[str, int]:
    """How many rows each table holds: to show that a refused request wrote nothing."""
    import sqlalchemy as sa
    from sqlmodel import SQLModel

    engine = app.extensions["waybill.engine"]
    with engine.connect() as conn:
        return {
            name: conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()
            for name, table in SQLModel.metadata.tables.items()
            if name not in ("api_key", "auth_session")  # touched by authentication itself
        }
