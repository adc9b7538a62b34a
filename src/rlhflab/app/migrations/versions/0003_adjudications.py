"""The adjudication queue's decisions: one row per item whose disagreeing labels a reviewer resolved.

Ids are 64-bit as migration 0002 made every other id (BIGINT on PostgreSQL, INTEGER, the rowid, on
SQLite). The reviewer's id is kept nullable (ON DELETE SET NULL): a decision outlives its reviewer's
account, as an invitation outlives its maker's.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _id_type() -> sa.types.TypeEngine:
    return sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "adjudications",
        sa.Column("id", _id_type(), nullable=False),
        sa.Column("project_id", _id_type(), nullable=False),
        sa.Column("item_id", _id_type(), nullable=False),
        sa.Column("reviewer_id", _id_type(), nullable=True),
        sa.Column("value", sa.JSON(), nullable=False),
        sa.Column("cause", sa.String(length=32), nullable=False),
        sa.Column("note", sa.Text(), nullable=False),
        sa.Column("label_ids", sa.JSON(), nullable=False),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["project_id"], ["projects.id"], name=op.f("fk_adjudications_project_id_projects"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["item_id"], ["items.id"], name=op.f("fk_adjudications_item_id_items"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["reviewer_id"], ["users.id"], name=op.f("fk_adjudications_reviewer_id_users"), ondelete="SET NULL"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_adjudications")),
        sa.UniqueConstraint("item_id", name=op.f("uq_adjudications_item_id")),
    )
    op.create_index(op.f("ix_adjudications_project_id"), "adjudications", ["project_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_adjudications_project_id"), table_name="adjudications")
    op.drop_table("adjudications")
