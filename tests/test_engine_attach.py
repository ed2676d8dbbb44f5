"""``attach(engine)`` alone serves ``cached()`` reads of every Session and Core connection on it.

The engine hook reads the ``cached()`` option from the statement being executed, so sessions
bound to an attached engine need no session wiring: before, their ``cached()`` reads silently
ran uncached.  Commits are published by the engine's own commit hooks.
"""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import selectinload, sessionmaker

from sqla_redis_cache import QueryCache, cached

from .conftest import Database
from .models import Org, User

NAME = select(User.name).where(User.id == 1).options(cached())


def read_name(db: Database) -> str:
    with db.Session() as s:
        return str(s.execute(NAME).scalar_one())


def test_session_reads_on_an_attached_engine_are_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    with db.counter.expect(1):
        assert read_name(db) == "user1"
    with db.counter.expect(0):
        assert read_name(db) == "user1"
    with db.Session() as s:  # a session commit, published by the engine hooks
        s.execute(update(User).where(User.id == 1).values(name="renamed"))
        s.commit()
    with db.counter.expect(1):
        assert read_name(db) == "renamed"
    with db.counter.expect(0):
        assert read_name(db) == "renamed"
    assert cache.stats().hits == 2


def test_read_your_writes_without_session_wiring(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    assert read_name(db) == "user1"
    with db.Session() as s:
        s.get_one(User, 1).name = "pending"  # autoflushed before the read
        assert s.execute(NAME).scalar_one() == "pending"
        s.rollback()
    with db.counter.expect(0):
        assert read_name(db) == "user1"


def test_get_and_loaders_on_an_attached_engine(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    stmt = select(Org).where(Org.id == 1).options(selectinload(Org.users), cached())
    for expected in (2, 0):
        with db.counter.expect(expected), db.Session() as s:
            assert [u.id for u in s.scalars(stmt).one().users] == [1, 2, 3]
    for expected in (1, 0):
        with db.counter.expect(expected), db.Session() as s:
            assert s.get_one(User, 2, options=[cached()]).name == "user2"


@pytest.mark.parametrize("first", ["without the option", "option first"])
def test_eager_loads_follow_the_options_of_the_statement_executed(
    db: Database, cache: QueryCache, first: str
) -> None:
    """SQLAlchemy pairs a compiled query's options with the executed statement's by position
    when it builds its eager loads: ``cached()`` is part of the compiled-cache key, so another
    order (or no option) compiled earlier never takes the option away from the loads."""
    cache.attach(db.engine)
    load = selectinload(Org.users)
    earlier = [load] if first == "without the option" else [cached(), load]
    with db.Session() as s:
        assert len(s.scalars(select(Org).where(Org.id == 1).options(*earlier)).one().users) == 3
    stmt = select(Org).where(Org.id == 1).options(load, cached())
    for expected in (2, 0) if first == "without the option" else (0, 0):
        with db.counter.expect(expected), db.Session() as s:
            assert [u.id for u in s.scalars(stmt).one().users] == [1, 2, 3]


def test_core_reads_on_an_attached_engine(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    stmt = select(User.name).where(User.id == 3).options(cached(tags=["core"]))
    for expected in (1, 0):
        with db.counter.expect(expected), db.engine.connect() as conn:
            assert conn.execute(stmt).scalar_one() == "user3"
    cache.invalidate_tags("core")
    with db.counter.expect(1), db.engine.connect() as conn:
        assert conn.execute(stmt).scalar_one() == "user3"


@pytest.mark.parametrize("wired", [True, False])
def test_session_wiring_and_engine_serve_the_same_entries(
    db: Database, cache: QueryCache, wired: bool
) -> None:
    cache.attach(db.engine)
    if wired:
        cache.attach(db.Session)
    assert read_name(db) == "user1"
    with db.counter.expect(0):
        assert read_name(db) == "user1"


def test_sessions_wired_to_another_cache_are_left_to_it(
    db: Database, cache: QueryCache, redis_target: Any
) -> None:
    """The engine-level reading of ``cached()`` never takes statements a session wiring saw."""
    cache.attach(db.engine)
    other = redis_target.cache(cache.config.namespace + "b")
    sessions = sessionmaker(db.engine)
    other.attach(sessions)
    try:
        for _ in range(2):
            with sessions() as s:
                assert s.execute(NAME).scalar_one() == "user1"
        assert (other.stats().misses, other.stats().hits) == (1, 1)
        assert (cache.stats().misses, cache.stats().hits) == (0, 0)
    finally:
        other.clear()
        other.close()


def test_only_engines_attached_by_themselves_read_the_option(
    db: Database, cache: QueryCache
) -> None:
    unrelated = create_engine("sqlite://")
    cache.attach(unrelated)  # another engine, attached by itself
    cache.attach(sessionmaker(db.engine))  # installs engine hooks, but for that sessionmaker
    with db.counter.expect(2):
        read_name(db), read_name(db)
    cache.attach(db.engine)
    read_name(db)
    with db.counter.expect(0):
        read_name(db)
    cache.detach(db.engine)
    with db.counter.expect(1):
        read_name(db)
    unrelated.dispose()


def test_entity_misses_fill_no_query_entry(
    db: Database, cache: QueryCache, redis_target: Any
) -> None:
    cache.attach(db.engine).attach(db.Session)
    with db.Session() as s:
        assert s.get_one(User, 4, options=[cached()]).name == "user4"
    client = redis_target.client()
    namespace = cache.config.namespace
    assert list(client.scan_iter(match=f"{namespace}:q:*")) == []
    assert len(list(client.scan_iter(match=f"{namespace}:e:*"))) == 1
