"""Orders as this request's answer: rendered with the app's settings on the request's session."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from flask import current_app, request

from waybill import catalogue
from waybill.db import get_session
from waybill.models import Order, OrderPublic
from waybill.orders import render_orders


def rendered_orders(
    orders: Sequence[Order], *, language: str = "en", merchant_view: bool = False
) -> list[OrderPublic]:
    settings = current_app.config["WAYBILL_SETTINGS"]
    return render_orders(
        get_session(),
        orders,
        base_url=settings.base_url,
        secret_key=settings.secret_key,
        merchant_view=merchant_view,
        language=language,
    )


def order_json(order: Order, *, language: str = "en", merchant_view: bool = False) -> Any:
    """The order as JSON-ready data, as every reader of it gets it."""
    return rendered_orders([order], language=language, merchant_view=merchant_view)[0].model_dump(
        mode="json"
    )


def browser_language() -> str:
    """The first language of the request's Accept-Language we speak (as the PWA picks its
    own), else English: for whoever is not signed in, or has said nothing."""
    return catalogue.first_spoken(tag for tag, _ in request.accept_languages)
