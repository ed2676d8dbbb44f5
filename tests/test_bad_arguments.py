"""Bad arguments fail where they are given, with a clear error, and nothing reaches Redis.

TTLs must be finite numbers of seconds between 1 ms (Redis expires in whole milliseconds) and
ten years; anything else used to be accepted and fail later: a cached SELECT raised out of
``session.execute`` after its SQL ran, ``get_or_set`` raised after running the creator, and
``PX 0`` was sent to Redis and counted as an outage.  Values that would not read back (a dict
keyed by tuples comes back keyed by lists, which Python cannot hash) are refused by ``set``
instead of being stored and then missed forever.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import pytest
import redis

from sqla_redis_cache import CacheConfig, ConfigurationError, QueryCache, RegionConfig, cached

BAD_TTLS: list[tuple[Any, type[Exception]]] = [
    (math.inf, ValueError),
    (-math.inf, ValueError),
    (math.nan, ValueError),
    (0, ValueError),
    (-1, ValueError),
    (0.0005, ValueError),
    (1e12, ValueError),
    ("60", TypeError),
    (True, TypeError),
    (object(), TypeError),
]
IDS = ["inf", "-inf", "nan", "zero", "negative", "sub-ms", "huge", "str", "bool", "object"]


def stored_keys(cache: QueryCache, redis_url: str) -> list[bytes]:
    client = redis.Redis.from_url(redis_url)
    return list(client.scan_iter(match=f"{cache.config.namespace}:*"))


@pytest.mark.parametrize(("ttl", "error"), BAD_TTLS, ids=IDS)
def test_bad_ttls_are_refused_where_given(
    cache: QueryCache, redis_url: str, ttl: Any, error: type[Exception]
) -> None:
    calls: list[int] = []

    def creator() -> int:
        calls.append(1)
        return 1

    attempts: list[Callable[[], Any]] = [
        lambda: cached(ttl=ttl),
        lambda: cached(refresh_after=ttl),
        lambda: cache.set("k", 1, ttl=ttl),
        lambda: cache.get_or_set("k", creator, ttl=ttl),
        lambda: cache.memoize(ttl=ttl),
        lambda: RegionConfig(ttl),
        lambda: RegionConfig(60, refresh_after=ttl),
        lambda: CacheConfig(regions={"db_query": ttl}),
        lambda: CacheConfig().with_regions(db_query=ttl),
    ]
    for attempt in attempts:
        with pytest.raises(error, match=r"ttl|refresh_after|seconds|region"):
            attempt()
    assert calls == []
    assert stored_keys(cache, redis_url) == []
    assert cache.stats().errors == 0


@pytest.mark.parametrize(
    "settings",
    [
        {"lock_timeout": math.inf},
        {"lock_timeout": math.nan},
        {"lock_wait": math.nan},
        {"breaker_cooldown": math.inf},
        {"connect_timeout": math.nan},
        {"socket_timeout": 0},
        {"stats_interval": math.inf},
        {"lock_timeout": 0.0001},
    ],
    ids=str,
)
def test_bad_durations_in_the_configuration(settings: dict[str, float]) -> None:
    with pytest.raises(ConfigurationError):
        CacheConfig(**settings)


def test_regions_given_as_seconds_are_accepted() -> None:
    config = CacheConfig(regions={"db_query": 60, "reports": RegionConfig(120, 30)})
    assert config.region(None) == RegionConfig(60.0)
    assert config.region("reports").refresh_after == 30


UNREADABLE: list[Any] = [{(1, 2): "b"}, [{(1,): 1}], {"nested": {("a",): None}}]


@pytest.mark.parametrize("value", UNREADABLE, ids=repr)
def test_values_that_would_not_read_back_are_refused(
    cache: QueryCache, redis_url: str, value: Any
) -> None:
    with pytest.raises(TypeError, match="read back"):
        cache.set("d", value)
    with pytest.raises(TypeError, match="read back"):
        cache.get_or_set("d", lambda: value)

    @cache.memoize(ttl=60)
    def compute(n: int) -> Any:
        return value

    with pytest.raises(TypeError, match="read back"):
        compute(1)
    region = cache.region("db_query")
    with pytest.raises(TypeError, match="read back"):
        region.set("d", value)
    with pytest.raises(TypeError, match="read back"):
        region.get_or_create("e", lambda: value)
    assert [k for k in stored_keys(cache, redis_url) if b":k:" in k or b":r:" in k] == []
    assert cache.stats().errors == 0


def test_values_pickle_can_carry_are_accepted_with_a_secret(redis_url: str, namespace: str) -> None:
    qc = QueryCache.from_url(redis_url, namespace=namespace, secret=b"s" * 32)
    try:
        assert qc.set("d", {(1, 2): "b"})
        assert qc.get("d") == {(1, 2): "b"}
        assert qc.get_or_set("e", lambda: {(3,): 4}) == {(3,): 4}
        assert qc.get("e") == {(3,): 4}
    finally:
        qc.clear()
        qc.close()
