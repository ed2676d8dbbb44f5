"""Entity cache and write-through: ``session.get(..., options=[cached()])`` and the entity API."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import pytest
import redis
from sqlalchemy import update
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

from .conftest import EVERY_DEPLOYMENT, Database
from .models import User
from .models_writes import Doc, Employee, Manager, Seat

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT

C = [cached()]


def test_get_is_served_without_sql_with_equal_typed_values(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.counter.expect(1), db.Session() as s:
        first = s.get_one(User, 2, options=C)
        fresh = (first.name, first.balance, first.created_at, first.org_id)
    with db.Session() as s:
        with db.counter.expect(0):
            again = s.get_one(User, 2, options=C)
            assert (again.name, again.balance, again.created_at, again.org_id) == fresh
            assert isinstance(again.balance, Decimal) and isinstance(again.created_at, datetime)
            assert again in s and again not in s.dirty
        with db.counter.expect(1):  # relationships load as for any fresh object (lazily)
            assert [o.id for o in again.orders] == [1, 7]
    assert cache.stats().hits == 1


@pytest.mark.parametrize("expire_on_commit", [True, False])
def test_commit_writes_through(db: Database, cache: QueryCache, expire_on_commit: bool) -> None:
    Session = sessionmaker(db.engine, expire_on_commit=expire_on_commit)
    cache.attach(Session)
    with Session() as s:
        s.get_one(User, 3, options=C)
    with Session() as s:
        s.get_one(User, 3).name = "written"
        s.add(User(id=20, name="new", org_id=1))
        s.commit()
    with db.counter.expect(0), Session() as s:
        assert s.get_one(User, 3, options=C).name == "written"
        assert s.get_one(User, 20, options=C).name == "new"


def test_deleted_entity_is_removed(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.Session() as s:  # write-through is for classes this process reads through the cache
        s.get(User, 1, options=C)
    with db.Session() as s:
        s.add(User(id=21, name="doomed", org_id=1))
        s.commit()
    with db.counter.expect(0), db.Session() as s:
        assert s.get(User, 21, options=C) is not None
    with db.Session() as s:
        s.delete(s.get_one(User, 21))
        s.commit()
    with db.Session() as s:
        assert s.get(User, 21, options=C) is None


def test_writes_outside_the_unit_of_work_invalidate_entities(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.get_one(User, 4, options=C)
    with db.Session() as s:  # bulk UPDATE: no object was flushed, the table token moves
        s.execute(update(User).where(User.id == 4).values(name="bulk"))
        s.commit()
    with db.counter.expect(1), db.Session() as s:
        assert s.get_one(User, 4, options=C).name == "bulk"


def test_pending_changes_are_never_overwritten(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.get_one(User, 5, options=C)
    with db.Session() as s:
        user = s.get_one(User, 5, options=C)
        user.name = "pending"
        assert s.get_one(User, 5, options=C) is user and user.name == "pending"
        assert user in s.dirty
        assert cache.cache_entity(user)  # stores the committed state only
        s.rollback()
    with db.counter.expect(0), db.Session() as s:
        assert s.get_one(User, 5, options=C).name == "user5"


def test_transaction_that_wrote_the_table_reads_the_database(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.get_one(User, 6, options=C)
    with db.Session() as s:
        s.execute(update(User).where(User.id == 6).values(name="uncommitted"))
        with db.counter.expect(1):
            assert s.get_one(User, 6, options=C).name == "uncommitted"
        s.rollback()
    with db.counter.expect(0), db.Session() as s:
        assert s.get_one(User, 6, options=C).name == "user6"


def test_composite_primary_key(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    with wdb.Session() as s:
        s.get_one(Seat, ("a", 1), options=C).holder = "y"
        s.commit()
    with wdb.counter.expect(0), wdb.Session() as s:
        assert s.get_one(Seat, ("a", 1), options=C).holder == "y"
        assert s.get_one(Seat, {"room": "a", "number": 1}, options=C).holder == "y"


def test_inheritance_get_base_returns_subclass(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    with wdb.Session() as s:  # any class of the hierarchy turns write-through on for all
        s.get_one(Employee, 1, options=C)
    with wdb.Session() as s:
        s.get_one(Manager, 2).budget = 500
        s.commit()
    with wdb.counter.expect(0), wdb.Session() as s:
        bob = s.get_one(Employee, 2, options=C)
        assert type(bob) is Manager and bob.budget == 500 and bob.name == "bob"
    with wdb.Session() as s:
        s.get_one(Employee, 1, options=C)
    with wdb.Session() as s:  # row 1 is a plain Employee: the database says None, as uncached
        assert s.get(Manager, 1, options=C) is None


def test_deferred_column_and_version_counter(wdb: Database, cache: QueryCache) -> None:
    cache.attach(wdb.Session)
    with wdb.Session() as s:
        s.get_one(Doc, 1, options=C).title = "t2"
        s.commit()
    with wdb.Session() as s:
        with wdb.counter.expect(0):
            doc = s.get_one(Doc, 1, options=C)
            assert (doc.title, doc.version) == ("t2", 2)
        with wdb.counter.expect(1):  # the deferred column was never cached: loaded on access
            assert doc.body == "long"
        doc.title = "t3"
        s.commit()  # UPDATE ... WHERE version = 2: the cached counter was right
    with wdb.counter.expect(0), wdb.Session() as s:
        assert s.get_one(Doc, 1, options=C).version == 3


def test_explicit_api(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    assert cache.get_entity(User, 1) is None
    with db.Session() as s:
        assert cache.cache_entity(s.get_one(User, 1))
    with db.counter.expect(0):
        user = cache.get_entity(User, 1)
        assert user is not None and user.name == "user1"
    with db.Session() as s, db.counter.expect(0):
        assert s.merge(user, load=False).name == "user1"
    assert cache.forget_entity(User, 1)
    assert cache.get_entity(User, 1) is None


def test_explicit_api_needs_a_bind_with_several_engines(
    db: Database, cache: QueryCache, sqlite_url: str
) -> None:
    from .conftest import _database

    other = _database("sqlite" if db.name == "postgresql" else "postgresql", sqlite_url)
    cache.attach(db.engine)
    cache.attach(other.engine)
    with pytest.raises(ValueError, match="bind="):
        cache.get_entity(User, 1)
    with db.Session() as s:
        assert cache.get_entity(User, 1, bind=s) is None


def test_write_through_can_be_turned_off(db: Database, redis_url: str, namespace: str) -> None:
    qc = QueryCache.from_url(redis_url, namespace=namespace, write_through=["app_order"])
    try:
        qc.attach(db.Session)
        with db.Session() as s:
            s.get_one(User, 2).name = "changed"
            s.commit()
        with db.counter.expect(1), db.Session() as s:
            assert s.get_one(User, 2, options=C).name == "changed"
    finally:
        qc.clear()
        qc.close()


def test_entity_keys_are_namespaced_and_expire(
    db: Database, cache: QueryCache, redis_url: str
) -> None:
    cache.attach(db.Session)
    with db.Session() as s:
        s.get_one(User, 1, options=C)
    client = redis.Redis.from_url(redis_url)
    (key,) = list(client.scan_iter(match=cache.config.namespace + ":e:*"))
    assert 0 < client.pttl(key) <= 300_000


def test_redis_down_never_breaks_get_or_commit(db: Database) -> None:
    from ._services import free_port

    qc = QueryCache.from_url(f"redis://127.0.0.1:{free_port()}/0", namespace="down")
    try:
        qc.attach(db.Session)
        for _ in range(2):
            with db.counter.expect(1), db.Session() as s:
                assert s.get_one(User, 1, options=C).name == "user1"
        with db.Session() as s:
            s.get_one(User, 1).name = "still works"
            s.commit()
        with db.Session() as s:
            assert s.get_one(User, 1, options=C).name == "still works"
        assert qc.get_entity(User, 1) is None
        assert qc.stats().errors >= 1
    finally:
        qc.close()


def test_a_late_publish_of_an_older_commit_never_wins(
    pg: Database, cache: QueryCache, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two commits of one row publish in the opposite order: the newer values must stay."""
    import threading

    cache.attach(pg.Session)
    with pg.Session() as s:  # the entity cache is in use: both commits write through
        s.get(User, 1, options=[cached()])
    commit_path = cache._wiring.commit_path
    real_publish = commit_path.after_session_commit
    older_may_publish = threading.Event()
    older: list[object] = []

    def publish(session: object) -> None:
        if session in older:  # hold the first commit's publish until the second one published
            assert older_may_publish.wait(10)
        real_publish(session)

    monkeypatch.setattr(commit_path, "after_session_commit", publish)

    def first_writer() -> None:
        with pg.Session() as s:
            older.append(s)
            user = s.get(User, 1)
            assert user is not None
            user.name = "older"
            s.commit()

    thread = threading.Thread(target=first_writer)
    thread.start()
    for _ in range(200):  # until the first commit is in the database
        with pg.Session() as s:
            if s.get(User, 1).name == "older":  # type: ignore[union-attr]
                break
        threading.Event().wait(0.01)
    with pg.Session() as s:
        user = s.get(User, 1)
        assert user is not None
        user.name = "newer"
        s.commit()
    older_may_publish.set()
    thread.join()
    with pg.Session() as s:
        assert s.get(User, 1, options=[cached()]).name == "newer"  # type: ignore[union-attr]
    with pg.Session() as s, pg.counter.expect(0):
        assert s.get(User, 1, options=[cached()]).name == "newer"  # type: ignore[union-attr]
