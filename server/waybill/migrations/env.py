"""Alembic environment: runs against the engine Waybill hands it."""

from __future__ import annotations

from alembic import context
from sqlmodel import SQLModel

import waybill.auth.models  # noqa: F401  (passkeys)
import waybill.models  # noqa: F401  (registers the tables)
import waybill.notify.models  # noqa: F401

config = context.config
target_metadata = SQLModel.metadata


def run_migrations_online() -> None:
    engine = config.attributes.get("engine")
    if engine is None:
        from waybill.config import Settings
        from waybill.db import create_engine

        engine = create_engine(Settings.from_env())
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
