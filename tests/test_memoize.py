"""``QueryCache.memoize``: keys, sharing across caches, invalidation, stampedes, sync and async."""

from __future__ import annotations

import asyncio
import datetime
import threading
import time
from decimal import Decimal

import pytest
import redis

from sqla_redis_cache import ConfigurationError, QueryCache

from . import _services


def test_sync_results_are_shared_between_caches(redis_url: str, namespace: str) -> None:
    calls: list[tuple[str, float]] = []
    caches = [  # an application's own TTL profile, next to the defaults
        QueryCache.from_url(redis_url, namespace=namespace, regions={"ai_response": 86400})
        for _ in range(2)
    ]

    def make(cache: QueryCache):  # type: ignore[no-untyped-def]
        @cache.memoize(ttl=60, region="ai_response")
        def complete(prompt: str, temperature: float = 0.7) -> dict[str, object]:
            calls.append((prompt, temperature))
            return {"text": prompt.upper(), "at": datetime.date(2024, 1, 1)}

        return complete

    first, second = make(caches[0]), make(caches[1])
    try:
        assert first("hi") == {"text": "HI", "at": datetime.date(2024, 1, 1)}
        assert second("hi") == first("hi", 0.7) == first(prompt="hi", temperature=0.7)
        assert calls == [("hi", 0.7)]
        first("hi", temperature=0.2)
        first("ho")
        assert len(calls) == 3
        assert first.cache_key("hi") == second.cache_key(prompt="hi", temperature=0.7)
        client = redis.Redis.from_url(redis_url)
        ttl = client.pttl(f"{namespace}:k:{first.cache_key('hi')}")
        assert 0 < ttl <= 60_000
        client.close()
    finally:
        caches[0].clear()
        for c in caches:
            c.close()


def test_invalidate_and_tags(cache: QueryCache) -> None:
    calls = []

    @cache.memoize(tags=["ai"])
    def answer(n: int, scale: Decimal) -> str:
        calls.append(n)
        return f"{n * scale}"

    answer(1, Decimal("1.5"))
    answer(2, Decimal("1.5"))
    assert answer.invalidate(1, Decimal("1.5")) is True
    answer(1, Decimal("1.5"))
    answer(2, Decimal("1.5"))
    assert calls == [1, 2, 1]
    cache.invalidate_tags("ai")
    answer(2, Decimal("1.5"))
    assert calls == [1, 2, 1, 2]
    assert cache.delete_pattern("memo:*") == 2


def test_unkeyable_argument_is_a_clear_error_and_stores_nothing(
    cache: QueryCache, redis_url: str
) -> None:
    @cache.memoize()
    def f(obj: object) -> int:
        return 1

    with pytest.raises(TypeError, match="pass key="):
        f(object())
    client = redis.Redis.from_url(redis_url)
    assert not list(client.scan_iter(match=f"{cache.config.namespace}:k:*"))
    client.close()

    class Service:
        def __init__(self, name: str) -> None:
            self.name = name

        @cache.memoize(key=lambda self, n: f"{self.name}:{n}")
        def double(self, n: int) -> int:
            return n * 2

    assert Service("a").double(2) == 4
    assert Service("a").double.cache_key(Service("a"), 2).endswith(":a:2")  # type: ignore[attr-defined]
    with pytest.raises(ConfigurationError):
        cache.memoize(region="nope")
    with pytest.raises(ValueError):
        cache.memoize(ttl=0)


def test_sync_stampede_runs_the_function_once(patient_cache: QueryCache) -> None:
    cache = patient_cache
    calls = []

    @cache.memoize()
    def slow(n: int) -> int:
        calls.append(n)
        time.sleep(0.3)
        return n

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(7))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [7, 7, 7, 7] and calls == [7]
    assert cache.stats().lock_waits == 3


def test_async_stampede_runs_once_without_blocking_the_loop(patient_cache: QueryCache) -> None:
    cache = patient_cache
    calls = []

    @cache.memoize(ttl=30)
    async def generate(prompt: str) -> str:
        calls.append(prompt)
        await asyncio.sleep(0.2)
        return prompt[::-1]

    async def main() -> tuple[list[str], int]:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            for _ in range(15):
                await asyncio.sleep(0.01)
                ticks += 1

        results = await asyncio.gather(*(generate("abc") for _ in range(5)), ticker())
        return list(results[:5]), ticks

    results, ticks = asyncio.run(main())
    assert results == ["cba"] * 5 and calls == ["abc"]
    assert ticks == 15  # the loop kept running while four callers waited
    st = cache.stats()
    assert (st.misses, st.hits, st.lock_waits) == (1, 4, 4)
    assert asyncio.run(generate("abc")) == "cba" and calls == ["abc"]
    generate.invalidate("abc")  # type: ignore[attr-defined]
    assert asyncio.run(generate("abc")) == "cba" and calls == ["abc", "abc"]


def test_redis_down_runs_the_function_every_time() -> None:
    port = _services.free_port()  # nothing listens there
    cache = QueryCache.from_url(f"redis://127.0.0.1:{port}/0")
    calls = []

    @cache.memoize()
    def f(n: int) -> int:
        calls.append(n)
        return n + 1

    @cache.memoize()
    async def g(n: int) -> int:
        calls.append(n)
        return n + 1

    assert [f(1), f(1), asyncio.run(g(2)), asyncio.run(g(2))] == [2, 2, 3, 3]
    assert calls == [1, 1, 2, 2]
    cache.close()
