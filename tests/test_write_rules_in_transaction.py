"""Declared ``invalidates`` rules act inside the writing transaction, not only at its commit.

A trigger on ``rule_src`` writes ``rule_audit``: the database does it, no analysis can see it, so
the application declares ``{"rule_src": {"tables": ["rule_audit"]}}``.  A transaction that wrote
``rule_src`` has uncommitted rows in ``rule_audit`` too: its reads of ``rule_audit`` must bypass
the cache (it sees its own rows, and nothing uncommitted is ever stored), exactly as for the
tables it wrote itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, func, insert, select
from sqlalchemy.orm import registry

from sqla_redis_cache import QueryCache, cached

from .conftest import Database, RedisTarget

META = MetaData()
SRC = Table("rule_src", META, Column("id", Integer, primary_key=True), Column("name", String(20)))
AUDIT = Table(
    "rule_audit", META, Column("id", Integer, primary_key=True), Column("src_id", Integer)
)


class Src:
    def __init__(self, id: int, name: str) -> None:
        self.id = id
        self.name = name


registry().map_imperatively(Src, SRC)

COUNT = select(func.count()).select_from(AUDIT)
IDS = select(AUDIT.c.src_id).order_by(AUDIT.c.src_id)
ADD = insert(SRC).values(id=7, name="x")

TRIGGERS = {
    "postgresql": [
        """CREATE FUNCTION rule_src_audit() RETURNS trigger LANGUAGE plpgsql AS $$
           BEGIN INSERT INTO rule_audit (src_id) VALUES (NEW.id); RETURN NULL; END $$""",
        """CREATE TRIGGER rule_src_audit AFTER INSERT ON rule_src
           FOR EACH ROW EXECUTE FUNCTION rule_src_audit()""",
    ],
    "sqlite": [
        """CREATE TRIGGER rule_src_audit AFTER INSERT ON rule_src
           BEGIN INSERT INTO rule_audit (src_id) VALUES (NEW.id); END""",
    ],
}


@pytest.fixture
def tdb(db: Database) -> Iterator[Database]:
    def drop(conn: Any) -> None:
        META.drop_all(conn)
        if db.name == "postgresql":
            conn.exec_driver_sql("DROP FUNCTION IF EXISTS rule_src_audit()")

    with db.engine.begin() as conn:
        drop(conn)
        META.create_all(conn)
        for sql in TRIGGERS[db.name]:
            conn.exec_driver_sql(sql)
    db.counter.reset()
    yield db
    with db.engine.begin() as conn:
        drop(conn)


def rule_cache(target: RedisTarget, namespace: str, rule: dict[str, list[str]]) -> QueryCache:
    # timeouts no loaded machine reaches: a Redis timeout would rightly bypass the cache
    return target.cache(
        namespace, invalidates={"rule_src": rule}, socket_timeout=2, connect_timeout=2
    )


def read(db: Database, stmt: Any, **options: Any) -> list[Any]:
    with db.Session() as s:
        return list(s.scalars(stmt.options(cached(**options))))


@pytest.mark.parametrize("via", ["session", "flush", "core"])
def test_rule_targets_bypass_inside_the_writing_transaction(
    tdb: Database, redis_target: RedisTarget, namespace: str, via: str
) -> None:
    """Written through a Session (Core DML, or an ORM flush), or on a Core connection that a
    Session then reads through (``bind=conn``)."""
    db = tdb
    cache = rule_cache(redis_target, namespace, {"tables": ["rule_audit"]})
    cache.attach(db.engine)
    cache.attach(db.Session)
    try:
        assert read(db, COUNT) == [0]  # cached
        with db.counter.expect(0):
            assert read(db, COUNT) == [0]
        with (
            db.engine.connect() as conn,
            db.Session(bind=conn) if via == "core" else db.Session() as s,
        ):
            if via == "flush":
                s.add(Src(7, "x"))
                s.flush()  # SQLAlchemy 2.0 does not autoflush before a Core select
            else:
                (conn if via == "core" else s).execute(ADD)
            # the trigger wrote rule_audit, uncommitted: the transaction sees its own row
            assert list(s.scalars(COUNT.options(cached()))) == [1]
            assert list(s.scalars(IDS.options(cached()))) == [7]  # a miss: never stored
            s.rollback()
            conn.rollback()
        # nothing the rolled-back transaction read was stored: every session sees the database
        assert read(db, IDS) == []
        assert read(db, COUNT) == [0]
        with db.counter.expect(0):  # and the cache works as before
            assert read(db, IDS) == [] and read(db, COUNT) == [0]
    finally:
        cache.clear()
        cache.close()


def test_rule_tags_bypass_inside_the_writing_transaction(
    tdb: Database, redis_target: RedisTarget, namespace: str
) -> None:
    """A rule that names only a tag: reads carrying that tag bypass once the source is written."""
    db = tdb
    cache = rule_cache(redis_target, namespace, {"tags": ["audit"]})
    cache.attach(db.Session)
    try:
        assert read(db, COUNT, tags=["audit"]) == [0]
        with db.Session() as s:
            s.execute(ADD)
            with db.counter.expect(1):
                assert list(s.scalars(COUNT.options(cached(tags=["audit"])))) == [1]
            assert list(s.scalars(IDS.options(cached(tags=["audit"])))) == [7]
            s.rollback()
        assert read(db, IDS, tags=["audit"]) == []
        assert read(db, COUNT, tags=["audit"]) == [0]
    finally:
        cache.clear()
        cache.close()


def test_rule_targets_after_an_autocommit_write(
    tdb: Database, redis_target: RedisTarget, namespace: str
) -> None:
    db = tdb
    cache = rule_cache(redis_target, namespace, {"tables": ["rule_audit"]})
    cache.attach(db.engine)
    cache.attach(db.Session)
    try:
        assert read(db, COUNT) == [0]
        with db.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            conn.execute(ADD)  # committed with its trigger's row at once
            assert read(db, COUNT) == [1]
            assert list(conn.scalars(COUNT.options(cached()))) == [1]
    finally:
        cache.clear()
        cache.close()
