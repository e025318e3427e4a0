"""The customer's devices with push on: ``/api/me/push-subscriptions``.

The body a browser sends (``PushSubscription.toJSON()``) and the device the API answers with
are the same for a tracking link's "Notify me" (``track_subscriptions.py``).
"""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints

from waybill.api.access import owned_or_404
from waybill.api.spec import operation, parse_body
from waybill.auth import sessions
from waybill.db import get_session
from waybill.devices import device_label
from waybill.errors import ApiError
from waybill.models import utcnow
from waybill.notify import subscriptions
from waybill.notify.models import PushSubscription
from waybill.orders import language_of

bp = Blueprint("push_subscriptions_api", __name__, url_prefix="/api/me/push-subscriptions")


class SubscriptionKeys(BaseModel):
    model_config = ConfigDict(extra="forbid")
    p256dh: Annotated[str, StringConstraints(max_length=100)]
    auth: Annotated[str, StringConstraints(max_length=40)]


class SubscriptionBody(BaseModel):
    """A browser's ``PushSubscription.toJSON()``."""

    model_config = ConfigDict(extra="forbid")
    endpoint: Annotated[str, StringConstraints(max_length=2048)]
    keys: SubscriptionKeys
    expirationTime: int | float | None = None  # noqa: N815  (the browser's own name)
    language: str | None = Field(default=None, description="en or de (tracking link only)")
    vapid_key: Annotated[str, StringConstraints(max_length=100)] | None = Field(
        default=None,
        description="the applicationServerKey subscribed with (base64url); default: the "
        "current one of GET /api/push/public-key",
    )


class SubscriptionRemoveBody(BaseModel):
    """The subscription to forget (its endpoint is enough)."""

    model_config = ConfigDict(extra="ignore")
    endpoint: Annotated[str, StringConstraints(max_length=2048)]


class SubscriptionPublic(BaseModel):
    """A device that receives push notifications."""

    id: int
    label: str
    created_at: AwareDatetime
    last_used_at: AwareDatetime | None


class SubscriptionList(BaseModel):
    """The customer's devices with push notifications on."""

    subscriptions: list[SubscriptionPublic]


def usable_subscription() -> SubscriptionBody:
    """The request's subscription, if the server can push to it: else 422 naming the fields."""
    body = parse_body(SubscriptionBody)
    settings = current_app.config["WAYBILL_SETTINGS"]
    errors: dict[str, str] = {}
    problem = subscriptions.endpoint_error(body.endpoint, settings.push_endpoint_hosts)
    if problem:
        errors["endpoint"] = problem
    errors.update(subscriptions.key_errors(body.keys.p256dh, body.keys.auth))
    held = current_app.extensions["waybill.vapid_keys"]  # the current public key first
    if body.vapid_key is None:
        body.vapid_key = held[0]
    elif body.vapid_key not in held:
        errors["vapid_key"] = (
            "is not a key this server signs with: subscribe again with the key of "
            "GET /api/push/public-key"
        )
    if errors:
        raise ApiError(422, "invalid", "this push subscription cannot be used", errors)
    return body


def public(sub: PushSubscription) -> dict[str, Any]:
    return SubscriptionPublic(
        id=sub.id,  # type: ignore[arg-type]
        label=sub.label,
        created_at=sub.created_at,
        last_used_at=sub.last_used_at,
    ).model_dump(mode="json")


@bp.get("")
@operation(
    "The customer's devices with push on",
    responses={200: SubscriptionList},
    security="session",
    tag="notifications",
)
def list_subscriptions() -> Any:
    customer = sessions.require_signed_in()
    scope = subscriptions.customer_scope(customer.id)  # type: ignore[arg-type]
    devices = subscriptions.in_scope(get_session(), scope)
    return jsonify(subscriptions=[public(s) for s in devices])


@bp.post("")
@operation(
    "Receive push notifications on this device",
    body=SubscriptionBody,
    responses={201: SubscriptionPublic},
    security="session",
    tag="notifications",
)
def add_subscription() -> Any:
    customer = sessions.require_signed_in()
    body = usable_subscription()
    db = get_session()
    sub = subscriptions.subscribe_customer(
        db,
        customer_id=customer.id,  # type: ignore[arg-type]
        endpoint=body.endpoint,
        p256dh=body.keys.p256dh,
        auth=body.keys.auth,
        vapid_key=body.vapid_key,
        label=device_label(request.user_agent.string),
        language=language_of(customer),
        auth_session_id=sessions.signed_in().id,
        now=utcnow(),
    )
    db.commit()
    return jsonify(public(sub)), 201


@bp.delete("")
@operation(
    "Stop push notifications on this device",
    body=SubscriptionRemoveBody,
    responses={204: None},
    security="session",
    tag="notifications",
)
def remove_subscription() -> Any:
    customer = sessions.require_signed_in()
    body = parse_body(SubscriptionRemoveBody)
    db = get_session()
    scope = subscriptions.customer_scope(customer.id)  # type: ignore[arg-type]
    if subscriptions.forget_endpoint(db, scope=scope, endpoint=body.endpoint, now=utcnow()):
        db.commit()
    return Response(status=204)


@bp.delete("/<int:subscription_id>")
@operation(
    "Remove one device from the settings list",
    responses={204: None},
    security="session",
    tag="notifications",
)
def remove_subscription_by_id(subscription_id: int) -> Any:
    customer = sessions.require_signed_in()
    db = get_session()
    scope = subscriptions.customer_scope(customer.id)  # type: ignore[arg-type]
    owned_or_404(db, PushSubscription, subscription_id, "subscription", scope=scope)
    subscriptions.forget_subscriptions(db, {subscription_id}, now=utcnow())
    db.commit()
    return Response(status=204)
