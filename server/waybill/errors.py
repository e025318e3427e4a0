"""The one error every layer raises: it becomes ``{"error": {"code", "message", "fields"?}}``
with its status (``api/errors.py`` renders it)."""

from __future__ import annotations

from pydantic import ValidationError

from waybill.models import ONE_LINE
from waybill.models.types import SOME_TEXT

ONE_LINE_MESSAGE = (
    "must be one line of text, without line breaks, control or bidirectional characters"
)


class ApiError(Exception):
    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        fields: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.fields, self.headers = fields, headers or {}


def not_found(what: str = "resource") -> ApiError:
    return ApiError(404, "not_found", f"no such {what}")


def validation_fields(exc: ValidationError) -> dict[str, str]:
    fields: dict[str, str] = {}
    for err in exc.errors():
        path = ".".join(str(p) for p in err["loc"]) or "body"
        msg = err["msg"]
        if err["type"] == "string_pattern_mismatch" and (err.get("ctx") or {}).get("pattern") in (
            ONE_LINE,
            SOME_TEXT,
        ):
            msg = ONE_LINE_MESSAGE
        fields.setdefault(path, msg)
    return fields
