"""HTML pages: the home screen and a tracking page (server-rendered until the PWA lands)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from flask import Blueprint, abort, current_app, render_template, send_from_directory
from sqlmodel import select

from waybill.api.track import order_by_token
from waybill.api.views import render_order, render_orders
from waybill.auth import sessions
from waybill.db import get_session
from waybill.models import Order

bp = Blueprint("pages", __name__)
STATIC = Path(__file__).parent / "static"


@bp.get("/static/<path:filename>")
def static(filename: str) -> Any:
    return send_from_directory(STATIC, filename, max_age=3600)


@bp.get("/")
def home() -> Any:
    customer = sessions.current_customer()
    if customer is None:
        return render_template("sign_in.html")
    db = get_session()
    orders = list(
        db.exec(select(Order).where(Order.customer_id == customer.id).order_by(Order.id.desc()))  # type: ignore[union-attr]
    )
    base_url = current_app.config["WAYBILL_SETTINGS"].base_url
    auth = sessions.current()
    return render_template(
        "home.html", customer=customer, orders=render_orders(db, orders, base_url=base_url),
        csrf_token=auth.csrf_token if auth else "",
    )


@bp.get("/t/<token>")
def tracking_page(token: str) -> Any:
    db = get_session()
    order = order_by_token(db, token)
    if order is None:
        abort(404)
    base_url = current_app.config["WAYBILL_SETTINGS"].base_url
    return render_template("track.html", order=render_order(db, order, base_url=base_url))
