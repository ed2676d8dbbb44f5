"""Writes that change tables their SQL does not name: foreign-key actions, TRUNCATE ... CASCADE,
DML nested in another statement, SQLite's case folding and REPLACE.

Each test fills cached reads, proves they hit, writes, then proves every read misses and
returns what the database now holds (``assert_fresh_after``); without the fix the last read is
a hit with the old rows.  Paths: a Session (``text()``) and a Core ``engine.begin()`` block
(``exec_driver_sql``), on the engines where the SQL applies.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, delete, event, insert, select, text
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import async_sessionmaker

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.wiring import _fkgraph
from sqla_redis_cache.wiring._sqlwrites import analyse_sql

from ._counting import make_counted_async_engine, make_counted_engine
from .conftest import Database, _writes_database
from .models_writes import (
    Course,
    R3Archive,
    R3Child,
    R3Grandchild,
    R3Parent,
    R3Plain,
    R3Ref,
)
from .test_write_paths import assert_fresh_after, rows

PARENTS = select(R3Parent.id, R3Parent.code).order_by(R3Parent.id)
CHILDREN = select(R3Child.id, R3Child.parent_code).order_by(R3Child.id)
GRANDCHILDREN = select(R3Grandchild.id)
REFS = select(R3Ref.id, R3Ref.parent_id)
PLAIN = select(R3Plain.id)
ARCHIVE = select(R3Archive.id, R3Archive.code)

BEFORE: dict[Any, list[tuple[Any, ...]]] = {
    PARENTS: [(1, "a"), (2, "b")],
    CHILDREN: [(1, "a"), (2, "b")],
    GRANDCHILDREN: [(1,)],
    REFS: [(1, 1)],
}
PARENT_1_DELETED: dict[Any, list[tuple[Any, ...]]] = {
    PARENTS: [(2, "b")],
    CHILDREN: [(2, "b")],
    GRANDCHILDREN: [],
    REFS: [(1, None)],
}


def attach(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    cache.attach(db.Session)


def run_sql(db: Database, path: str, sql: str) -> None:
    if path == "session":
        with db.Session() as s:
            s.execute(text(sql))
            s.commit()
    else:
        with db.engine.begin() as conn:
            conn.exec_driver_sql(sql)


PATHS = ["session", "core"]


# ON DELETE / ON UPDATE actions reached by textual SQL ---------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_text_delete_reaches_on_delete_cascade_and_set_null(
    wdb: Database, cache: QueryCache, path: str
) -> None:
    attach(wdb, cache)
    assert_fresh_after(
        wdb,
        BEFORE,
        lambda: run_sql(wdb, path, "DELETE FROM r3_parents WHERE id = 1"),
        PARENT_1_DELETED,
    )


@pytest.mark.parametrize("path", PATHS)
def test_text_delete_using_reaches_on_delete_cascade(
    wpg: Database, cache: QueryCache, path: str
) -> None:
    attach(wpg, cache)
    sql = (
        "DELETE FROM r3_parents USING r3_children c WHERE c.parent_id = r3_parents.id AND c.id = 1"
    )
    assert_fresh_after(wpg, BEFORE, lambda: run_sql(wpg, path, sql), PARENT_1_DELETED)


@pytest.mark.parametrize("path", PATHS)
def test_text_update_reaches_on_update_cascade(wdb: Database, cache: QueryCache, path: str) -> None:
    attach(wdb, cache)
    assert_fresh_after(
        wdb,
        {CHILDREN: [(1, "a"), (2, "b")]},
        lambda: run_sql(wdb, path, "UPDATE r3_parents SET code = 'z' WHERE id = 1"),
        {CHILDREN: [(1, "z"), (2, "b")]},
    )


@pytest.mark.parametrize("path", PATHS)
def test_text_upsert_do_update_reaches_on_update_cascade(
    wdb: Database, cache: QueryCache, path: str
) -> None:
    attach(wdb, cache)
    sql = (
        "INSERT INTO r3_parents (id, code) VALUES (1, 'q') "
        "ON CONFLICT (id) DO UPDATE SET code = excluded.code"
    )
    assert_fresh_after(
        wdb,
        {CHILDREN: [(1, "a"), (2, "b")]},
        lambda: run_sql(wdb, path, sql),
        {CHILDREN: [(1, "q"), (2, "b")]},
    )


def test_cascaded_tables_bypass_the_cache_inside_the_writing_transaction(
    wdb: Database, cache: QueryCache
) -> None:
    attach(wdb, cache)
    assert rows(wdb, CHILDREN) == [(1, "a"), (2, "b")]
    with wdb.Session() as s:
        s.execute(text("DELETE FROM r3_parents WHERE id = 1"))
        with wdb.counter.expect(1):  # its own (uncommitted) cascade, from the database
            assert [tuple(r) for r in s.execute(CHILDREN.options(cached()))] == [(2, "b")]
        s.rollback()
    with wdb.counter.expect(0):  # nothing uncommitted was stored
        assert rows(wdb, CHILDREN) == [(1, "a"), (2, "b")]


def test_async_text_delete_reaches_cascades(wdb: Database, cache: QueryCache) -> None:
    """asyncpg and aiosqlite: the catalog is read through the adapted DBAPI connection."""
    driver = "asyncpg" if wdb.name == "postgresql" else "aiosqlite"
    url = wdb.engine.url.set(drivername=f"{wdb.engine.url.get_backend_name()}+{driver}")

    async def main() -> None:
        engine, counter = make_counted_async_engine(url)

        @event.listens_for(engine.sync_engine, "connect")
        def _fk(dbapi_connection: Any, record: Any) -> None:
            if driver == "aiosqlite":
                cursor = dbapi_connection.cursor()
                cursor.execute("PRAGMA foreign_keys=ON")
                cursor.close()

        sessions = async_sessionmaker(engine)
        cache.attach(sessions)

        async def read() -> list[tuple[Any, ...]]:
            async with sessions() as s:
                return [tuple(r) for r in await s.execute(CHILDREN.options(cached()))]

        try:
            assert await read() == [(1, "a"), (2, "b")]
            async with sessions() as s:
                await s.execute(text("DELETE FROM r3_parents WHERE id = 1"))
                await s.commit()
            assert len(counter.catalog) == 1
            assert await read() == [(2, "b")]
        finally:
            await engine.dispose()

    asyncio.run(main())


# TRUNCATE ... CASCADE -----------------------------------------------------------------------------


@pytest.mark.parametrize("path", PATHS)
def test_truncate_cascade_empties_every_referencing_table(
    wpg: Database, cache: QueryCache, path: str
) -> None:
    attach(wpg, cache)
    before = {**BEFORE, PLAIN: [(1,)]}  # r3_plain's key has no action: only CASCADE reaches it
    after: dict[Any, list[tuple[Any, ...]]] = {stmt: [] for stmt in before}
    assert_fresh_after(
        wpg, before, lambda: run_sql(wpg, path, "TRUNCATE r3_parents CASCADE"), after
    )


# data-modifying CTEs nested inside another statement --------------------------------------------


def _archive_deleted_parent() -> Any:
    gone = (
        delete(R3Parent).where(R3Parent.id == 1).returning(R3Parent.id, R3Parent.code).cte("gone")
    )
    return insert(R3Archive).from_select(["id", "code"], select(gone.c.id, gone.c.code))


@pytest.mark.parametrize("path", PATHS)
def test_delete_nested_in_insert_from_select(wpg: Database, cache: QueryCache, path: str) -> None:
    attach(wpg, cache)

    def write() -> None:
        if path == "session":
            with wpg.Session() as s:
                s.execute(_archive_deleted_parent())
                s.commit()
        else:
            with wpg.engine.begin() as conn:
                conn.execute(_archive_deleted_parent())

    assert_fresh_after(
        wpg,
        {**BEFORE, ARCHIVE: []},
        write,
        {**PARENT_1_DELETED, ARCHIVE: [(1, "a")]},
    )


# SQLite: names fold case even when quoted; REPLACE deletes ------------------------------------


@pytest.fixture
def wsqlite(sqlite_url: str) -> Database:
    """The write-path schema on SQLite only (its own semantics)."""
    return _writes_database("sqlite", sqlite_url)


@pytest.mark.parametrize(
    "sql",
    [
        "UPDATE \"R3_PARENTS\" SET code = 'z' WHERE id = 1",
        "UPDATE `R3_Parents` SET code = 'z' WHERE id = 1",
        "UPDATE main.\"R3_Parents\" SET code = 'z' WHERE id = 1",
        "UPDATE [r3_PARENTS] SET code = 'z' WHERE id = 1",
    ],
)
def test_sqlite_quoted_names_fold_case(wsqlite: Database, cache: QueryCache, sql: str) -> None:
    attach(wsqlite, cache)
    assert_fresh_after(
        wsqlite,
        {PARENTS: [(1, "a"), (2, "b")], CHILDREN: [(1, "a"), (2, "b")]},
        lambda: run_sql(wsqlite, "session", sql),
        {PARENTS: [(1, "z"), (2, "b")], CHILDREN: [(1, "z"), (2, "b")]},
    )


def test_sqlite_mixed_case_table_written_in_other_case(
    wsqlite: Database, cache: QueryCache
) -> None:
    """SQLAlchemy quotes ``R3_Mixed`` and keys its reads so; SQLite accepts any case for it."""
    mixed = Table("R3_Mixed", MetaData(), Column("id", Integer, primary_key=True))
    mixed.drop(wsqlite.engine, checkfirst=True)
    mixed.create(wsqlite.engine)
    try:
        with wsqlite.engine.begin() as conn:
            conn.execute(insert(mixed).values(id=1))
        attach(wsqlite, cache)
        stmt = select(mixed.c.id)
        assert_fresh_after(
            wsqlite,
            {stmt: [(1,)]},
            lambda: run_sql(wsqlite, "session", "UPDATE r3_mixed SET id = 2"),
            {stmt: [(2,)]},
        )
    finally:
        mixed.drop(wsqlite.engine, checkfirst=True)


@pytest.mark.parametrize(
    ("sql", "children"),
    [
        ("INSERT OR REPLACE INTO r3_parents (id, code) VALUES (1, 'a')", [(2, "b")]),
        ("REPLACE INTO r3_parents (id, code) VALUES (1, 'a')", [(2, "b")]),
        # parent 1 holds code 'a': it is deleted, parent 2 takes the code (ON UPDATE CASCADE)
        ("UPDATE OR REPLACE r3_parents SET code = 'a' WHERE id = 2", [(2, "a")]),
    ],
)
def test_sqlite_replace_reaches_on_delete_cascade(
    wsqlite: Database,
    cache: QueryCache,
    caplog: pytest.LogCaptureFixture,
    sql: str,
    children: list[tuple[Any, ...]],
) -> None:
    """REPLACE deletes the conflicting row first, which fires ON DELETE actions."""
    attach(wsqlite, cache)
    courses = select(Course.id).order_by(Course.id)
    before = {k: v for k, v in BEFORE.items() if k is not PARENTS}
    after = {CHILDREN: children, GRANDCHILDREN: [], REFS: [(1, None)]}
    with caplog.at_level(logging.WARNING, "sqla_redis_cache"):
        assert_fresh_after(
            wsqlite,
            {**before, courses: [(1,), (2,)]},
            lambda: run_sql(wsqlite, "session", sql),
            after,
        )
    with wsqlite.counter.expect(0):  # precise: an unrelated table is not invalidated
        assert rows(wsqlite, courses) == [(1,), (2,)]
    assert "cannot tell" not in caplog.text


# foreign keys only the database knows: the catalog ------------------------------------------------

DB_ONLY_DDL = (
    "CREATE TABLE r3_db_only (id INTEGER PRIMARY KEY, "
    "parent_id INTEGER REFERENCES r3_parents (id) ON DELETE CASCADE)"
)
# declared without its foreign key, as an application that never mentions it would
db_only = Table(
    "r3_db_only", MetaData(), Column("id", Integer, primary_key=True), Column("parent_id", Integer)
)
DB_ONLY = select(db_only.c.id).order_by(db_only.c.id)


@pytest.fixture
def db_only_table(wdb: Database) -> Iterator[Database]:
    db_only.drop(wdb.engine, checkfirst=True)
    yield wdb
    db_only.drop(wdb.engine, checkfirst=True)


def _create_db_only(engine: Engine) -> None:
    with engine.begin() as conn:
        conn.exec_driver_sql(DB_ONLY_DDL)
    with engine.begin() as conn:
        conn.execute(insert(db_only), [{"id": 1, "parent_id": 1}, {"id": 2, "parent_id": 2}])


@pytest.mark.parametrize("path", ["orm", "text"])
def test_foreign_key_declared_only_in_the_database(
    db_only_table: Database, cache: QueryCache, path: str
) -> None:
    wdb = db_only_table
    _create_db_only(wdb.engine)
    attach(wdb, cache)

    def write() -> None:
        if path == "orm":
            with wdb.Session() as s:
                s.delete(s.get_one(R3Parent, 1))
                s.commit()
        else:
            run_sql(wdb, "session", "DELETE FROM r3_parents WHERE id = 1")

    assert_fresh_after(wdb, {DB_ONLY: [(1,), (2,)]}, write, {DB_ONLY: [(2,)]})


def test_catalog_is_read_once_per_engine_and_again_after_ddl(
    db_only_table: Database, cache: QueryCache
) -> None:
    wdb = db_only_table
    attach(wdb, cache)
    for code in "xyz":
        run_sql(wdb, "session", f"UPDATE r3_parents SET code = '{code}' WHERE id = 2")
    run_sql(wdb, "core", "UPDATE r3_parents SET code = 'b' WHERE id = 2")
    assert len(wdb.counter.catalog) == 1
    _create_db_only(wdb.engine)  # DDL through the attached engine: the graph is read again
    assert_fresh_after(
        wdb,
        {DB_ONLY: [(1,), (2,)]},
        lambda: run_sql(wdb, "core", "DELETE FROM r3_parents WHERE id = 1"),
        {DB_ONLY: [(2,)]},
    )
    assert len(wdb.counter.catalog) == 2  # at the first write after the DDL's transaction
    run_sql(wdb, "session", "UPDATE r3_parents SET code = 'y' WHERE id = 2")
    assert len(wdb.counter.catalog) == 2


def test_ddl_on_a_connection_left_open_after_its_commit(
    db_only_table: Database, cache: QueryCache
) -> None:
    """Read again at the next write after the DDL, not only when its connection goes back."""
    wdb = db_only_table
    attach(wdb, cache)
    run_sql(wdb, "session", "UPDATE r3_parents SET code = 'x' WHERE id = 2")  # graph read
    with wdb.engine.connect() as ddl:
        ddl.exec_driver_sql(DB_ONLY_DDL)
        ddl.commit()  # and the connection stays checked out, idle
        with wdb.engine.begin() as conn:
            conn.execute(insert(db_only), [{"id": 1, "parent_id": 1}, {"id": 2, "parent_id": 2}])
        assert_fresh_after(
            wdb,
            {DB_ONLY: [(1,), (2,)]},
            lambda: run_sql(wdb, "session", "DELETE FROM r3_parents WHERE id = 1"),
            {DB_ONLY: [(2,)]},
        )


def test_graph_read_while_ddl_is_uncommitted_is_read_again_after_it(
    wpg: Database, cache: QueryCache
) -> None:
    """Another connection reloads the graph between the DDL and its commit (PostgreSQL: the
    DDL is invisible until then); once the DDL's transaction is over it is read again."""
    db_only.drop(wpg.engine, checkfirst=True)
    attach(wpg, cache)
    try:
        run_sql(wpg, "session", "UPDATE r3_parents SET code = 'x' WHERE id = 2")
        with wpg.engine.begin() as ddl:
            ddl.exec_driver_sql(DB_ONLY_DDL)
            # another transaction writes now (a table the DDL does not lock): it reads the
            # catalog, which does not show the new key yet
            run_sql(wpg, "core", "UPDATE w_course SET title = 'x' WHERE id = 2")
            ddl.execute(insert(db_only), [{"id": 1, "parent_id": 1}, {"id": 2, "parent_id": 2}])
        assert_fresh_after(
            wpg,
            {DB_ONLY: [(1,), (2,)]},
            lambda: run_sql(wpg, "session", "DELETE FROM r3_parents WHERE id = 1"),
            {DB_ONLY: [(2,)]},
        )
    finally:
        db_only.drop(wpg.engine, checkfirst=True)


def test_ddl_made_elsewhere_is_seen_after_the_refresh_interval(
    db_only_table: Database, cache: QueryCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    wdb = db_only_table
    attach(wdb, cache)
    run_sql(wdb, "session", "UPDATE r3_parents SET code = 'x' WHERE id = 2")  # graph read
    other, _ = make_counted_engine(wdb.url)  # another program: the cache never sees its DDL
    try:
        _create_db_only(other)
    finally:
        other.dispose()
    monkeypatch.setattr(_fkgraph, "REFRESH_SECONDS", 0.0)
    assert_fresh_after(
        wdb,
        {DB_ONLY: [(1,), (2,)]},
        lambda: run_sql(wdb, "session", "DELETE FROM r3_parents WHERE id = 1"),
        {DB_ONLY: [(2,)]},
    )


def test_unreadable_catalog_invalidates_everything_and_never_breaks_the_transaction(
    wpg: Database,
    cache: QueryCache,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    failing = "/* sqla_redis_cache: foreign keys */ SELECT * FROM no_such_catalog"
    monkeypatch.setitem(_fkgraph.QUERIES, "postgresql", failing)
    attach(wpg, cache)
    courses = select(Course.id).order_by(Course.id)

    def write() -> None:
        with wpg.Session() as s, caplog.at_level(logging.WARNING, "sqla_redis_cache"):
            s.execute(text("DELETE FROM r3_parents WHERE id = 1"))
            s.execute(text("UPDATE r3_parents SET code = 'c' WHERE id = 2"))  # still usable
            s.commit()

    assert_fresh_after(
        wpg,
        {**BEFORE, courses: [(1,), (2,)]},
        write,
        {**PARENT_1_DELETED, PARENTS: [(2, "c")], CHILDREN: [(2, "c")], courses: [(1,), (2,)]},
    )
    assert "foreign keys" in caplog.text
    assert len(wpg.counter.catalog) == 1  # not again for each write: retried later


# the SQL analysis itself --------------------------------------------------------------------------


@pytest.mark.parametrize("use_parser", [True, False], ids=["sqlglot", "fallback"])
def test_truncate_cascade_and_schema_changes_are_reported(use_parser: bool) -> None:
    def a(sql: str, dialect: str = "postgresql") -> Any:
        return analyse_sql(sql, dialect, "public", use_parser=use_parser)

    both = frozenset({"r3_parents", "public.r3_parents"})
    assert a("TRUNCATE r3_parents CASCADE").truncated == both
    assert a("truncate table r3_parents cascade;").truncated == both
    assert a("TRUNCATE r3_parents").truncated == frozenset()
    assert a("TRUNCATE r3_parents RESTRICT").truncated == frozenset()
    assert a("DELETE FROM r3_parents WHERE id = 1").schema_change is False
    assert a("ALTER TABLE r3_children ADD COLUMN x INTEGER").schema_change is True
    assert a("DROP TABLE r3_db_only").schema_change is True


@pytest.mark.parametrize("use_parser", [True, False], ids=["sqlglot", "fallback"])
def test_sqlite_names_are_folded_and_replace_is_recognised(use_parser: bool) -> None:
    def w(sql: str) -> frozenset[str] | None:
        return analyse_sql(sql, "sqlite", "main", use_parser=use_parser).tables

    both = frozenset({"r3_parents", "main.r3_parents"})
    assert w('UPDATE "R3_PARENTS" SET code = 1') == both
    assert w("UPDATE `R3_Parents` SET code = 1") == both
    assert w("UPDATE [R3_Parents] SET code = 1") == both
    assert w("INSERT OR REPLACE INTO R3_PARENTS (id) VALUES (1)") == both
    assert w("REPLACE INTO r3_parents (id) VALUES (1)") == both
    assert w("UPDATE OR REPLACE r3_parents SET code = 1") == both
    # PostgreSQL keeps quoted names as written
    assert analyse_sql('UPDATE "R3_PARENTS" SET a = 1', "postgresql", "public").tables == (
        frozenset({"R3_PARENTS", "public.R3_PARENTS"})
    )


def test_sqlite_graph_keeps_the_tables_spelling_whatever_the_references_clause_says() -> None:
    # the child is listed first and refers to "r3_mixed"; the table is spelled "R3_Mixed"
    rows = [
        ("main", "kids", "main", "r3_mixed", "CASCADE", "NO ACTION"),
        ("main", "R3_Mixed", "main", None, None, None),
    ]
    graph = _fkgraph.ForeignKeyGraph(rows, fold_case=True)
    assert graph.expand(frozenset({"r3_mixed"})) == frozenset(
        {"r3_mixed", "R3_Mixed", "kids", "main.kids"}
    )
