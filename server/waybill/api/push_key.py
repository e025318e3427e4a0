"""The server's VAPID public key, which a browser subscribes to push with."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, current_app, jsonify
from pydantic import BaseModel

from waybill.api.spec import operation

bp = Blueprint("push_key_api", __name__)


class PublicKey(BaseModel):
    """The VAPID public key to subscribe with (applicationServerKey)."""

    public_key: str


@bp.get("/api/push/public-key")
@operation("The VAPID public key for subscribing", responses={200: PublicKey}, tag="notifications")
def public_key() -> Any:
    keys = current_app.extensions["waybill.vapid"]
    response = jsonify(public_key=keys.public_key)
    # asked again each time: after a key rotation, devices must see the new key at once
    response.headers["Cache-Control"] = "no-cache"
    return response
