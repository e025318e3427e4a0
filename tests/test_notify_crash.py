"""A server killed with SIGKILL while the push service is down loses nothing and repeats nothing."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlmodel import Session, select

from tests.conftest import make_settings
from tests.utils.factories import make_merchant
from tests.utils.push_service import PushService
from waybill import create_app
from waybill.notify.models import OutboxMessage

#: The server as a gunicorn gevent worker runs it: gevent-patched, the app, its outbox worker.
SERVER = """
from gevent import monkey; monkey.patch_all()
import sys
from gevent.pywsgi import WSGIServer
from waybill import create_app
WSGIServer(("127.0.0.1", int(sys.argv[1])), create_app(), log=None).serve_forever()
"""


WAYBILL = str(Path(sys.executable).with_name("waybill"))


def start_server(how: str, port: int, env: dict[str, str]) -> subprocess.Popen[bytes]:
    """Its own process group, so SIGKILL takes gunicorn's workers down with the master."""
    if how == "serve":
        cmd = [WAYBILL, "serve", "--port", str(port)]
    else:
        cmd = [sys.executable, "-c", SERVER, str(port)]
    return subprocess.Popen(
        cmd, env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def kill_server(server: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(server.pid, signal.SIGKILL)
    server.wait(10)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_listening(port: int, proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert proc.poll() is None, "the server exited"
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError("the server did not start")


@pytest.fixture
def push() -> Iterator[PushService]:
    service = PushService().start()
    yield service
    service.stop()


@pytest.mark.parametrize("how", ["gevent-process", "serve"])
def test_sigkill_while_push_is_down_then_each_notification_exactly_once(
    how: str, instance_dir: Path, push: PushService
) -> None:
    instance = instance_dir
    settings = make_settings(instance, push_endpoint_hosts=("127.0.0.1:*",))
    env = {
        **os.environ,
        "WAYBILL_INSTANCE_DIR": str(instance),
        "WAYBILL_DATABASE_URL": settings.database_url,
        "WAYBILL_SECRET_KEY": settings.secret_key,
        "WAYBILL_PUSH_ENDPOINT_HOSTS": "127.0.0.1:*",
        "WAYBILL_RUN_WORKER": "1",
        "WAYBILL_OUTBOX_LEASE_SECONDS": "3",
    }
    # This process writes orders and subscriptions into the same database; the server sends.
    app = create_app(settings)
    client = app.test_client()
    push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
    merchant = make_merchant(app, client)
    browsers = []
    for n in range(3):
        order = merchant.create_order(f"buyer{n}@example.com")
        browser = push.subscribe()
        token = order["tracking_url"].rsplit("/", 1)[1]
        r = client.post(f"/api/track/{token}/push-subscriptions", json=browser.to_json())
        assert r.status_code == 201
        merchant.add_shipment(order["id"])  # confirmed -> shipped: one notification each
        browsers.append(browser)

    push.answer_always(503)  # the push service is down
    port = free_port()
    server = start_server(how, port, env)
    try:
        wait_listening(port, server)
        tried = {b.id for b in browsers}
        assert push.wait_for(lambda: tried <= {sid for sid, _ in push.attempts}, timeout=30)
        kill_server(server)
        assert push.deliveries == []

        push.answer_always(201)  # back up; the restarted server takes over the rows
        server = start_server(how, port, env)
        wait_listening(port, server)
        engine = app.extensions["waybill.engine"]

        def all_sent() -> bool:
            with Session(engine) as s:
                rows = s.exec(select(OutboxMessage).where(OutboxMessage.channel == "push"))
                states = [r.state for r in rows]
            return len(states) == 3 and set(states) == {"sent"}

        deadline = time.monotonic() + 60
        while not all_sent():
            assert time.monotonic() < deadline, "pending notifications were not delivered"
            time.sleep(0.2)
        assert sorted(len(push.delivered_to(b)) for b in browsers) == [1, 1, 1]
        assert {push.delivered_to(b)[0].payload["status"] for b in browsers} == {"shipped"}
        assert push.errors == []
    finally:
        kill_server(server)
        app.extensions["waybill.engine"].dispose()
