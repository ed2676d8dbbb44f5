"""The core contract: hits without SQL, keys, regions, uncacheable statements, legacy Query."""

from __future__ import annotations

import warnings
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import String, TypeDecorator, func, select
from sqlalchemy.orm import joinedload, selectinload

from sqla_redis_cache import ConfigurationError, QueryCache, cached

from .conftest import EVERY_DEPLOYMENT, Database, RedisTarget
from .models import Order, Org, User

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT


def names(db: Database, stmt: Any) -> list[str]:
    with db.Session() as s:
        return [u.name for u in s.scalars(stmt)]


def test_second_execution_sends_no_sql(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.org_id == 1).order_by(User.id).options(cached())
    with db.counter.expect(1):
        assert names(db, stmt) == ["user1", "user2", "user3"]
    with db.counter.expect(0):
        assert names(db, stmt) == ["user1", "user2", "user3"]
    st = cache.stats()
    assert (st.hits, st.misses) == (1, 1)
    assert st.hit_rate == 0.5


def test_hit_returns_equal_typed_values(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.id, User.balance, User.created_at).order_by(User.id).options(cached())
    with db.Session() as s:
        fresh = s.execute(stmt).all()
    with db.counter.expect(0), db.Session() as s:
        again = s.execute(stmt).all()
    assert again == fresh
    assert isinstance(again[0].balance, Decimal)
    assert [type(v) for v in again[0]] == [type(v) for v in fresh[0]]


def test_different_parameters_never_collide(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)

    def by_org(org_id: int) -> list[str]:
        return names(
            db, select(User).where(User.org_id == org_id).order_by(User.id).options(cached())
        )

    assert by_org(1) == ["user1", "user2", "user3"]
    assert by_org(2) == ["user4", "user5", "user6"]
    with db.counter.expect(0):
        assert by_org(1) == ["user1", "user2", "user3"]
        assert by_org(2) == ["user4", "user5", "user6"]
    # same values, different types, different SQL shape: all distinct entries
    with db.counter.expect(2):
        names(db, select(User).where(User.name == "1").options(cached()))
        names(db, select(User).where(User.name.in_(["1", "2"])).options(cached()))


def test_other_session_and_legacy_query_share_entries(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.counter.expect(1), db.Session() as s:
        first = [
            u.id for u in s.query(User).filter_by(org_id=2).order_by(User.id).options(cached())
        ]
    with db.counter.expect(0), db.Session() as s:
        again = [
            u.id for u in s.query(User).filter_by(org_id=2).order_by(User.id).options(cached())
        ]
    assert first == again == [4, 5, 6]


def test_entries_shared_between_cache_objects_with_same_namespace(
    db: Database, cache: QueryCache, redis_target: RedisTarget, namespace: str
) -> None:
    stmt = select(User).where(User.id == 2).options(cached())
    cache.attach(db.Session)
    names(db, stmt)
    other = redis_target.cache(namespace)
    Session2 = type(db.Session)(db.engine)
    other.attach(Session2)
    try:
        with db.counter.expect(0), Session2() as s:
            assert s.scalars(stmt).one().name == "user2"
    finally:
        other.close()


def test_namespaces_are_isolated(
    db: Database, cache: QueryCache, redis_target: RedisTarget
) -> None:
    stmt = select(User).where(User.id == 3).options(cached())
    cache.attach(db.Session)
    names(db, stmt)
    other = redis_target.cache(cache.config.namespace + "x")
    Session2 = type(db.Session)(db.engine)
    other.attach(Session2)
    try:
        with db.counter.expect(1), Session2() as s:
            s.scalars(stmt).one()
        other.clear()
        with db.counter.expect(0):
            names(db, stmt)  # our entry survived the other namespace's clear()
    finally:
        other.close()


def test_every_key_is_namespaced(
    db: Database, cache: QueryCache, redis_target: RedisTarget
) -> None:
    cache.attach(db.Session)
    names(db, select(User).options(cached(tags=["t1"])))
    cache.set("plain", 1, tags=["t2"])
    client = redis_target.client()
    keys = [k.decode() for k in client.scan_iter(match=cache.config.namespace + "*")]
    assert any(":q:" in k for k in keys) and any(":k:plain" in k for k in keys)
    assert cache.clear() >= len(keys)
    assert list(client.scan_iter(match=cache.config.namespace + ":*")) == []


def test_schema_translate_map_changes_the_key(pg: Database, cache: QueryCache) -> None:
    with pg.engine.begin() as conn:
        conn.exec_driver_sql("CREATE SCHEMA IF NOT EXISTS other_schema")
        conn.exec_driver_sql("DROP TABLE IF EXISTS other_schema.org")
        conn.exec_driver_sql("CREATE TABLE other_schema.org (id int primary key, name varchar(50))")
        conn.exec_driver_sql("INSERT INTO other_schema.org VALUES (1, 'elsewhere')")
    cache.attach(pg.Session)
    stmt = select(Org.name).where(Org.id == 1).options(cached())
    with pg.Session() as s:
        assert s.scalar(stmt) == "acme"
    translated = pg.Session(
        bind=pg.engine.execution_options(schema_translate_map={None: "other_schema"})
    )
    with translated as s:
        assert s.scalar(stmt) == "elsewhere"


def test_dialects_and_databases_do_not_share_entries(
    pg: Database, cache: QueryCache, sqlite_url: str
) -> None:
    from .conftest import _database

    lite = _database("sqlite", sqlite_url)
    with lite.engine.begin() as conn:
        conn.execute(User.__table__.update().where(User.id == 1).values(name="lite1"))
    cache.attach(pg.Session)
    cache.attach(lite.Session)
    stmt = select(User.name).where(User.id == 1).options(cached())
    assert names(pg, select(User).where(User.id == 1).options(cached())) == ["user1"]
    with lite.Session() as s:
        assert s.scalar(stmt) == "lite1"
    with pg.Session() as s:
        assert s.scalar(stmt) == "user1"


class Opaque(TypeDecorator[str]):
    impl = String
    cache_ok = None  # SQLAlchemy cannot key statements using it


def test_statement_sqlalchemy_cannot_key_runs_uncached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    col = func.coalesce(User.name, "x", type_=Opaque())
    stmt = select(User.id).where(col == "user1").options(cached())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert stmt._generate_cache_key() is None  # the premise of this test
        for _ in range(2):
            with db.counter.expect(1), db.Session() as s:
                assert s.scalars(stmt).all() == [1]
    assert cache.stats().uncacheable == 2 and cache.stats().hits == 0


def test_text_fragments_run_uncached_unless_tables_declared(
    db: Database, cache: QueryCache
) -> None:
    from sqlalchemy import text

    cache.attach(db.Session)
    stmt = select(User.id).where(text("app_user.id < 3")).order_by(User.id)
    for _ in range(2):
        with db.counter.expect(1), db.Session() as s:
            assert s.scalars(stmt.options(cached())).all() == [1, 2]
    declared = stmt.options(cached(tables=["app_user"]))
    with db.Session() as s:
        s.scalars(declared).all()
    with db.counter.expect(0), db.Session() as s:
        assert s.scalars(declared).all() == [1, 2]


def test_locking_reads_are_never_cached(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session)
    stmt = select(User).where(User.id == 1).with_for_update().options(cached())
    for _ in range(2):
        with pg.counter.expect(1), pg.Session() as s:
            s.scalars(stmt).one()


def test_regions_set_ttl(db: Database, cache: QueryCache, redis_target: RedisTarget) -> None:
    cache.attach(db.Session)
    client = redis_target.client()

    def entry_ttl(stmt: Any) -> int:
        before = set(client.scan_iter(match=cache.config.namespace + ":q:*"))
        names(db, stmt)
        (key,) = set(client.scan_iter(match=cache.config.namespace + ":q:*")) - before
        return int(client.pttl(key))

    assert 299_000 < entry_ttl(select(User).where(User.id == 1).options(cached())) <= 300_000
    assert (
        899_000
        < entry_ttl(select(User).where(User.id == 2).options(cached(region="db_aggregate")))
        <= 900_000
    )
    assert 59_000 < entry_ttl(select(User).where(User.id == 3).options(cached(ttl=60))) <= 60_000
    with pytest.raises(ConfigurationError, match="unknown cache region"):
        names(db, select(User).options(cached(region="nope")))


def test_extra_regions_are_configurable(redis_target: RedisTarget, namespace: str) -> None:
    qc = redis_target.cache(namespace, regions={"reports": 42, "db_query": 10})
    try:
        assert qc.config.region("reports").ttl == 42
        assert qc.config.region(None).ttl == 10
        assert qc.config.region("long").ttl == 86400
    finally:
        qc.close()


def test_eager_loads_under_a_cached_statement(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)

    def load(opt: Any) -> list[tuple[str, list[int]]]:
        with db.Session() as s:
            result = s.scalars(select(Org).order_by(Org.id).options(opt, cached()))
            orgs = result.unique().all()
            return [(o.name, [u.id for u in o.users]) for o in orgs]

    expected = [("acme", [1, 2, 3]), ("globex", [4, 5, 6])]
    for opt in (selectinload(Org.users), joinedload(Org.users)):
        assert load(opt) == expected
        with db.counter.expect(0):
            assert load(opt) == expected


def test_joined_collection_still_requires_unique(db: Database, cache: QueryCache) -> None:
    from sqlalchemy.exc import InvalidRequestError

    cache.attach(db.Session)
    stmt = select(Org).options(joinedload(Org.users), cached())
    with db.Session() as s:
        s.scalars(stmt).unique().all()
    with db.counter.expect(0), db.Session() as s, pytest.raises(InvalidRequestError):
        s.scalars(stmt).all()


def test_aggregates_and_core_rows(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = (
        select(Order.user_id, func.count(), func.sum(Order.total))
        .group_by(Order.user_id)
        .order_by(Order.user_id)
        .options(cached(region="db_aggregate"))
    )
    with db.Session() as s:
        fresh = s.execute(stmt).all()
    with db.counter.expect(0), db.Session() as s:
        assert s.execute(stmt).all() == fresh
    assert len(fresh) == 6


def test_detach_stops_caching(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 1).options(cached())
    names(db, stmt)
    cache.detach(db.Session)
    with db.counter.expect(1):
        names(db, stmt)


def test_attach_rejects_unknown_targets(cache: QueryCache) -> None:
    with pytest.raises(TypeError, match="attach"):
        cache.attach(object())


def test_session_instance_and_subclass_targets(db: Database, cache: QueryCache) -> None:
    from sqlalchemy.orm import Session

    class MySession(Session):
        pass

    cache.attach(MySession)
    stmt = select(User).where(User.id == 4).options(cached())
    with MySession(db.engine) as s:
        s.scalars(stmt).one()
    with db.counter.expect(0), MySession(db.engine) as s:
        s.scalars(stmt).one()
    cache.detach(MySession)
    single = Session(db.engine)
    cache.attach(single)
    with db.counter.expect(0):
        single.scalars(stmt).one()
    single.close()


def test_engine_option_copies_share_the_base_engines_wiring(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 5).options(cached())
    names(db, stmt)
    option_copy = db.engine.execution_options(logging_token="x")
    with db.Session(bind=option_copy) as s, db.counter.expect(0):
        assert s.scalars(stmt).one().name == "user5"
