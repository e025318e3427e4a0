"""A tracking link's "Notify me": ``/api/track/<token>/push-subscriptions``, no account.

Such a browser hears the default statuses of that one order, without quiet hours, in its
language; how many may follow one order and for how long is ``notify/subscriptions.py``'s.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from waybill.api.answers import browser_language
from waybill.api.push_subscriptions import (
    SubscriptionBody,
    SubscriptionPublic,
    SubscriptionRemoveBody,
    public,
    usable_subscription,
)
from waybill.api.spec import operation, parse_body
from waybill.db import get_session
from waybill.devices import device_label
from waybill.models import utcnow
from waybill.notify import preferences, subscriptions
from waybill.orders import tracked_order

bp = Blueprint("track_subscriptions_api", __name__, url_prefix="/api/track")


@bp.post("/<token>/push-subscriptions")
@operation(
    "Notify me about this order (no account)",
    body=SubscriptionBody,
    responses={201: SubscriptionPublic},
    tag="tracking",
)
def add_track_subscription(token: str) -> Any:
    db = get_session()
    order = tracked_order(db, token)
    body = usable_subscription()
    language = body.language or browser_language()
    sub = subscriptions.follow_order(
        db,
        order_id=order.id,  # type: ignore[arg-type]
        order_status=order.status,
        endpoint=body.endpoint,
        p256dh=body.keys.p256dh,
        auth=body.keys.auth,
        vapid_key=body.vapid_key,
        label=device_label(request.user_agent.string),
        language=preferences.supported_language(language),
        now=utcnow(),
    )
    db.commit()
    return jsonify(public(sub)), 201


@bp.delete("/<token>/push-subscriptions")
@operation(
    "Stop notifying this browser about this order",
    body=SubscriptionRemoveBody,
    responses={204: None},
    tag="tracking",
)
def remove_track_subscription(token: str) -> Any:
    db = get_session()
    order = tracked_order(db, token)
    body = parse_body(SubscriptionRemoveBody)
    scope = subscriptions.order_scope(order.id)  # type: ignore[arg-type]
    if subscriptions.forget_endpoint(db, scope=scope, endpoint=body.endpoint, now=utcnow()):
        db.commit()
    return Response(status=204)
