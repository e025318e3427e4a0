"""POST /auth/email must not tell, by how long it takes, whether an address is a customer's.

The request only validates the address and hands it to a background worker, which looks the
customer up, issues the code and mails it. The mail still arrives, over real SMTP (aiosmtpd).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Iterator

import pytest
import requests
import sqlalchemy as sa
from flask import Flask
from werkzeug.serving import BaseWSGIServer, make_server

from tests.conftest import make_settings
from tests.utils.smtp import SMTPServer, free_port
from waybill import close_app, create_app
from waybill.auth import login

KNOWN = "known.timing@example.com"
UNKNOWN = "unknown.timing@example.com"
UNLIMITED = (("sign_in_email_per_address", "1000/hour"), ("sign_in_email_per_ip", "1000/hour"))


@pytest.fixture
def app(instance_dir, smtp) -> Iterator[Flask]:
    app = create_app(
        make_settings(
            instance_dir,
            smtp_url=smtp.url,
            mail_from="Shop <t@waybill.test>",
            rate_limits=UNLIMITED,
        )
    )
    yield app
    close_app(app)


@pytest.fixture
def live_url(app: Flask) -> Iterator[str]:
    port = free_port()
    server: BaseWSGIServer = make_server("127.0.0.1", port, app, threaded=True)
    thread = threading.Thread(target=server.serve_forever, name="timing-server", daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{port}"
    server.shutdown()
    thread.join(timeout=10)


def _mails_to(smtp: SMTPServer, address: str) -> list[object]:
    return [m for m in smtp.messages if address in str(m["To"]).lower()]


def test_known_and_unknown_addresses_take_as_long(merchant, smtp, live_url):
    merchant.create_order(email=KNOWN)
    http = requests.Session()
    mailed = 0

    def timed(address: str) -> float:
        nonlocal mailed
        start = time.perf_counter()
        r = http.post(f"{live_url}/auth/email", json={"email": address}, timeout=10)
        elapsed = time.perf_counter() - start
        assert (r.status_code, r.json()) == (202, {"sent": True})
        # Work done after the answer must not land in the next sample: wait for the mail (and
        # the sender's goodbye), or for the lookup an unknown address leaves behind (it starts
        # 50 ms after the answer).
        if address == KNOWN:
            mailed += 1
            smtp.wait_for(KNOWN, mailed)
        # and for the job itself to end: on a loaded machine the lookup or the mail's last
        # steps ran into the next sample, which made that address look slower
        assert login.BackgroundQueue.wait_all_idle(5)
        time.sleep(0.02)
        return elapsed

    for _ in range(5):  # warm-up: connections, templates, the limiter's buckets
        timed(KNOWN)
        timed(UNKNOWN)
    known: list[float] = []
    unknown: list[float] = []
    for i in range(40):  # interleaved, each going first half the time, so drift hits both
        pair = (KNOWN, UNKNOWN) if i % 2 == 0 else (UNKNOWN, KNOWN)
        for address in pair:
            (known if address == KNOWN else unknown).append(timed(address))

    median_known = statistics.median(known) * 1000
    median_unknown = statistics.median(unknown) * 1000
    # The typical difference within a pair: a burst of load elsewhere on the machine (the
    # other test process) slows both of a pair alike, where it would skew the two medians.
    gap = abs(statistics.median(k - u for k, u in zip(known, unknown, strict=True))) * 1000
    bound = max(0.5, 0.15 * max(median_known, median_unknown))
    print(f"median known {median_known:.2f} ms, unknown {median_unknown:.2f} ms")
    assert gap < bound, (
        f"known {median_known:.2f} ms, unknown {median_unknown:.2f} ms; a pair {gap:.2f} ms "
        f"apart, over the {bound:.2f} ms allowed"
    )
    assert not _mails_to(smtp, UNKNOWN)


def test_the_request_queries_nothing_that_depends_on_the_address(app, merchant, client):
    """What the request itself sends to the database is the same for every address."""
    merchant.create_order(email=KNOWN)
    engine = app.extensions["waybill.engine"]
    here = threading.get_ident()
    seen: list[str] = []

    def record(conn, cursor, statement, parameters, context, executemany):  # type: ignore[no-untyped-def]
        if threading.get_ident() == here:  # the background worker runs in its own thread
            seen.append(statement)

    sa.event.listen(engine, "before_cursor_execute", record)
    try:
        statements = {}
        for address in (KNOWN, UNKNOWN, KNOWN, UNKNOWN):
            seen.clear()
            r = client.post("/auth/email", json={"email": address})
            assert (r.status_code, r.get_json()) == (202, {"sent": True})
            statements.setdefault(address, []).append(list(seen))
    finally:
        sa.event.remove(engine, "before_cursor_execute", record)
    assert statements[KNOWN][1] == statements[UNKNOWN][1] == []


def test_known_address_gets_its_mail_and_unknown_never_does(merchant, client, smtp):
    merchant.create_order(email=KNOWN)
    r = client.post("/auth/email", json={"email": UNKNOWN})
    assert (r.status_code, r.get_json()) == (202, {"sent": True})
    r = client.post("/auth/email", json={"email": KNOWN.upper()})
    assert (r.status_code, r.get_json()) == (202, {"sent": True})
    mail = smtp.wait_for(KNOWN)[-1]
    text = mail.get_body(("plain",)).get_content()
    assert "/auth/link/" in text and str(mail["Subject"]).rsplit(" ", 1)[1] in text

    # The form post answers the same page for both, and mails only the customer.
    known_page = client.post("/auth/email", data={"email": KNOWN})
    unknown_page = client.post("/auth/email", data={"email": UNKNOWN})
    assert known_page.status_code == unknown_page.status_code == 202
    assert b"Check your mail" in known_page.data
    assert known_page.data.replace(KNOWN.encode(), b"") == unknown_page.data.replace(
        UNKNOWN.encode(), b""
    )
    smtp.wait_for(KNOWN, 2)
    time.sleep(0.2)  # one worker, first in first out: the unknown ones were done before
    assert len(_mails_to(smtp, KNOWN)) == 2
    assert not _mails_to(smtp, UNKNOWN)


def test_a_full_queue_still_answers_the_same_and_logs(app, client, merchant, monkeypatch, caplog):
    from waybill.auth import login

    release = threading.Event()
    started = threading.Event()

    def stuck(job: object) -> None:
        started.set()
        release.wait(10)

    small = login.BackgroundQueue(stuck, name="test-sign-in", maxsize=1, delay=0)
    monkeypatch.setattr(login, "_sign_in_mails", small)
    merchant.create_order(email=KNOWN)
    try:
        assert client.post("/auth/email", json={"email": KNOWN}).status_code == 202
        assert started.wait(5)  # the worker holds the first; the second fills the queue
        assert client.post("/auth/email", json={"email": KNOWN}).status_code == 202
        with caplog.at_level("WARNING", logger="waybill.auth.login"):
            r = client.post("/auth/email", json={"email": UNKNOWN})
        assert (r.status_code, r.get_json()) == (202, {"sent": True})
        assert "sign-in mail queue full" in caplog.text and UNKNOWN not in caplog.text
    finally:
        release.set()
    assert small.wait_idle(5)


def test_the_worker_survives_a_failing_job(caplog):
    from waybill.auth import login

    done: list[int] = []

    def work(n: int) -> None:
        if n == 1:
            raise RuntimeError("boom")
        done.append(n)

    q = login.BackgroundQueue(work, name="test-failing", delay=0)
    assert q.put(1) and q.put(2)
    assert q.wait_idle(5)
    assert done == [2] and "a background job failed" in caplog.text
