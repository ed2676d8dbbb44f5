"""Commit-time invalidation, read-your-writes, and hits that never touch session state."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis
from sqlalchemy import delete, exists, func, insert, select, update
from sqlalchemy.orm import Session

from sqla_redis_cache import QueryCache, cached

from .conftest import EVERY_DEPLOYMENT, Database
from .models import Order, Org, User

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT

# Statements reading app_user in different positions: FROM, JOIN, WHERE subquery, CTE.
READERS: dict[str, Callable[[], Any]] = {
    "from": lambda: select(User.name).where(User.id == 1),
    "join": lambda: select(Org.name, User.name).join(User.org).where(User.id == 1),
    "subquery": lambda: select(Org.name).where(
        exists().where(User.org_id == Org.id, User.name == "renamed")
    ),
    "cte": lambda: select(select(User.name).where(User.id == 1).cte("u").c.name),
}


def read(db: Database, stmt: Any) -> list[Any]:
    with db.Session() as s:
        return [tuple(r) for r in s.execute(stmt.options(cached()))]


@pytest.mark.parametrize("position", list(READERS))
def test_commit_invalidates_every_reader_of_the_table(
    db: Database, cache: QueryCache, position: str
) -> None:
    cache.attach(db.Session)
    stmt = READERS[position]()
    before = read(db, stmt)
    with db.counter.expect(0):
        assert read(db, stmt) == before
    with db.Session() as s:
        s.get(User, 1).name = "renamed"  # type: ignore[union-attr]
        s.commit()
    with db.counter.expect(1):
        after = read(db, stmt)
    assert after != before
    with db.counter.expect(0):
        assert read(db, stmt) == after


WRITES: dict[str, Callable[[Session], None]] = {
    "orm_flush_update": lambda s: setattr(s.get(User, 1), "balance", Decimal(999)),
    "orm_flush_insert": lambda s: s.add(User(id=50, name="new", org_id=1)),
    "orm_flush_delete": lambda s: s.delete(s.get(Order, 1)),
    "orm_bulk_update": lambda s: s.execute(update(User).where(User.id == 1).values(balance=7)),
    "orm_bulk_delete": lambda s: s.execute(delete(Order).where(Order.id == 2)),
    "orm_bulk_insert": lambda s: s.execute(insert(User), [{"id": 60, "name": "b", "org_id": 2}]),
    "core_dml": lambda s: s.execute(
        User.__table__.update().where(User.__table__.c.id == 2).values(name="core")
    ),
}


@pytest.mark.parametrize("write", list(WRITES))
def test_each_write_path_through_the_session_invalidates(
    db: Database, cache: QueryCache, write: str
) -> None:
    cache.attach(db.Session)
    users = select(User.id, User.name, User.balance).order_by(User.id)
    orders = select(func.count(Order.id))
    before = (read(db, users), read(db, orders))
    with db.Session() as s:
        WRITES[write](s)
        s.commit()
    with db.Session() as s:  # the truth, uncached
        truth = ([tuple(r) for r in s.execute(users)], [tuple(r) for r in s.execute(orders)])
    assert truth != before
    assert (read(db, users), read(db, orders)) == truth


def test_rollback_invalidates_nothing(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 1)
    read(db, stmt)
    with db.Session() as s:
        s.execute(update(User).where(User.id == 1).values(name="never"))
        s.flush()
        s.rollback()
    with db.counter.expect(0):
        assert read(db, stmt) == [("user1",)]
    assert cache.stats().invalidations == 0


def test_unrelated_tables_stay_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    orgs = select(Org.name).order_by(Org.id)
    read(db, orgs)
    with db.Session.begin() as s:
        s.execute(update(User).where(User.id == 1).values(name="x"))
    with db.counter.expect(0):
        read(db, orgs)


def test_manual_table_and_tag_invalidation(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    tagged = select(User.name).where(User.org_id == 1).options(cached(tags=["org:1"]))
    plain = select(Org.name)
    with db.Session() as s:
        s.execute(tagged).all()
        s.execute(plain.options(cached())).all()
    cache.invalidate_tags("org:1")
    with db.counter.expect(1), db.Session() as s:
        s.execute(tagged).all()
        s.execute(plain.options(cached())).all()
    cache.invalidate_tables("org")
    with db.counter.expect(1), db.Session() as s:
        s.execute(tagged).all()
        s.execute(plain.options(cached())).all()


def test_own_pending_and_flushed_writes_bypass_the_cache(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.name).where(User.org_id == 1).order_by(User.id)
    assert read(db, stmt) == [("user1",), ("user2",), ("user3",)]
    with db.Session() as s:
        s.add(User(id=70, name="pending", org_id=1))  # not flushed: autoflush must see it
        seen = [r.name for r in s.execute(stmt.options(cached()))]
        assert seen == ["user1", "user2", "user3", "pending"]
        # other sessions never see it, neither from the database nor from the cache
        assert read(db, stmt) == [("user1",), ("user2",), ("user3",)]
        s.rollback()
    with db.counter.expect(0):
        assert read(db, stmt) == [("user1",), ("user2",), ("user3",)]
    assert cache.stats().bypasses >= 1


def test_nothing_uncommitted_is_stored(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 1)
    with db.Session() as s:
        s.execute(update(User).where(User.id == 1).values(name="uncommitted"))
        assert [r.name for r in s.execute(stmt.options(cached()))] == ["uncommitted"]
        s.rollback()
    assert read(db, stmt) == [("user1",)]


def test_a_hit_never_changes_objects_in_the_session(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 1)
    with db.Session() as s:
        s.scalars(stmt.options(cached())).one()  # fill
    with db.Session() as s:
        user = s.get(User, 1)
        assert user is not None
        user.name = "edited"
        with s.no_autoflush, db.counter.expect(0):
            again = s.scalars(stmt.options(cached())).one()
        assert again is user and user.name == "edited" and user in s.dirty
        s.commit()
    with db.Session() as s:
        assert s.scalars(stmt.options(cached())).one().name == "edited"


def test_commit_in_another_process_is_seen(db: Database, cache: QueryCache, redis_url: str) -> None:
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 3)
    assert read(db, stmt) == [("user3",)]
    script = textwrap.dedent(
        f"""
        import json, sys
        from sqlalchemy import create_engine, select, update
        from sqlalchemy.orm import sessionmaker
        from sqla_redis_cache import QueryCache, cached
        sys.path.insert(0, {os.getcwd()!r})
        from tests.models import User
        engine = create_engine({db.url!r})
        Session = sessionmaker(engine)
        cache = QueryCache.from_url({redis_url!r}, namespace={cache.config.namespace!r})
        cache.attach(Session)
        with Session() as s:  # a hit from the parent's fill
            hit = s.scalars(select(User.name).where(User.id == 3).options(cached())).one()
        with Session.begin() as s:
            s.execute(update(User).where(User.id == 3).values(name="from-child"))
        print(json.dumps({{"hit": hit, "stats": [cache.stats().hits, cache.stats().misses]}}))
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    child = json.loads(out.stdout.strip().splitlines()[-1])
    assert child == {"hit": "user3", "stats": [1, 0]}
    with db.counter.expect(1):
        assert read(db, stmt) == [("from-child",)]


def test_evicted_token_means_miss_not_stale(
    db: Database, cache: QueryCache, redis_url: str
) -> None:
    cache.attach(db.Session)
    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace
    table_level = select(User.name).where(User.id < 2)
    read(db, table_level)
    fine = select(User.name).where(User.id == 1)  # fine-grained: unknown rows + value tokens
    read(db, fine)
    (value_key,) = [k.decode() for k in client.keys(f"{ns}:v:*")]
    for stmt, keys in (
        (table_level, (f"{ns}:t:app_user", f"{ns}:all")),
        (fine, (f"{ns}:u:app_user", value_key, f"{ns}:all")),
    ):
        for key in keys:
            client.delete(key)
            with db.counter.expect(1):
                assert read(db, stmt) == [("user1",)]
            with db.counter.expect(0):
                read(db, stmt)


def test_clear_invalidates_at_once(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 1)
    read(db, stmt)
    cache.clear()
    with db.counter.expect(1):
        read(db, stmt)


def test_engine_met_at_run_time_is_tracked_from_its_first_transaction(
    db: Database, cache: QueryCache
) -> None:
    from sqlalchemy import create_engine
    from sqlalchemy.orm import sessionmaker

    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 6)
    assert read(db, stmt) == [("user6",)]
    other_engine = create_engine(db.url)
    unbound = sessionmaker()
    cache.attach(unbound)  # no engine known yet
    try:
        with unbound(bind=other_engine) as s:  # first transaction ever on this engine
            s.execute(update(User).where(User.id == 6).values(name="late-bound"))
            s.commit()
        assert read(db, stmt) == [("late-bound",)]
    finally:
        other_engine.dispose()


def test_two_caches_on_one_engine_both_see_every_commit(
    db: Database, cache: QueryCache, redis_url: str, namespace: str
) -> None:
    from sqlalchemy.orm import sessionmaker

    other = QueryCache.from_url(redis_url, namespace=namespace + "b")
    other_sessions = sessionmaker(db.engine)
    cache.attach(db.Session)
    other.attach(other_sessions)
    stmt = select(User.name).where(User.id == 4).options(cached())
    try:
        for factory in (db.Session, other_sessions):
            with factory() as s:
                assert s.execute(stmt).scalar_one() == "user4"
        with db.Session.begin() as s:  # a commit driven by the first cache's session
            s.execute(update(User).where(User.id == 4).values(name="seen-by-both"))
        for factory in (db.Session, other_sessions):
            with factory() as s:
                assert s.execute(stmt).scalar_one() == "seen-by-both"
    finally:
        other.clear()
        other.close()


def test_core_commit_on_a_connection_left_open_is_never_served_stale(
    db: Database, cache: QueryCache
) -> None:
    """A reader that refills while a Core commit is in flight stores nothing; after the commit
    the still-open connection's write is visible at once (not at its next use or checkin)."""
    import threading

    from sqlalchemy import event

    cache.attach(db.engine)
    cache.attach(db.Session)
    stmt = select(User.name).where(User.id == 5)
    assert read(db, stmt) == [("user5",)]
    seen_during_commit: list[list[Any]] = []

    def reader_during_commit(conn: Any) -> None:  # runs after the cache's own commit hooks
        thread = threading.Thread(target=lambda: seen_during_commit.append(read(db, stmt)))
        thread.start()
        thread.join()

    event.listen(db.engine, "commit", reader_during_commit)
    conn = db.engine.connect()
    try:
        conn.execute(update(User).where(User.id == 5).values(name="core-committed"))
        conn.commit()
        event.remove(db.engine, "commit", reader_during_commit)
        assert seen_during_commit == [[("user5",)]]  # the commit had not happened yet
        assert read(db, stmt) == [("core-committed",)]  # connection still open and idle
    finally:
        if event.contains(db.engine, "commit", reader_during_commit):
            event.remove(db.engine, "commit", reader_during_commit)
        conn.close()  # checkin: ordinary tokens again, the table is cached again
    assert read(db, stmt) == [("core-committed",)]
    with db.counter.expect(0):
        assert read(db, stmt) == [("core-committed",)]
