"""A real second process commits; this process's next cached read is fresh.

Nothing is shared between the processes but PostgreSQL (or the SQLite file) and Redis, so
these tests prove that invalidation is published to Redis, not kept in process memory.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from sqla_redis_cache import QueryCache, cached

from ._writer import RULES, WRITERS
from .conftest import Database
from .models import Org, User
from .models_writes import Entry

ROOT = Path(__file__).resolve().parent.parent


def run_writer(kind: str, db: Database, redis_url: str, namespace: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests._writer", kind, db.url, redis_url, namespace],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr


def read(db: Database, stmt: Any) -> list[Any]:
    with db.Session() as s:
        return list(s.execute(stmt.options(cached())).all())


def fill_and_hit(db: Database, stmt: Any) -> list[Any]:
    first = read(db, stmt)
    with db.counter.expect(0):
        assert read(db, stmt) == first
    return first


@pytest.mark.parametrize("kind", sorted(set(WRITERS) - {"cascade"}))
def test_other_process_write_is_seen(
    db: Database, redis_url: str, namespace: str, kind: str
) -> None:
    cache = QueryCache.from_url(redis_url, namespace=namespace, invalidates=RULES)
    try:
        cache.attach(db.Session)
        names = select(User.id, User.name).where(User.id <= 2).order_by(User.id)
        dashboard = select(Org.id).order_by(Org.id).options(cached(tags=["dashboard"]))
        assert [tuple(r) for r in fill_and_hit(db, names)] == [(1, "user1"), (2, "user2")]
        fill_and_hit(db, dashboard)
        run_writer(kind, db, redis_url, namespace)
        with db.counter.expect(1):
            assert [tuple(r) for r in read(db, names)] == [(1, "other"), (2, "user2")]
        with db.counter.expect(1):  # the writer's declared rule reached this tag
            read(db, dashboard)
    finally:
        cache.clear()
        cache.close()


def test_other_process_database_cascade_is_seen(
    wdb: Database, cache: QueryCache, redis_url: str
) -> None:
    cache.attach(wdb.Session)
    entries = select(Entry.id).order_by(Entry.id)
    assert [r[0] for r in fill_and_hit(wdb, entries)] == [1, 2, 3]
    run_writer("cascade", wdb, redis_url, cache.config.namespace)
    with wdb.counter.expect(1):
        assert [r[0] for r in read(wdb, entries)] == [3]


def test_other_process_flush_is_written_through(
    db: Database, cache: QueryCache, redis_url: str
) -> None:
    """The writer (which reads User through the entity cache too) stores the new row at
    commit: this process's next get is a hit, and fresh."""
    cache.attach(db.Session)
    with db.Session() as s:
        assert s.get_one(User, 1, options=[cached()]).name == "user1"
    run_writer("flush", db, redis_url, cache.config.namespace)
    with db.counter.expect(0), db.Session() as s:
        assert s.get_one(User, 1, options=[cached()]).name == "other"
