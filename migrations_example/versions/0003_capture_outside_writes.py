"""Capture writes made outside the application (PostgreSQL only).

Installs sqla-redis-cache's change-capture triggers on ``item`` in the migration's own
transaction: from the commit on, a write from ``psql``, a cron job or another service notifies
the application's listener (``cache.change_capture(engine).start()`` or
``sqla-redis-cache capture run``), which invalidates the cached results of the table.  A later
migration that creates a table installs the trigger on it the same way
(``install(["new_table"], connection=op.get_bind())``); ``install()`` without tables covers
every table of the schema and is idempotent.  SQLite has no listener: nothing to do there.

Revision ID: 0003
Revises: 0002
"""

from alembic import op
from env_settings import NAMESPACE

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

CAPTURED = ["item"]


def _capture():  # type: ignore[no-untyped-def]
    from sqla_redis_cache import QueryCache

    bind = op.get_bind()
    cache = QueryCache.from_env(namespace=NAMESPACE, stats_interval=0, connect_timeout=1.0)
    return cache, cache.change_capture(bind.engine), bind


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    cache, capture, bind = _capture()
    try:
        capture.install(CAPTURED, connection=bind)
    finally:
        cache.close()


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    cache, capture, bind = _capture()
    try:
        capture.uninstall(CAPTURED, connection=bind)
    finally:
        cache.close()
