"""``GET /api/statuses``: the status catalogue in one language, for screens that list statuses
(the PWA's settings and its labels), so that no client keeps its own copy of the words."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, request
from pydantic import BaseModel, Field

from waybill import catalogue
from waybill.api.answers import browser_language
from waybill.api.spec import operation
from waybill.errors import ApiError
from waybill.models import StatusName
from waybill.notify import preferences
from waybill.tracking.statuses import ALL_STATUSES

bp = Blueprint("statuses_api", __name__)


class StatusEntry(BaseModel):
    status: StatusName
    label: str = Field(description="what the customer reads, in the answer's language")
    notifiable: bool = Field(description="whether a customer can choose to hear about it")
    default_on: bool = Field(description="whether it notifies before preferences are saved")


class StageEntry(BaseModel):
    stage: str = Field(description="a status, or a moment such as partially_delivered")
    label: str = Field(description="what the customer reads, in the answer's language")
    default_on: bool = Field(description="whether it notifies before preferences are saved")


class StatusCatalogue(BaseModel):
    """Every status, in the order of the unified set, with its label; and every stage a
    customer can choose to hear about, in the order settings list them."""

    language: str
    statuses: list[StatusEntry]
    stages: list[StageEntry]


@bp.get("/api/statuses")
@operation(
    "Every status with its label, and which ones notify",
    responses={200: StatusCatalogue, 422: None},
    query={"lang": {"type": "string", "enum": list(catalogue.LANGUAGES)}},
    tag="tracking",
)
def statuses() -> Any:
    fields = {
        name or "(no name)": "not a query parameter of this request"
        for name in request.args
        if name != "lang"
    }
    lang = request.args.get("lang")
    if lang is not None and lang not in catalogue.LANGUAGES:
        fields["lang"] = f"must be one of {', '.join(catalogue.LANGUAGES)}"
    if fields:
        raise ApiError(422, "invalid", "some query parameters are not valid", fields)
    lang = lang or browser_language()
    # What a customer can be notified about, and what is on until they choose, are the rules'.
    chosen = preferences.defaults().statuses
    body = StatusCatalogue(
        language=lang,
        statuses=[
            StatusEntry(
                status=s.value,
                label=catalogue.label(s, lang),
                notifiable=s.value in chosen,
                default_on=chosen.get(s.value, False),
            )
            for s in ALL_STATUSES
        ],
        stages=[
            StageEntry(stage=stage, label=catalogue.stage_label(stage, lang), default_on=on)
            for stage, on in chosen.items()
            if stage in preferences.STAGES
        ],
    )
    response = jsonify(body.model_dump(mode="json"))
    # Public words that change only with a release: revalidated, never kept stale.
    response.headers["Cache-Control"] = "public, no-cache"
    response.vary.add("Accept-Language")
    response.add_etag()
    return response.make_conditional(request)
