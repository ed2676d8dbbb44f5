"""SQLite's own transactions: a SAVEPOINT that begins one, and WAL snapshots (pysqlite, aiosqlite).

pysqlite and aiosqlite begin a database transaction only before DML; SQLite itself begins one at
a ``SAVEPOINT`` when none is open, and commits it at that savepoint's ``RELEASE``.  And once a
transaction has begun, in WAL mode, it reads one snapshot while other connections commit.  The
cache follows the database, not SQLAlchemy's idea of the transaction: a RELEASE that committed
is invalidated at once, and reads of a transaction that has begun at the database bypass.

Each test uses its own database file in WAL mode, and a cache on the standalone Redis.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, select, text, update
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

from .models import Base, User, seed

NAME = select(User.name).where(User.id == 1).options(cached())


@pytest.fixture
def wal_url(tmp_path: Path) -> Iterator[str]:
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    engine = create_engine(url)
    with engine.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
    Base.metadata.create_all(engine)
    seed(engine)
    engine.dispose()
    yield url


@pytest.fixture
def engine(wal_url: str) -> Iterator[Engine]:
    engine = create_engine(wal_url)
    yield engine
    engine.dispose()


def cached_name(sessions: sessionmaker[Session]) -> str:
    with sessions() as s:
        return s.execute(NAME).scalar_one()


def database_name(url: str) -> str:
    plain = create_engine(url)
    try:
        with plain.connect() as conn:
            return conn.execute(select(User.name).where(User.id == 1)).scalar_one()
    finally:
        plain.dispose()


# a SAVEPOINT that begins the transaction is committed by its RELEASE ------------------------


def test_session_release_that_commits_is_invalidated(
    engine: Engine, wal_url: str, cache: QueryCache
) -> None:
    sessions = sessionmaker(engine)
    cache.attach(sessions)
    assert cached_name(sessions) == "user1"
    with sessions() as s:
        savepoint = s.begin_nested()  # no BEGIN before it: SQLite begins here
        s.execute(update(User).where(User.id == 1).values(name="released"))
        savepoint.commit()  # RELEASE: SQLite commits
        s.rollback()  # nothing left to roll back
    assert database_name(wal_url) == "released"
    assert cached_name(sessions) == "released"


def test_core_release_that_commits_is_invalidated(
    engine: Engine, wal_url: str, cache: QueryCache
) -> None:
    cache.attach(engine)
    sessions = sessionmaker(engine)
    assert cached_name(sessions) == "user1"
    with engine.connect() as conn:
        conn.begin()
        savepoint = conn.begin_nested()
        conn.execute(update(User).where(User.id == 1).values(name="released"))
        savepoint.commit()
        conn.rollback()
    assert database_name(wal_url) == "released"
    assert cached_name(sessions) == "released"


def test_a_savepoint_inside_a_begun_transaction_commits_nothing(
    engine: Engine, wal_url: str, cache: QueryCache
) -> None:
    sessions = sessionmaker(engine)
    cache.attach(sessions)
    assert cached_name(sessions) == "user1"
    with sessions() as s:
        s.execute(update(User).where(User.id == 2).values(name="x"))  # pysqlite: BEGIN
        savepoint = s.begin_nested()
        s.execute(update(User).where(User.id == 1).values(name="not committed"))
        savepoint.commit()
        assert s.execute(NAME).scalar_one() == "not committed"  # its own write
        s.rollback()
    assert database_name(wal_url) == "user1"
    assert cached_name(sessions) == "user1"


# a transaction that has begun reads its snapshot --------------------------------------------


@pytest.mark.parametrize("begin", ["savepoint", "BEGIN"])
def test_a_begun_transaction_reads_its_snapshot_not_the_cache(
    engine: Engine, wal_url: str, cache: QueryCache, begin: str
) -> None:
    sessions = sessionmaker(engine)
    cache.attach(sessions)
    with sessions() as old:
        if begin == "savepoint":
            old.begin_nested()
        else:
            old.execute(text("BEGIN"))
        assert old.execute(NAME).scalar_one() == "user1"  # its snapshot starts here
        with sessions.begin() as other:
            other.execute(update(User).where(User.id == 1).values(name="newer"))
        assert cached_name(sessions) == "newer"  # cached now, by another transaction
        # the open transaction still sees its snapshot, and stores nothing of it
        assert old.execute(NAME).scalar_one() == "user1"
        assert old.get_one(User, 1, options=[cached()]).name == "user1"
    assert cached_name(sessions) == "newer"
    with sessions() as s:
        assert s.get_one(User, 1, options=[cached()]).name == "newer"


# aiosqlite -----------------------------------------------------------------------------------


def test_aiosqlite_release_and_snapshot(wal_url: str, cache: QueryCache) -> None:
    url = wal_url.replace("sqlite://", "sqlite+aiosqlite://", 1)

    async def run() -> list[str]:
        engine = create_async_engine(url)
        sessions = async_sessionmaker(engine)
        cache.attach(sessions)
        seen: list[str] = []
        try:
            async with sessions() as s:
                seen.append((await s.execute(NAME)).scalar_one())  # cached
            async with sessions() as s:
                savepoint = await s.begin_nested()
                await s.execute(update(User).where(User.id == 1).values(name="released"))
                await savepoint.commit()
                await s.rollback()
            async with sessions() as s:
                seen.append((await s.execute(NAME)).scalar_one())
            async with sessions() as old:
                await old.begin_nested()
                seen.append((await old.execute(NAME)).scalar_one())  # snapshot
                async with sessions.begin() as other:
                    await other.execute(update(User).where(User.id == 1).values(name="newer"))
                async with sessions() as s:
                    seen.append((await s.execute(NAME)).scalar_one())
                seen.append((await old.execute(NAME)).scalar_one())
            async with sessions() as s:
                seen.append((await s.execute(NAME)).scalar_one())
        finally:
            await engine.dispose()
        return seen

    assert asyncio.run(run()) == ["user1", "released", "released", "newer", "released", "newer"]
