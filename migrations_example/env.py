"""Alembic environment that keeps the query cache honest across schema changes.

A migration changes what the database returns for the *same* SQL: a backfill or data fix
rewrites rows, a column type change alters the Python values a driver returns.  Alembic writes
through its own connection, which the application's cache never sees, so nothing would
invalidate entries built before the migration.  After migrations were applied and committed,
this file therefore invalidates the application's whole namespace (one version-token swap, then
the old keys are reclaimed).  If Redis cannot be reached then, the command fails with a message
saying how to finish the job, rather than leave stale entries behind silently.
"""

from __future__ import annotations

import sys

from alembic import context
from env_settings import DATABASE_URL, NAMESPACE
from sqlalchemy import create_engine, pool

target_metadata = None  # the example's migrations are written by hand


def invalidate_query_cache() -> None:
    from sqla_redis_cache import QueryCache

    cache = QueryCache.from_env(namespace=NAMESPACE, stats_interval=0, connect_timeout=1.0)
    try:
        deleted = cache.clear()
    finally:
        cache.close()
    if deleted < 0:
        sys.exit(
            f"migrations applied, but the query cache (namespace {NAMESPACE!r}) could not be "
            "invalidated: Redis is unreachable. Run `sqla-redis-cache clear --all --yes "
            f"--namespace {NAMESPACE}` as soon as it is back."
        )
    print(f"query cache namespace {NAMESPACE!r} invalidated ({deleted} keys reclaimed)")


def run_migrations_offline() -> None:
    context.configure(url=DATABASE_URL, literal_binds=True)
    with context.begin_transaction():
        context.run_migrations()
    print("-- after applying this SQL, run: sqla-redis-cache clear --all --yes", file=sys.stderr)


def run_migrations_online() -> None:
    applied: list[str] = []
    engine = create_engine(DATABASE_URL, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            on_version_apply=lambda *, step, **kw: applied.append(step.up_revision_id or "base"),
        )
        with context.begin_transaction():
            context.run_migrations()
    engine.dispose()
    if applied:  # committed: now no cached result may outlive the old schema
        invalidate_query_cache()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
