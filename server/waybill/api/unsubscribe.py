"""The link at the foot of every notification email: ``/unsubscribe/<token>``.

Two pages in the customer's language: a GET only asks (mail scanners open links), and the
POST, which is also the RFC 8058 one-click ``List-Unsubscribe-Post``, turns email off.
"""

from __future__ import annotations

from flask import Blueprint, current_app, render_template

from waybill.api.answers import browser_language
from waybill.db import get_session
from waybill.errors import not_found
from waybill.models import Customer
from waybill.notify.unsubscribe import read_unsubscribe_token, stop_emails
from waybill.orders import saved_language

bp = Blueprint("unsubscribe_pages", __name__, url_prefix="/unsubscribe")

_TEXT: dict[str, dict[str, str]] = {
    "en": {
        "ask": "Stop notification emails?",
        "button": "Unsubscribe",
        "keeps": "Push notifications and your orders stay as they are.",
        "done": "Unsubscribed",
        "no_more": "You will get no more notification emails.",
    },
    "de": {
        "ask": "Keine Benachrichtigungen mehr per E-Mail?",
        "button": "Abbestellen",
        "keeps": "Push-Benachrichtigungen und deine Bestellungen bleiben, wie sie sind.",
        "done": "Abbestellt",
        "no_more": "Du erhältst keine Benachrichtigungen mehr per E-Mail.",
    },
}


def _customer(token: str) -> Customer:
    secret = current_app.config["WAYBILL_SETTINGS"].secret_key
    cid = read_unsubscribe_token(secret, token)
    customer = get_session().get(Customer, cid) if cid is not None else None
    if customer is None:
        raise not_found("subscription")
    return customer


def _language(customer: Customer) -> str:
    """The language the customer chose (or their orders came in), else the browser's."""
    return saved_language(customer) or browser_language()


@bp.get("/<token>")
def unsubscribe_page(token: str) -> str:
    """A page with one button: a GET changes nothing."""
    customer = _customer(token)
    lang = _language(customer)
    return render_template("unsubscribe.html", text=_TEXT[lang], lang=lang, token=token)


@bp.post("/<token>")
def unsubscribe(token: str) -> str:
    """Email notifications off, at once (held emails too); push stays as it is."""
    customer = _customer(token)
    lang = _language(customer)
    db = get_session()
    stop_emails(db, customer)
    db.commit()
    return render_template("unsubscribed.html", text=_TEXT[lang], lang=lang)
