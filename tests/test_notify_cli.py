"""`waybill init` makes the VAPID key pair; `waybill worker` sends the outbox on its own."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from tests.conftest import make_settings
from tests.utils.factories import make_merchant
from tests.utils.push_service import PushService
from waybill import create_app
from waybill.notify.vapid import b64url

WAYBILL = str(Path(sys.executable).with_name("waybill"))


def environ(instance: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    env.update({"WAYBILL_INSTANCE_DIR": str(instance), **extra})
    return env


def test_init_creates_the_vapid_key_pair_once(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    first = subprocess.run(
        [WAYBILL, "init"], env=environ(instance), capture_output=True, text=True, timeout=60
    )
    assert first.returncode == 0, first.stderr
    key = instance / "vapid_private_key.pem"
    assert key.exists() and oct(key.stat().st_mode & 0o777) == "0o600"
    pem = key.read_bytes()
    again = subprocess.run(
        [WAYBILL, "init"], env=environ(instance), capture_output=True, text=True, timeout=60
    )
    assert again.returncode == 0 and key.read_bytes() == pem
    public = first.stdout.split("VAPID public key: ", 1)[1].split()[0]
    app = create_app(make_settings(instance, database_url=f"sqlite:///{instance}/waybill.db"))
    try:
        assert app.test_client().get("/api/push/public-key").get_json() == {"public_key": public}
    finally:
        app.extensions["waybill.engine"].dispose()


def test_vapid_key_from_the_environment_is_used_and_nothing_written(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    key = ec.generate_private_key(ec.SECP256R1())
    raw = b64url(key.private_numbers().private_value.to_bytes(32, "big"))
    public = b64url(
        key.public_key().public_bytes(
            serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
        )
    )
    instance = tmp_path / "instance"
    done = subprocess.run(
        [WAYBILL, "init"],
        env=environ(instance, WAYBILL_VAPID_PRIVATE_KEY=raw),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert f"VAPID public key: {public}" in done.stdout
    assert not (instance / "vapid_private_key.pem").exists()
    bad = subprocess.run(
        [WAYBILL, "init"],
        env=environ(instance, WAYBILL_VAPID_PRIVATE_KEY="xx"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode != 0 and "WAYBILL_VAPID_PRIVATE_KEY" in bad.stderr


def test_worker_command_sends_what_the_server_queued(tmp_path: Path) -> None:
    instance = tmp_path / "instance"
    assert (
        subprocess.run(
            [WAYBILL, "init"], env=environ(instance), capture_output=True, timeout=60
        ).returncode
        == 0
    )
    push = PushService().start()
    app = create_app(
        make_settings(
            instance,
            database_url=f"sqlite:///{instance}/waybill.db",
            push_endpoint_hosts=("127.0.0.1:*",),
            secret_key=(instance / "secret_key").read_text().strip(),  # the worker's, too
        )
    )
    worker = subprocess.Popen(
        [WAYBILL, "worker"],
        env=environ(instance, WAYBILL_PUSH_ENDPOINT_HOSTS="127.0.0.1:*"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        client = app.test_client()
        push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
        merchant = make_merchant(app, client)
        order = merchant.create_order("w@example.com")
        browser = push.subscribe()
        token = order["tracking_url"].rsplit("/", 1)[1]
        assert (
            client.post(
                f"/api/track/{token}/push-subscriptions", json=browser.to_json()
            ).status_code
            == 201
        )
        merchant.add_shipment(order["id"])
        assert push.wait_for(lambda: push.delivered_to(browser), timeout=30)
        assert push.delivered_to(browser)[0].payload["status"] == "shipped"
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(15) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        worker.stdout.close()  # type: ignore[union-attr]
        worker.stderr.close()  # type: ignore[union-attr]
        push.stop()
        app.extensions["waybill.engine"].dispose()


def test_worker_processes_share_the_outbox_and_send_each_message_once(
    tmp_path: Path, pg_database: str
) -> None:
    """``waybill worker --processes 2`` on PostgreSQL: both claim, nothing goes twice."""
    instance = tmp_path / "instance"
    env = environ(
        instance, WAYBILL_DATABASE_URL=pg_database, WAYBILL_PUSH_ENDPOINT_HOSTS="127.0.0.1:*"
    )
    assert (
        subprocess.run([WAYBILL, "init"], env=env, capture_output=True, timeout=60).returncode == 0
    )
    push = PushService().start()
    push.delay = 0.05  # slow enough that both processes have batches in flight
    app = create_app(
        make_settings(
            instance,
            database_url=pg_database,
            push_endpoint_hosts=("127.0.0.1:*",),
            secret_key=(instance / "secret_key").read_text().strip(),  # the workers', too
        )
    )
    client = app.test_client()
    push.expected_key = client.get("/api/push/public-key").get_json()["public_key"]
    merchant = make_merchant(app, client)
    browsers, orders = [], []
    for i in range(60):
        orders.append(merchant.create_order(f"p{i}@example.com"))
        browsers.append(push.subscribe())
        token = orders[-1]["tracking_url"].rsplit("/", 1)[1]
        r = client.post(f"/api/track/{token}/push-subscriptions", json=browsers[-1].to_json())
        assert r.status_code == 201
    worker = subprocess.Popen(
        [WAYBILL, "worker", "--processes", "2", "--concurrency", "8"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(worker.stdout), daemon=True)  # type: ignore[arg-type]
    reader.start()
    running = r"outbox worker (\d+-[0-9a-f]+) running"
    try:
        # Both processes are up before there is work: on a loaded machine the first could
        # otherwise send everything before the second had started.
        deadline = time.monotonic() + 30
        while len(set(re.findall(running, "".join(lines)))) < 2:
            assert time.monotonic() < deadline and worker.poll() is None, "".join(lines)
            time.sleep(0.05)
        for order in orders:
            merchant.add_shipment(order["id"])
        assert push.wait_for(lambda: len(push.deliveries) >= len(browsers), timeout=60)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        reader.join(10)
        output = "".join(lines)
        owners = re.findall(running, output)
        assert len(set(owners)) == 2, output  # two processes, each its own lease owner
        assert sorted(len(push.delivered_to(b)) for b in browsers) == [1] * len(browsers)
        assert push.errors == []
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait(10)
        worker.stdout.close()  # type: ignore[union-attr]
        push.stop()
        app.extensions["waybill.engine"].dispose()


def test_outbox_dead_lists_what_failed_every_attempt(tmp_path: Path) -> None:
    import json
    from datetime import UTC, datetime, timedelta

    import sqlalchemy as sa
    from sqlmodel import Session

    from waybill.notify.models import OutboxMessage

    instance = tmp_path / "instance"
    env = environ(instance)
    assert (
        subprocess.run([WAYBILL, "init"], env=env, capture_output=True, timeout=60).returncode == 0
    )
    app = create_app(make_settings(instance, database_url=f"sqlite:///{instance}/waybill.db"))
    client = app.test_client()
    make_merchant(app, client).create_order("dead@example.com")
    engine = app.extensions["waybill.engine"]
    with Session(engine) as s, s.begin():
        change_id = s.exec(sa.text("SELECT max(id) FROM change")).scalar()  # type: ignore[call-overload]
        now = datetime.now(UTC)
        s.add(
            OutboxMessage(
                dedupe_key="x",
                change_id=change_id,
                order_id=1,
                channel="email",
                destination="dead@example.com",
                status="shipped",
                state="dead",
                attempts=8,
                due_at=now,
                deadline=now + timedelta(days=1),
                last_error="SMTPServerDisconnected: gone",
                done_at=now,
            )
        )
    app.extensions["waybill.engine"].dispose()
    out = subprocess.run(
        [WAYBILL, "outbox", "dead"], env=env, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    [line] = out.stdout.splitlines()
    row = json.loads(line)
    assert (row["channel"], row["attempts"], row["last_error"]) == (
        "email",
        8,
        "SMTPServerDisconnected: gone",
    )
