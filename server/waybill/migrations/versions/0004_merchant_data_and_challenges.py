"""orders keep what their merchant said about the customer; passkey challenges on the server;
push subscriptions remember the sign-in they were registered through

Revision ID: 0004_order_customer
Revises: 0003_sealed_tokens
Create Date: 2026-12-01 23:15:00

Existing orders get the customer's name, locale and time zone only where every order of that
customer comes from one merchant (then nobody else can have supplied them); elsewhere they
stay empty rather than show one merchant what another sent.
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

import waybill.models

revision = "0004_order_customer"
down_revision = "0003_sealed_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("order") as batch:
        batch.add_column(
            sa.Column("customer_name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True)
        )
        batch.add_column(
            sa.Column("customer_locale", sqlmodel.sql.sqltypes.AutoString(length=35), nullable=True)
        )
        batch.add_column(
            sa.Column(
                "customer_timezone", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True
            )
        )
    op.execute(
        """
        UPDATE "order" SET
            customer_name = (SELECT c.name FROM customer c WHERE c.id = "order".customer_id),
            customer_locale = (SELECT c.locale FROM customer c WHERE c.id = "order".customer_id),
            customer_timezone = (
                SELECT c.timezone FROM customer c WHERE c.id = "order".customer_id
            )
        WHERE customer_id IN (
            SELECT customer_id FROM "order" GROUP BY customer_id
            HAVING COUNT(DISTINCT merchant_id) = 1
        )
        """
    )
    op.create_table(
        "passkey_challenge",
        sa.Column(
            "challenge_hash", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False
        ),
        sa.Column("purpose", sqlmodel.sql.sqltypes.AutoString(length=16), nullable=False),
        sa.Column("customer_id", sa.Integer(), nullable=True),
        sa.Column("expires_at", waybill.models.UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["customer_id"], ["customer.id"]),
        sa.PrimaryKeyConstraint("challenge_hash"),
    )
    op.create_index(
        op.f("ix_passkey_challenge_expires_at"), "passkey_challenge", ["expires_at"], unique=False
    )
    with op.batch_alter_table("push_subscription") as batch:
        batch.add_column(sa.Column("auth_session_id", sa.Integer(), nullable=True))
        batch.create_index(
            batch.f("ix_push_subscription_auth_session_id"), ["auth_session_id"], unique=False
        )
        batch.create_foreign_key(
            "fk_push_subscription_auth_session_id",
            "auth_session",
            ["auth_session_id"],
            ["id"],
            ondelete="SET NULL",
        )


def downgrade() -> None:
    with op.batch_alter_table("push_subscription") as batch:
        batch.drop_constraint("fk_push_subscription_auth_session_id", type_="foreignkey")
        batch.drop_index(batch.f("ix_push_subscription_auth_session_id"))
        batch.drop_column("auth_session_id")
    op.drop_index(op.f("ix_passkey_challenge_expires_at"), table_name="passkey_challenge")
    op.drop_table("passkey_challenge")
    with op.batch_alter_table("order") as batch:
        batch.drop_column("customer_timezone")
        batch.drop_column("customer_locale")
        batch.drop_column("customer_name")
