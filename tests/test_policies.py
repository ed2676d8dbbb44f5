"""Cache policies: ``attach(target, default=cached(...), tables={...})`` and ``uncached()``.

Each target kind (Session class, sessionmaker, scoped_session, async_sessionmaker, Session
object, engine) caches its SELECTs without an option; an explicit option wins; ``tables`` rules
decide by the tables a statement reads; no policy makes an unsafe statement cacheable.
"""

from __future__ import annotations

import asyncio

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker
from sqlalchemy.orm import Session, scoped_session, selectinload, sessionmaker

from sqla_redis_cache import ConfigurationError, QueryCache, cached, uncached

from . import _services
from ._counting import make_counted_async_engine
from .conftest import Database
from .models import Order, Org, User

USERS = select(User).where(User.org_id == 1).order_by(User.id)
ORGS = select(Org).order_by(Org.id)
JOIN = select(User.name, Org.name).join(User.org).order_by(User.id)


def twice(db: Database, factory: object, stmt: object, expected: tuple[int, int]) -> None:
    """Run ``stmt`` twice in fresh sessions of ``factory``; statements sent each time."""
    for count in expected:
        with db.counter.expect(count), factory() as s:  # type: ignore[operator]
            s.execute(stmt).all()  # type: ignore[attr-defined]


def test_default_policy_caches_every_select_of_a_sessionmaker(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session, default=cached(ttl=60))
    twice(db, db.Session, USERS, (1, 0))
    twice(db, db.Session, ORGS, (1, 0))
    other = sessionmaker(db.engine)  # not attached: no policy, no cache
    twice(db, other, USERS.where(User.id > 0), (1, 1))


def test_without_a_policy_statements_need_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    twice(db, db.Session, USERS, (1, 1))
    cache.attach(db.Session, default=cached())
    twice(db, db.Session, USERS, (1, 0))
    cache.attach(db.Session)  # attaching again replaces the policy
    twice(db, db.Session, USERS.where(User.id < 9), (1, 1))


def test_explicit_options_win_over_the_policy(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached(), tables={"org": None})
    twice(db, db.Session, USERS.options(uncached()), (1, 1))
    twice(db, db.Session, ORGS, (1, 1))  # the table rule: never
    twice(db, db.Session, ORGS.options(cached()), (1, 0))  # the statement's own option wins


def test_table_rules_decide_by_the_tables_read(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, tables={"org": None, "app_user": cached(ttl=600, tags=["users"])})
    twice(db, db.Session, USERS, (1, 0))
    twice(db, db.Session, ORGS, (1, 1))
    twice(db, db.Session, JOIN, (1, 1))  # reads org: never cached
    twice(db, db.Session, select(Order).where(Order.id == 1), (1, 1))  # no rule, no default
    cache.invalidate_tags("users")  # the rule's tags reach the entries
    twice(db, db.Session, USERS, (1, 0))


def test_several_table_rules_take_the_shortest_ttl(db: Database, cache: QueryCache) -> None:
    cache.attach(
        db.Session,
        default=cached(ttl=60, tags=["d"]),
        tables={"app_user": cached(ttl=600, tags=["u"]), "org": cached(region="db_aggregate")},
    )
    with db.Session() as s:
        report = cache.explain(JOIN, s)  # both tables have a rule: the default has no say
        assert report.cacheable and report.ttl == 600  # db_aggregate is 900 s
        assert report.region == "db_query" and report.tags == ("u",)
        assert "table app_user" in (report.decided_by or "")
        assert cache.explain(USERS, s).ttl == 600
        assert cache.explain(select(Order), s).ttl == 60
        mixed = cache.explain(select(Order, User).join(Order.user), s)
        assert (mixed.ttl, mixed.tags) == (60, ("d", "u"))


def test_policies_never_make_unsafe_statements_cacheable(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached())
    twice(db, db.Session, USERS.with_for_update(), (1, 1))
    twice(db, db.Session, USERS.where(text("app_user.id < 3")), (1, 1))
    twice(db, db.Session, text("SELECT name FROM app_user WHERE id = 1"), (1, 1))
    reasons = cache.stats().uncacheable_by_reason
    assert reasons == {"locking_read": 2, "text_fragment": 2}  # textual statements: not SELECTs
    with db.Session() as s:  # text() writes stay writes, and invalidate
        s.execute(USERS).all()
        s.execute(text("UPDATE app_user SET name = 'renamed' WHERE id = 1"))
        s.commit()
    with db.counter.expect(1), db.Session() as s:
        assert s.execute(USERS).scalars().first().name == "renamed"  # type: ignore[union-attr]


def test_own_writes_bypass_under_a_policy(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached())
    twice(db, db.Session, USERS, (1, 0))
    with db.Session() as s:
        s.get_one(User, 1).name = "pending"  # autoflushed before the read
        with db.counter.expect(2):  # the flush, and the read around the cache
            assert s.scalars(USERS).first().name == "pending"  # type: ignore[union-attr]
        s.rollback()
    assert cache.stats().bypasses == 1


def test_lazy_and_eager_loads_follow_the_policy(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached())
    stmt = select(Org).where(Org.id == 1).options(selectinload(Org.users))
    for expected in (2, 0):
        with db.counter.expect(expected), db.Session() as s:
            assert [u.id for u in s.scalars(stmt).one().users] == [1, 2, 3]
    for expected in (2, 0):  # the lazy load is a SELECT of its own, cached by the policy
        with db.counter.expect(expected), db.Session() as s:
            assert s.scalars(select(User).where(User.id == 4)).one().org.name == "globex"


def test_refresh_reads_the_database(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session, default=cached())
    with db.Session() as s:
        user = s.scalars(select(User).where(User.id == 2)).one()
        for _ in range(2):
            with db.counter.expect(1):
                s.refresh(user)
            with db.counter.expect(1):
                s.execute(select(User).execution_options(populate_existing=True)).all()


@pytest.mark.parametrize("kind", ["class", "instance", "scoped"])
def test_session_classes_objects_and_scoped_sessions(
    db: Database, cache: QueryCache, kind: str
) -> None:
    class AppSession(Session):
        pass

    if kind == "class":
        cache.attach(AppSession, default=cached())
        twice(db, lambda: AppSession(db.engine), USERS, (1, 0))
        twice(db, db.Session, USERS, (1, 1))  # another class: untouched
    elif kind == "instance":
        session = Session(db.engine)
        cache.attach(session, default=cached())
        with session:
            for expected in (1, 0):
                with db.counter.expect(expected):
                    session.execute(select(User.id).where(User.id == 1)).all()
        twice(db, lambda: Session(db.engine), USERS, (1, 1))  # other sessions: untouched
        with db.counter.expect(0), Session(db.engine) as s:  # the entry, through another session
            cache.attach(s, default=cached())
            s.execute(select(User.id).where(User.id == 1)).all()
            cache.detach(s)
    else:
        scoped = scoped_session(sessionmaker(db.engine))
        cache.attach(scoped, default=cached())
        for expected in (1, 0):
            with db.counter.expect(expected):
                scoped.execute(USERS).all()
            scoped.remove()
        cache.detach(scoped)
        with db.counter.expect(1):
            scoped.execute(USERS).all()
        scoped.remove()


def test_engine_policies_cover_core_and_unattached_sessions(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.engine, default=cached(), tables={"org": None})
    for expected in (1, 0):
        with db.counter.expect(expected), db.engine.connect() as conn:
            conn.execute(select(User.name).where(User.id == 3)).all()
    twice(db, db.Session, USERS, (1, 0))  # an ORM session on the engine
    twice(db, db.Session, ORGS, (1, 1))
    twice(db, db.Session, USERS.options(uncached()), (1, 1))
    with db.engine.begin() as conn:  # writes are not SELECTs: neither refused nor cached
        conn.execute(update(User).where(User.id == 3).values(name="core3"))
        conn.execute(text("UPDATE app_user SET name = 'text3' WHERE id = 3"))
    assert cache.stats().uncacheable == 0
    with db.engine.connect() as conn:
        assert conn.execute(select(User.name).where(User.id == 3)).scalar_one() == "text3"


def test_async_sessionmaker_policy(cache: QueryCache, postgres_url: str) -> None:
    from .conftest import _database

    _database("postgresql", postgres_url)  # seeded

    async def main() -> list[int]:
        engine, counter = make_counted_async_engine(_services.postgres_async_url())
        maker = async_sessionmaker(engine)
        cache.attach(maker, default=cached())
        sent = []
        try:
            for _ in range(2):
                before = counter.count
                async with maker() as s:
                    assert len((await s.scalars(USERS)).all()) == 3
                    report = await cache.aexplain(USERS, s)
                    assert report.cacheable
                    assert report.decided_by == "policy of the session (the default)"
                sent.append(counter.count - before)
            async with AsyncSession(engine) as s:  # not of the attached maker
                await s.execute(USERS)
        finally:
            await engine.dispose()
        return sent

    assert asyncio.run(main()) == [1, 0]


def test_bad_policies_fail_at_attach(db: Database, cache: QueryCache) -> None:
    with pytest.raises(ConfigurationError, match="unknown cache region"):
        cache.attach(db.Session, default=cached(region="nope"))
    with pytest.raises(TypeError, match="cached"):
        cache.attach(db.Session, default=60)
    with pytest.raises(TypeError, match="table names"):
        cache.attach(db.Session, tables={"": cached()})
    with pytest.raises(TypeError, match="mapping"):
        cache.attach(db.Session, tables=["app_user"])
    twice(db, db.Session, USERS, (1, 1))  # nothing was attached by the failed calls
