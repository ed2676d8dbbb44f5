"""Relationship and eager loads under a cached statement.

``cached()`` propagates to loaders, so lazy and eager loads of the objects a cached statement
returns are cached too, each entry depending on the tables its own SQL read.  A write to the
related table alone must therefore refresh the related rows, never only the parents.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import immediateload, joinedload, selectinload, subqueryload

from sqla_redis_cache import QueryCache, cached

from .conftest import Database
from .models import Org, User

LOADERS: dict[str, Any] = {
    "lazy": None,
    "selectin": selectinload(Org.users),
    "joined": joinedload(Org.users),
    "subquery": subqueryload(Org.users),
    "immediate": immediateload(Org.users),
}


def org_users(db: Database, loader: Any) -> list[tuple[str, list[str]]]:
    stmt = select(Org).order_by(Org.id).options(cached())
    if loader is not None:
        stmt = stmt.options(loader)
    with db.Session() as s:
        orgs = s.scalars(stmt).unique().all()
        return [(o.name, [u.name for u in o.users]) for o in orgs]


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_loads_are_cached_and_depend_on_the_related_table(
    db: Database, cache: QueryCache, kind: str
) -> None:
    cache.attach(db.Session)
    loader = LOADERS[kind]
    before = [("acme", ["user1", "user2", "user3"]), ("globex", ["user4", "user5", "user6"])]
    fresh = org_users(db, loader)
    assert fresh == before
    with db.counter.expect(0):
        assert org_users(db, loader) == before
    with db.Session() as s:  # only app_user changes; org rows stay as they are
        s.execute(update(User).where(User.id == 5).values(name="renamed"))
        s.commit()
    with db.counter.measure() as window:
        after = org_users(db, loader)
    assert after == [before[0], ("globex", ["user4", "renamed", "user6"])]
    assert window.count >= 1
    assert cache.stats().hits >= 1


def test_lazy_load_inherits_the_option(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    for expected_sql in (2, 0):  # parent + lazy load, then both from cache
        with db.counter.expect(expected_sql), db.Session() as s:
            user = s.scalars(select(User).where(User.id == 1).options(cached())).one()
            assert [o.id for o in user.orders] == [6, 12]


def test_joined_collection_without_unique_raises_like_uncached(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    stmt = select(Org).options(joinedload(Org.users))
    with db.Session() as s, pytest.raises(InvalidRequestError) as uncached:
        s.scalars(stmt).all()
    with db.Session() as s:
        assert len(s.scalars(stmt.options(cached())).unique().all()) == 2  # fill
    with db.counter.expect(0), db.Session() as s, pytest.raises(InvalidRequestError) as hit:
        s.scalars(stmt.options(cached())).all()
    assert str(hit.value) == str(uncached.value)


def test_populate_existing_refreshes_identity_map_from_a_fresh_entry(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 2).options(cached())
    with db.Session() as s:
        user = s.scalars(stmt).one()
        with db.Session() as other:
            other.execute(update(User).where(User.id == 2).values(balance=Decimal("99")))
            other.commit()
        assert user.balance == Decimal("20")  # identity map keeps its state...
        refreshed = s.scalars(stmt.execution_options(populate_existing=True)).one()
        assert refreshed is user and user.balance == Decimal("99")  # ...until asked


def test_populate_existing_never_drops_pending_changes(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 3).options(cached())
    with db.Session() as s:
        s.scalars(stmt).one()
    with db.Session() as s:
        user = s.scalars(stmt).one()
        user.name = "pending"
        # autoflush writes app_user first: the read bypasses the cache and sees the change
        again = s.scalars(stmt.execution_options(populate_existing=True)).one()
        assert again.name == "pending"
        s.rollback()
    with db.counter.expect(0), db.Session() as s:
        assert s.scalars(stmt).one().name == "user3"


def test_yield_per_and_streaming_run_uncached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User).order_by(User.id).options(cached())
    for _ in range(2):
        with db.counter.expect(1), db.Session() as s:
            ids = [u.id for u in s.scalars(stmt.execution_options(yield_per=2))]
            assert ids == [1, 2, 3, 4, 5, 6]
        with db.counter.expect(1), db.Session() as s:
            result = s.execute(stmt.execution_options(stream_results=True))
            assert len(result.scalars().all()) == 6
    assert cache.stats().hits == 0


def test_for_update_is_never_cached_even_with_eager_loads(db: Database, cache: QueryCache) -> None:
    """The locking read always reaches the database (on SQLite too, which renders no lock)."""
    cache.attach(db.Session)
    stmt = select(User).where(User.id == 1).options(selectinload(User.orders), cached())
    for _ in range(2):
        with db.counter.measure() as window, db.Session() as s:
            assert [o.id for o in s.scalars(stmt.with_for_update()).one().orders] == [6, 12]
        assert any("FROM app_user" in q for q in window.statements)
