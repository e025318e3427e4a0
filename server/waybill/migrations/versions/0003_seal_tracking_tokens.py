"""orders: tracking tokens sealed with the server key, no longer stored in plain text

Revision ID: 0003_sealed_tokens
Revises: 0002_auth, 0002_notify
Create Date: 2026-12-02 10:00:00.000000

``order.tracking_token`` held every tracking link in plain text beside its hash: a copy of the
database opened every order. It becomes ``order.tracking_token_sealed``: the same token,
AES-256-GCM under a key derived (HKDF-SHA256) from the server's secret key, bound to the
token's hash. The hashes are untouched, so every link sent before keeps working.

Sealing needs the secret key: ``waybill init`` passes it (``migrate(engine, secret_key=...)``
puts it in ``config.attributes["secret_key"]``). Without it, the upgrade refuses a database
that has orders rather than lose their links.

SQLite: ``secure_delete`` zeroes the bytes the plain tokens leave behind, and ``migrate``
checkpoints the WAL into the file afterwards. It can only add the NOT NULL column with a
default, so the column keeps ``DEFAULT ''`` there (never used: every insert gives a value).
PostgreSQL: the old row versions stay in the table's files until ``VACUUM FULL "order"``.
This also merges the two 0002 heads.
"""

from __future__ import annotations

import base64
import os

import sqlalchemy as sa
import sqlmodel
from alembic import context, op
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF


revision = '0003_sealed_tokens'
down_revision = ('0002_auth', '0002_notify')
branch_labels = None
depends_on = None


# A frozen copy of waybill.auth.tokens.seal_tracking_token / open_tracking_token (format v1).
def _aead(secret: str) -> AESGCM:
    hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"waybill tracking token v1")
    return AESGCM(hkdf.derive(secret.encode()))


def _seal(aead: AESGCM, token: str, token_hash: str) -> str:
    nonce = os.urandom(12)
    sealed = aead.encrypt(nonce, token.encode(), token_hash.encode())
    return "v1." + base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode()


def _open(aead: AESGCM, sealed: str, token_hash: str) -> str:
    body = sealed.removeprefix("v1.")
    raw = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
    return aead.decrypt(raw[:12], raw[12:], token_hash.encode()).decode()


_order = sa.table(
    "order",
    sa.column("id", sa.Integer()),
    sa.column("tracking_token", sa.String()),
    sa.column("tracking_token_hash", sa.String()),
    sa.column("tracking_token_sealed", sa.String()),
)


def _secret(rows: int, doing: str) -> str:
    secret = context.config.attributes.get("secret_key")
    if rows and not secret:
        raise RuntimeError(
            f"migration 0003 {doing} the tracking tokens of {rows} orders with the server's "
            "secret key, and was not given it: run `waybill init` (or "
            "waybill.db.migrate(engine, secret_key=...)) with the server's settings"
        )
    return secret or ""


def _secure_delete(bind: sa.Connection, on: bool) -> int | None:
    if bind.dialect.name != "sqlite":
        return None
    before = bind.exec_driver_sql("PRAGMA secure_delete").scalar()
    bind.exec_driver_sql(f"PRAGMA secure_delete={1 if on else 0}")
    return int(before or 0)


def _add_not_null(name: str, length: int) -> None:
    """A NOT NULL column on a table with rows: SQLite needs a default to add one (and can not
    drop it without rebuilding the table, which its foreign keys forbid inside a migration)."""
    op.add_column(
        "order",
        sa.Column(name, sqlmodel.sql.sqltypes.AutoString(length=length), nullable=False,
                  server_default=""),
    )


def _drop_default(name: str) -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column("order", name, server_default=None)


def upgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_order.c.id, _order.c.tracking_token, _order.c.tracking_token_hash)
    ).all()
    secret = _secret(len(rows), "seals")
    previous = _secure_delete(bind, True)
    _add_not_null("tracking_token_sealed", 200)
    if rows:
        aead = _aead(secret)
        bind.execute(
            _order.update()
            .where(_order.c.id == sa.bindparam("row_id"))
            .values(tracking_token_sealed=sa.bindparam("sealed")),
            [{"row_id": i, "sealed": _seal(aead, token, h)} for i, token, h in rows],
        )
    _drop_default("tracking_token_sealed")
    op.drop_column("order", "tracking_token")
    if previous is not None:
        _secure_delete(bind, bool(previous))


def downgrade() -> None:
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_order.c.id, _order.c.tracking_token_sealed, _order.c.tracking_token_hash)
    ).all()
    secret = _secret(len(rows), "opens")
    _add_not_null("tracking_token", 64)
    if rows:
        aead = _aead(secret)
        bind.execute(
            _order.update()
            .where(_order.c.id == sa.bindparam("row_id"))
            .values(tracking_token=sa.bindparam("token")),
            [{"row_id": i, "token": _open(aead, sealed, h)} for i, sealed, h in rows],
        )
    _drop_default("tracking_token")
    op.drop_column("order", "tracking_token_sealed")
