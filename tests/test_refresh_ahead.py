"""Refresh-ahead (a soft TTL: one caller refreshes, the others keep the aged value) and cache
warming.

Past the soft TTL one caller hands the rebuild to a background thread and everybody keeps
getting the aged value; an *invalidated* entry is never served.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import create_engine, func, select, update
from sqlalchemy.engine import Engine

from sqla_redis_cache import QueryCache, RegionConfig, cached

from ._faults import custom_cache, set_balance
from .conftest import Database
from .models import User


@pytest.fixture
def outside(pg: Database) -> Iterator[Engine]:
    """An engine the cache knows nothing about: writes through it are invisible to it
    (another application), so only TTLs and refresh-ahead bring them in."""
    engine = create_engine(pg.url)
    yield engine
    engine.dispose()


def write_outside(engine: Engine, value: int) -> None:
    with engine.begin() as conn:
        conn.execute(update(User).where(User.id == 1).values(balance=Decimal(value)))


def slow_balance(refresh_after: float = 0.3) -> Any:
    return (
        select(User.balance, func.pg_sleep(0.4).label("slept"))
        .where(User.id == 1)
        .options(cached(refresh_after=refresh_after))
    )


def read(db: Database, stmt: Any) -> int:
    with db.Session() as s:
        return int(s.execute(stmt).one().balance)


def test_aged_entry_is_served_while_one_background_refresh_runs(
    pg: Database, cache: QueryCache, outside: Engine
) -> None:
    cache.attach(pg.Session)
    stmt = slow_balance()
    set_balance(pg.Session, 10)
    assert read(pg, stmt) == 10
    write_outside(outside, 11)
    time.sleep(0.35)  # past the soft TTL
    results: list[int] = []

    def caller() -> None:
        results.append(read(pg, stmt))

    with pg.counter.expect(1) as window:  # the background refresh, nothing else
        threads = [threading.Thread(target=caller) for _ in range(12)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(10)
        time.sleep(0.8)  # let the refresh (0.4 s query) finish
    assert "pg_sleep" in window.statements[0]
    # everyone got the aged value: a caller that waited for the refresh would have read 11
    assert results == [10] * 12
    with pg.counter.expect(0):
        assert read(pg, stmt) == 11  # the refreshed entry


def test_invalidated_entry_is_never_served_even_with_refresh_ahead(
    pg: Database, cache: QueryCache
) -> None:
    cache.attach(pg.Session)
    stmt = slow_balance(refresh_after=0.2)
    set_balance(pg.Session, 20)
    assert read(pg, stmt) == 20
    set_balance(pg.Session, 21)  # commit: invalidates
    with pg.counter.expect(1):
        assert read(pg, stmt) == 21  # before the soft TTL
    time.sleep(0.25)
    set_balance(pg.Session, 22)
    with pg.counter.expect(1):
        assert read(pg, stmt) == 22  # after it: still rebuilt inline, not served aged


def test_region_soft_ttl_applies_to_queries(
    pg: Database, redis_url: str, namespace: str, outside: Engine
) -> None:
    regions = {"dashboard": RegionConfig(60, refresh_after=0.2)}
    with custom_cache(redis_url, namespace, regions=regions) as qc:
        qc.attach(pg.Session)
        stmt = select(User.balance).where(User.id == 1).options(cached(region="dashboard"))
        set_balance(pg.Session, 30)
        with pg.Session() as s:
            assert s.scalar(stmt) == 30
        write_outside(outside, 31)
        time.sleep(0.25)
        with pg.Session() as s:
            assert s.scalar(stmt) == 30  # aged value, refresh started
        deadline = time.monotonic() + 5
        while True:
            with pg.Session() as s:
                if s.scalar(stmt) == 31:
                    break
            assert time.monotonic() < deadline, "never refreshed"
            time.sleep(0.02)


def test_get_or_set_refreshes_in_the_background(redis_url: str, namespace: str) -> None:
    regions = {"metrics": RegionConfig(60, refresh_after=0.2)}
    with custom_cache(redis_url, namespace, regions=regions) as qc:
        calls: list[str] = []

        def creator() -> int:
            calls.append(threading.current_thread().name)
            time.sleep(0.3)
            return len(calls)

        assert qc.get_or_set("m", creator, region="metrics") == 1
        time.sleep(0.25)
        # the aged value: a caller that waited for the refresh would have had 2
        assert qc.get_or_set("m", creator, region="metrics") == 1
        assert qc.get_or_set("m", creator, region="metrics") == 1
        time.sleep(0.5)
        assert qc.get_or_set("m", creator, region="metrics") == 2
        assert len(calls) == 2
        assert calls[1].startswith("sqla-redis-cache-refresh")


# ------------------------------------------------------------------ warm-up


def test_warm_runs_registered_callables_and_fills_the_cache(
    pg: Database, cache: QueryCache
) -> None:
    cache.attach(pg.Session)
    stmt = select(User).where(User.org_id == 2).order_by(User.id).options(cached())

    @cache.register_warmup
    def org_two() -> int:
        with pg.Session() as s:
            return len(s.scalars(stmt).all())

    @cache.register_warmup(name="broken")
    def broken() -> None:
        raise RuntimeError("boom")

    cache.register_warmup(lambda: cache.set("greeting", "hello"), name="greeting")
    with pg.counter.expect(1):
        report = cache.warm()
    assert report == {
        f"{org_two.__module__}.{org_two.__qualname__}": {"ok": True, "result": 3},
        "broken": {"ok": False, "error": "RuntimeError: boom"},
        "greeting": {"ok": True, "result": True},
    }
    with pg.counter.expect(0), pg.Session() as s:  # warmed: served without SQL
        assert [u.id for u in s.scalars(stmt)] == [4, 5, 6]
    assert cache.get("greeting") == "hello"


def test_startup_warming_follows_cache_warmup(redis_url: str, namespace: str) -> None:
    ran: list[str] = []
    off = QueryCache.from_env(namespace=namespace, environ={"REDIS_URL": redis_url})
    on = QueryCache.from_env(
        namespace=namespace, environ={"REDIS_URL": redis_url, "CACHE_WARMUP": "true"}
    )
    try:
        for qc in (off, on):
            qc.register_warmup(lambda: ran.append("x"), name="x")
        assert off.warm(startup=True) == {} and ran == []
        assert on.warm(startup=True) == {"x": {"ok": True, "result": None}} and ran == ["x"]
        assert off.warm()["x"]["ok"] and ran == ["x", "x"]  # on demand it always runs
    finally:
        off.close()
        on.close()


def test_async_get_or_set_past_the_soft_ttl_refreshes_inline(
    redis_url: str, namespace: str
) -> None:
    """A background thread cannot drive the loop's Redis I/O: the lock winner refreshes."""
    regions = {"metrics": RegionConfig(60, refresh_after=0.2)}
    calls: list[int] = []

    async def creator() -> int:
        await asyncio.sleep(0)
        calls.append(1)
        return len(calls)

    async def main(qc: QueryCache) -> list[int]:
        try:
            first = await qc.aget_or_set("m", creator, region="metrics")
            await asyncio.sleep(0.25)
            second = await qc.aget_or_set("m", creator, region="metrics")
            third = await qc.aget_or_set("m", creator, region="metrics")
            return [first, second, third]
        finally:
            await qc.aclose()

    with custom_cache(redis_url, namespace, regions=regions) as qc:
        assert asyncio.run(main(qc)) == [1, 2, 2]
