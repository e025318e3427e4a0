"""Outgoing mail: SMTP when ``WAYBILL_SMTP_URL`` is set, otherwise written to the log."""

from __future__ import annotations

import logging
import re
import smtplib
import ssl
from email.message import EmailMessage
from email.utils import make_msgid
from urllib.parse import unquote, urlsplit

from waybill.config import Settings

log = logging.getLogger("waybill.mail")


_BREAKS = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]+")


def one_line(text: str) -> str:
    """A header value on one line: line breaks and control characters become one space (a
    value stored before input was checked must neither inject a header nor stop the mail)."""
    return _BREAKS.sub(" ", text).strip()


def build_message(
    settings: Settings,
    *,
    to: str,
    subject: str,
    text: str,
    html: str | None = None,
    headers: dict[str, str] | None = None,
) -> EmailMessage:
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    msg["Subject"] = one_line(subject)
    msg["Message-ID"] = make_msgid(domain="waybill")
    for name, value in (headers or {}).items():
        msg[name] = one_line(value)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


def send(settings: Settings, msg: EmailMessage, *, timeout: float = 15.0) -> None:
    """Deliver ``msg``; raises ``smtplib.SMTPException`` or ``OSError`` when it cannot."""
    if not settings.smtp_url:
        log.info("mail (no WAYBILL_SMTP_URL set, so written here):\n%s", msg.as_string())
        return
    url = urlsplit(settings.smtp_url)
    host = url.hostname or "localhost"
    if url.scheme == "smtps":
        smtp: smtplib.SMTP = smtplib.SMTP_SSL(
            host, url.port or 465, timeout=timeout, context=ssl.create_default_context()
        )
    else:
        smtp = smtplib.SMTP(host, url.port or 25, timeout=timeout)
    with smtp:
        if url.scheme == "smtp+starttls" or (
            url.scheme == "smtp" and smtp.has_extn("starttls") and url.username
        ):
            smtp.starttls(context=ssl.create_default_context())
        if url.username:
            smtp.login(unquote(url.username), unquote(url.password or ""))
        smtp.send_message(msg)
