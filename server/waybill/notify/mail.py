"""Outgoing mail: SMTP when ``WAYBILL_SMTP_URL`` is set, otherwise written, readable, to the
server's standard error (``write_out``)."""

from __future__ import annotations

import copy
import email.policy
import logging
import re
import secrets
import smtplib
import ssl
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from email.utils import getaddresses
from typing import Any, TextIO
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
    # from the secrets module, not make_msgid's ``random``: a mail built on a worker thread
    # never touches the random state another part of the process (or a test) seeded
    msg["Message-ID"] = f"<{secrets.token_hex(16)}@waybill>"
    for name, value in (headers or {}).items():
        msg[name] = one_line(value)
    msg.set_content(text)
    if html is not None:
        msg.add_alternative(html, subtype="html")
    return msg


class MailSecurityError(smtplib.SMTPException):
    """The connection to the relay is not one this mail (or its credentials) may go over.

    A subclass of ``smtplib.SMTPException``: the outbox counts it as a failed try of the mail
    and tries again later, so mail waits while the operator fixes ``WAYBILL_SMTP_URL``."""


#: Headers of MIME plumbing, left out where a person reads the mail.
_PLUMBING = frozenset({"mime-version", "content-type", "content-transfer-encoding"})
_output = threading.Lock()  # one mail at a time on the output, never two interleaved


def readable(msg: EmailMessage) -> str:
    """The mail as its recipient would read it: the headers, decoded, and the plain-text part
    as text (no base64 or quoted-printable), so that its link and code can be copied."""
    headers = [f"{name}: {value}" for name, value in msg.items() if name.lower() not in _PLUMBING]
    plain = msg.get_body(("plain",))
    text = plain.get_content() if isinstance(plain, EmailMessage) else ""
    return "\n".join(headers) + "\n\n" + text.rstrip("\n")


def write_out(msg: EmailMessage, stream: TextIO | None = None) -> None:
    """Mail with no relay to go to: on the server's standard error, whatever logging says (a
    newcomer without ``WAYBILL_SMTP_URL`` signs in with the code shown there)."""
    out = stream or sys.stderr
    rule = "-" * 20
    with _output:
        out.write(
            f"{rule} mail, not sent: WAYBILL_SMTP_URL is not set {rule}\n"
            f"{readable(msg)}\n{rule} end of mail {rule}\n"
        )
        out.flush()


def wire_form(msg: EmailMessage) -> tuple[str, list[str], bytes, tuple[str, ...]]:
    """Sender, recipients, the bytes and the MAIL options of ``msg`` on the wire.

    ``smtplib.SMTP.send_message`` flattens with the compat32 generator, which turns each line
    of the body that starts with "From " into ">From " (mbox quoting, wrong for SMTP): here the
    SMTP policy writes the message as it is (CRLF line ends, no quoting)."""
    sender = getaddresses([str(msg["Sender"] or msg["From"])])[0][1]
    fields = [str(v) for name in ("To", "Cc", "Bcc") for v in msg.get_all(name, [])]
    recipients = [address for _, address in getaddresses(fields)]
    shown = copy.copy(msg)  # deleting a header gives the copy a list of its own
    del shown["Bcc"]
    international = not (sender + "".join(recipients)).isascii()
    policy = email.policy.SMTPUTF8 if international else email.policy.SMTP
    options = ("SMTPUTF8", "BODY=8BITMIME") if international else ()
    return sender, recipients, shown.as_bytes(policy=policy), options


def send(settings: Settings, msg: EmailMessage, *, timeout: float = 15.0) -> None:
    """Deliver ``msg`` over a connection of its own; raises ``smtplib.SMTPException`` or
    ``OSError`` when it cannot. Many mails should share a ``Relay`` (or a ``RelayPool``)."""
    with Relay(settings, timeout=timeout) as relay:
        relay.send(msg)


class _Tracked:
    """Remembers whether the DATA command of the current message went out."""

    data_started = False

    def data(self, msg: Any) -> tuple[int, bytes]:
        self.data_started = True
        return super().data(msg)  # type: ignore[misc,no-any-return]


class _SMTP(_Tracked, smtplib.SMTP):
    pass


class _SMTPS(_Tracked, smtplib.SMTP_SSL):
    pass


class Relay:
    """One SMTP connection to ``WAYBILL_SMTP_URL``, opened on the first message and reused for
    each next one; ``close()`` says QUIT. One thread at a time (``RelayPool`` shares relays).

    Opening: EHLO; with ``smtp://`` STARTTLS whenever the server offers it (``smtp+starttls://``
    requires it, ``smtps://`` is TLS from the first byte) and EHLO again; then, when the URL has
    a user name, AUTH, which is only ever sent over TLS: on a connection that is not encrypted
    ``MailSecurityError`` is raised before a credential leaves. TLS verifies the server's
    certificate and name with ``ssl.create_default_context()``: the system's CAs, or the bundle
    ``SSL_CERT_FILE`` names (for a relay with a private CA).

    Resending: a message is sent again at most once, on a new connection, and only when it
    cannot have been taken: the connection had served an earlier message (so the relay may have
    hung up on it while idle), and it failed before the DATA command went out (disconnected, or
    421 "closing", at MAIL FROM/RCPT TO/RSET). From DATA on, a failure is the caller's to deal
    with: the relay may hold the message already, and sending it again could deliver it twice.
    """

    def __init__(self, settings: Settings, *, timeout: float = 15.0) -> None:
        self.settings, self.timeout = settings, timeout
        self.connections = 0  # connections opened so far
        self.last_used = time.monotonic()
        self._smtp: _SMTP | _SMTPS | None = None

    @property
    def connected(self) -> bool:
        return self._smtp is not None

    def __enter__(self) -> Relay:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    def send(self, msg: EmailMessage) -> None:
        """Deliver ``msg``; raises ``smtplib.SMTPException`` or ``OSError`` when it cannot."""
        if not self.settings.smtp_url:
            write_out(msg)
            return
        reused = self._smtp is not None
        smtp = self._connect()
        try:
            self._send_over(smtp, msg)
        except Exception as exc:
            if not (reused and not smtp.data_started and _hung_up(exc)):
                raise
            log.info("the mail relay closed an idle connection (%s); reconnecting", exc)
            self._send_over(self._connect(), msg)
        finally:
            self.last_used = time.monotonic()

    def close(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            _quit(smtp)

    def _send_over(self, smtp: _SMTP | _SMTPS, msg: EmailMessage) -> None:
        smtp.data_started = False
        sender, recipients, data, options = wire_form(msg)
        try:
            smtp.sendmail(sender, recipients, data, options)
        except (smtplib.SMTPRecipientsRefused, smtplib.SMTPSenderRefused, smtplib.SMTPDataError):
            # The relay answered, so the connection is in step: ready it for the next message.
            try:
                smtp.rset()
            except (smtplib.SMTPException, OSError):
                self._drop()
            raise
        except BaseException:  # anything else leaves the connection in an unknown state
            self._drop()
            raise

    def _drop(self) -> None:
        smtp, self._smtp = self._smtp, None
        if smtp is not None:
            smtp.close()

    def _connect(self) -> _SMTP | _SMTPS:
        if self._smtp is not None:
            return self._smtp
        url = urlsplit(self.settings.smtp_url)
        host = url.hostname or "localhost"
        context = ssl.create_default_context()
        smtp: _SMTP | _SMTPS
        if url.scheme == "smtps":
            port = url.port or 465
            smtp = _SMTPS(host, port, timeout=self.timeout, context=context)
        else:
            port = url.port or 25
            smtp = _SMTP(host, port, timeout=self.timeout)
        try:
            smtp.ehlo_or_helo_if_needed()
            if url.scheme != "smtps":
                if smtp.has_extn("starttls"):
                    smtp.starttls(context=context)
                    smtp.ehlo()  # what the server offers may differ once encrypted
                elif url.scheme == "smtp+starttls":
                    raise MailSecurityError(
                        f"WAYBILL_SMTP_URL asks for smtp+starttls://, but the mail relay "
                        f"{host}:{port} does not offer STARTTLS: refusing to send unencrypted"
                    )
            if url.username:
                if not isinstance(smtp.sock, ssl.SSLSocket):
                    raise MailSecurityError(
                        f"WAYBILL_SMTP_URL has a user name, but the mail relay {host}:{port} "
                        "offers no STARTTLS: refusing to send the password unencrypted (use a "
                        "relay that offers STARTTLS, or smtps:// for one that speaks TLS from "
                        "the start)"
                    )
                smtp.login(unquote(url.username), unquote(url.password or ""))
        except MailSecurityError:
            _quit(smtp)  # the relay answered everything so far: say goodbye
            raise
        except BaseException:
            smtp.close()
            raise
        self._smtp = smtp
        self.connections += 1
        return smtp


def _quit(smtp: smtplib.SMTP) -> None:
    try:
        smtp.quit()
    except (smtplib.SMTPException, OSError):
        smtp.close()


def _hung_up(exc: BaseException) -> bool:
    """The relay closed the connection (or said it would) instead of answering."""
    if isinstance(exc, smtplib.SMTPServerDisconnected):
        return True
    if isinstance(exc, smtplib.SMTPResponseException):
        return exc.smtp_code == 421
    if isinstance(exc, smtplib.SMTPRecipientsRefused):
        return all(code == 421 for code, _ in exc.recipients.values())
    return False


class RelayPool:
    """SMTP connections shared by the threads that send mail: ``borrow()`` one per message.

    A message takes a free connection, or opens the first one. While every open connection is
    busy it waits up to ``patience`` seconds for one to come free, and only then opens another
    (at most ``size``): a quick relay serves a whole batch over one connection, a slow one gets
    a few in parallel. A connection unused for ``idle`` seconds is closed (QUIT) soon after,
    and all of them by ``close()``."""

    def __init__(
        self,
        settings: Settings,
        *,
        size: int = 8,
        patience: float = 1.0,
        idle: float = 15.0,
        timeout: float = 15.0,
    ) -> None:
        self.settings, self.size, self.patience = settings, size, patience
        self.idle, self.timeout = idle, timeout
        self._free: list[Relay] = []  # the most recently used last
        self._open = 0  # relays in existence: free or borrowed
        self._closed = False
        self._reaper: threading.Timer | None = None
        self._cond = threading.Condition()

    @contextmanager
    def borrow(self) -> Iterator[Relay]:
        relay = self._take()
        try:
            yield relay
        finally:
            self._give_back(relay)

    def _take(self) -> Relay:
        deadline = time.monotonic() + self.patience
        with self._cond:
            while True:
                if self._free:
                    return self._free.pop()
                left = deadline - time.monotonic()
                if self._open == 0 or (self._open < self.size and left <= 0):
                    self._open += 1
                    return Relay(self.settings, timeout=self.timeout)  # connects on first use
                self._cond.wait(left if self._open < self.size else None)

    def _give_back(self, relay: Relay) -> None:
        with self._cond:
            keep = not self._closed
            if keep:
                self._free.append(relay)
                self._schedule_reaper()
            else:
                self._open -= 1
            self._cond.notify()
        if not keep:
            relay.close()

    def close_idle(self, older_than: float | None = None) -> None:
        """Close the free connections unused for ``older_than`` seconds (``idle`` unless told)."""
        cutoff = time.monotonic() - (self.idle if older_than is None else older_than)
        with self._cond:
            stale = [r for r in self._free if r.last_used <= cutoff]
            self._free = [r for r in self._free if r.last_used > cutoff]
            self._open -= len(stale)
            if self._free:
                self._schedule_reaper()
            self._cond.notify_all()
        for relay in stale:
            relay.close()

    def close(self) -> None:
        """Close every free connection now, and each borrowed one when it comes back."""
        with self._cond:
            self._closed = True
            if self._reaper is not None:
                self._reaper.cancel()
                self._reaper = None
        self.close_idle(older_than=-1.0)

    def _schedule_reaper(self) -> None:
        if self._reaper is None and not self._closed:
            self._reaper = threading.Timer(self.idle, self._reap)
            self._reaper.daemon = True
            self._reaper.start()

    def _reap(self) -> None:
        with self._cond:
            self._reaper = None
        self.close_idle()
