"""The OpenAPI 3.1 document, built from the same pydantic models that validate requests.

Each route declares its body and answers with ``@operation``; the document is assembled from
those declarations and the app's URL map, so it cannot drift from what the handlers do.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flask import Blueprint, Flask, current_app, jsonify, request
from pydantic import BaseModel, ValidationError
from werkzeug.exceptions import BadRequest

from waybill.errors import ApiError, validation_fields

F = TypeVar("F", bound=Callable[..., Any])
MAX_BODY = 1024 * 1024


class ErrorDetail(BaseModel):
    code: str
    message: str
    fields: dict[str, str] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


@dataclass
class Operation:
    summary: str
    body: type[BaseModel] | None
    responses: dict[int, type[BaseModel] | None]
    security: str | None  # "merchant", "session" or None
    query: dict[str, dict[str, Any]] = field(default_factory=dict)
    tag: str = "api"


def operation(
    summary: str,
    *,
    body: type[BaseModel] | None = None,
    responses: dict[int, type[BaseModel] | None],
    security: str | None = None,
    query: dict[str, dict[str, Any]] | None = None,
    tag: str = "api",
) -> Callable[[F], F]:
    def mark(fn: F) -> F:
        fn.__openapi__ = Operation(  # type: ignore[attr-defined]
            summary, body, responses, security, query or {}, tag
        )
        return fn

    return mark


M = TypeVar("M", bound=BaseModel)


def parse_body(model: type[M]) -> M:
    """The request's JSON body as ``model``: 415, 400, 413 or 422 with ``fields``."""
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise ApiError(413, "payload_too_large", "the body is larger than 1 MiB")
    if not request.is_json:
        raise ApiError(415, "unsupported_media_type", "send the body as application/json")
    try:
        data = request.get_json(force=True, cache=True)
    except (BadRequest, RecursionError):  # RecursionError: nesting deeper than the parser goes
        raise ApiError(400, "malformed_json", "the body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ApiError(400, "malformed_json", "the body must be a JSON object")
    try:
        return model.model_validate(without_nul(data))
    except ValidationError as exc:
        raise ApiError(
            422, "invalid", "some values are not valid", validation_fields(exc)
        ) from None


def without_nul(value: Any) -> Any:
    """``value`` with NUL characters removed from every string: no database keeps them
    (PostgreSQL refuses them outright) and no name, id or note means anything by one."""
    if isinstance(value, str):
        return value.replace("\x00", "") if "\x00" in value else value
    if isinstance(value, dict):
        return {without_nul(k): without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [without_nul(v) for v in value]
    return value


_CONVERTER = re.compile(r"<(?:(\w+):)?(\w+)>")
_STANDARD_ERRORS = {
    400: "malformed request",
    401: "missing or bad credentials",
    403: "forbidden",
    404: "not found",
    409: "conflict",
    413: "body too large",
    415: "not JSON",
    422: "invalid values",
    429: "too many requests",
}


def build_document(app: Flask) -> dict[str, Any]:
    schemas: dict[str, Any] = {}

    def ref(model: type[BaseModel]) -> dict[str, Any]:
        schema = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, sub in schema.pop("$defs", {}).items():
            schemas[name] = sub
        schemas[model.__name__] = schema
        return {"$ref": f"#/components/schemas/{model.__name__}"}

    error_ref = ref(ErrorBody)
    paths: dict[str, Any] = {}
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/api/"):
            continue
        view = app.view_functions[rule.endpoint]
        op: Operation | None = getattr(view, "__openapi__", None)
        if op is None:
            continue
        path = _CONVERTER.sub(lambda m: "{" + m.group(2) + "}", rule.rule)
        params: list[dict[str, Any]] = []
        for conv, name in _CONVERTER.findall(rule.rule):
            schema: dict[str, Any] = {"type": "integer"} if conv == "int" else {"type": "string"}
            params.append({"name": name, "in": "path", "required": True, "schema": schema})
        for name, schema in op.query.items():
            params.append({"name": name, "in": "query", "required": False, "schema": schema})
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            responses: dict[str, Any] = {}
            for status, model in sorted(op.responses.items()):
                if status == 204 or model is None:
                    responses[str(status)] = {"description": "no content"}
                else:
                    responses[str(status)] = {
                        "description": model.__doc__.strip().splitlines()[0]
                        if model.__doc__
                        else "ok",
                        "content": {"application/json": {"schema": ref(model)}},
                    }
            errors = {400, 404, 429}
            if op.body is not None:
                errors |= {413, 415, 422}
            if op.security:
                errors |= {401}
            if op.security == "session" and method != "GET":
                errors |= {403}
            errors |= {s for s in op.responses if s >= 400}
            for status in sorted(errors):
                responses[str(status)] = {
                    "description": _STANDARD_ERRORS.get(status, "error"),
                    "content": {"application/json": {"schema": error_ref}},
                }
            entry: dict[str, Any] = {
                "operationId": f"{method.lower()}_{rule.endpoint.replace('.', '_')}",
                "summary": op.summary,
                "tags": [op.tag],
                "parameters": params,
                "responses": responses,
            }
            if op.body is not None:
                entry["requestBody"] = {
                    "required": True,
                    "content": {"application/json": {"schema": ref(op.body)}},
                }
            if op.security == "merchant":
                entry["security"] = [{"merchantKey": []}]
            elif op.security == "session":
                entry["security"] = [{"sessionCookie": []}]
            paths.setdefault(path, {})[method.lower()] = entry
    settings = app.config["WAYBILL_SETTINGS"]
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Waybill API",
            "version": "1",
            "description": "Orders, shipments and tracking events in; live order status out.",
        },
        "servers": [{"url": settings.base_url}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "merchantKey": {"type": "http", "scheme": "bearer"},
                "sessionCookie": {"type": "apiKey", "in": "cookie", "name": "waybill_session"},
            },
        },
    }


bp = Blueprint("openapi", __name__)


@bp.get("/api/openapi.json")
def openapi_json() -> Any:
    doc = current_app.extensions.get("waybill.openapi")
    if doc is None:
        doc = current_app.extensions["waybill.openapi"] = build_document(current_app)
    return jsonify(doc)
