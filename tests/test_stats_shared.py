"""Shared statistics: aggregated across caches in Redis, never a round trip on a hit."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import redis
from sqlalchemy import select

from sqla_redis_cache import ConfigurationError, QueryCache, cached

from . import _services
from ._tracking import hits_send_nothing, wait_live
from .conftest import Database
from .models import User


@pytest.fixture
def private_redis() -> Iterator[tuple[str, redis.Redis]]:
    """A throwaway redis-server, so its command statistics are ours alone."""
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    client = redis.Redis(port=port)
    try:
        yield f"redis://127.0.0.1:{port}/0", client
    finally:
        client.close()
        _services.stop(proc)


def _calls(client: redis.Redis, command: str) -> int:
    stats = client.info("commandstats").get(f"cmdstat_{command}")
    return int(stats["calls"]) if stats else 0


@pytest.mark.parametrize("tracking", [False, True], ids=["validated", "near_cache"])
def test_hits_send_one_command_and_stats_travel_only_on_flush(
    pg: Database, private_redis: tuple[str, redis.Redis], tracking: bool
) -> None:
    url, client = private_redis
    cache = QueryCache.from_url(
        url, namespace="stats", stats_interval=0, near_cache_tracking=tracking
    )
    try:
        cache.attach(pg.Session)
        stmt = select(User).where(User.org_id == 1).options(cached())
        with pg.Session() as s:
            s.scalars(stmt).all()
        warm = 0
        if tracking:  # the hits below come from process memory
            wait_live(cache)
            for _ in range(2):
                with pg.Session() as s:
                    s.scalars(stmt).all()
            warm = 2
        reads = 0

        def read() -> None:
            nonlocal reads
            reads += 1
            with pg.Session() as s:
                s.scalars(stmt).all()

        mget_before = _calls(client, "mget")
        with pg.counter.expect(0):
            if tracking:  # none from the near cache (a window whose lease lapsed is retried)
                hits_send_nothing(cache, [client], read, 20)
            else:  # one round trip per hit
                for _ in range(20):
                    read()
                assert _calls(client, "mget") - mget_before == 20
        # nothing else: statistics travel only on flush
        assert _calls(client, "hincrby") == 0
        assert cache.flush_stats()
        assert _calls(client, "hincrby") > 0
        raw = client.hgetall("stats:stats")
        assert int(raw[b"hits"]) == reads + warm and int(raw[b"misses"]) == 1
        assert client.pttl("stats:stats") > 0  # idle namespaces do not keep stats forever
    finally:
        cache.close()


def test_two_caches_aggregate_and_each_flush_adds_only_its_increments(
    redis_url: str, namespace: str
) -> None:
    a = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    b = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    try:
        a.set("k", 1)
        for _ in range(3):
            assert a.get("k") == 1
        b.get("missing")
        a.flush_stats()
        a.flush_stats()  # nothing new: adds nothing
        shared = b.shared_stats()
        assert shared is not None
        assert (shared.hits, shared.misses) == (3, 1)
        assert shared.latency_p50_ms > 0
        assert a.stats().hits == 3  # local view unchanged
        b.reset_stats(shared=True)
        shared = a.shared_stats()
        assert shared is not None and shared.lookups == 0
    finally:
        a.clear()
        a.close()
        b.close()


def test_background_flush_after_attach(pg: Database, redis_url: str, namespace: str) -> None:
    cache = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0.1)
    other = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
    try:
        cache.attach(pg.Session)
        with pg.Session() as s:
            s.scalars(select(User).options(cached())).all()
        deadline = time.monotonic() + 3
        seen = 0
        while time.monotonic() < deadline and not seen:
            time.sleep(0.05)
            raw = redis.Redis.from_url(redis_url).hget(f"{namespace}:stats", "misses")
            seen = int(raw or 0)
        assert seen == 1
        assert other.shared_stats().misses == 1  # type: ignore[union-attr]
    finally:
        cache.clear()
        cache.close()
        other.close()


@pytest.mark.slow
def test_failed_flush_keeps_increments_for_the_next_one(redis_url: str) -> None:
    port = _services.free_port()
    proc = _services.start_redis_server(port)
    url = f"redis://127.0.0.1:{port}/0"
    cache = QueryCache.from_url(url, namespace="keep", stats_interval=0, breaker_cooldown=0.01)
    try:
        cache.set("k", 1)
        assert cache.get("k") == 1
        _services.stop(proc)
        assert not cache.flush_stats()
        proc = _services.start_redis_server(port)
        time.sleep(0.02)
        assert cache.flush_stats() or cache.flush_stats()
        raw = redis.Redis(port=port).hgetall("keep:stats")
        assert int(raw[b"hits"]) == 1
        assert int(raw[b"errors"]) >= 1  # the failed flush itself was counted, then shipped
    finally:
        cache.close()
        _services.stop(proc)


def test_clear_then_close_leaves_no_key_behind(redis_url: str, namespace: str) -> None:
    cache = QueryCache.from_url(redis_url, namespace=namespace)
    cache.set("k", 1)
    cache.get("k")
    assert cache.flush_stats()
    cache.get("k")
    cache.clear()
    cache.close()  # flushes only what happened after the clear: nothing
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"{namespace}:*"))
    client.close()


def test_stats_interval_must_not_be_negative() -> None:
    with pytest.raises(ConfigurationError):
        QueryCache.from_url("redis://localhost", stats_interval=-1)


def test_in_memory_cache_keeps_stats_local() -> None:
    cache = QueryCache.in_memory()
    cache.set("k", 1)
    cache.get("k")
    assert not cache.flush_stats()
    assert cache.shared_stats() is None
    assert cache.stats().hits == 1
