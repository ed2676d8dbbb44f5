"""The generic key/value API on real Redis."""

from __future__ import annotations

import datetime
import decimal
import threading
import uuid

import pytest
import redis

from sqla_redis_cache import QueryCache

from .conftest import EVERY_DEPLOYMENT

#: every test building its caches through ``redis_target`` runs on each deployment
pytestmark = EVERY_DEPLOYMENT


def test_set_get_delete_roundtrip(cache: QueryCache) -> None:
    value = {
        "n": 1,
        "s": "é",
        "when": datetime.datetime(2024, 5, 1, 12, 30, tzinfo=datetime.UTC),
        "d": decimal.Decimal("1.10"),
        "u": uuid.UUID(int=7),
        "l": [1, 2, None],
        "b": b"\x00\xff",
    }
    assert cache.get("missing") is None
    assert cache.get("missing", default="dflt") == "dflt"
    assert cache.set("k", value, ttl=60) is True
    assert cache.get("k") == value
    assert cache.delete("k") is True
    assert cache.get("k") is None
    assert cache.delete("k") is False


def test_ttl_is_applied(cache: QueryCache, redis_url: str) -> None:
    cache.set("short", 1, ttl=5)
    cache.set("report", 1, region="db_aggregate")
    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace
    assert 4000 < client.pttl(f"{ns}:k:short") <= 5000
    assert 899_000 < client.pttl(f"{ns}:k:report") <= 900_000


def test_get_or_set_runs_creator_once_per_miss(cache: QueryCache) -> None:
    calls: list[int] = []

    def creator() -> dict[str, int]:
        calls.append(1)
        return {"v": len(calls)}

    assert cache.get_or_set("gos", creator, ttl=60) == {"v": 1}
    assert cache.get_or_set("gos", creator, ttl=60) == {"v": 1}
    assert len(calls) == 1
    assert cache.get("gos") == {"v": 1}


def test_get_or_set_stampede_threads(cache: QueryCache) -> None:
    calls: list[int] = []
    barrier = threading.Barrier(8)
    results: list[int] = []

    def creator() -> int:
        calls.append(1)
        threading.Event().wait(0.2)
        return 99

    def worker() -> None:
        barrier.wait()
        results.append(cache.get_or_set("stampede", creator, ttl=60))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [99] * 8
    assert len(calls) == 1


def test_tags_invalidate_generic_values(cache: QueryCache) -> None:
    cache.set("a", 1, tags=["org:1", "emissions"])
    cache.set("b", 2, tags=["org:2"])
    cache.set("c", 3)
    assert cache.get_or_set("d", lambda: 4, tags=["org:1"]) == 4
    cache.invalidate_tags("org:1")
    assert cache.get("a") is None
    assert cache.get("d") is None
    assert cache.get("b") == 2 and cache.get("c") == 3
    assert cache.get_or_set("d", lambda: 5, tags=["org:1"]) == 5


def test_clear_reaches_generic_values(cache: QueryCache) -> None:
    cache.set("x", 1)
    cache.clear()
    assert cache.get("x") is None


def test_delete_pattern_is_a_glob_relative_to_the_namespace(
    cache: QueryCache, redis_url: str, namespace: str
) -> None:
    for key in ("user:1", "user:2", "user:*literal", "users", "org:1"):
        cache.set(key, key)
    other = QueryCache.from_url(redis_url, namespace=namespace + "o")
    try:
        other.set("user:1", "other")
        assert cache.delete_pattern("user:*") == 3
        assert cache.get("users") == "users" and cache.get("org:1") == "org:1"
        assert other.get("user:1") == "other"
    finally:
        other.clear()
        other.close()


def test_glob_characters_in_keys_and_tags_are_literal(cache: QueryCache) -> None:
    cache.set("a*", 1, tags=["t?"])
    cache.set("ab", 2, tags=["tx"])
    assert cache.get("a*") == 1 and cache.get("ab") == 2
    assert cache.delete("a*") is True
    assert cache.get("ab") == 2
    cache.set("a*", 1, tags=["t?"])
    cache.invalidate_tags("t?")
    assert cache.get("a*") is None and cache.get("ab") == 2
    cache.set("ключ", "значение", tags=["тег"])
    assert cache.get("ключ") == "значение"


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda c: c.set("", 1), ValueError),
        (lambda c: c.set(None, 1), ValueError),
        (lambda c: c.set("k", 1, tags=[""]), TypeError),
        (lambda c: c.set("k", 1, tags=[3]), TypeError),
        (lambda c: c.set("k", object()), TypeError),
        (lambda c: c.set("k", 1, ttl=0), ValueError),
        (lambda c: c.delete_pattern(""), ValueError),
    ],
)
def test_bad_input_is_a_clear_error_and_stores_nothing(
    cache: QueryCache, redis_url: str, call: object, error: type[Exception]
) -> None:
    with pytest.raises(error):
        call(cache)  # type: ignore[operator]
    client = redis.Redis.from_url(redis_url)
    assert list(client.scan_iter(match=f"{cache.config.namespace}:k:*")) == []


def test_corrupt_and_foreign_entries_are_misses(cache: QueryCache, redis_url: str) -> None:
    client = redis.Redis.from_url(redis_url)
    ns = cache.config.namespace
    cache.set("victim", {"ok": True})
    raw = client.get(f"{ns}:k:victim")
    assert raw is not None
    for bad in (raw[:-3], raw[:10], b"garbage", raw[:-1] + bytes([raw[-1] ^ 1])):
        client.set(f"{ns}:k:victim", bad)
        assert cache.get("victim") is None
    assert cache.stats().corrupt >= 3
    assert cache.get_or_set("victim", lambda: "rebuilt") == "rebuilt"


def test_dogpile_region_over_the_same_redis(cache: QueryCache) -> None:
    region = cache.region("long")
    calls: list[int] = []

    @region.cache_on_arguments()
    def profile(user_id: int) -> dict[str, int]:
        calls.append(user_id)
        return {"id": user_id}

    assert profile(1) == {"id": 1} and profile(1) == {"id": 1}
    assert calls == [1]
    assert region.get("missing") is not None  # NO_VALUE sentinel, not an exception
