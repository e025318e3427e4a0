"""Tracking links: ``/t/<token>`` and ``/api/track/<token>``, no sign-in needed."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify

from waybill.api.spec import operation
from waybill.db import get_session
from waybill.models import OrderPublic
from waybill.orders import render_order, tracked_order

bp = Blueprint("track_api", __name__)


@bp.get("/api/track/<token>")
@operation("One order by its tracking token", responses={200: OrderPublic}, tag="tracking")
def track(token: str) -> Any:
    db = get_session()
    order = tracked_order(db, token)
    settings = current_app.config["WAYBILL_SETTINGS"]
    rendered = render_order(db, order, base_url=settings.base_url, secret_key=settings.secret_key)
    return jsonify(rendered.model_dump(mode="json"))
