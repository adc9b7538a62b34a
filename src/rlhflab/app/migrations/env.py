"""Alembic's entry point for the feedback app's migrations.

:func:`rlhflab.app.db.migrate` passes an open connection in ``config.attributes["connection"]``;
the ``alembic`` command line (for writing new revisions) connects to ``$RLHFLAB_DB`` instead.
"""

from alembic import context
from sqlalchemy import text

from rlhflab.app.db import default_db_url, make_engine
from rlhflab.app.models import Base

# A fixed key for PostgreSQL's advisory lock: processes migrating one database at once take turns.
MIGRATION_LOCK_KEY = 0x726C686C6162  # "rlhlab"


def run_migrations(connection) -> None:
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=connection.dialect.name == "sqlite",  # SQLite alters tables by copying them
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()


connection = context.config.attributes.get("connection")
if connection is not None:
    run_migrations(connection)
else:
    engine = make_engine(default_db_url())
    with engine.begin() as own_connection:
        run_migrations(own_connection)
    engine.dispose()
