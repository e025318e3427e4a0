"""A real SMTP server on loopback (aiosmtpd) that keeps what it receives.

Plain by default, as the tests of the application expect. Options make it a relay that offers
STARTTLS (``tls=``), insists on it (``require_starttls=True``), or implicit TLS
(``implicit_tls=True``, for ``smtps://``); that requires AUTH with known ``users`` (over TLS only,
unless ``auth_in_clear=True`` makes it a relay, or a man in the middle, that takes passwords on
a plain connection); that refuses some recipients (``refuse=``); or that hangs up on connections
idle for ``idle_timeout`` seconds. Every connection that says something is kept in
``connections``: what it sent, whether encrypted, its AUTH attempts and the messages it gave.
"""

from __future__ import annotations

import asyncio
import email
import email.policy
import socket
import ssl
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.message import EmailMessage
from pathlib import Path
from typing import Any
from urllib.parse import quote

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


@dataclass
class Connection:
    """One client connection, as the server saw it."""

    received: list[tuple[bool, bytes]] = field(default_factory=list)  # (encrypted, bytes)
    auths: list[tuple[str, bool]] = field(default_factory=list)  # (user, over TLS)
    messages: int = 0

    @property
    def lines(self) -> list[tuple[bool, str]]:
        """The command lines, each with whether it came encrypted (message bodies included)."""
        out: list[tuple[bool, str]] = []
        for encrypted, data in self.received:
            out += [(encrypted, line) for line in data.decode("latin-1").splitlines()]
        return out

    def saw(self, text: str | bytes) -> bool:
        needle = text.encode() if isinstance(text, str) else text
        return needle in b"".join(data for _, data in self.received)


class _Inbox:
    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self.arrived = threading.Condition()
        self.delay = 0.0  # seconds each message takes, like a slow relay
        self.refuse: set[str] = set()  # recipients answered 550 at RCPT TO
        self.hang_up_after_data = False  # keep the message, then close without answering

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):  # type: ignore[no-untyped-def]  # noqa: N802
        if address.lower() in self.refuse:
            return "550 5.1.1 no such mailbox here"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):  # type: ignore[no-untyped-def]  # noqa: N802
        if self.delay:
            await asyncio.sleep(self.delay)
        msg = email.message_from_bytes(envelope.content, policy=email.policy.default)
        record = getattr(server, "record", None)
        if record is not None:
            record.messages += 1
        with self.arrived:
            self.messages.append(msg)  # type: ignore[arg-type]
            self.arrived.notify_all()
        if self.hang_up_after_data:
            server.transport.close()
        return "250 OK"


class _RecordingSMTP(SMTP):
    """Keeps what each connection sends (decrypted after STARTTLS)."""

    def __init__(
        self, connections: list[Connection], open_: list[SMTP], *args: Any, **kwargs: Any
    ) -> None:
        super().__init__(*args, **kwargs)
        self._connections, self._open = connections, open_
        self.record: Connection | None = None

    @property
    def encrypted(self) -> bool:
        """After STARTTLS, or on an implicit TLS (``smtps://``) connection."""
        if self._tls_protocol is not None:
            return True
        transport = self.transport
        return transport is not None and transport.get_extra_info("sslcontext") is not None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._open.append(self)

    def connection_lost(self, exc: Exception | None) -> None:
        super().connection_lost(exc)
        if self in self._open:
            self._open.remove(self)

    def data_received(self, data: bytes) -> None:
        if self.record is None:  # the first words: the Controller's start-up probe says none
            self.record = Connection()
            self._connections.append(self.record)
        self.record.received.append((self.encrypted, data))
        super().data_received(data)


class _Controller(Controller):
    def __init__(self, connections: list[Connection], *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._connections = connections
        self.open: list[SMTP] = []  # connections not closed yet

    def factory(self) -> SMTP:
        return _RecordingSMTP(self._connections, self.open, self.handler, **self.SMTP_kwargs)

    def stop(self, *args: Any, **kwargs: Any) -> None:
        """Close the connections clients left open first (the loop would drop them unclosed)."""
        closed = threading.Event()

        def close_all() -> None:
            for protocol in list(self.open):
                if protocol.transport is not None:
                    protocol.transport.close()
            self.loop.call_soon(closed.set)  # after the transports' own close callbacks

        if self.loop.is_running():
            self.loop.call_soon_threadsafe(close_all)
            closed.wait(5)
        super().stop(*args, **kwargs)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def localhost_tls(tmp: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context with a self-signed certificate for ``localhost``, and the certificate's
    file (for ``SSL_CERT_FILE``, so that the client trusts it)."""
    from tests.utils.push_service import self_signed_tls

    server, _client = self_signed_tls(tmp)
    return server, tmp / "push-cert.pem"


class SMTPServer:
    def __init__(
        self,
        *,
        tls: ssl.SSLContext | None = None,
        require_starttls: bool = False,
        implicit_tls: bool = False,
        users: dict[str, str] | None = None,
        auth_in_clear: bool = False,
        refuse: Iterable[str] = (),
        idle_timeout: float | None = None,
    ) -> None:
        self.inbox = _Inbox()
        self.inbox.refuse = {a.lower() for a in refuse}
        self.port = free_port()
        self.users = dict(users or {})
        self.connections: list[Connection] = []
        self.scheme = "smtps" if implicit_tls else "smtp"
        kwargs: dict[str, Any] = {}
        if implicit_tls:
            assert tls is not None, "implicit TLS needs tls="
            kwargs["ssl_context"] = tls
        elif tls is not None:
            kwargs.update(tls_context=tls, require_starttls=require_starttls)
        if users is not None:
            # aiosmtpd counts only STARTTLS as TLS for AUTH, so an implicit TLS server offers it
            # "in clear" (the whole connection is encrypted). It warns when AUTH is required
            # while not requiring TLS: such servers offer AUTH without requiring it.
            in_clear = auth_in_clear or implicit_tls
            kwargs.update(
                authenticator=self._authenticate,
                auth_required=not in_clear,
                auth_require_tls=not in_clear,
            )
        if idle_timeout is not None:
            kwargs["timeout"] = idle_timeout
        self.controller = _Controller(
            self.connections, self.inbox, hostname="127.0.0.1", port=self.port, **kwargs
        )

    def _authenticate(self, server, session, envelope, mechanism, auth_data):  # type: ignore[no-untyped-def]
        if not isinstance(auth_data, LoginPassword):
            return AuthResult(success=False, handled=False)
        user, password = auth_data.login.decode(), auth_data.password.decode()
        if server.record is not None:
            server.record.auths.append((user, server.encrypted))
        ok = user in self.users and self.users[user] == password
        return AuthResult(success=ok, handled=False)

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}"

    def url_for(self, user: str | None = None, *, scheme: str | None = None) -> str:
        """A ``WAYBILL_SMTP_URL`` for ``localhost`` (the name on the test certificate), with
        ``user``'s password when given."""
        auth = ""
        if user:
            auth = f"{quote(user, safe='')}:{quote(self.users.get(user, 'wrong'), safe='')}@"
        return f"{scheme or self.scheme}://{auth}localhost:{self.port}"

    def start(self) -> SMTPServer:
        self.controller.start()
        return self

    def stop(self) -> None:
        self.controller.stop()

    @property
    def messages(self) -> list[EmailMessage]:
        return list(self.inbox.messages)

    def wait_for(self, to: str, count: int = 1, timeout: float = 10) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        with self.inbox.arrived:
            while True:
                found = [m for m in self.inbox.messages if to.lower() in str(m["To"]).lower()]
                if len(found) >= count:
                    return found
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"no mail for {to} within {timeout}s")
                self.inbox.arrived.wait(left)
