"""Mail to a real aiosmtpd relay: STARTTLS before any credential, never a password in clear,
and one SMTP connection for a batch of mails (a mail the relay refuses fails alone)."""

from __future__ import annotations

import base64
import smtplib
import ssl
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path

import pytest
from flask import Flask
from sqlmodel import Session, select

from tests.conftest import make_settings
from tests.utils.factories import MerchantActions, make_merchant
from tests.utils.smtp import Connection, SMTPServer, localhost_tls
from waybill import close_app, create_app
from waybill.config import Settings
from waybill.notify import mail
from waybill.notify.delivery import Worker
from waybill.notify.models import OutboxMessage

USER, PASSWORD = "mailer", "p@ss:w/rd 1"  # quoted in the URL
USERS = {USER: PASSWORD}


def _secrets() -> list[bytes]:
    """The password as it could cross the wire: itself, or base64 in AUTH PLAIN/LOGIN."""
    plain = base64.b64encode(f"\0{USER}\0{PASSWORD}".encode())
    return [PASSWORD.encode(), plain, base64.b64encode(PASSWORD.encode())]


def commands(conn: Connection, *, encrypted: bool | None = None) -> list[str]:
    """The SMTP verbs a connection sent (message bodies left out), optionally only those sent
    in clear (``encrypted=False``) or over TLS."""
    verbs = []
    in_data = False
    for enc, line in conn.lines:
        if in_data:
            in_data = line != "."
            continue
        verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
        in_data = verb == "DATA"
        if encrypted is None or enc == encrypted:
            verbs.append(verb)
    return verbs


@pytest.fixture
def cert(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> ssl.SSLContext:
    """A certificate for localhost the client trusts (through SSL_CERT_FILE)."""
    server, cert_file = localhost_tls(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(cert_file))
    return server


@pytest.fixture
def relay(cert: ssl.SSLContext) -> Iterator[SMTPServer]:
    """A relay as a mail provider runs one: STARTTLS required, then AUTH required."""
    server = SMTPServer(tls=cert, require_starttls=True, users=USERS).start()
    yield server
    server.stop()


@pytest.fixture
def cleartext_relay() -> Iterator[SMTPServer]:
    """No STARTTLS, and AUTH offered anyway (or a man in the middle who stripped STARTTLS)."""
    server = SMTPServer(users=USERS, auth_in_clear=True).start()
    yield server
    server.stop()


def settings_for(tmp_path: Path, url: str) -> Settings:
    return make_settings(tmp_path, smtp_url=url, mail_from="Shop <shop@waybill.test>")


def message(
    settings: Settings, to: str = "kim@example.com", subject: str = "Hello"
) -> EmailMessage:
    return mail.build_message(settings, to=to, subject=subject, text="Your parcel is on its way.")


# --- one mail -----------------------------------------------------------------------------------


def test_credentials_go_only_after_starttls(tmp_path: Path, relay: SMTPServer) -> None:
    settings = settings_for(tmp_path, relay.url_for(USER, scheme="smtp"))
    mail.send(settings, message(settings))
    [got] = relay.wait_for("kim@example.com")
    assert got["Subject"] == "Hello"
    [conn] = relay.connections
    assert commands(conn, encrypted=False) == ["EHLO", "STARTTLS"]
    assert commands(conn, encrypted=True) == ["EHLO", "AUTH", "MAIL", "RCPT", "DATA", "QUIT"]
    assert conn.auths == [(USER, True)]  # the relay's AUTH saw a TLS session
    cleartext = b"".join(data for encrypted, data in conn.received if not encrypted)
    assert not any(secret in cleartext for secret in _secrets())


def test_no_password_ever_goes_over_a_plain_connection(
    tmp_path: Path, cleartext_relay: SMTPServer
) -> None:
    settings = settings_for(tmp_path, cleartext_relay.url_for(USER))
    with pytest.raises(mail.MailSecurityError) as refused:
        mail.send(settings, message(settings))
    assert isinstance(refused.value, smtplib.SMTPException)  # the outbox: a failed try
    assert "WAYBILL_SMTP_URL" in str(refused.value)
    assert "STARTTLS" in str(refused.value) and "unencrypted" in str(refused.value)
    [conn] = cleartext_relay.connections
    assert commands(conn) == ["EHLO", "QUIT"]  # no AUTH, no MAIL: nothing was given away
    assert conn.auths == []
    assert not any(conn.saw(secret) for secret in _secrets())
    assert cleartext_relay.messages == []


def test_smtp_starttls_scheme_refuses_a_relay_without_starttls(tmp_path: Path) -> None:
    plain = SMTPServer().start()
    try:
        settings = settings_for(tmp_path, plain.url_for(scheme="smtp+starttls"))
        with pytest.raises(mail.MailSecurityError, match="WAYBILL_SMTP_URL.*smtp\\+starttls"):
            mail.send(settings, message(settings))
        assert [commands(c) for c in plain.connections] == [["EHLO", "QUIT"]]
        assert plain.messages == []
    finally:
        plain.stop()


def test_plain_relay_without_credentials_still_works(tmp_path: Path) -> None:
    plain = SMTPServer().start()
    try:
        settings = settings_for(tmp_path, plain.url)
        mail.send(settings, message(settings))
        assert len(plain.wait_for("kim@example.com")) == 1
        [conn] = plain.connections
        assert commands(conn) == ["EHLO", "MAIL", "RCPT", "DATA", "QUIT"]
    finally:
        plain.stop()


def test_starttls_whenever_offered_even_without_credentials(
    tmp_path: Path, cert: ssl.SSLContext
) -> None:
    server = SMTPServer(tls=cert).start()  # offers STARTTLS, requires nothing
    try:
        settings = settings_for(tmp_path, server.url_for())
        mail.send(settings, message(settings))
        assert len(server.wait_for("kim@example.com")) == 1
        [conn] = server.connections
        assert commands(conn, encrypted=False) == ["EHLO", "STARTTLS"]
        assert "MAIL" in commands(conn, encrypted=True)
    finally:
        server.stop()


def test_the_relay_certificate_is_verified(
    tmp_path: Path, relay: SMTPServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SSL_CERT_FILE")  # the self-signed certificate is trusted no more
    settings = settings_for(tmp_path, relay.url_for(USER))
    with pytest.raises(ssl.SSLCertVerificationError):
        mail.send(settings, message(settings))
    [conn] = relay.connections
    assert commands(conn) == ["EHLO", "STARTTLS"]  # and the handshake failed: nothing more
    assert relay.messages == []


def test_smtps_is_tls_from_the_first_byte(tmp_path: Path, cert: ssl.SSLContext) -> None:
    server = SMTPServer(tls=cert, implicit_tls=True, users=USERS).start()
    try:
        settings = settings_for(tmp_path, server.url_for(USER))
        assert settings.smtp_url.startswith("smtps://")
        mail.send(settings, message(settings))
        assert len(server.wait_for("kim@example.com")) == 1
        [conn] = server.connections
        assert all(encrypted for encrypted, _ in conn.received)
        assert conn.auths == [(USER, True)]
    finally:
        server.stop()


# --- many mails over one connection ------------------------------------------------------------


def test_a_relay_reuses_its_connection_and_reconnects_after_an_idle_hang_up(
    tmp_path: Path, cert: ssl.SSLContext
) -> None:
    server = SMTPServer(tls=cert, require_starttls=True, users=USERS, idle_timeout=0.5).start()
    try:
        settings = settings_for(tmp_path, server.url_for(USER))
        with mail.Relay(settings) as relay:
            for i in range(3):
                relay.send(message(settings, to=f"r{i}@example.com"))
            assert relay.connections == 1
            time.sleep(1.0)  # the relay hangs up on the idle connection
            relay.send(message(settings, to="late@example.com"))
            assert relay.connections == 2
        assert [c.messages for c in server.connections] == [3, 1]
        assert len(server.wait_for("late@example.com")) == 1
        assert len(server.messages) == 4  # none twice
        assert all(c.auths == [(USER, True)] for c in server.connections)
    finally:
        server.stop()


def test_a_mail_the_relay_may_have_taken_is_never_sent_again(tmp_path: Path) -> None:
    """The relay takes the message, then drops the connection before saying so: the sender
    cannot know, so it reports the failure rather than risk sending it twice."""
    server = SMTPServer().start()
    try:
        settings = settings_for(tmp_path, server.url)
        with mail.Relay(settings) as relay:
            relay.send(message(settings, to="first@example.com"))
            server.inbox.hang_up_after_data = True
            with pytest.raises(smtplib.SMTPServerDisconnected):
                relay.send(message(settings, to="second@example.com"))
            assert relay.connections == 1  # no second connection to send it again
        assert len(server.connections) == 1
        assert [str(m["To"]) for m in server.messages] == [
            "first@example.com",
            "second@example.com",
        ]
    finally:
        server.stop()


def test_a_pool_opens_another_connection_only_while_the_relay_is_slow(tmp_path: Path) -> None:
    server = SMTPServer().start()
    try:
        settings = settings_for(tmp_path, server.url)
        # Patience well above a quick mail's time even with the other test process busy
        pool = mail.RelayPool(settings, size=4, patience=1.0)

        def send_from_threads(count: int, prefix: str) -> None:
            def one(i: int) -> None:
                with pool.borrow() as relay:
                    relay.send(message(settings, to=f"{prefix}{i}@example.com"))

            threads = [threading.Thread(target=one, args=(i,)) for i in range(count)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)

        send_from_threads(8, "quick")  # each mail takes milliseconds: nobody waits 1 s
        assert len(server.connections) == 1
        server.inbox.delay = 1.5  # now each takes longer than the patience: waiting mails open more
        send_from_threads(4, "slow")
        assert 1 < len(server.connections) <= 4
        pool.close()
        assert len(server.messages) == 12  # each once
        assert all(commands(c)[-1] == "QUIT" for c in server.connections)
    finally:
        server.stop()


@pytest.fixture
def settings(instance_dir: Path, relay: SMTPServer) -> Settings:
    """The app of the worker tests mails through the STARTTLS + AUTH relay."""
    return make_settings(instance_dir, smtp_url=relay.url_for(USER))


def _order_mails(merchant: MerchantActions, emails: list[str]) -> None:
    for email in emails:  # customers without preferences saved: email on
        merchant.add_shipment(merchant.create_order(email)["id"])


def _rows(app: Flask) -> dict[str, OutboxMessage]:
    with Session(app.extensions["waybill.engine"]) as s:
        return {r.destination: r for r in s.exec(select(OutboxMessage))}


@contextmanager
def _worker(app: Flask) -> Iterator[Worker]:
    w = Worker(app.extensions["waybill.engine"], app.config["WAYBILL_SETTINGS"], concurrency=4)
    try:
        yield w
    finally:
        w.stop()


def test_the_worker_sends_a_batch_over_one_connection(
    app: Flask, merchant: MerchantActions, relay: SMTPServer
) -> None:
    emails = [f"customer{i}@example.com" for i in range(5)]
    _order_mails(merchant, emails)
    with _worker(app) as worker:
        assert worker.run_until_idle() == 5
    for email in emails:
        assert len(relay.wait_for(email)) == 1, email
    [conn] = relay.connections
    assert conn.messages == 5
    assert conn.auths == [(USER, True)]  # signed in once, over TLS
    assert commands(conn)[-1] == "QUIT"  # closed when the worker stopped
    assert {r.state for r in _rows(app).values()} == {"sent"}


def test_a_refused_mail_fails_alone_in_its_batch(
    app: Flask, merchant: MerchantActions, relay: SMTPServer
) -> None:
    emails = [f"customer{i}@example.com" for i in range(5)]
    relay.inbox.refuse = {"customer2@example.com"}
    _order_mails(merchant, emails)
    with _worker(app) as worker:
        worker.run_until_idle()
    rows = _rows(app)
    refused = rows.pop("customer2@example.com")
    assert refused.state == "failed" and "recipient refused" in (refused.last_error or "")
    assert {r.state for r in rows.values()} == {"sent"}
    assert sorted(str(m["To"]) for m in relay.messages) == sorted(rows)
    [conn] = relay.connections  # the refusal did not cost the others their connection
    assert conn.messages == 4


def test_sign_in_mail_goes_over_tls(
    app: Flask, merchant: MerchantActions, relay: SMTPServer
) -> None:
    merchant.create_order("kim@example.com")
    r = app.test_client().post("/auth/email", json={"email": "kim@example.com"})
    assert r.status_code == 202
    [got] = relay.wait_for("kim@example.com")
    assert "sign-in code" in str(got["Subject"])
    [conn] = relay.connections
    assert conn.auths == [(USER, True)]


def test_the_worker_keeps_mail_waiting_rather_than_send_a_password_in_clear(
    instance_dir: Path, cleartext_relay: SMTPServer
) -> None:
    app = create_app(make_settings(instance_dir, smtp_url=cleartext_relay.url_for(USER)))
    try:
        _order_mails(make_merchant(app, app.test_client()), ["kim@example.com"])
        with _worker(app) as worker:
            worker.run_until_idle()
        row = _rows(app)["kim@example.com"]
        assert (row.state, row.attempts) == ("pending", 1)  # tried again later
        assert "WAYBILL_SMTP_URL" in (row.last_error or "")
        assert cleartext_relay.messages == []
        assert not any(c.saw(s) for c in cleartext_relay.connections for s in _secrets())
        assert all("AUTH" not in commands(c) for c in cleartext_relay.connections)
    finally:
        close_app(app)
