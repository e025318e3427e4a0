"""Fixtures: the database every test runs on, the app, clients.

Every test that touches a database runs twice, once per backend of the session-scoped
``backend`` fixture: on SQLite (a copy of one migrated template file) and on PostgreSQL (a new
database made from one migrated template database, dropped after the test). The PostgreSQL
half skips, saying why, when there is no server to test against. ``instance_dir`` ties an
instance directory to its test's database; ``make_settings`` reads that tie, so a test that
builds its own settings from an instance directory gets the same database.

When ``WAYBILL_TEST_POSTGRES_URL`` or ``WAYBILL_TEST_REDIS_URL`` is unset, a server answering on
its standard local port (5432, 6379) is found and used; set either to an empty string to run
without it. The first line of the report says which were used.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
import sqlalchemy as sa
from flask import Flask
from flask.testing import FlaskClient

from tests.utils.factories import AuthActions, MerchantActions, make_merchant
from tests.utils.smtp import SMTPServer
from waybill import close_app, create_app
from waybill.config import Settings
from waybill.db import create_engine, migrate

POSTGRES_VAR, STANDARD_POSTGRES = (
    "WAYBILL_TEST_POSTGRES_URL",
    "postgresql+psycopg://postgres@127.0.0.1:5432/test",
)
REDIS_VAR, STANDARD_REDIS = "WAYBILL_TEST_REDIS_URL", "redis://127.0.0.1:6379/0"

# instance directory -> the URL of the database its test was given (read by make_settings)
_DATABASE_OF: dict[Path, str] = {}
_FOUND: dict[str, str] = {}  # variable -> how its value was chosen, for the report header


def make_settings(instance: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "instance_dir": instance,
        "database_url": database_url_of(instance),
        "secret_key": "test-secret-key-not-for-production",
        "testing": True,
        "run_worker": False,
    }
    values.update(overrides)
    return Settings(**values).resolved()  # type: ignore[arg-type]


def database_url_of(instance: Path) -> str:
    """The database a test gave this instance directory (SQLite inside it unless told)."""
    return _DATABASE_OF.get(Path(instance), f"sqlite:///{Path(instance) / 'waybill.db'}")


# --- which servers this run has ------------------------------------------------------------


def _answers(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5):
            return True
    except OSError:
        return False


def _postgres_usable(url: str) -> bool:
    engine = sa.create_engine(url, connect_args={"connect_timeout": 2})
    try:
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        return True
    except sa.exc.SQLAlchemyError:
        return False
    finally:
        engine.dispose()


def _redis_usable(url: str) -> bool:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)
    try:
        return bool(client.ping())
    except redis.RedisError:
        return False
    finally:
        client.close()


def _find(var: str, standard: str, port: int, usable: Callable[[str], bool]) -> None:
    value = os.environ.get(var)
    if value is not None:
        _FOUND[var] = f"{value} (from {var})" if value else f"none ({var} is empty)"
        return
    if _answers("127.0.0.1", port) and usable(standard):
        os.environ[var] = standard  # the servers the tests start inherit it too
        _FOUND[var] = f"{standard} (found on its standard port; {var} was unset)"
    else:
        _FOUND[var] = f"none (nothing usable on 127.0.0.1:{port}; {var} is unset)"


def pytest_configure(config: pytest.Config) -> None:
    _find(POSTGRES_VAR, STANDARD_POSTGRES, 5432, _postgres_usable)
    _find(REDIS_VAR, STANDARD_REDIS, 6379, _redis_usable)
    worker = os.environ.get("PYTEST_XDIST_WORKER", "")  # "gw0", "gw1", … under ``-n``
    if worker.startswith("gw") and os.environ.get(REDIS_VAR):
        # Each test process on a Redis database number of its own (1-15): keys, rate limits
        # and the broker's channel, which is scoped by it, stay apart.
        parts = urlsplit(os.environ[REDIS_VAR])
        number = 1 + int(worker[2:]) % 15
        os.environ[REDIS_VAR] = urlunsplit(parts._replace(path=f"/{number}"))


def pytest_report_header(config: pytest.Config) -> str:
    workers = (
        " (each test process on a database number of its own)"
        if config.pluginmanager.hasplugin("xdist") and getattr(config.option, "numprocesses", None)
        else ""
    )
    return f"waybill: SQLite; PostgreSQL {_FOUND[POSTGRES_VAR]}; Redis {_FOUND[REDIS_VAR]}{workers}"


@pytest.fixture(scope="session")
def postgres_url() -> str:
    url = os.environ.get(POSTGRES_VAR)
    if not url:
        pytest.skip(f"no PostgreSQL to test against: {_FOUND.get(POSTGRES_VAR, 'unset')}")
    return url


@pytest.fixture(scope="session")
def redis_url() -> str:
    url = os.environ.get(REDIS_VAR)
    if not url:
        pytest.skip(f"no Redis to test against: {_FOUND.get(REDIS_VAR, 'unset')}")
    return url


# --- the database each test runs on --------------------------------------------------------


@pytest.fixture(scope="session")
def migrated_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head; each test gets its own copy."""
    instance = tmp_path_factory.mktemp("template")
    engine = create_engine(make_settings(instance))
    migrate(engine)
    engine.dispose()
    return instance / "waybill.db"


@dataclass
class Backend:
    """One kind of database the suite runs on, handing out fresh databases of that kind."""

    kind: str  # "sqlite" or "postgresql"
    sqlite_template: Path
    postgres_url: str | None = None  # the server's maintenance URL
    postgres_template: str | None = None  # the migrated template database's name
    _admin: sa.Engine | None = field(default=None, repr=False)

    @classmethod
    def server(cls, postgres_url: str, admin: sa.Engine) -> Backend:
        """A PostgreSQL server's empty databases alone (``migrated=False``): no template."""
        return cls("postgresql", Path(), postgres_url, None, admin)

    @contextmanager
    def database(self, instance: Path, *, migrated: bool = True) -> Iterator[str]:
        """A database of its own for ``instance``, migrated to head (or empty), gone after."""
        instance.mkdir(parents=True, exist_ok=True)
        if self.kind == "sqlite":
            if migrated:
                shutil.copy(self.sqlite_template, instance / "waybill.db")
            yield database_url_of(instance)
            return
        assert self._admin is not None and self.postgres_url is not None
        name = f"waybill_t_{secrets.token_hex(5)}"
        template = f' TEMPLATE "{self.postgres_template}"' if migrated else ""
        with self._admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{name}"{template}')
        url = sa.engine.make_url(self.postgres_url).set(database=name)
        _DATABASE_OF[Path(instance)] = url.render_as_string(hide_password=False)
        try:
            yield _DATABASE_OF[Path(instance)]
        finally:
            del _DATABASE_OF[Path(instance)]
            with self._admin.connect() as conn:
                conn.exec_driver_sql(f'DROP DATABASE "{name}" WITH (FORCE)')


BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


@pytest.fixture(scope="session")
def postgres_template(postgres_url: str, migrated_template: Path) -> Iterator[Backend]:
    """One migrated template database for the session's PostgreSQL tests, made once."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    template = f"waybill_template_{secrets.token_hex(4)}"
    try:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'CREATE DATABASE "{template}"')
    except sa.exc.OperationalError as exc:
        admin.dispose()
        pytest.skip(f"PostgreSQL at {postgres_url} is not reachable: {exc.orig}")
    url = sa.engine.make_url(postgres_url).set(database=template)
    settings = make_settings(migrated_template.parent, database_url=url.render_as_string(False))
    engine = create_engine(settings)
    migrate(engine)
    engine.dispose()
    try:
        yield Backend("postgresql", migrated_template, postgres_url, template, admin)
    finally:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE "{template}" WITH (FORCE)')
        admin.dispose()


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request: pytest.FixtureRequest, migrated_template: Path) -> Backend:
    """SQLite and PostgreSQL: each test that touches a database runs on both. Module-scoped
    (the templates it hands out are the session's, made once): a session-scoped parameter
    switched back and forth as test processes took modules, and pytest tripped over its own
    finalizers (``assert not self._finalizers``) when it did."""
    if request.param == "sqlite":
        return Backend("sqlite", migrated_template)
    return request.getfixturevalue("postgres_template")  # type: ignore[no-any-return]


#: Modules that take longest, started first so that no test process is left with one at the end
#: (``make test`` runs a module's tests in one process).
SLOW_FIRST = (
    "tests/test_webhook_burst.py",
    "tests/test_no_freeze.py",
    "tests/test_fuzz_api.py",
    "tests/test_two_hosts.py",
    "tests/test_sign_in_timing.py",
    "tests/test_realtime_server.py",
    "tests/test_notify_cli.py",
    "tests/test_ops.py",
    "tests/test_ending_sessions_server.py",
    "tests/browser/test_text_size.py",
    "tests/browser/test_long_orders.py",
    "tests/browser/",
)


def _same_again(item: pytest.Item) -> bool:
    """A PostgreSQL run that would only repeat another: a page's layout (the database cannot
    change how a browser lays it out), or one server process with the in-process broker (run
    on SQLite, as a small shop does; PostgreSQL runs with Redis and two workers, as deployed)."""
    callspec = getattr(item, "callspec", None)
    if callspec is None or callspec.params.get("backend") != "postgresql":
        return False
    in_process_broker = "memory" in callspec.params.values()
    return item.get_closest_marker("layout") is not None or in_process_broker


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    repeated = [item for item in items if _same_again(item)]
    if repeated:
        config.hook.pytest_deselected(items=repeated)
        items[:] = [item for item in items if not _same_again(item)]

    def rank(item: pytest.Item) -> int:
        path = item.nodeid.split("::", 1)[0]
        return next((n for n, p in enumerate(SLOW_FIRST) if path.startswith(p)), len(SLOW_FIRST))

    items.sort(key=rank)  # stable: within a module, the order pytest chose


@pytest.fixture
def instance_dir(tmp_path: Path, backend: Backend) -> Iterator[Path]:
    """An instance directory with a fresh migrated database of this run's backend."""
    instance = tmp_path / "instance"
    with backend.database(instance):
        yield instance


@pytest.fixture
def empty_instance(tmp_path: Path, backend: Backend) -> Iterator[Path]:
    """An instance directory whose database of this run's backend has no tables yet: for
    migration tests, which build an older schema in it."""
    instance = tmp_path / "instance"
    with backend.database(instance, migrated=False):
        yield instance


@pytest.fixture
def pg_database(postgres_url: str, tmp_path: Path) -> Iterator[str]:
    """An empty PostgreSQL database of its own, dropped afterwards: for tests of what only
    PostgreSQL does (row locks, concurrent writers), beside the suite's runs on both."""
    admin = sa.create_engine(postgres_url, isolation_level="AUTOCOMMIT")
    try:
        with Backend.server(postgres_url, admin).database(tmp_path / "pg", migrated=False) as url:
            yield url
    except sa.exc.OperationalError as exc:
        pytest.skip(f"PostgreSQL at {postgres_url} is not reachable: {exc.orig}")
    finally:
        admin.dispose()


@pytest.fixture
def settings(instance_dir: Path) -> Settings:
    return make_settings(instance_dir)


@pytest.fixture
def app(settings: Settings) -> Iterator[Flask]:
    app = create_app(settings)
    yield app
    close_app(app)


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
