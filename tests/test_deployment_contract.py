"""The cache's contract on each distributed deployment (cluster, sentinel, TLS+ACL).

Commit invalidation, tags, the generic API, ``delete_pattern``/``clear`` on every node, the
stampede lock, stats, dogpile regions (multi-key reads) and the asyncio client, on each
deployment the ``redis_target`` fixture builds (conftest.py).  The core test modules (queries,
invalidation, the generic API, freshness, asyncio, entities) run on the same deployments
through their ``deployments`` marker.  Nothing here knows which deployment it runs on.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import pytest
from sqlalchemy import select, update

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.io._clients import make_async_client

from ._deployments import namespace_keys
from .conftest import Database, RedisTarget
from .models import User

pytestmark = pytest.mark.deployments("cluster", "sentinel", "tls")


def _name(db: Database, user_id: int) -> str:
    with db.Session() as s:
        return s.scalars(select(User.name).where(User.id == user_id).options(cached())).one()


def test_commit_invalidates_on_deployment(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    assert _name(db, 1) == "user1"
    with db.counter.expect(0):
        assert _name(db, 1) == "user1"
    with db.Session() as s:
        s.execute(update(User).where(User.id == 1).values(name="renamed"))
        s.commit()
    with db.counter.expect(1):
        assert _name(db, 1) == "renamed"
    with db.counter.expect(0):
        assert _name(db, 1) == "renamed"
    assert cache.stats().errors == 0


def test_tags_and_tables_invalidate_on_deployment(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    stmt = select(User.id).where(User.org_id == 1).order_by(User.id)
    tagged = stmt.options(cached(tags=["org:1"]))
    with db.Session() as s:
        s.scalars(tagged).all()
    cache.invalidate_tags("org:1")
    with db.counter.expect(1), db.Session() as s:
        assert s.scalars(tagged).all() == [1, 2, 3]
    cache.invalidate_tables("app_user")
    with db.counter.expect(1), db.Session() as s:
        assert s.scalars(tagged).all() == [1, 2, 3]
    with db.counter.expect(0), db.Session() as s:
        assert s.scalars(tagged).all() == [1, 2, 3]


def test_generic_api_on_deployment(cache: QueryCache) -> None:
    assert cache.set("profile:1", {"name": "ann"}, tags=["users"])
    assert cache.get("profile:1") == {"name": "ann"}
    calls: list[int] = []

    def build() -> list[int]:
        calls.append(1)
        return [1, 2, 3]

    assert cache.get_or_set("numbers", build, tags=["users", "other"]) == [1, 2, 3]
    assert cache.get_or_set("numbers", build, tags=["users", "other"]) == [1, 2, 3]
    assert len(calls) == 1
    cache.invalidate_tags("users")
    assert cache.get("profile:1") is None
    assert cache.get_or_set("numbers", build, tags=["users", "other"]) == [1, 2, 3]
    assert len(calls) == 2
    assert cache.set("gone", 1)
    assert cache.delete("gone") is True
    assert cache.get("gone", "default") == "default"
    assert cache.stats().errors == 0


def test_delete_pattern_and_clear_reach_every_node(
    cache: QueryCache, redis_target: RedisTarget
) -> None:
    for i in range(60):
        assert cache.set(f"user:{i}", i)
        assert cache.set(f"org:{i}", i)
    assert len([k for k in namespace_keys(redis_target, cache) if ":k:" in k]) == 120
    assert cache.delete_pattern("user:*") == 60
    left = [k for k in namespace_keys(redis_target, cache) if ":k:" in k]
    assert len(left) == 60 and all(":k:org:" in k for k in left)
    assert cache.get("org:7") == 7
    assert cache.clear() >= 60
    assert namespace_keys(redis_target, cache) == []
    assert cache.get("org:7") is None


def test_stampede_lock_on_deployment(cache: QueryCache) -> None:
    calls: list[float] = []
    results: list[Any] = []
    start = threading.Barrier(8)

    def build() -> str:
        calls.append(time.monotonic())
        time.sleep(0.3)
        return "built"

    def worker() -> None:
        start.wait()
        results.append(cache.get_or_set("slow", build))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["built"] * 8
    assert len(calls) == 1
    assert cache.stats().errors == 0


def test_dogpile_region_multi_get_on_deployment(cache: QueryCache) -> None:
    region = cache.region("db_query")
    keys = [f"item{i}" for i in range(20)]
    region.set_multi({k: k.upper() for k in keys})
    # keys spread over many hash slots: one multi-key read must still work
    assert region.get_multi(keys) == [k.upper() for k in keys]
    assert region.get_or_create("item3", lambda: "unused") == "ITEM3"
    assert cache.stats().errors == 0


def test_stats_on_deployment(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)
    for _ in range(3):
        _name(db, 2)
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.errors, stats.bypasses) == (2, 1, 0, 0)
    assert stats.latency_p50_ms > 0
    shared = cache.shared_stats()  # the namespace's hash, flushed and read back
    assert shared is not None and (shared.hits, shared.misses) == (2, 1)


def test_async_client_on_deployment(cache: QueryCache) -> None:
    """make_async_client reaches the same deployment (used by the asyncio store)."""
    prefix = cache.config.namespace + ":async:"

    async def roundtrip() -> list[Any]:
        client = make_async_client(cache.config)
        try:
            for i in range(10):
                await client.set(prefix + str(i), str(i), px=60_000)
            keys = [prefix + str(i) for i in range(10)]
            if cache.config.cluster:
                return list(await client.mget_nonatomic(keys))
            return list(await client.mget(keys))
        finally:
            await client.aclose()

    values = asyncio.run(roundtrip())
    assert values == [str(i).encode() for i in range(10)]
