"""Every write path invalidates what it changed.

Each test fills a cached read, proves the next read is a hit (no SQL), writes through one
path, and proves the next read goes to the database and returns the new data.  Without the
invalidation the last read would be a hit with the old data, so each test fails without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import delete, insert, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from sqla_redis_cache import ConfigurationError, QueryCache, cached
from sqla_redis_cache.wiring._sqlwrites import written_by_sql

from .conftest import Database
from .models import Order, Org, User
from .models_writes import (
    Account,
    Course,
    Emission,
    Employee,
    Entry,
    EntryNote,
    File,
    Folder,
    Manager,
    Student,
    Truck,
    Vehicle,
    enrollment,
)


def rows(db: Database, stmt: Any) -> list[tuple[Any, ...]]:
    with db.Session() as s:
        return [tuple(r) for r in s.execute(stmt.options(cached()))]


def assert_fresh_after(
    db: Database,
    reads: dict[Any, list[tuple[Any, ...]]],
    write: Callable[[], None],
    after: dict[Any, list[tuple[Any, ...]]] | None = None,
) -> None:
    """Fill and hit every read, run ``write``, then each read must miss and see ``after``."""
    for stmt, expected in reads.items():
        assert rows(db, stmt) == expected
        with db.counter.expect(0):
            assert rows(db, stmt) == expected
    write()
    for stmt, expected in (after or {}).items():
        with db.counter.expect(1):
            assert rows(db, stmt) == expected


# ORM flush shapes ------------------------------------------------------------------------------


def test_joined_inheritance_flush_invalidates_both_tables(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    base = select(Employee.__table__.c.name).order_by(Employee.__table__.c.id)
    sub = select(Manager.__table__.c.budget)

    def write() -> None:
        with wdb.Session() as s:
            bob = s.get(Manager, 2)
            assert bob is not None
            bob.name, bob.budget = "bobby", 200
            s.commit()

    assert_fresh_after(
        wdb,
        {base: [("ann",), ("bob",)], sub: [(100,)]},
        write,
        {base: [("ann",), ("bobby",)], sub: [(200,)]},
    )


def test_joined_inheritance_insert_and_polymorphic_load(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    stmt = select(Employee).order_by(Employee.id)
    with wdb.Session() as s:
        assert [type(e).__name__ for e in s.scalars(stmt.options(cached()))] == [
            "Employee",
            "Manager",
        ]
    with wdb.Session() as s:
        s.add(Manager(id=3, name="cy", budget=1))
        s.commit()
    with wdb.counter.expect(1), wdb.Session() as s:
        loaded = s.scalars(stmt.options(cached())).all()
        assert [(type(e).__name__, e.name) for e in loaded][-1] == ("Manager", "cy")


def test_single_table_inheritance_flush(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    stmt = select(Vehicle.id, Vehicle.wheels)

    def write() -> None:
        with wdb.Session() as s:
            truck = s.get(Truck, 1)
            assert truck is not None
            truck.wheels = 18
            s.commit()

    assert_fresh_after(wdb, {stmt: [(1, 6)]}, write, {stmt: [(1, 18)]})


def test_many_to_many_secondary_table(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    stmt = select(enrollment.c.course_id).order_by(enrollment.c.course_id)

    def add() -> None:
        with wdb.Session() as s:
            sue = s.get(Student, 1)
            assert sue is not None
            sue.courses.append(s.get_one(Course, 2))
            s.commit()

    assert_fresh_after(wdb, {stmt: [(1,)]}, add, {stmt: [(1,), (2,)]})

    def remove() -> None:
        with wdb.Session() as s:
            sue = s.get_one(Student, 1)
            sue.courses.clear()
            s.commit()

    assert_fresh_after(wdb, {stmt: [(1,), (2,)]}, remove, {stmt: []})


def test_delete_orphan_and_cascade_delete(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    stmt = select(File.id).order_by(File.id)

    def orphan() -> None:
        with wdb.Session() as s:
            folder = s.get_one(Folder, 1)
            folder.files.remove(folder.files[0])
            s.commit()

    assert_fresh_after(wdb, {stmt: [(1,), (2,)]}, orphan, {stmt: [(2,)]})

    def cascade() -> None:
        with wdb.Session() as s:
            s.delete(s.get_one(Folder, 1))
            s.commit()

    folders = select(Folder.id)
    assert_fresh_after(wdb, {stmt: [(2,)], folders: [(1,)]}, cascade, {stmt: [], folders: []})


def test_on_delete_cascade_with_passive_deletes(wdb: Database, cache: QueryCache) -> None:
    """The ORM deletes only the account; the database removes entries and their notes."""
    cache.attach(wdb.Session)
    entries = select(Entry.id).order_by(Entry.id)
    notes = select(EntryNote.id)

    def write() -> None:
        with wdb.Session() as s, wdb.counter.measure() as window:
            s.delete(s.get_one(Account, 1))
            s.commit()
        # premise: the ORM itself never touched w_entry or w_entry_note
        assert not [q for q in window.statements if "w_entry" in q and "DELETE" in q.upper()]

    assert_fresh_after(
        wdb, {entries: [(1,), (2,), (3,)], notes: [(1,)]}, write, {entries: [(3,)], notes: []}
    )


# ORM bulk statements through the session ----------------------------------------------------


def _upsert(s: Session) -> None:
    dialect = postgresql if s.get_bind().dialect.name == "postgresql" else sqlite
    stmt = dialect.insert(User).values(id=1, name="upserted", org_id=1)
    s.execute(stmt.on_conflict_do_update(index_elements=[User.id], set_={"name": "upserted"}))


def _delete(s: Session) -> None:
    s.execute(delete(Order).where(Order.user_id == 1))
    s.execute(delete(User).where(User.id == 1))


ORG1 = [(1, "user1"), (2, "user2"), (3, "user3")]
BULK: dict[str, tuple[Callable[[Session], Any], list[tuple[Any, ...]]]] = {
    "update": (
        lambda s: s.execute(update(User).where(User.id == 1).values(name="renamed")),
        [(1, "renamed"), *ORG1[1:]],
    ),
    "delete": (_delete, ORG1[1:]),
    "insert_values": (
        lambda s: s.execute(
            insert(User).values(
                [{"id": 7, "name": "u7", "org_id": 1}, {"id": 8, "name": "u8", "org_id": 1}]
            )
        ),
        [*ORG1, (7, "u7"), (8, "u8")],
    ),
    "insert_executemany": (
        lambda s: s.execute(
            insert(User),
            [{"id": 9, "name": "u9", "org_id": 1}, {"id": 10, "name": "u10", "org_id": 2}],
        ),
        [*ORG1, (9, "u9")],
    ),
    "upsert": (_upsert, [(1, "upserted"), *ORG1[1:]]),
}


@pytest.mark.parametrize("kind", sorted(BULK))
def test_orm_bulk_statements(db: Database, cache: QueryCache, kind: str) -> None:
    cache.attach(db.Session)
    write_fn, after = BULK[kind]
    stmt = select(User.id, User.name).where(User.org_id == 1).order_by(User.id)

    def write() -> None:
        with db.Session() as s:
            write_fn(s)
            s.commit()

    assert_fresh_after(db, {stmt: ORG1}, write, {stmt: after})


# Core connections outside any Session ---------------------------------------------------------

NAMES = select(User.id, User.name).where(User.id <= 2).order_by(User.id)
BEFORE = [(1, "user1"), (2, "user2")]
AFTER = [(1, "core"), (2, "user2")]
RENAME = update(User).where(User.id == 1).values(name="core")


def test_core_engine_begin(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    cache.attach(db.Session)

    def write() -> None:
        with db.engine.begin() as conn:
            conn.execute(RENAME)

    assert_fresh_after(db, {NAMES: BEFORE}, write, {NAMES: AFTER})


def test_core_connect_commit_is_seen_before_the_connection_closes(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.engine)
    cache.attach(db.Session)
    assert rows(db, NAMES) == BEFORE
    with db.engine.connect() as conn:
        conn.execute(RENAME)
        with db.counter.expect(0):
            assert rows(db, NAMES) == BEFORE  # uncommitted: other sessions still hit
        conn.commit()
        with db.counter.expect(1):
            assert rows(db, NAMES) == AFTER
        before_close = cache.stats().invalidations
    # published again once the commit is certainly over (closes the refill-during-commit race)
    assert cache.stats().invalidations > before_close


def test_core_rollback_invalidates_nothing(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    cache.attach(db.Session)
    assert rows(db, NAMES) == BEFORE
    with db.engine.connect() as conn:
        conn.execute(RENAME)
        conn.rollback()
    with db.counter.expect(0):
        assert rows(db, NAMES) == BEFORE
    assert cache.stats().invalidations == 0


def test_core_autocommit_isolation(db: Database, cache: QueryCache) -> None:
    cache.attach(db.engine)
    cache.attach(db.Session)
    assert rows(db, NAMES) == BEFORE
    with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        conn.execute(RENAME)
        # committed by the database already: visible at once, with the connection still open
        with db.counter.expect(1):
            assert rows(db, NAMES) == AFTER


def test_session_connections_publish_once_after_commit(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    assert rows(db, NAMES) == BEFORE
    with db.Session() as s:
        s.execute(RENAME)
        s.commit()
    assert cache.stats().invalidations == 1  # app_user, once: no extra Core publish
    with db.counter.expect(1):
        assert rows(db, NAMES) == AFTER


# text() and exec_driver_sql ---------------------------------------------------------------------

TEXT_WRITES: dict[str, Callable[[Any], Any]] = {
    "session_text": lambda s: s.execute(text("UPDATE app_user SET name = 'core' WHERE id = 1")),
    "driver_sql": lambda s: s.connection().exec_driver_sql(
        "update APP_USER set name = 'core' where id = 1"
    ),
    "quoted": lambda s: s.execute(text("UPDATE \"app_user\" SET name = 'core' WHERE id = 1")),
}


@pytest.mark.parametrize("kind", sorted(TEXT_WRITES))
def test_text_and_driver_sql_writes(db: Database, cache: QueryCache, kind: str) -> None:
    cache.attach(db.Session)

    def write() -> None:
        with db.Session() as s:
            TEXT_WRITES[kind](s)
            s.commit()

    assert_fresh_after(db, {NAMES: BEFORE}, write, {NAMES: AFTER})
    assert cache.stats().invalidations == 2  # app_user and <default schema>.app_user only


def test_schema_qualified_text_write(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.engine)
    cache.attach(pg.Session)

    def write() -> None:
        with pg.engine.begin() as conn:
            conn.exec_driver_sql("UPDATE public.app_user SET name = 'core' WHERE id = 1")

    assert_fresh_after(pg, {NAMES: BEFORE}, write, {NAMES: AFTER})


def test_text_write_with_unknown_target_invalidates_everything(
    pg: Database, cache: QueryCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache.attach(pg.Session)
    orgs = select(Org.id).order_by(Org.id)

    def write() -> None:
        with pg.Session() as s, caplog.at_level(logging.WARNING, "sqla_redis_cache"):
            s.execute(text("DO $$ BEGIN UPDATE app_user SET name = 'core' WHERE id = 1; END $$"))
            s.commit()

    assert_fresh_after(
        pg, {NAMES: BEFORE, orgs: [(1,), (2,)]}, write, {NAMES: AFTER, orgs: [(1,), (2,)]}
    )
    assert "cannot tell which tables" in caplog.text


def test_text_write_bypasses_reads_until_commit(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    assert rows(db, NAMES) == BEFORE
    with db.Session() as s:
        s.execute(text("UPDATE app_user SET name = 'core' WHERE id = 1"))
        with db.counter.expect(1):  # read-your-writes, uncached
            assert [tuple(r) for r in s.execute(NAMES.options(cached()))] == AFTER
        s.rollback()
    with db.counter.expect(0):  # nothing uncommitted was stored, nothing invalidated
        assert rows(db, NAMES) == BEFORE


def test_text_reads_are_not_writes(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.execute(text('SELECT name AS "update" FROM app_user WHERE id = 1'))
        s.commit()
    assert cache.stats().invalidations == 0


@pytest.mark.parametrize("use_parser", [True, False], ids=["sqlglot", "fallback"])
def test_sql_target_detection(use_parser: bool) -> None:
    def w(sql: str) -> frozenset[str] | None:
        return written_by_sql(sql, "postgresql", "public", use_parser=use_parser)

    both = frozenset({"app_user", "public.app_user"})
    assert w("select * from app_user") == frozenset()
    assert w("DELETE FROM app_user WHERE id = 1") == both
    assert w("insert into public.APP_USER (id) values (1) on conflict do nothing") == both
    assert w('UPDATE "Mixed" SET a = 1') == frozenset({"Mixed", "public.Mixed"})
    assert w("UPDATE other.t SET a = 1") == frozenset({"t", "other.t"})
    assert w("TRUNCATE app_user") == both
    assert w("CALL refresh_everything()") is None
    assert w("SELECT 1; DELETE FROM app_user") == (both if use_parser else None)
    cte = "WITH x AS (DELETE FROM a RETURNING id) INSERT INTO b SELECT id FROM x"
    assert w(cte) == (frozenset({"a", "public.a", "b", "public.b"}) if use_parser else None)


def test_truncate_through_driver_sql(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.engine)
    cache.attach(pg.Session)
    stmt = select(Order.id).where(Order.id < 3).order_by(Order.id)

    def write() -> None:
        with pg.engine.begin() as conn:
            conn.exec_driver_sql("TRUNCATE app_order")

    assert_fresh_after(pg, {stmt: [(1,), (2,)]}, write, {stmt: []})


def test_data_modifying_cte_runs_every_time_and_invalidates(
    pg: Database, cache: QueryCache
) -> None:
    cache.attach(pg.Session)
    orgs = select(Org.id).order_by(Org.id)
    upsert = postgresql.insert(Org).values(id=50, name="x").on_conflict_do_nothing()
    cte = upsert.returning(Org.id).cte("ins")
    stmt = select(cte.c.id).options(cached())

    def write() -> None:
        for expected in ([50], []):  # a cached copy would return [50] twice
            with pg.Session() as s, pg.counter.expect(1):
                assert s.scalars(stmt).all() == expected
                s.commit()

    assert_fresh_after(pg, {orgs: [(1,), (2,)]}, write, {orgs: [(1,), (2,), (50,)]})
    assert cache.stats().hits == 1  # the one of assert_fresh_after


# declared write rules ----------------------------------------------------------------------------


def test_declared_rules_invalidate_extra_tables_and_tags(
    wdb: Database, redis_url: str, namespace: str
) -> None:
    qc = QueryCache.from_url(
        redis_url,
        namespace=namespace,
        invalidates={
            "w_emission": {"tables": ["w_rollup"], "tags": ["analytics"]},
            "w_rollup": {"tags": ["dashboard"]},
        },
    )
    try:
        qc.attach(wdb.Session)
        tagged = select(Course.id).where(Course.id == 1).options(cached(tags=["dashboard"]))
        rollup = select(Student.id).options(cached(tables=["w_rollup"]))
        for stmt in (tagged, rollup):
            with wdb.Session() as s:
                s.execute(stmt).all()
            with wdb.counter.expect(0), wdb.Session() as s:
                s.execute(stmt).all()
        with wdb.Session() as s:
            s.get_one(Emission, 1).kg = 6
            s.commit()
        for stmt in (tagged, rollup):  # through the rule, transitively
            with wdb.counter.expect(1), wdb.Session() as s:
                s.execute(stmt).all()
    finally:
        qc.clear()
        qc.close()


@pytest.mark.parametrize(
    "rules",
    [
        {"t": ["x"]},
        {"t": {"table": ["x"]}},
        {"t": {"tags": "analytics"}},
        {"t": {"tags": [""]}},
        {"": {"tags": ["a"]}},
    ],
)
def test_bad_rules_are_rejected(redis_url: str, rules: Any) -> None:
    with pytest.raises(ConfigurationError, match="invalidates"):
        QueryCache.from_url(redis_url, invalidates=rules)


def test_ddl_drop_table_invalidates(db: Database, cache: QueryCache) -> None:
    from sqlalchemy import Column, Integer, MetaData, Table

    tmp = Table("w_tmp_ddl", MetaData(), Column("id", Integer, primary_key=True))
    tmp.drop(db.engine, checkfirst=True)
    tmp.create(db.engine)
    with db.engine.begin() as conn:
        conn.execute(insert(tmp).values(id=1))
    cache.attach(db.engine)
    cache.attach(db.Session)
    stmt = select(tmp.c.id)

    def write() -> None:
        tmp.drop(db.engine)  # DROP TABLE: no DML ever ran against the old rows
        tmp.create(db.engine)

    try:
        assert_fresh_after(db, {stmt: [(1,)]}, write, {stmt: []})
    finally:
        tmp.drop(db.engine, checkfirst=True)
