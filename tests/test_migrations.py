"""The migrations build exactly the schema the models describe, and keep data on upgrade."""

from __future__ import annotations

from alembic import command

from tests.conftest import make_settings
from waybill.db import alembic_config, create_engine, migrate


def test_migrated_schema_matches_the_models(tmp_path):
    engine = create_engine(make_settings(tmp_path))
    migrate(engine)
    command.check(alembic_config(engine))  # raises when a model change has no migration
    engine.dispose()


def test_upgrading_again_keeps_existing_rows(app, merchant):
    order = merchant.create_order()
    migrate(app.extensions["waybill.engine"])
    assert merchant.get(f"/orders/{order['id']}").status_code == 200
