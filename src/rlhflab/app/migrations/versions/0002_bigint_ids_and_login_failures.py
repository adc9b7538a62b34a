"""64-bit ids on PostgreSQL, and the table of failed sign-ins that login throttling counts.

PostgreSQL made the ids of 0001 ``integer`` (``serial``): 32-bit, so an id past 2^31 - 1 could never
be stored, and a request naming one failed in the driver. They become ``bigint``, their sequences
too, and so do the columns that refer to them. SQLite's ids are already 64-bit (the rowid), and an
id there must stay exactly ``INTEGER`` to remain the rowid: nothing changes on SQLite.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-09
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

# table -> its id column (a sequence) first, then the columns referring to another table's id
ID_COLUMNS = {
    "users": ["id"],
    "projects": ["id"],
    "invitations": ["id", "created_by", "used_by"],
    "sessions": ["id", "user_id"],
    "memberships": ["id", "project_id", "user_id"],
    "items": ["id", "project_id"],
    "assignments": ["id", "project_id", "item_id", "user_id"],
    "labels": ["id", "project_id", "item_id", "user_id", "assignment_id"],
}


def _id_type() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _retype_ids(to: type[sa.types.TypeEngine], sequence_type: str) -> None:
    for table, columns in ID_COLUMNS.items():
        for column in columns:
            op.alter_column(table, column, type_=to(), existing_nullable=column in ("created_by", "used_by"))
        sequence = op.get_bind().scalar(sa.text("SELECT pg_get_serial_sequence(:table, 'id')"), {"table": table})
        op.execute(f"ALTER SEQUENCE {sequence} AS {sequence_type}")


def upgrade() -> None:
    op.create_table(
        "login_failures",
        sa.Column("id", _id_type(), nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("address", sa.String(length=64), nullable=True),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_login_failures")),
    )
    op.create_index("ix_login_failures_username_at", "login_failures", ["username", "at"])
    op.create_index("ix_login_failures_address_at", "login_failures", ["address", "at"])
    if op.get_bind().dialect.name == "postgresql":
        _retype_ids(sa.BigInteger, "bigint")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        _retype_ids(sa.Integer, "integer")  # fails, as it should, once an id is past 2^31 - 1
    op.drop_index("ix_login_failures_address_at", table_name="login_failures")
    op.drop_index("ix_login_failures_username_at", table_name="login_failures")
    op.drop_table("login_failures")
