"""The customer's notification preferences: ``/api/me/preferences``."""

from __future__ import annotations

from typing import Annotated, Any

from flask import Blueprint, current_app, jsonify, request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from waybill.api.spec import operation, parse_body
from waybill.auth import sessions
from waybill.db import get_session
from waybill.errors import ApiError
from waybill.notify import outbox, preferences

bp = Blueprint("preferences_api", __name__)
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


@bp.get("/api/me/preferences")
@operation(
    "The customer's notification preferences",
    responses={200: PreferencesBody},
    security="session",
    tag="notifications",
)
def get_preferences() -> Any:
    customer = sessions.require_signed_in()
    return jsonify(outbox.customer_preferences(customer).to_dict())


@bp.put("/api/me/preferences")
@operation(
    "Replace the notification preferences; held notifications follow at once",
    body=PreferencesBody,
    responses={200: PreferencesBody},
    security="session",
    tag="notifications",
)
def put_preferences() -> Any:
    customer = sessions.require_signed_in()
    parse_body(PreferencesBody)  # shape and types; the values are checked by the domain rules
    data = request.get_json(cache=True)
    try:
        prefs = preferences.parse(data, base=preferences.defaults())
    except preferences.InvalidPreferences as exc:
        raise ApiError(422, "invalid", "some preferences are not valid", exc.fields) from None
    db = get_session()
    # The choice is the customer's language and zone from now on, on every device: /api/me
    # (which a new device starts from) says them, not those the first order came with.
    customer.locale, customer.timezone = prefs.language, prefs.timezone
    outbox.save_preferences(db, customer, prefs)
    db.commit()
    # held notifications the change lets out go now, not at the worker's next poll
    worker = current_app.extensions.get("waybill.worker")
    if worker is not None:
        worker.notify()
    return jsonify(prefs.to_dict())
