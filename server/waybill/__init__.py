"""Waybill: order tracking for shoppers and merchants.

``create_app`` (``waybill.app``) builds the Flask app; nothing is built at import time.
"""

from __future__ import annotations

from typing import Any


def __getattr__(name: str) -> Any:
    # ``from waybill import create_app`` and ``flask --app waybill`` without this package
    # importing the whole app whenever one of its modules is imported.
    if name in ("create_app", "close_app"):
        from waybill import app

        return getattr(app, name)
    raise AttributeError(name)
