"""Email sign-in: a one-time link and a 6-digit code, 15 minutes, single use, stored hashed."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import timedelta

from sqlmodel import Session, select

from waybill.auth.tokens import digest, keyed_digest, new_token, same
from waybill.models import Customer, LoginToken, utcnow

LIFETIME = timedelta(minutes=15)
MAX_CODE_ATTEMPTS = 5


@dataclass(frozen=True)
class IssuedLogin:
    link_token: str
    code: str


def normalise_email(email: str) -> str:
    return email.strip().lower()


def find_customer(session: Session, email: str) -> Customer | None:
    return session.exec(select(Customer).where(Customer.email == normalise_email(email))).first()


def issue(*, session: Session, customer: Customer, secret: str) -> IssuedLogin:
    link_token = new_token(32)
    code = f"{secrets.randbelow(1_000_000):06d}"
    login = LoginToken(
        customer_id=customer.id,  # type: ignore[arg-type]
        link_hash=digest(link_token),
        code_hash="",
        expires_at=utcnow() + LIFETIME,
    )
    session.add(login)
    session.flush()
    login.code_hash = keyed_digest(secret, str(login.id), code)
    session.add(login)
    return IssuedLogin(link_token=link_token, code=code)


def _usable(login: LoginToken | None) -> bool:
    return login is not None and login.used_at is None and login.expires_at > utcnow()


def peek_link(*, session: Session, token: str) -> LoginToken | None:
    """The link's login if it can still be used; consumes nothing (mail scanners open links)."""
    login = session.exec(select(LoginToken).where(LoginToken.link_hash == digest(token))).first()
    return login if _usable(login) else None


def consume_link(*, session: Session, token: str) -> Customer | None:
    login = peek_link(session=session, token=token)
    if login is None:
        return None
    login.used_at = utcnow()
    session.add(login)
    return session.get(Customer, login.customer_id)


def consume_code(*, session: Session, email: str, code: str, secret: str) -> Customer | None:
    """Check a typed code against the address's live codes; five wrong tries void a code."""
    customer = find_customer(session, email)
    if customer is None:
        return None
    logins = session.exec(
        select(LoginToken)
        .where(LoginToken.customer_id == customer.id, LoginToken.used_at.is_(None))  # type: ignore[union-attr]
        .where(LoginToken.expires_at > utcnow())
    ).all()
    now = utcnow()
    for login in logins:
        if login.attempts >= MAX_CODE_ATTEMPTS:
            continue
        if same(keyed_digest(secret, str(login.id), code), login.code_hash):
            login.used_at = now
            session.add(login)
            return customer
    for login in logins:
        login.attempts += 1
        if login.attempts >= MAX_CODE_ATTEMPTS:
            login.used_at = now
        session.add(login)
    return None
