"""``cache.explain(statement, session)``: the read path's decisions, without the database.

Also the counting of uncacheable executions by reason, consistent whether the reason is found
when the key is built or when the entry is stored, and logged once per statement.
"""

from __future__ import annotations

import logging
import warnings

import pytest
from sqlalchemy import String, func, select, text, update
from sqlalchemy.types import TypeDecorator

from sqla_redis_cache import QueryCache, cached, uncached

from .conftest import Database, RedisTarget
from .models import Org, User

USERS = select(User).where(User.org_id == 1).order_by(User.id)


class Opaque(TypeDecorator[str]):
    impl = String
    cache_ok = None  # SQLAlchemy cannot key statements using it


class Unkeyable(str):
    """A parameter value the driver takes but the cache cannot key (a subclass may lie in its
    repr)."""

    __slots__ = ()


def test_a_cacheable_statement_its_key_dependencies_and_entry(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    stmt = USERS.options(cached(tags=["org:1"], region="db_aggregate"))
    with db.counter.expect(0), db.Session() as s:  # explain never queries the database
        report = cache.explain(stmt, s)
    assert report.cacheable and report.reason is None
    assert report.decided_by == "cached() option"
    assert report.key and report.key.startswith(f"{cache.config.namespace}:q:")
    assert (report.region, report.ttl) == ("db_aggregate", 900)
    assert report.tables == ("app_user",) and report.tags == ("org:1",)
    kinds = [(d.kind, d.name) for d in report.dependencies]
    assert kinds == [
        ("namespace", cache.config.namespace),
        ("unknown rows", "app_user"),  # fine-grained: the rows of org 1, not the whole table
        ("tag", "org:1"),
        ("value", "app_user.org_id = i:1"),
    ]
    assert report.values == ("app_user.org_id = i:1",)
    assert "values    : app_user.org_id = i:1" in str(report)
    assert not report.stored and not report.fresh
    assert "app_user" in (report.sql or "")
    with db.Session() as s:
        s.scalars(stmt).all()
    with db.Session() as s:
        again = cache.explain(stmt, s)
    assert again.key == report.key
    assert again.stored and again.fresh and (again.entry_bytes or 0) > 0
    assert all(d.token == "present" for d in again.dependencies)
    with db.Session() as s:  # a commit that writes the table makes the entry stale
        s.execute(update(User).where(User.id == 6).values(name="x"))
        s.commit()
    with db.Session() as s:
        stale = cache.explain(stmt, s)
    assert stale.stored and not stale.fresh
    assert cache.stats().lookups == 1  # explaining counts nothing
    text_report = str(stale)
    assert "cacheable : yes" in text_report and "stored, stale" in text_report


def test_reasons_of_statements_that_are_not_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, tables={"org": None})
    col = func.coalesce(User.name, "x", type_=Opaque())
    cases = {
        "locking_read": USERS.with_for_update().options(cached()),
        "text_fragment": USERS.where(text("app_user.id < 3")).options(cached()),
        "unkeyable_parameter": select(User).where(User.name == Unkeyable("u")).options(cached()),
        "unkeyable_statement": select(User.id).where(col == "user1").options(cached()),
        "not_opted_in": USERS,
        "uncached_option": USERS.options(uncached()),
        "policy": select(Org),
        "not_a_select": update(User).values(name="y"),
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for code, stmt in cases.items():
            with db.counter.expect(0), db.Session() as s:
                report = cache.explain(stmt, s)
            assert (report.cacheable, report.reason_code) == (False, code), report
            assert report.reason and report.reason != code  # words, not only the code
    with db.Session() as s:
        assert "never cached" in (cache.explain(select(Org), s).decided_by or "")
    assert cache.stats().uncacheable == 0


def test_a_transaction_that_wrote_the_table_bypasses(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached())
    with db.Session() as s:
        assert cache.explain(USERS, s).cacheable
        s.get_one(User, 1).name = "pending"
        report = cache.explain(USERS, s)  # autoflushed, as the real execution would
        assert (report.cacheable, report.reason_code) == (False, "own_writes")
        assert report.tables == ("app_user",)
        assert cache.explain(select(Org), s).cacheable  # another table: still cached
        s.rollback()
    assert cache.stats().bypasses == 0


def test_sessions_the_cache_does_not_see(db: Database, cache: QueryCache) -> None:
    with db.counter.expect(0), db.Session() as s:
        report = cache.explain(USERS.options(cached()), s)
    assert report.reason_code == "not_attached"
    cache.attach(db.engine, default=cached())  # an engine attached by itself sees them all
    with db.counter.expect(0), db.Session() as s:
        report = cache.explain(USERS, s)
    assert report.cacheable and report.decided_by == "policy of the engine (the default)"
    with db.Session() as s:
        assert cache.explain(USERS.options(uncached()), s).reason_code == "uncached_option"


def test_redis_down_is_reported(db: Database, redis_target: RedisTarget, namespace: str) -> None:
    dead = QueryCache.from_url("redis://127.0.0.1:1/0", namespace=namespace)
    try:
        dead.attach(db.Session)
        with db.Session() as s:
            report = dead.explain(USERS.options(cached()), s)
        assert report.cacheable and report.key and report.redis_unavailable
        assert {d.token for d in report.dependencies} == {"unknown"}
    finally:
        dead.close()


# counting by reason ---------------------------------------------------------------------------


def test_key_time_and_storage_time_refusals_count_alike(
    db: Database, redis_target: RedisTarget, namespace: str
) -> None:
    cache = redis_target.cache(namespace, max_entry_bytes=64)
    try:
        cache.attach(db.Session)
        with db.Session() as s:  # key time: an unkeyable parameter
            s.scalars(select(User).where(User.name == Unkeyable("u")).options(cached())).all()
        with db.Session() as s:  # storage time: the entry is too large to store
            s.scalars(USERS.options(cached())).all()
        stats = cache.stats()
        assert stats.uncacheable_by_reason == {"unkeyable_parameter": 1, "entry_too_large": 1}
        assert (stats.uncacheable, stats.misses, stats.hits) == (2, 0, 0)
        assert "app_user" not in stats.by_table  # neither a miss nor a hit of the table
        assert cache.flush_stats()
        shared = cache.shared_stats()
        assert shared is not None
        assert shared.uncacheable_by_reason == {"unkeyable_parameter": 1, "entry_too_large": 1}
        assert shared.as_dict()["uncacheable_by_reason"]["entry_too_large"] == 1
    finally:
        cache.clear()
        cache.close()


def test_each_statement_is_logged_once_with_its_reason(
    db: Database, cache: QueryCache, caplog: pytest.LogCaptureFixture
) -> None:
    cache.attach(db.Session, default=cached())
    locking = USERS.with_for_update()
    with caplog.at_level(logging.DEBUG, logger="sqla_redis_cache"):
        for _ in range(3):
            with db.Session() as s:
                s.scalars(locking).all()
                s.scalars(USERS.where(text("app_user.id < 3"))).all()
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("not cached")]
    assert len(lines) == 2, lines
    assert "FOR UPDATE" in lines[0] and "locking read" in lines[0]
    assert "text() fragment" in lines[1]
    assert cache.stats().uncacheable_by_reason == {"locking_read": 3, "text_fragment": 3}
