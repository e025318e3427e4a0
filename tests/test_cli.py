"""The `waybill` command as an operator runs it, in a fresh instance directory."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

WAYBILL = str(Path(sys.executable).with_name("waybill"))


def run(
    instance: Path, *args: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("WAYBILL_")}
    environ.update({"WAYBILL_INSTANCE_DIR": str(instance), **(env or {})})
    return subprocess.run(
        [WAYBILL, *args],
        env=environ,
        cwd=instance.parent,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_init_demo_merchant_and_login_link(tmp_path):
    instance = tmp_path / "instance"
    init = run(instance, "init")
    assert init.returncode == 0, init.stderr
    secret = instance / "secret_key"
    assert secret.exists() and oct(secret.stat().st_mode & 0o777) == "0o600"
    assert run(instance, "init").returncode == 0  # idempotent: migrating again keeps the data

    demo = run(instance, "demo")
    assert demo.returncode == 0, demo.stderr
    assert "http://127.0.0.1:8000/auth/link/" in demo.stdout
    again = run(instance, "demo")
    assert again.returncode == 0 and "/auth/link/" in again.stdout

    created = run(instance, "merchant", "create", "Acme Ltd")
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["merchant_id"] and body["api_key"].startswith("wb_live_")

    keys = run(instance, "merchant", "keys", "list", body["merchant_id"])
    listed = json.loads(keys.stdout)
    assert listed["prefix"] == body["api_key"][:14] and listed["revoked"] is False

    link = run(instance, "login-link", "DEMO@example.com")
    assert link.returncode == 0
    assert link.stdout.strip().startswith("http://127.0.0.1:8000/auth/link/")
    unknown = run(instance, "login-link", "nobody@example.com")
    assert unknown.returncode != 0 and "no customer" in unknown.stderr


def test_demo_orders_are_visible_through_the_printed_link(tmp_path):
    from tests.conftest import make_settings
    from waybill import create_app

    instance = tmp_path / "instance"
    run(instance, "init")
    link = run(instance, "demo").stdout.strip().splitlines()[-1].strip()
    app = create_app(make_settings(instance, secret_key=(instance / "secret_key").read_text()))
    client = app.test_client()
    path = link.removeprefix("http://127.0.0.1:8000")
    assert client.post(path).status_code == 303
    orders = client.get("/api/me/orders").get_json()["orders"]
    statuses = {o["status"] for o in orders}
    assert {"processing", "out_for_delivery", "in_transit", "delivered", "exception"} <= statuses
    split = [o for o in orders if o["packages"]["total"] == 2]
    assert split and split[0]["packages"]["summary"] == "1 of 2 packages delivered"
    app.extensions["waybill.engine"].dispose()


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"WAYBILL_DATABASE_URL": "mysql://x/y"}, "unknown scheme 'mysql'"),
        ({"WAYBILL_BROKER_URL": "kafka://x"}, "WAYBILL_BROKER_URL"),
        ({"WAYBILL_BASE_URL": "ftp://x"}, "WAYBILL_BASE_URL"),
        ({"WAYBILL_PUSH_ENDPOINT_HOSTS": "127.0.0.1"}, "WAYBILL_PUSH_ENDPOINT_HOSTS"),
        (
            {"WAYBILL_DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"},
            "cannot reach the database",
        ),
    ],
)
def test_bad_configuration_is_a_clear_error_not_a_traceback(tmp_path, env, message):
    result = run(tmp_path / "instance", "init", env=env)
    assert result.returncode != 0
    assert message in result.stderr
    assert "Traceback" not in result.stderr
