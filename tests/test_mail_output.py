"""Mail as people read it: without ``WAYBILL_SMTP_URL`` on the output of ``waybill serve``
(a newcomer signs in with the code shown there), and through a real SMTP relay with every
line as written (no mbox ">From") and the event's own words."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
from flask import Flask

from tests.conftest import database_url_of, make_settings
from tests.utils.factories import MerchantActions
from tests.utils.smtp import SMTPServer, free_port
from waybill import close_app, create_app
from waybill.notify import content, mail
from waybill.notify.delivery import Worker

WAYBILL = str(Path(sys.executable).with_name("waybill"))


class Served:
    """``waybill serve`` as ``make run`` starts it: no mail relay, the outbox worker inside."""

    def __init__(self, instance: Path) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.stderr = instance / "stderr.log"
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
        self.env.update(
            WAYBILL_INSTANCE_DIR=str(instance),
            WAYBILL_DATABASE_URL=database_url_of(instance),
            WAYBILL_BASE_URL=self.base,
            WAYBILL_SECRET_KEY="mail-output-test-secret",
        )
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Served:
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [WAYBILL, "serve", "--port", str(self.port), "--workers", "1"],
                env=self.env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, "server exited:\n" + self.output()[-3000:]
            try:
                if requests.get(f"{self.base}/api/me", timeout=5).status_code == 401:
                    return self
            except requests.RequestException:
                time.sleep(0.1)
        raise AssertionError("server did not start:\n" + self.output()[-3000:])

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        return self.stderr.read_text(encoding="utf-8", errors="replace")

    def wait_for(self, found: Callable[[str], re.Match[str] | None]) -> re.Match[str]:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            match = found(self.output())
            if match:
                return match
            time.sleep(0.1)
        raise AssertionError("not in the server's output:\n" + self.output()[-3000:])

    def merchant_key(self) -> str:
        out = subprocess.run(
            [WAYBILL, "merchant", "create", "Newcomer Shop"],
            env=self.env,
            capture_output=True,
            text=True,
            check=True,
        )
        return str(json.loads(out.stdout)["api_key"])


@pytest.fixture
def served(instance_dir: Path) -> Iterator[Served]:
    server = Served(instance_dir).start()
    yield server
    server.stop()


def mails_in(output: str) -> list[str]:
    """Each mail the server wrote out, as one block of text."""
    return re.findall(r"-+ mail, not sent: [^\n]*\n(.*?)\n-+ end of mail -+", output, re.S)


def test_serve_without_smtp_shows_the_sign_in_code_and_the_status_mails(served: Served) -> None:
    assert "No WAYBILL_SMTP_URL: mail is not sent but written below" in served.output()
    key = {"Authorization": f"Bearer {served.merchant_key()}"}
    api = f"{served.base}/api/v1"
    r = requests.post(
        f"{api}/orders",
        json={"external_id": "NEW-1", "customer": {"email": "newcomer@example.com"}},
        headers=key,
        timeout=10,
    )
    assert r.status_code == 201, r.text
    order = r.json()

    r = requests.post(
        f"{served.base}/auth/email", json={"email": "newcomer@example.com"}, timeout=10
    )
    assert r.status_code == 202
    code = served.wait_for(
        lambda out: re.search(r"Subject: Your Waybill sign-in code: (\d{6})", out)
    )
    [sign_in] = [m for m in mails_in(served.output()) if "sign-in code" in m]
    assert "To: newcomer@example.com" in sign_in.splitlines()
    # The body as written, not quoted-printable: whole sentences, the link on its own line.
    assert "If you did not ask to sign in, ignore this message." in sign_in
    assert f"Or type this code in the app: {code[1]}" in sign_in
    link = re.search(rf"^{re.escape(served.base)}/auth/link/[\w-]+$", sign_in, re.M)
    assert link is not None, sign_in
    assert "quoted-printable" not in sign_in.lower() and "=\n" not in sign_in

    # What a newcomer does next works: the code signs in, the link shows its button.
    assert requests.get(link[0], timeout=10).status_code == 200
    r = requests.post(
        f"{served.base}/auth/code",
        json={"email": "newcomer@example.com", "code": code[1]},
        timeout=10,
    )
    assert r.status_code == 200, r.text

    # The outbox's status mails (in German for a German customer) show up too.
    r = requests.post(
        f"{api}/orders",
        json={"external_id": "NEU-2", "customer": {"email": "neu@example.com", "locale": "de"}},
        headers=key,
        timeout=10,
    )
    german = r.json()
    for placed in (order, german):
        r = requests.post(
            f"{api}/orders/{placed['id']}/shipments",
            json={"carrier": "DHL", "tracking_number": f"T{placed['id']}"},
            headers=key,
            timeout=10,
        )
        assert r.status_code == 201, r.text
    served.wait_for(lambda out: re.search(r"Subject: Bestellung #NEU-2 wurde versendet", out))
    served.wait_for(lambda out: re.search(r"Subject: Order #NEW-1 has shipped", out))
    mails = mails_in(served.output())
    [shipped] = [m for m in mails if "Subject: Order #NEW-1 has shipped" in m]
    assert f"Track your order: {order['tracking_url']}" in shipped.splitlines()
    assert re.search(
        rf"^Stop these emails: {re.escape(served.base)}/unsubscribe/\S+$", shipped, re.M
    )
    [versendet] = [m for m in mails if "Subject: Bestellung #NEU-2 wurde versendet" in m]
    assert "Du erhältst diese E-Mail, weil du diese Bestellung bei Waybill verfolgst." in versendet


def test_mail_without_smtp_is_written_out_whatever_logging_says(
    app: Flask, merchant: MerchantActions, capfd: pytest.CaptureFixture[str]
) -> None:
    import logging

    from waybill.auth import login

    merchant.create_order(email="quiet@example.com")
    logging.disable(logging.CRITICAL)  # a set-up that shows no log line at all
    try:
        r = app.test_client().post("/auth/email", json={"email": "quiet@example.com"})
        assert r.status_code == 202
        assert login._sign_in_mails.wait_idle(10)
    finally:
        logging.disable(logging.NOTSET)
    [written] = mails_in(capfd.readouterr().err)
    assert "To: quiet@example.com" in written.splitlines()
    assert re.search(r"^Subject: Your Waybill sign-in code: \d{6}$", written, re.M)


# --- through a real relay ------------------------------------------------------------------


@pytest.fixture
def relay_app(instance_dir: Path, smtp: SMTPServer) -> Iterator[Flask]:
    app = create_app(make_settings(instance_dir, smtp_url=smtp.url))
    yield app
    close_app(app)


def plain_text(msg: object) -> str:
    return msg.get_body(("plain",)).get_content()  # type: ignore[attr-defined,no-any-return]


def test_a_status_mail_keeps_lines_that_start_with_from(relay_app: Flask, smtp: SMTPServer) -> None:
    from tests.utils.factories import make_merchant

    merchant = make_merchant(relay_app, relay_app.test_client(), name="Test Shop")
    order = merchant.create_order("from@example.com")
    merchant.add_shipment(order["id"])
    worker = Worker(relay_app.extensions["waybill.engine"], relay_app.config["WAYBILL_SETTINGS"])
    try:
        assert worker.run_until_idle() >= 1
    finally:
        worker.stop()
    [msg] = smtp.wait_for("from@example.com")
    lines = plain_text(msg).splitlines()
    assert any(line.startswith("From Test Shop") for line in lines)  # "From …" at the start
    assert not any(line.startswith(">From") for line in lines)
    assert not any(c.saw(b"\r\n>From") for c in smtp.connections)  # not on the wire either


def facts(status: str, note: str | None) -> content.OrderFacts:
    return content.OrderFacts(
        order_id=7, number="1042", merchant="From Scratch Bakery", status=status,
        url="https://waybill.example/t/abc", note=note,
    )  # fmt: skip


def send(relay_app: Flask, status: str, note: str | None, language: str = "en") -> str:
    """One status mail, worded as the outbox words it, through the relay; its plain text."""
    settings = relay_app.config["WAYBILL_SETTINGS"]
    f = facts(status, note)
    msg = content.message(f, language=language, now=datetime(2026, 11, 20, 12, tzinfo=UTC))
    text, html = content.email_parts(f, msg, language=language, unsubscribe_url="https://u/x")
    to = f"{status}@example.com"
    message = mail.build_message(settings, to=to, subject=msg.title, text=text, html=html)
    mail.send(settings, message)
    return text


def test_status_mails_carry_the_carriers_note_and_the_cancellation(
    relay_app: Flask, smtp: SMTPServer
) -> None:
    note = "Recipient not at home. From tomorrow the parcel waits at the post office."
    send(relay_app, "attempted", note)
    [attempted] = smtp.wait_for("attempted@example.com")
    lines = plain_text(attempted).splitlines()
    assert "From Scratch Bakery: the carrier will try again or leave a note." in lines
    assert note in lines
    assert note in attempted.get_body(("html",)).get_content()  # type: ignore[union-attr]

    send(relay_app, "cancelled", "Out of stock: you have been refunded in full.", "de")
    [cancelled] = smtp.wait_for("cancelled@example.com")
    lines = plain_text(cancelled).splitlines()
    assert "From Scratch Bakery hat diese Bestellung storniert." in lines
    assert "Out of stock: you have been refunded in full." in lines
    assert not any(line.startswith(">") for line in lines)

    send(relay_app, "delivered", None)  # no note: no empty paragraph for it
    [delivered] = smtp.wait_for("delivered@example.com")
    assert "\n\n\n" not in plain_text(delivered)


def test_the_worker_quotes_the_events_own_words(relay_app: Flask, smtp: SMTPServer) -> None:
    """The carrier's note and the shop's reason reach real status mails, sent by the outbox
    worker from what the merchant API recorded."""
    from tests.utils.factories import make_merchant

    merchant = make_merchant(relay_app, relay_app.test_client(), name="Test Shop")
    order = merchant.create_order("note@example.com")
    shipment = merchant.add_shipment(order["id"])
    note = "Recipient not at home. We will try again tomorrow."
    r = merchant.scan(shipment["id"], "attempted", "2026-11-20T09:00:00Z", description=note)
    assert r.status_code == 201, r.get_json()
    cancelled = merchant.create_order("reason@example.com")
    reason = "Out of stock: you have been refunded in full."
    r = merchant.post(
        f"/orders/{cancelled['id']}/events", {"status": "cancelled", "description": reason}
    )
    assert r.status_code == 201, r.get_json()
    worker = Worker(relay_app.extensions["waybill.engine"], relay_app.config["WAYBILL_SETTINGS"])
    try:
        assert worker.run_until_idle() >= 2
    finally:
        worker.stop()
    # "shipped" was superseded by "attempted" before it went (only the latest goes)
    [attempted] = smtp.wait_for("note@example.com")
    assert note in plain_text(attempted).splitlines()
    [mail] = smtp.wait_for("reason@example.com")
    assert reason in plain_text(mail).splitlines()
