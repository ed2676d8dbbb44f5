"""Snapshot isolation chosen in SQL is respected like isolation set on the engine.

A transaction under REPEATABLE READ / SERIALIZABLE reads from a snapshot taken at its first
query; a cached read after that would store the old snapshot under tokens read now, and every
other session would be served it.  The level can be chosen in SQL for one transaction (``SET
TRANSACTION``, ``SET transaction_isolation``, ``BEGIN ISOLATION LEVEL`` on an AUTOCOMMIT
connection, a textual ``BEGIN`` on SQLite in WAL mode) or for the connection's later
transactions (``SET SESSION CHARACTERISTICS``, ``default_transaction_isolation``).  Each test
has another session commit after the snapshot was taken, reads in the snapshot, and checks that
a fresh session then sees the committed value.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, event, func, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

from ._counting import make_counted_engine
from .conftest import Database
from .models import Base, User, seed

NAME = select(User.name).where(User.id == 2).options(cached())


def commit_rename(sessions: sessionmaker[Session], name: str) -> None:
    with sessions.begin() as s:
        s.execute(update(User).where(User.id == 2).values(name=name))


def read_name(sessions: Any) -> str:
    with sessions() as s:
        return str(s.execute(NAME).scalar_one())


@pytest.mark.parametrize(
    "statement",
    [
        "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ WRITE",
        "set transaction isolation level repeatable read",
        "SET transaction_isolation = 'repeatable read'",
        "SET LOCAL transaction_isolation TO 'serializable'",
    ],
)
def test_transaction_level_set_in_sql(pg: Database, cache: QueryCache, statement: str) -> None:
    cache.attach(pg.Session)
    with pg.Session() as old:
        old.execute(text(statement))
        old.execute(select(func.count(User.id))).one()  # the snapshot is taken here
        commit_rename(pg.Session, "newer")
        assert old.execute(NAME).scalar_one() == "user2"  # the snapshot's truth
        assert old.execute(NAME).scalar_one() == "user2"
    assert read_name(pg.Session) == "newer"
    assert cache.stats().bypasses >= 2


@pytest.fixture
def single(pg: Database) -> Iterator[Database]:
    """A pool of one connection: settings made for the session reach its next transactions."""
    engine, counter = make_counted_engine(pg.url, pool_size=1, max_overflow=0)
    yield Database(pg.name, pg.url, engine, counter, sessionmaker(engine))
    engine.dispose()  # the connection's session defaults go with it


@pytest.mark.parametrize(
    "statement",
    [
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
        "SET default_transaction_isolation = 'repeatable read'",
        "SET SESSION default_transaction_isolation TO serializable",
        "SELECT set_config('default_transaction_isolation', 'serializable', false)",
    ],
)
def test_session_default_set_in_sql(
    pg: Database, single: Database, cache: QueryCache, statement: str
) -> None:
    cache.attach(pg.Session).attach(single.Session)
    with single.Session() as s:
        s.execute(text(statement))
        s.commit()
    with single.Session() as old:  # a later transaction on the same connection
        old.execute(select(func.count(User.id))).one()
        commit_rename(pg.Session, "newer")
        assert old.execute(NAME).scalar_one() == "user2"
    assert read_name(pg.Session) == "newer"


def test_begin_isolation_level_on_an_autocommit_connection(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session)
    with pg.engine.connect() as plain:
        conn = plain.execution_options(isolation_level="AUTOCOMMIT")
        with Session(bind=conn) as old:
            cache.attach(old)
            old.execute(text("BEGIN ISOLATION LEVEL REPEATABLE READ"))
            old.execute(select(func.count(User.id))).one()
            commit_rename(pg.Session, "newer")
            assert old.execute(NAME).scalar_one() == "user2"
            old.execute(text("COMMIT"))
            assert old.execute(NAME).scalar_one() == "newer"  # the snapshot ended with it
    assert read_name(pg.Session) == "newer"


def test_read_committed_in_sql_keeps_the_cache(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session)
    read_name(pg.Session)
    with pg.Session() as s, pg.counter.expect(1):
        s.execute(text("SET TRANSACTION ISOLATION LEVEL READ COMMITTED"))
        assert s.execute(NAME).scalar_one() == "user2"


@pytest.fixture
def wal_sqlite(tmp_path: Path) -> Iterator[tuple[Engine, Engine]]:
    """A WAL-mode SQLite file, an engine using SQLAlchemy's recipe for real transactions
    (pysqlite's own transaction handling off, ``BEGIN`` emitted at each begin), and a plain one."""
    url = f"sqlite:///{tmp_path / 'wal.db'}"
    plain = create_engine(url)
    with plain.begin() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        Base.metadata.create_all(conn)
    seed(plain)
    engine, _ = make_counted_engine(url)

    @event.listens_for(engine, "connect")
    def _no_pysqlite_transactions(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    yield engine, plain
    engine.dispose()
    plain.dispose()


def test_textual_begin_on_sqlite_holds_a_snapshot(
    wal_sqlite: tuple[Engine, Engine], cache: QueryCache
) -> None:
    engine, plain = wal_sqlite
    readers, writers = sessionmaker(engine), sessionmaker(plain)
    cache.attach(readers).attach(writers)
    with readers() as old:
        old.execute(select(func.count(User.id))).one()  # SQLite takes the snapshot here
        commit_rename(writers, "newer")
        assert old.execute(NAME).scalar_one() == "user2"
    assert read_name(readers) == "newer"
    assert read_name(writers) == "newer"
