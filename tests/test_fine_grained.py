"""Fine-grained invalidation (issue 12): results filtered by equality depend on the values,
commits with rows the ORM knows invalidate only those values (``wiring._values``)."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, text, update
from sqlalchemy.orm import Session

from sqla_redis_cache import QueryCache, cached

from .conftest import Database
from .models import Org, User


def tenant(org_id: int) -> Any:
    return select(User.id, User.name, User.org_id).where(User.org_id == org_id).order_by(User.id)


def read(db: Database, stmt: Any) -> list[tuple[Any, ...]]:
    with db.Session() as s:
        return [tuple(r) for r in s.execute(stmt.options(cached()))]


def fresh(db: Database, stmt: Any) -> list[tuple[Any, ...]]:
    with db.engine.connect() as conn:
        return [tuple(r) for r in conn.execute(stmt)]


def expect_hit(db: Database, stmt: Any) -> None:
    """Served from the cache (0 statements), and equal to what the database holds."""
    with db.counter.expect(0):
        got = read(db, stmt)
    assert got == fresh(db, stmt)


def expect_miss(db: Database, stmt: Any) -> None:
    """Invalidated: one statement, then equal to what the database holds."""
    with db.counter.expect(1):
        got = read(db, stmt)
    assert got == fresh(db, stmt)


def warm(db: Database, *stmts: Any) -> None:
    for stmt in stmts:
        read(db, stmt)
    with db.counter.expect(0):
        for stmt in stmts:
            read(db, stmt)


def test_write_to_one_tenant_leaves_the_others_cached(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    warm(db, tenant(1), tenant(2))
    with db.Session() as s:
        s.get(User, 5).name = "renamed"  # type: ignore[union-attr]  # org 2
        s.commit()
    expect_hit(db, tenant(1))
    expect_miss(db, tenant(2))
    assert "renamed" in [r[1] for r in read(db, tenant(2))]
