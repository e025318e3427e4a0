"""Find my order: ``POST /api/track/find`` mails an order's tracking link to its customer.

For whoever lost the link or opened a wrong one. The answer is the same, and as quick, whether
or not such an order exists: like sign-in, the request only checks the input and the rate
limits and hands the rest to a background worker, which looks the orders up and mails their
links to the address they belong to (never to any other), after the answer has gone.

Rate limits: ``find_order_per_address`` and ``find_order_per_ip`` (``WAYBILL_RATE_LIMITS``),
per address asked for and per client IP.
"""

from __future__ import annotations

import hashlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Annotated, Any

import sqlalchemy as sa
from flask import Blueprint, Flask, current_app, jsonify, request
from limits import parse as parse_limit
from pydantic import EmailStr, StringConstraints
from sqlmodel import Session, col, select

from waybill.api.answers import browser_language
from waybill.api.spec import operation, parse_body
from waybill.auth import login
from waybill.config import Settings
from waybill.db import session_scope
from waybill.models import Customer, Merchant, Order, Sent, Strict, Text200
from waybill.notify import content, mail
from waybill.orders import saved_language, tracking_url
from waybill.security import limiter_of, limits_for, too_many

bp = Blueprint("find_order_api", __name__, url_prefix="/api/track")
log = logging.getLogger(__name__)

#: The most orders one mail lists: one number is one order per shop, and few shops share one.
MAX_FOUND = 20


class FindOrder(Strict):
    """An order number as the shop showed it, and the address the order was placed with."""

    email: Annotated[EmailStr, StringConstraints(max_length=320)]
    order_number: Text200


@dataclass(frozen=True)
class FindRequest:
    """What a request hands to the worker: no answer depends on it."""

    app: Flask
    email: str  # normalised as sign-in normalises it
    order_number: str
    language: str  # the asking browser's, for a customer who never said one


@bp.post("/find")
@operation(
    "Mail the tracking link of an order, by its number, to the address it was placed with",
    body=FindOrder,
    responses={202: Sent},
    tag="tracking",
)
def find() -> Any:
    _count("ip", request.remote_addr or "unknown", "find_order_per_ip")
    data = parse_body(FindOrder)
    email = login.normalise_email(str(data.email))
    _count("address", hashlib.sha256(email.encode()).hexdigest()[:32], "find_order_per_address")
    app: Flask = current_app._get_current_object()  # type: ignore[attr-defined]
    job = FindRequest(app, email, data.order_number, browser_language())
    if not found_order_mails.put(job):
        log.warning("find-my-order mail queue full: one request dropped")
    return jsonify(sent=True), 202


def _count(scope: str, key: str, limit_name: str) -> None:
    """One more request for ``key``; the contract's 429 once its limit is reached."""
    settings: Settings = current_app.config["WAYBILL_SETTINGS"]
    prefix = str(settings.extra.get("rate_limit_prefix", "waybill"))
    limits = limits_for(settings)[limit_name]
    strategy = limiter_of().limiter
    args = [prefix, "find-order", scope, key]
    for item in [parse_limit(part) for part in limits.split(";") if part.strip()]:
        try:
            allowed = strategy.hit(item, *args)
        except Exception:
            if settings.testing:
                raise
            log.exception("rate limit storage failed: find-my-order let through")  # as sign-in
            return
        if not allowed:
            reset = strategy.get_window_stats(item, *args).reset_time
            raise too_many(max(1, math.ceil(reset - time.time())))


def matching_orders(session: Session, *, customer: Customer, number: str) -> list[Order]:
    """The customer's orders with this number, newest first: as typed, in any case, with or
    without a leading "#" (the shop may show "#1042" for "1042", or the other way round)."""
    bare = number.removeprefix("#").strip()
    written = {number, bare, f"#{bare}"}
    number_is = sa.or_(
        col(Order.external_id).in_(written),  # SQLite's lower() knows only ASCII letters
        sa.func.lower(col(Order.external_id)).in_({w.lower() for w in written}),
    )
    return list(
        session.exec(
            select(Order)
            .where(Order.customer_id == customer.id, number_is)
            .order_by(col(Order.created_at).desc(), col(Order.id).desc())
            .limit(MAX_FOUND)
        )
    )


def _mail_found_orders(job: FindRequest) -> None:
    """After the answer: the orders of that number and address, if any, mailed to it."""
    settings: Settings = job.app.config["WAYBILL_SETTINGS"]
    with session_scope(job.app.extensions["waybill.engine"]) as db:
        customer = login.find_customer(db, job.email)
        if customer is None:
            return  # nobody to mail, and nothing to tell the asker
        orders = matching_orders(db, customer=customer, number=job.order_number)
        if not orders:
            return
        shops = {
            m.id: m.name
            for m in db.exec(
                select(Merchant).where(col(Merchant.id).in_({o.merchant_id for o in orders}))
            )
        }
        facts = [
            content.OrderFacts(
                order_id=o.id,  # type: ignore[arg-type]
                number=o.external_id,
                merchant=shops[o.merchant_id],
                status=o.status,
                url=tracking_url(settings.base_url, settings.secret_key, o),
            )
            for o in orders
        ]
        to, language = customer.email, saved_language(customer) or job.language
    subject, text, html = content.found_orders_mail(facts, language=language)
    mail.send(settings, mail.build_message(settings, to=to, subject=subject, text=text, html=html))


# One worker per process; every app of the process (tests make many) shares it.
found_order_mails: login.BackgroundQueue[FindRequest] = login.BackgroundQueue(
    _mail_found_orders, name="find-order-mail"
)
