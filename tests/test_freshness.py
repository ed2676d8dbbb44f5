"""No stale fill: results read before a concurrent commit are never served after it returns."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text, update
from sqlalchemy.orm import Session

from sqla_redis_cache import QueryCache, cached

from .conftest import EVERY_DEPLOYMENT, Database
from .models import User

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT


@pytest.fixture
def sleepy(pg: Database) -> Database:
    with pg.engine.begin() as conn:
        conn.execute(
            text(
                "CREATE OR REPLACE FUNCTION sqla_cache_sleepy(s float8) RETURNS boolean "
                "LANGUAGE plpgsql VOLATILE AS $$ BEGIN PERFORM pg_sleep(s); RETURN true; END $$"
            )
        )
    pg.counter.reset()
    return pg


def test_fill_race_slow_reader_vs_concurrent_commit(sleepy: Database, cache: QueryCache) -> None:
    db = sleepy
    cache.attach(db.Session)
    slow = select(User.name, func.sqla_cache_sleepy(0.6)).where(User.id == 1).options(cached())
    seen: list[str] = []

    def reader() -> None:
        with db.Session() as s:
            seen.append(s.execute(slow).one()[0])

    thread = threading.Thread(target=reader)
    thread.start()
    time.sleep(0.2)  # the reader has read its tokens and its snapshot, and is sleeping
    with db.Session.begin() as s:
        s.execute(update(User).where(User.id == 1).values(name="committed"))
    thread.join()
    assert seen == ["user1"]  # it read before the commit...
    with db.Session() as s:  # ...but its late fill must not be served now
        assert s.execute(slow).one()[0] == "committed"


def test_snapshot_isolation_never_stores_an_old_snapshot(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session)
    stmt = select(User.name).where(User.id == 2).options(cached())
    rr = pg.engine.execution_options(isolation_level="REPEATABLE READ")
    with Session(rr) as old:
        cache.attach(old)
        old.execute(select(func.count(User.id))).one()  # snapshot taken here
        with pg.Session.begin() as s:
            s.execute(update(User).where(User.id == 2).values(name="newer"))
        assert old.execute(stmt).one()[0] == "user2"  # the snapshot's truth, not stored
        old.rollback()
    with pg.Session() as s:
        assert s.execute(stmt).one()[0] == "newer"
    assert cache.stats().bypasses >= 1


@pytest.mark.parametrize("level", ["REPEATABLE READ", "SERIALIZABLE"])
@pytest.mark.parametrize("first", ["query", "entity"])
def test_snapshot_first_read_takes_the_snapshot(
    pg: Database, cache: QueryCache, level: str, first: str
) -> None:
    """A first read served from the cache would leave the snapshot to a later statement: the
    transaction would see the cached state, then a newer one."""
    cache.attach(pg.Session)
    stmt = select(User.name).where(User.id == 3).options(cached())
    with pg.Session() as s:  # cached: the query, and the entity
        s.execute(stmt).one()
        s.get(User, 3, options=[cached()])
    snapshot = pg.engine.execution_options(isolation_level=level)
    with Session(snapshot) as s:
        cache.attach(s)
        with pg.counter.measure() as window:
            if first == "query":
                seen = s.execute(stmt).scalar_one()
            else:
                seen = s.get_one(User, 3, options=[cached()]).name
        assert window.count == 1, "the first read must reach the database"
        with pg.Session.begin() as other:
            other.execute(update(User).where(User.id == 3).values(name="newer"))
        assert s.execute(select(User.name).where(User.id == 3)).scalar_one() == seen == "user3"
        assert s.execute(stmt).scalar_one() == "user3"
    with pg.Session() as s:
        assert s.execute(stmt).scalar_one() == "newer"
