"""Secrets at rest: a copy of the database opens no tracking page, links sent before migration
0003 keep working, and the instance directory and its SQLite files are private (0700/0600)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import sqlite3
import stat
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.script import ScriptDirectory
from flask.testing import FlaskClient
from sqlmodel import select

from tests.conftest import make_settings
from tests.test_cli import run
from tests.utils.factories import make_merchant
from tests.utils.stored import sqlite_bytes
from waybill import close_app, create_app
from waybill.auth.merchant_keys import issue_key
from waybill.auth.tokens import (
    SealError,
    digest,
    new_tracking_token,
    open_tracking_token,
    seal_tracking_token,
    tracking_token,
)
from waybill.db import alembic_config, create_engine, migrate, session_scope
from waybill.models import Merchant, Order

SECRET = "test-secret-key-not-for-production"  # make_settings' key
OLD_HEADS = ("0002_auth", "0002_notify")
NEW_HEAD = "0010_vapid_key"  # the head: 0003 seals the tokens, later ones follow
NO_TRACKING_LIMIT = {"rate_limits": {"tracking_wrong_token_per_ip": "100000/minute"}}


# --- helpers -------------------------------------------------------------------------------


@pytest.fixture
def umask_022() -> Iterator[None]:
    """The common umask, under which a file made without care is 0644 and a directory 0755."""
    old = os.umask(0o022)
    yield
    os.umask(old)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _strings(value: Any) -> Iterator[str]:
    """Every string in a column value, JSON documents opened."""
    if isinstance(value, bytes):
        value = value.decode("latin-1")
    if isinstance(value, str):
        yield value
        if value[:1] in ("[", "{"):
            with contextlib.suppress(ValueError):
                yield from _strings(json.loads(value))
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from _strings(k)
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)


def every_text_value(engine: sa.Engine) -> set[str]:
    """Every string in every column of every row of every table."""
    meta = sa.MetaData()
    meta.reflect(engine)
    found: set[str] = set()
    with engine.connect() as conn:
        for table in meta.sorted_tables:
            for row in conn.execute(sa.select(table)):
                for value in row:
                    found.update(_strings(value))
    return found


def order_text_values(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        rows = conn.exec_driver_sql('SELECT * FROM "order"').all()
    return {s for row in rows for value in row for s in _strings(value)}


def assert_opens_nothing(client: FlaskClient, values: set[str]) -> None:
    for value in values:
        segment = quote(value, safe="")
        assert client.get(f"/api/track/{segment}").status_code == 404, value
        assert client.get(f"/t/{segment}").status_code == 404, value


def token_of(order: dict[str, Any]) -> str:
    return str(order["tracking_url"]).rsplit("/", 1)[1]


# --- the sealed tracking token -------------------------------------------------------------


def test_a_sealed_tracking_token_opens_only_with_the_secret_key_beside_its_hash():
    token, sealed, token_hash = new_tracking_token(SECRET)
    assert token_hash == digest(token) and token not in sealed
    assert open_tracking_token(SECRET, sealed, token_hash) == token
    assert seal_tracking_token(SECRET, token) != sealed  # a fresh nonce each time
    with pytest.raises(SealError):
        open_tracking_token("another-secret-key", sealed, token_hash)
    other = new_tracking_token(SECRET)
    with pytest.raises(SealError):  # moved beside another order's hash, it opens nothing
        open_tracking_token(SECRET, sealed, other[2])
    with pytest.raises(SealError):
        open_tracking_token(SECRET, token, token_hash)  # a plain token is not a sealed one


def test_a_copy_of_the_database_opens_no_tracking_page(tmp_path, migrated_template):
    instance = tmp_path / "instance"
    instance.mkdir()
    (instance / "waybill.db").write_bytes(migrated_template.read_bytes())
    app = create_app(make_settings(instance, extra=NO_TRACKING_LIMIT))
    try:
        client = app.test_client()
        merchant = make_merchant(app, client)
        orders = [merchant.create_order(email=f"copy{i}@example.com") for i in range(3)]
        shipment = merchant.add_shipment(orders[0]["id"])
        merchant.scan(shipment["id"], "in_transit", "2026-11-20T10:00:00Z", location="Leipzig")
        tokens = [token_of(o) for o in orders]
        for token in tokens:  # the links the server hands out work
            assert client.get(f"/t/{token}").status_code == 200
            assert client.get(f"/api/track/{token}").get_json()["tracking_url"].endswith(token)
        listed = merchant.get("/orders").get_json()["orders"]
        assert sorted(token_of(o) for o in listed) == sorted(tokens)

        # A copy of the database, as a backup or a stolen file would be.
        copy = tmp_path / "copy.db"
        live, dst = sqlite3.connect(instance / "waybill.db"), sqlite3.connect(copy)
        live.backup(dst)
        live.close(), dst.close()
        copied = sa.create_engine(f"sqlite:///{copy}")
        in_orders, everywhere = order_text_values(copied), every_text_value(copied)
        copied.dispose()
        assert_opens_nothing(client, in_orders | everywhere)
        assert any(v.startswith("v1.") for v in in_orders)  # the sealed tokens, opening nothing
        for token in tokens:
            assert not any(token in value for value in everywhere)
            assert token.encode() not in sqlite_bytes(instance / "waybill.db")
    finally:
        close_app(app)


# --- migration 0003: links sent before it keep working -------------------------------------


@pytest.fixture
def old_database(empty_instance: Path) -> Iterator[tuple[Any, str]]:
    """A database at the heads before 0003, with a merchant, a customer and two orders whose
    tracking tokens are stored as they were then: plain, beside their hashes."""
    settings = make_settings(empty_instance, extra=NO_TRACKING_LIMIT)
    engine = create_engine(settings)
    for head in OLD_HEADS:
        command.upgrade(alembic_config(engine), head)
    now = datetime.now(UTC).replace(tzinfo=None)
    meta = sa.MetaData()
    meta.reflect(engine)
    tokens = [secrets.token_urlsafe(24), secrets.token_urlsafe(24)]
    with engine.begin() as conn:
        conn.execute(
            meta.tables["merchant"].insert(), {"id": "mer_old", "name": "Old", "created_at": now}
        )
        conn.execute(
            meta.tables["customer"].insert(),
            {"id": 1, "email": "old@example.com", "created_at": now},
        )
        conn.execute(
            meta.tables["order"].insert(),
            [
                {
                    "merchant_id": "mer_old",
                    "customer_id": 1,
                    "external_id": f"OLD-{i}",
                    "tracking_token": token,
                    "tracking_token_hash": digest(token),
                    "status": "confirmed",
                    "items": [{"name": "Lamp", "quantity": 1}],
                    "request_hash": "x" * 64,
                    "created_at": now,
                    "updated_at": now,
                }
                for i, token in enumerate(tokens)
            ],
        )
    yield settings, engine, tokens
    engine.dispose()


def _heads(engine: sa.Engine) -> set[str]:
    with engine.connect() as conn:
        return {r[0] for r in conn.exec_driver_sql("SELECT version_num FROM alembic_version")}


def test_the_migrations_have_one_head():
    heads = ScriptDirectory.from_config(alembic_config(sa.create_engine("sqlite://"))).get_heads()
    assert heads == [NEW_HEAD]


def test_old_links_keep_working_after_the_migration_and_the_plain_tokens_are_gone(
    old_database,
):
    settings, engine, tokens = old_database
    assert set(tokens) <= order_text_values(engine)  # as the old schema stored them

    migrate(engine, secret_key=settings.secret_key)
    assert _heads(engine) == {NEW_HEAD}
    everywhere = every_text_value(engine)
    for token in tokens:
        assert not any(token in value for value in everywhere), "a plain token is left"
    if engine.dialect.name == "sqlite":  # the files, copied while open and once closed
        for _ in ("open", "closed"):
            raw = sqlite_bytes(Path(engine.url.database or ""))
            assert not any(token.encode() in raw for token in tokens), "left in the files"
            engine.dispose()

    with session_scope(engine) as session:
        old = session.get(Merchant, "mer_old")
        assert old is not None
        key = issue_key(session=session, merchant=old)
        rows = session.exec(select(Order).order_by(Order.external_id)).all()
        assert [tracking_token(settings.secret_key, o) for o in rows] == tokens
    app = create_app(settings)
    try:
        client = app.test_client()
        for token in tokens:
            assert client.get(f"/t/{token}").status_code == 200
            body = client.get(f"/api/track/{token}").get_json()
            assert body["tracking_url"] == f"{settings.base_url}/t/{token}"
        listed = client.get("/api/v1/orders", headers={"Authorization": f"Bearer {key}"})
        assert sorted(token_of(o) for o in listed.get_json()["orders"]) == sorted(tokens)
        assert_opens_nothing(client, order_text_values(engine))
    finally:
        close_app(app)


def test_the_migration_refuses_orders_without_the_secret_key_and_keeps_them(old_database):
    settings, engine, tokens = old_database
    with pytest.raises(RuntimeError, match="secret key"):
        migrate(engine)
    assert _heads(engine) == set(OLD_HEADS)
    assert set(tokens) <= order_text_values(engine)  # nothing lost: a rerun with it works
    migrate(engine, secret_key=settings.secret_key)
    assert _heads(engine) == {NEW_HEAD}


def test_the_migration_downgrades_to_the_plain_tokens_with_the_secret_key(old_database):
    settings, engine, tokens = old_database
    migrate(engine, secret_key=settings.secret_key)
    command.downgrade(alembic_config(engine, settings.secret_key), "0002_auth")
    assert _heads(engine) == set(OLD_HEADS)
    with engine.connect() as conn:
        back = conn.exec_driver_sql('SELECT tracking_token FROM "order" ORDER BY external_id')
        assert [r[0] for r in back] == tokens


# --- file modes ----------------------------------------------------------------------------


def test_sqlite_makes_wal_and_shm_with_the_database_files_mode(tmp_path, umask_022):
    """What Waybill relies on: it makes the database file 0600, SQLite copies that mode."""
    for wanted in (0o600, 0o644):
        db = tmp_path / f"db{wanted:o}"
        os.close(os.open(db, os.O_WRONLY | os.O_CREAT, wanted))
        conn = sqlite3.connect(db)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t (x)")
        conn.commit()
        try:
            assert [mode(Path(f"{db}{s}")) for s in ("", "-wal", "-shm")] == [wanted] * 3
        finally:
            conn.close()


def test_init_makes_a_private_instance_directory_and_database_files(tmp_path, umask_022):
    instance = tmp_path / "instance"
    init = run(instance, "init")
    assert init.returncode == 0, init.stderr
    assert mode(instance) == 0o700
    for name in ("waybill.db", "secret_key", "vapid_private_key.pem"):
        assert mode(instance / name) == 0o600, name

    # The server writes: the -wal and -shm SQLite makes beside the file are 0600 too.
    secret = (instance / "secret_key").read_text().strip()
    app = create_app(make_settings(instance, secret_key=secret))
    try:
        merchant = make_merchant(app, app.test_client())
        merchant.create_order()
        db = instance / "waybill.db"
        assert Path(f"{db}-wal").stat().st_size > 0
        assert [mode(Path(f"{db}{s}")) for s in ("", "-wal", "-shm")] == [0o600] * 3
        assert mode(instance) == 0o700
    finally:
        close_app(app)


def test_wider_instance_directory_and_database_files_are_narrowed(tmp_path, umask_022):
    """Files an older version left 0644 in a 0755 directory are 0600 in 0700 on connect."""
    instance = tmp_path / "instance"
    instance.mkdir()
    db = instance / "waybill.db"
    older = sqlite3.connect(db)  # as an older server made them: with the umask
    older.execute("PRAGMA journal_mode=WAL")
    older.execute("CREATE TABLE t (x)")
    older.commit()
    try:
        assert mode(instance) == 0o755
        assert [mode(Path(f"{db}{s}")) for s in ("", "-wal", "-shm")] == [0o644] * 3
        engine = create_engine(make_settings(instance))
        with engine.connect() as conn:
            conn.exec_driver_sql("SELECT 1")
        engine.dispose()
        assert mode(instance) == 0o700
        assert [mode(Path(f"{db}{s}")) for s in ("", "-wal", "-shm")] == [0o600] * 3
    finally:
        older.close()


def test_a_new_database_elsewhere_is_made_private_without_touching_its_parent(tmp_path, umask_022):
    shared = tmp_path / "shared"
    shared.mkdir()
    settings = make_settings(
        tmp_path / "instance", database_url=f"sqlite:///{shared / 'new' / 'waybill.db'}"
    )
    engine = create_engine(settings)
    migrate(engine)
    engine.dispose()
    assert mode(shared) == 0o755  # the operator's directory is theirs
    assert mode(shared / "new") == 0o700  # one Waybill made is private
    assert mode(shared / "new" / "waybill.db") == 0o600
