"""Integrations: the merchant's platform connections and own webhook (``/api/v1``, by API
key), the platforms' webhooks in (``/webhooks/<platform>/<merchant_id>``, by signature), and
the "Track your order" snippet for confirmation emails."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app, g, jsonify, render_template, request
from pydantic import BaseModel, StringConstraints
from pydantic import Field as Constraint
from sqlmodel import col, select

from waybill.api import merchant as merchant_api
from waybill.api.access import owned_or_404
from waybill.api.spec import operation, parse_body
from waybill.db import get_session
from waybill.errors import ApiError
from waybill.integrations import inbox, outbound
from waybill.integrations.applier import Applier
from waybill.models import Integration, Order, WebhookReceipt
from waybill.orders import tracking_url

merchant_bp = Blueprint("merchant_integrations_api", __name__, url_prefix="/api/v1")
merchant_bp.before_request(merchant_api._authenticate)

webhooks_bp = Blueprint("platform_webhooks", __name__)

Secret = Annotated[str, StringConstraints(min_length=8, max_length=300, pattern=r"^[\x21-\x7e]+$")]


class IntegrationIn(BaseModel):
    """The secret the platform signs its webhooks with (as the platform shows it), and for a
    tracking provider (``aftership``) optionally an API key: then Waybill polls it for the
    merchant's parcels instead of waiting for webhooks."""

    model_config = {"extra": "forbid"}
    secret: Secret
    api_key: Secret | None = None


class IntegrationOut(BaseModel):
    platform: str
    webhook_url: str
    polling: bool


class IntegrationList(BaseModel):
    integrations: list[IntegrationOut]


class ReceiptOut(BaseModel):
    id: int
    topic: str | None
    state: str  # queued | applied | held | ignored | failed
    result: str | None
    received_at: str
    applied_at: str | None


class ReceiptList(BaseModel):
    webhooks: list[ReceiptOut]


class WebhookEndpointIn(BaseModel):
    model_config = {"extra": "forbid"}
    #: https on a public address (decided by resolving the name: a 422 when it is not)
    url: Annotated[
        str, StringConstraints(min_length=8, max_length=2048, pattern=r"^https?://[\x21-\x7e]+$")
    ]
    events: list[str] = Constraint(
        min_length=1,
        max_length=len(outbound.EVENT_TYPES),
        json_schema_extra={"items": {"type": "string", "enum": list(outbound.EVENT_TYPES)}},
    )


class WebhookEndpointOut(BaseModel):
    """``secret`` only in the answer that made the endpoint: keep it then."""

    id: int
    url: str
    events: list[str]
    secret: str | None
    updated_at: str


class EmailSnippet(BaseModel):
    html: str
    text: str
    tracking_url: str


def _settings() -> Any:
    return current_app.config["WAYBILL_SETTINGS"]


def _webhook_url(platform: str) -> str:
    return f"{_settings().base_url.rstrip('/')}/webhooks/{platform}/{g.merchant.id}"


def _platform(platform: str) -> str:
    if platform not in inbox.PLATFORMS:
        raise ApiError(404, "not_found", f"no such platform; known: {', '.join(inbox.PLATFORMS)}")
    return platform


def _integration_json(row: Integration) -> dict[str, Any]:
    return IntegrationOut(
        platform=row.platform,
        webhook_url=_webhook_url(row.platform),
        polling=bool(row.api_key_sealed),
    ).model_dump()


@merchant_bp.put("/integrations/<platform>")
@operation(
    "Connect a platform: its webhook secret (and a provider's API key, to poll it)",
    body=IntegrationIn,
    responses={200: IntegrationOut, 422: None},
    security="merchant",
    tag="integrations",
)
def put_integration(platform: str) -> Any:
    platform = _platform(platform)
    data = parse_body(IntegrationIn)
    if data.api_key and platform not in inbox.POLLED:
        raise ApiError(
            422, "invalid", "some values are not valid", {"api_key": f"{platform} is not polled"}
        )
    db = get_session()
    row = inbox.connect(
        db,
        merchant=g.merchant,
        platform=platform,
        secret=data.secret,
        api_key=data.api_key,
        server_key=_settings().secret_key,
    )
    db.commit()
    return jsonify(_integration_json(row))


@merchant_bp.get("/integrations")
@operation(
    "The platforms connected",
    responses={200: IntegrationList},
    security="merchant",
    tag="integrations",
)
def list_integrations() -> Any:
    rows = get_session().exec(
        select(Integration)
        .where(Integration.merchant_id == g.merchant.id)
        .order_by(col(Integration.platform))
    )
    return jsonify({"integrations": [_integration_json(r) for r in rows]})


@merchant_bp.get("/integrations/<platform>/webhooks")
@operation(
    "The last 50 webhooks received from a platform, newest first, with what became of each",
    responses={200: ReceiptList},
    security="merchant",
    tag="integrations",
)
def list_receipts(platform: str) -> Any:
    platform = _platform(platform)
    rows = get_session().exec(
        select(WebhookReceipt)
        .where(WebhookReceipt.merchant_id == g.merchant.id, WebhookReceipt.platform == platform)
        .order_by(col(WebhookReceipt.id).desc())
        .limit(50)
    )
    return jsonify(
        {
            "webhooks": [
                ReceiptOut(
                    id=r.id,  # type: ignore[arg-type]
                    topic=r.topic,
                    state=r.state,
                    result=r.result,
                    received_at=r.received_at.isoformat(),
                    applied_at=r.applied_at.isoformat() if r.applied_at else None,
                ).model_dump()
                for r in rows
            ]
        }
    )


@merchant_bp.put("/webhook-endpoints")
@operation(
    "Set the URL Waybill POSTs your orders' changes to, signed (the secret shown once)",
    body=WebhookEndpointIn,
    responses={200: WebhookEndpointOut, 422: None},
    security="merchant",
    tag="integrations",
)
def put_webhook_endpoint() -> Any:
    data = parse_body(WebhookEndpointIn)
    fields = {}
    unknown = [e for e in data.events if e not in outbound.EVENT_TYPES]
    if unknown:
        fields["events"] = (
            f"unknown: {', '.join(unknown)}; known: {', '.join(outbound.EVENT_TYPES)}"
        )
    problem = outbound.url_error(data.url, _settings().webhook_endpoint_hosts)
    if problem:
        fields["url"] = problem
    if fields:
        raise ApiError(422, "invalid", "some values are not valid", fields)
    db = get_session()
    row, secret = outbound.set_endpoint(
        db, merchant=g.merchant, url=data.url, events=data.events, server_key=_settings().secret_key
    )
    db.commit()
    return jsonify(outbound.endpoint_json(row, secret))


@merchant_bp.get("/orders/<int:order_id>/email-snippet")
@operation(
    "A 'Track your order' button for the order's confirmation email: email-safe HTML and text",
    responses={200: EmailSnippet},
    security="merchant",
    tag="integrations",
)
def email_snippet(order_id: int) -> Any:
    order = owned_or_404(get_session(), Order, order_id, "order", merchant_id=g.merchant.id)
    settings = _settings()
    url = tracking_url(settings.base_url, settings.secret_key, order)
    html = render_template("email_snippet.html", url=url, number=order.external_id)
    text = f"Track your order {order.external_id}: {url}"
    return jsonify({"html": html, "text": text, "tracking_url": url})


# --- the platforms' webhooks ------------------------------------------------------------------


def applier(app: Any) -> Applier:
    """The app's webhook applier, made on first use."""
    found = app.extensions.get("waybill.webhook_applier")
    if found is None:
        settings = app.config["WAYBILL_SETTINGS"]
        found = Applier(
            app.extensions["waybill.engine"],
            server_key=settings.secret_key,
            broker=app.extensions.get("waybill.broker"),
        )
        found = app.extensions.setdefault("waybill.webhook_applier", found)
    return found  # type: ignore[no-any-return]


@webhooks_bp.post("/webhooks/<platform>/<merchant_id>")
def platform_webhook(platform: str, merchant_id: str) -> Any:
    """Verified by the platform's own signature, recorded, answered 202, then applied."""
    if request.content_length is not None and request.content_length > inbox.MAX_BODY:
        raise ApiError(
            413, "payload_too_large", f"a webhook body is at most {inbox.MAX_BODY} bytes"
        )
    queue = applier(current_app)
    with queue.answering():  # the applier's lanes give way while webhooks are being taken
        body = request.get_data(cache=False)
        settings = _settings()
        db = get_session()
        try:
            receipt, updates = inbox.receive(
                db,
                merchant_id=merchant_id[:40],
                platform=platform,
                body=body,
                headers=request.headers,
                query=request.args,
                server_key=settings.secret_key,
            )
        except inbox.Refused as exc:
            raise ApiError(exc.status, exc.code, exc.message) from None
        db.commit()
    receipt_id, state = receipt.id, receipt.state
    answer = jsonify({"id": receipt_id, "state": state})
    answer.status_code = 202 if state == "queued" else 200
    if state == "queued":
        # After the answer has gone, on the process's applier: the platform never waits on
        # the ingest of its history, nor on anyone else's.
        @answer.call_on_close
        def _apply() -> None:
            queue.submit(receipt_id, updates, merchant_id=merchant_id)

    return answer
