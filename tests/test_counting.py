"""The driver-level statement counters in ``_counting`` count what reaches the database."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import (
    Column,
    Integer,
    MetaData,
    String,
    Table,
    create_engine,
    event,
    select,
    text,
)
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine

from ._counting import Counter, instrument_engine, make_counted_async_engine, make_counted_engine
from ._services import postgres_async_url, postgres_url

ROWS = [{"id": i, "name": f"n{i}"} for i in range(1, 21)]


def _table(prefix: str = "counting") -> Table:
    return Table(
        f"{prefix}_{uuid.uuid4().hex[:12]}",
        MetaData(),
        Column("id", Integer, primary_key=True),
        Column("name", String(50)),
    )


def _sync_url(backend: str, tmp_path: Path) -> str:
    return postgres_url() if backend == "postgresql" else f"sqlite:///{tmp_path / 'c.db'}"


def _async_url(backend: str, tmp_path: Path) -> str:
    if backend == "postgresql":
        return postgres_async_url()
    return f"sqlite+aiosqlite:///{tmp_path / 'c.db'}"


@pytest.fixture(params=["postgresql", "sqlite"])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def counted(backend: str, tmp_path: Path) -> Iterator[tuple[Engine, Counter]]:
    engine, counter = make_counted_engine(_sync_url(backend, tmp_path))
    yield engine, counter
    engine.dispose()


@pytest.fixture
def table(counted: tuple[Engine, Counter]) -> Iterator[Table]:
    engine, counter = counted
    t = _table()
    t.create(engine)
    counter.reset()
    yield t
    t.drop(engine)


# --------------------------------------------------------------------------- sync drivers


def test_untouched_engine_counts_nothing(counted: tuple[Engine, Counter]) -> None:
    engine, counter = counted
    assert counter.count == 0
    assert counter.statements == []
    engine.dispose()
    assert counter.count == 0


def test_select_counts_one_even_on_first_connect(counted: tuple[Engine, Counter]) -> None:
    # The first connection runs dialect initialisation queries (server version,
    # isolation level...); they happen before checkout and are not counted.
    engine, counter = counted
    with engine.connect() as conn:
        assert conn.execute(select(1)).scalar() == 1
    assert counter.count == 1
    assert counter.statements[0].upper().startswith("SELECT")

    with engine.connect() as conn, counter.expect(2) as window:
        conn.execute(text("SELECT 1")).all()
        conn.execute(text("SELECT 2")).all()
    assert window.statements == ["SELECT 1", "SELECT 2"]
    assert counter.count == 3


def test_executemany_insert(counted: tuple[Engine, Counter], table: Table) -> None:
    engine, counter = counted
    with engine.begin() as conn:
        conn.execute(table.insert(), ROWS)
    assert counter.count >= 1
    assert all(s.upper().startswith("INSERT") for s in counter.statements)

    counter.reset()
    with engine.connect() as conn:
        assert conn.execute(select(table.c.id).order_by(table.c.id)).scalars().all() == list(
            range(1, 21)
        )
    assert counter.count == 1


def test_orm_session_query(counted: tuple[Engine, Counter], table: Table) -> None:
    from sqlalchemy.orm import Session

    engine, counter = counted
    with engine.begin() as conn:
        conn.execute(table.insert(), ROWS[:3])
    counter.reset()
    with Session(engine) as session, counter.expect(1):
        assert session.execute(select(table.c.name).where(table.c.id == 2)).scalar() == "n2"


def test_short_circuited_do_execute_counts_zero(counted: tuple[Engine, Counter]) -> None:
    # What the cache does on a hit: SQLAlchemy "executes" but the driver is never called.
    engine, counter = counted

    @event.listens_for(engine, "do_execute")
    def _skip(cursor: Any, statement: str, parameters: Any, context: Any) -> bool | None:
        return True if "skip-me" in statement else None

    seen: list[str] = []

    @event.listens_for(engine, "before_cursor_execute")
    def _seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        seen.append(statement)

    with engine.connect() as conn, counter.expect(0):
        conn.exec_driver_sql("UPDATE nothing SET x = 1 /* skip-me */")
    assert seen == ["UPDATE nothing SET x = 1 /* skip-me */"]  # SQLAlchemy did see it

    with engine.connect() as conn, counter.expect(1):
        conn.exec_driver_sql("SELECT 1").all()


def test_transaction_control_is_not_counted(counted: tuple[Engine, Counter], table: Table) -> None:
    engine, counter = counted
    with engine.connect() as conn:
        with conn.begin(), conn.begin_nested():
            conn.execute(table.insert(), ROWS[:1])
        conn.execute(select(table.c.id)).all()
    assert counter.count == 2, counter.statements
    assert [s.split()[0].upper() for s in counter.ignored] == ["SAVEPOINT", "RELEASE"]


def test_pre_ping_is_not_counted(backend: str, tmp_path: Path) -> None:
    engine, counter = make_counted_engine(_sync_url(backend, tmp_path), pool_pre_ping=True)
    try:
        for _ in range(3):
            with engine.connect() as conn:  # checkouts 2 and 3 ping first
                conn.execute(select(1)).all()
        assert counter.count == 3
    finally:
        engine.dispose()


def test_expect_reports_mismatch(counted: tuple[Engine, Counter]) -> None:
    engine, counter = counted
    with (
        pytest.raises(AssertionError, match=r"expected 0 statement\(s\).*got 1:\n  1\. SELECT 1"),
        engine.connect() as conn,
        counter.expect(0),
    ):
        conn.exec_driver_sql("SELECT 1").all()


def test_server_side_cursor_counts_once(counted: tuple[Engine, Counter], table: Table) -> None:
    engine, counter = counted
    with engine.begin() as conn:
        conn.execute(table.insert(), ROWS)
    counter.reset()
    with engine.connect() as conn, counter.expect(1):
        result = conn.execution_options(yield_per=5).execute(select(table.c.id))
        assert len(result.all()) == 20


def test_sqlite_connection_execute_shortcuts_count(tmp_path: Path) -> None:
    engine, counter = make_counted_engine(f"sqlite:///{tmp_path / 's.db'}")
    try:
        raw = engine.raw_connection()
        try:
            driver: Any = raw.driver_connection
            with counter.expect(4):
                driver.execute("CREATE TABLE t (x INTEGER)")
                driver.executemany("INSERT INTO t VALUES (?)", [(1,), (2,)])
                driver.executescript("SELECT 1;")
                assert driver.execute("SELECT count(*) FROM t").fetchone() == (2,)
        finally:
            raw.close()
        driver.execute("SELECT 1")  # checked in: not counted
        assert counter.count == 4
    finally:
        engine.dispose()


# --------------------------------------------------------------------------- async drivers


async def _async_scenario(engine: AsyncEngine, counter: Counter) -> None:
    table = _table("acounting")
    assert counter.count == 0

    async with engine.connect() as conn:
        assert (await conn.execute(select(1))).scalar() == 1
    assert counter.count == 1  # counted synchronously, before we even leave the block
    assert counter.statements[0].upper().startswith("SELECT")

    async with engine.begin() as conn:
        await conn.run_sync(table.metadata.create_all)
    try:
        counter.reset()
        async with engine.begin() as conn:
            await conn.execute(table.insert(), ROWS)
        assert counter.count >= 1
        assert all(s.upper().startswith("INSERT") for s in counter.statements)

        for _ in range(2):  # the second run reuses asyncpg's cached prepared statement
            with counter.expect(1):
                async with engine.connect() as conn:
                    rows = (await conn.execute(select(table.c.id))).all()
            assert len(rows) == 20

        with counter.expect(1):
            async with engine.connect() as conn:
                stream = await conn.stream(select(table.c.id))
                assert len(await stream.all()) == 20
    finally:
        async with engine.begin() as conn:
            await conn.run_sync(table.metadata.drop_all)
        await engine.dispose()

    assert not any(s.upper().startswith(("BEGIN", "COMMIT")) for s in counter.statements)


def test_async_counter(backend: str, tmp_path: Path) -> None:
    engine, counter = make_counted_async_engine(_async_url(backend, tmp_path))
    asyncio.run(_async_scenario(engine, counter))


def test_async_untouched_engine_counts_nothing(backend: str, tmp_path: Path) -> None:
    engine, counter = make_counted_async_engine(_async_url(backend, tmp_path))
    asyncio.run(engine.dispose())
    assert counter.count == 0


def test_asyncpg_transaction_control_goes_to_ignored() -> None:
    async def scenario() -> None:
        engine, counter = make_counted_async_engine(postgres_async_url())
        try:
            async with engine.begin() as conn:
                await conn.execute(text("SELECT 1"))
        finally:
            await engine.dispose()
        assert counter.statements == ["SELECT 1"]
        assert [s.split()[0].rstrip(";").upper() for s in counter.ignored] == ["BEGIN", "COMMIT"]

    asyncio.run(scenario())


def test_unsupported_driver_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    engine = create_engine("sqlite://")
    monkeypatch.setattr(engine.dialect, "driver", "nosuchdriver")
    with pytest.raises(NotImplementedError, match="no statement counter for driver"):
        instrument_engine(engine)
    with pytest.raises(ValueError, match="creator"):
        make_counted_engine("sqlite://", creator=lambda: None)
