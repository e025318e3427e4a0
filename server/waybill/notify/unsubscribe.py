"""The link at the foot of every notification email (and its ``List-Unsubscribe`` header):
a token that turns one customer's notification emails off, and nothing else.

Apart from the outbox worker, so the page that reads the token does not load the sender.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import hmac

from sqlmodel import Session

from waybill.auth.tokens import keys_of
from waybill.models import Customer
from waybill.notify import outbox


def unsubscribe_token(secret: str, customer_id: int) -> str:
    """``<customer id>.<MAC>``: it names the customer, and only the server can make one."""
    mac = hmac.new(str(secret).encode(), f"unsubscribe:{customer_id}".encode(), hashlib.sha256)
    # 18 bytes: 24 base64url characters, no padding
    return f"{customer_id}.{base64.urlsafe_b64encode(mac.digest()[:18]).decode()}"


def read_unsubscribe_token(secret: str, token: str) -> int | None:
    """The customer id the token was made for, or None for a token this server never made."""
    cid, _, _sig = token.partition(".")
    if not cid.isdigit() or len(cid) > 18:
        return None
    for key in keys_of(secret):  # a link mailed before a rotation still works
        if hmac.compare_digest(unsubscribe_token(key, int(cid)).encode(), token.encode()):
            return int(cid)
    return None


def unsubscribe_url(base_url: str, secret: str, customer_id: int) -> str:
    return f"{base_url}/unsubscribe/{unsubscribe_token(secret, customer_id)}"


def stop_emails(session: Session, customer: Customer) -> None:
    """Email notifications off; push and everything else as they were. Held emails go too."""
    prefs = outbox.customer_preferences(customer)
    channels = {**prefs.channels, "email": False}
    outbox.save_preferences(session, customer, dataclasses.replace(prefs, channels=channels))
