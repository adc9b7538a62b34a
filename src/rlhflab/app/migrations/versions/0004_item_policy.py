"""Which policy sampled an item's completions: ``items.policy``, set on the items a live project gets from
``rlhflab serve --policy DIR --live_project NAME`` (the ``--policy`` as given), NULL on items made from a
samples file. Nullable, so adding it rewrites no existing row.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("items", sa.Column("policy", sa.Text(), nullable=True))


def downgrade() -> None:
    # ALTER TABLE ... DROP COLUMN (SQLite 3.35+), not a batch copy of the table: with foreign keys on,
    # dropping the old copy of ``items`` would cascade to every assignment and label.
    op.drop_column("items", "policy")
