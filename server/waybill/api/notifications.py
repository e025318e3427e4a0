"""Notification settings: preferences, per-order mute, push subscriptions, email unsubscribe."""

from __future__ import annotations

import html
from typing import Annotated, Any

from flask import Blueprint, Response, current_app, jsonify, request
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from sqlmodel import select

from waybill.api.spec import operation, parse_body
from waybill.auth import sessions
from waybill.db import get_session
from waybill.devices import device_label
from waybill.errors import ApiError, not_found
from waybill.models import Customer, Order, utcnow
from waybill.notify import outbox, preferences, subscriptions
from waybill.notify.delivery import read_unsubscribe_token
from waybill.notify.models import OrderMute, PushSubscription
from waybill.orders import tracked_order
from waybill.tracking.statuses import is_terminal

bp = Blueprint("notifications_api", __name__)
MAX_ID = 2**63 - 1
#: Anonymous "Notify me" devices one order may have: one status change fans out to each.
MAX_DEVICES_PER_ORDER = 20
#: Checked by ``preferences.parse`` (so one answer names every bad field); the pattern is for
#: the OpenAPI document.
HHMM = Annotated[
    str,
    StringConstraints(max_length=5),
    Field(json_schema_extra={"pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}),
]


class Channels(BaseModel):
    model_config = ConfigDict(extra="forbid")
    push: bool
    email: bool


class QuietHoursBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    start: HHMM
    end: HHMM


class PreferencesBody(BaseModel):
    """The customer's notification preferences."""

    model_config = ConfigDict(extra="forbid")
    channels: Channels
    statuses: dict[str, bool] = Field(
        description="every status of the unified set: true to be notified"
    )
    quiet_hours: QuietHoursBody | None
    timezone: str = Field(description="IANA time zone, e.g. Europe/Berlin")
    language: str = Field(description="en or de")


class OrderPreferencesBody(BaseModel):
    """This order's notification settings."""

    model_config = ConfigDict(extra="forbid")
    muted: bool


class OrderPreferences(BaseModel):
    """This order's notification settings."""

    order_id: int
    muted: bool


class PublicKey(BaseModel):
    """The VAPID public key to subscribe with (applicationServerKey)."""

    public_key: str


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


# --- helpers --------------------------------------------------------------------------------


def _customer() -> Customer:
    return sessions.require_signed_in()


def _settings() -> Any:
    return current_app.config["WAYBILL_SETTINGS"]


def _wake_worker() -> None:
    worker = current_app.extensions.get("waybill.worker")
    if worker is not None:
        worker.notify()


def _prefs_json(customer: Customer) -> dict[str, Any]:
    return outbox.customer_preferences(customer).to_dict()


def _checked_subscription(body: SubscriptionBody) -> None:
    errors: dict[str, str] = {}
    problem = subscriptions.endpoint_error(body.endpoint, _settings().push_endpoint_hosts)
    if problem:
        errors["endpoint"] = problem
    errors.update(subscriptions.key_errors(body.keys.p256dh, body.keys.auth))
    if errors:
        raise ApiError(422, "invalid", "this push subscription cannot be used", errors)


def _sub_public(sub: PushSubscription) -> dict[str, Any]:
    return SubscriptionPublic(
        id=sub.id,  # type: ignore[arg-type]
        label=sub.label,
        created_at=sub.created_at,
        last_used_at=sub.last_used_at,
    ).model_dump(mode="json")


# --- preferences ----------------------------------------------------------------------------


@bp.get("/api/me/preferences")
@operation(
    "The customer's notification preferences",
    responses={200: PreferencesBody},
    security="session",
    tag="notifications",
)
def get_preferences() -> Any:
    return jsonify(_prefs_json(_customer()))


@bp.put("/api/me/preferences")
@operation(
    "Replace the notification preferences; held notifications follow at once",
    body=PreferencesBody,
    responses={200: PreferencesBody},
    security="session",
    tag="notifications",
)
def put_preferences() -> Any:
    customer = _customer()
    parse_body(PreferencesBody)  # shape and types; the values are checked by the domain rules
    data = request.get_json(cache=True)
    try:
        prefs = preferences.parse(data, base=preferences.defaults())
    except preferences.InvalidPreferences as exc:
        raise ApiError(422, "invalid", "some preferences are not valid", exc.fields) from None
    db = get_session()
    customer.preferences = prefs.to_dict()
    db.add(customer)
    db.flush()
    outbox.reevaluate(db, customer)
    db.commit()
    _wake_worker()
    return jsonify(prefs.to_dict())


def _own_order(customer: Customer, order_id: int) -> Order:
    order = get_session().get(Order, order_id) if order_id <= MAX_ID else None
    if order is None or order.customer_id != customer.id:
        raise not_found("order")
    return order


@bp.get("/api/me/orders/<int:order_id>/preferences")
@operation(
    "Whether one order is muted",
    responses={200: OrderPreferences},
    security="session",
    tag="notifications",
)
def get_order_preferences(order_id: int) -> Any:
    customer = _customer()
    _own_order(customer, order_id)
    muted = get_session().get(OrderMute, order_id) is not None
    return jsonify(OrderPreferences(order_id=order_id, muted=muted).model_dump())


@bp.put("/api/me/orders/<int:order_id>/preferences")
@operation(
    "Mute or unmute one order on every channel",
    body=OrderPreferencesBody,
    responses={200: OrderPreferences},
    security="session",
    tag="notifications",
)
def put_order_preferences(order_id: int) -> Any:
    customer = _customer()
    _own_order(customer, order_id)
    body = parse_body(OrderPreferencesBody)
    db = get_session()
    mute = db.get(OrderMute, order_id)
    if body.muted and mute is None:
        db.add(OrderMute(order_id=order_id))
    elif not body.muted and mute is not None:
        db.delete(mute)
    db.flush()
    outbox.reevaluate(db, customer)
    db.commit()
    return jsonify(OrderPreferences(order_id=order_id, muted=body.muted).model_dump())


# --- push -----------------------------------------------------------------------------------


@bp.get("/api/push/public-key")
@operation("The VAPID public key for subscribing", responses={200: PublicKey}, tag="notifications")
def public_key() -> Any:
    keys = current_app.extensions["waybill.vapid"]
    response = jsonify(public_key=keys.public_key)
    response.headers["Cache-Control"] = "public, max-age=3600"
    return response


@bp.get("/api/me/push-subscriptions")
@operation(
    "The customer's devices with push on",
    responses={200: SubscriptionList},
    security="session",
    tag="notifications",
)
def list_subscriptions() -> Any:
    customer = _customer()
    subs = get_session().exec(
        select(PushSubscription)
        .where(PushSubscription.scope == f"customer:{customer.id}")
        .order_by(PushSubscription.id)  # type: ignore[arg-type]
    )
    return jsonify(subscriptions=[_sub_public(s) for s in subs])


@bp.post("/api/me/push-subscriptions")
@operation(
    "Receive push notifications on this device",
    body=SubscriptionBody,
    responses={201: SubscriptionPublic},
    security="session",
    tag="notifications",
)
def add_subscription() -> Any:
    customer = _customer()
    body = parse_body(SubscriptionBody)
    _checked_subscription(body)
    db = get_session()
    others = subscriptions.held_by_other_customers(
        db,
        customer_id=customer.id,  # type: ignore[arg-type]
        endpoint=body.endpoint,
    )
    if others:
        outbox.forget_subscriptions(db, others, now=utcnow())
    sub, _ = subscriptions.save(
        db,
        scope=f"customer:{customer.id}",
        endpoint=body.endpoint,
        p256dh=body.keys.p256dh,
        auth=body.keys.auth,
        label=device_label(request.user_agent.string),
        language=outbox.customer_preferences(customer).language,
        customer_id=customer.id,
        auth_session_id=signed_in.id if (signed_in := sessions.current()) else None,
    )
    db.commit()
    return jsonify(_sub_public(sub)), 201


@bp.delete("/api/me/push-subscriptions")
@operation(
    "Stop push notifications on this device",
    body=SubscriptionRemoveBody,
    responses={204: None},
    security="session",
    tag="notifications",
)
def remove_subscription() -> Any:
    customer = _customer()
    body = parse_body(SubscriptionRemoveBody)
    db = get_session()
    sub = subscriptions.find(db, scope=f"customer:{customer.id}", endpoint=body.endpoint)
    if sub is not None:
        outbox.forget_subscriptions(db, {sub.id}, now=utcnow())  # type: ignore[arg-type]
        db.commit()
    return Response(status=204)


@bp.delete("/api/me/push-subscriptions/<int:subscription_id>")
@operation(
    "Remove one device from the settings list",
    responses={204: None},
    security="session",
    tag="notifications",
)
def remove_subscription_by_id(subscription_id: int) -> Any:
    customer = _customer()
    db = get_session()
    sub = db.get(PushSubscription, subscription_id) if subscription_id <= MAX_ID else None
    if sub is None or sub.scope != f"customer:{customer.id}":
        raise not_found("subscription")
    outbox.forget_subscriptions(db, {subscription_id}, now=utcnow())
    db.commit()
    return Response(status=204)


@bp.post("/api/track/<token>/push-subscriptions")
@operation(
    "Notify me about this order (no account)",
    body=SubscriptionBody,
    responses={201: SubscriptionPublic},
    tag="tracking",
)
def add_track_subscription(token: str) -> Any:
    db = get_session()
    order = tracked_order(db, token)
    body = parse_body(SubscriptionBody)
    _checked_subscription(body)
    scope = f"order:{order.id}"
    if (
        subscriptions.find(db, scope=scope, endpoint=body.endpoint) is None
        and subscriptions.count_in_scope(db, scope) >= MAX_DEVICES_PER_ORDER
    ):
        raise ApiError(
            429,
            "too_many_subscriptions",
            f"at most {MAX_DEVICES_PER_ORDER} devices can follow one order without an account",
        )
    language = body.language or request.accept_languages.best_match(preferences.LANGUAGES)
    sub, _ = subscriptions.save(
        db,
        scope=scope,
        endpoint=body.endpoint,
        p256dh=body.keys.p256dh,
        auth=body.keys.auth,
        label=device_label(request.user_agent.string),
        language=preferences.supported_language(language),
        order_id=order.id,
    )
    if is_terminal(order.status) and sub.expires_at is None:
        sub.expires_at = utcnow() + outbox.ANONYMOUS_KEEP
        db.add(sub)
    db.commit()
    return jsonify(_sub_public(sub)), 201


@bp.delete("/api/track/<token>/push-subscriptions")
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
    sub = subscriptions.find(db, scope=f"order:{order.id}", endpoint=body.endpoint)
    if sub is not None:
        outbox.forget_subscriptions(db, {sub.id}, now=utcnow())  # type: ignore[arg-type]
        db.commit()
    return Response(status=204)


# --- email unsubscribe (the link and List-Unsubscribe of every notification email) ----------


def _unsubscribe_customer(token: str) -> Customer:
    cid = read_unsubscribe_token(_settings().secret_key, token)
    customer = get_session().get(Customer, cid) if cid is not None else None
    if customer is None:
        raise not_found("subscription")
    return customer


def _page(title: str, body: str, status: int = 200) -> Response:
    doc = (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="stylesheet" href="/static/pages.css"><title>{html.escape(title)}</title>'
        f"</head><body><main><h1>{html.escape(title)}</h1>{body}</main></body></html>"
    )
    return Response(doc, status=status, mimetype="text/html")


@bp.get("/unsubscribe/<token>")
def unsubscribe_page(token: str) -> Response:
    """A page with one button: mail scanners open links, so a GET changes nothing."""
    _unsubscribe_customer(token)
    return _page(
        "Stop notification emails?",
        f'<form method="post" action="/unsubscribe/{html.escape(token)}">'
        '<button type="submit">Unsubscribe</button></form>'
        "<p>Push notifications and your orders stay as they are.</p>",
    )


@bp.post("/unsubscribe/<token>")
def unsubscribe(token: str) -> Response:
    """RFC 8058 one-click unsubscribe (and the page's button): email notifications off."""
    customer = _unsubscribe_customer(token)
    db = get_session()
    prefs = outbox.customer_preferences(customer).to_dict()
    prefs["channels"]["email"] = False
    customer.preferences = prefs
    db.add(customer)
    db.flush()
    outbox.reevaluate(db, customer)
    db.commit()
    return _page("Unsubscribed", "<p>You will get no more notification emails.</p>")
