"""Fixtures: a fresh SQLite file per test (copied from one migrated template), the app, clients."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.smtp import SMTPServer
from waybill import create_app
from waybill.config import Settings
from waybill.db import create_engine, migrate


def make_settings(instance: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "instance_dir": instance,
        "database_url": f"sqlite:///{instance / 'waybill.db'}",
        "secret_key": "test-secret-key-not-for-production",
        "testing": True,
        "run_worker": False,
    }
    values.update(overrides)
    return Settings(**values).resolved()  # type: ignore[arg-type]


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; each test gets its own copy."""
    instance = tmp_path_factory.mktemp("template")
    engine = create_engine(make_settings(instance))
    migrate(engine)
    engine.dispose()
    return instance / "waybill.db"


@pytest.fixture
def instance_dir(tmp_path: Path, migrated_template: Path) -> Path:
    instance = tmp_path / "instance"
    instance.mkdir()
    shutil.copy(migrated_template, instance / "waybill.db")
    return instance


@pytest.fixture
def settings(instance_dir: Path) -> Settings:
    return make_settings(instance_dir)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    app.extensions["waybill.broker"].close()
    app.extensions["waybill.engine"].dispose()


@pytest.fixture
def client(app: Flask) -> FlaskClient:
    return app.test_client()


@pytest.fixture
def merchant(app: Flask, client: FlaskClient) -> MerchantActions:
    return make_merchant(app, client)


@pytest.fixture
def auth(app: Flask, client: FlaskClient) -> AuthActions:
    return AuthActions(app, client)


@pytest.fixture
def smtp() -> Iterator[SMTPServer]:
    """A real SMTP server (aiosmtpd) on loopback that keeps what it receives."""
    server = SMTPServer().start()
    yield server
    server.stop()


@pytest.fixture
def postgres_url() -> str:
    url = os.environ.get("WAYBILL_TEST_POSTGRES_URL")
    if not url:
        pytest.skip("WAYBILL_TEST_POSTGRES_URL is not set: no PostgreSQL to test against")
    return url


@pytest.fixture
def redis_url() -> str:
    url = os.environ.get("WAYBILL_TEST_REDIS_URL")
    if not url:
        pytest.skip("WAYBILL_TEST_REDIS_URL is not set: no Redis to test against")
    return url
