"""Orders as this request's answer: rendered with the app's settings on the request's session."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Any

from flask import Response, current_app, json, request

from waybill import catalogue
from waybill.db import get_session
from waybill.models import Order, OrderPublic
from waybill.orders import AnswerCache, render_orders


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


def order_json_now(order: Order, *, language: str = "en") -> Any:
    """:func:`order_json` of the order as it is now, read again after the change log's cursor.

    The row that found the order was read before the cursor; on PostgreSQL each statement sees
    what was committed when it began, so a change committed between the two would give an
    answer older than its cursor (the app would take it for the newer state and go back), kept
    under that cursor until the next change."""
    get_session().refresh(order)
    return order_json(order, language=language)


def cached_json(key: Hashable, cursor: int, render: Callable[[], Any]) -> Response:
    """A JSON answer that depends on nothing but what the change log's ``cursor`` stands for
    (and ``key``): served from the app's :class:`AnswerCache` while the cursor has not moved,
    else rendered and kept."""
    cache: AnswerCache = current_app.extensions.setdefault("waybill.answers", AnswerCache())
    body = cache.get(key, cursor)
    if body is None:
        body = json.dumps(render()).encode()
        cache.put(key, cursor, body)
    return current_app.response_class(body, mimetype="application/json")


def browser_language() -> str:
    """The first language of the request's Accept-Language we speak (as the PWA picks its
    own), else English: for whoever is not signed in, or has said nothing."""
    return catalogue.first_spoken(tag for tag, _ in request.accept_languages)
