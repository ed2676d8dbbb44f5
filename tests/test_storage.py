"""What lands in Redis: compression, flat invalidation cost, no keyspace scans on commit."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select, update

from sqla_redis_cache import QueryCache, cached

from . import _services
from .conftest import Database
from .models import User


def _flags(raw: bytes) -> int:
    return raw[1]


def test_values_above_threshold_are_compressed(cache: QueryCache, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace
    big = "x" * 5000
    cache.set("big", big)
    cache.set("small", "y" * 100)
    cache.set("forced-off", big, compress=False)
    raw_big = client.get(f"{ns}:k:big")
    assert raw_big is not None and _flags(raw_big) & 1 and len(raw_big) < 1000
    assert _flags(client.get(f"{ns}:k:small") or b"\x00\x00") & 1 == 0
    raw_off = client.get(f"{ns}:k:forced-off")
    assert raw_off is not None and _flags(raw_off) & 1 == 0 and len(raw_off) > 5000
    assert cache.get("big") == big and cache.get("forced-off") == big


def test_threshold_is_configurable(redis_url: str, namespace: str) -> None:
    qc = QueryCache.from_url(redis_url, namespace=namespace, compress_threshold=50)
    try:
        qc.set("v", "z" * 200)
        raw = redis.Redis.from_url(redis_url).get(f"{namespace}:k:v")
        assert raw is not None and _flags(raw) & 1
        assert qc.get("v") == "z" * 200
    finally:
        qc.clear()
        qc.close()


@pytest.mark.parametrize("threshold", [64, 100_000])
def test_query_results_follow_the_threshold(
    db: Database, redis_url: str, namespace: str, threshold: int
) -> None:
    qc = QueryCache.from_url(redis_url, namespace=namespace, compress_threshold=threshold)
    qc.attach(db.Session)
    stmt = select(User.name, User.balance, User.created_at).order_by(User.id).options(cached())
    try:
        with db.Session() as s:
            rows = s.execute(stmt).all()
        client = redis.Redis.from_url(redis_url)
        (key,) = list(client.scan_iter(match=f"{namespace}:q:*"))
        raw = client.get(key)
        assert raw is not None and bool(_flags(raw) & 1) == (threshold == 64)
        with db.counter.expect(0), db.Session() as s:
            assert s.execute(stmt).all() == rows
    finally:
        qc.clear()
        qc.close()


@pytest.fixture
def isolated_redis() -> Iterator[str]:
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    yield f"redis://127.0.0.1:{port}/0"
    _services.stop(proc)


def _commandstats(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {k.removeprefix("cmdstat_"): int(v["calls"]) for k, v in stats.items()}


@pytest.mark.parametrize("entries", [20, 2000])
def test_commit_cost_does_not_depend_on_entries(
    pg: Database, namespace: str, isolated_redis: str, entries: int
) -> None:
    cache = QueryCache.from_url(isolated_redis, namespace=namespace)
    cache.attach(pg.Session)
    client = redis.Redis.from_url(isolated_redis)
    try:
        with pg.Session() as s:
            s.execute(select(User.name).where(User.id == 1).options(cached())).all()
        # many more entries depending on the same table
        pipe = client.pipeline(transaction=False)
        for i in range(entries):
            pipe.set(f"{namespace}:q:filler{i}", b"x" * 100)
        pipe.execute()
        client.config_resetstat()
        with pg.Session.begin() as s:
            s.execute(update(User).where(User.id == 1).values(name="n"))
        calls = _commandstats(client)
        calls = {k: v for k, v in calls.items() if not k.startswith(("info", "config"))}
        # bulk DML, rows unknown: the table token and its unknown-rows token replaced (one
        # single-key script each: GET, then SET), nothing scanned or deleted
        assert calls == {"eval": 2, "get": 2, "set": 2}
    finally:
        cache.close()
