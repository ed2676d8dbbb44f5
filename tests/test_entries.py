"""Safe entries: authenticated envelopes, no unpickling of unsigned data, compression codecs,
and clear errors for bad input to the generic API (storing nothing).
"""

from __future__ import annotations

import pickle
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import select

from sqla_redis_cache import ConfigurationError, QueryCache, cached
from sqla_redis_cache._compression import available_compressors
from sqla_redis_cache.storage._codec import VERSION, CorruptEntry, EntryCodec

from ._faults import custom_cache
from .conftest import Database
from .models import User

STMT = select(User.name).where(User.id == 1).options(cached())


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def entry_keys(client: redis.Redis, cache: QueryCache, kind: str = "q") -> list[bytes]:
    pattern = f"{cache.config.namespace}:{kind}:*"
    return [k for k in client.scan_iter(match=pattern) if not k.endswith(b":lock")]


def only_entry(client: redis.Redis, cache: QueryCache, kind: str = "q") -> tuple[bytes, bytes]:
    (key,) = entry_keys(client, cache, kind)
    value = client.get(key)
    assert value is not None
    return key, value


def name(db: Database) -> str:
    with db.Session() as s:
        return str(s.scalar(STMT))


def forge(stamps: bytes, payload: bytes, flags: int, key: bytes | None = None) -> bytes:
    """An entry built by someone who knows the layout (and maybe a key)."""
    codec = EntryCodec(key)
    body = struct.pack("!H", len(stamps)) + stamps + struct.pack("!d", time.time()) + payload
    return bytes((VERSION, flags)) + codec._mac(flags, body) + body


class Evil:
    """Unpickling this creates a file: proof that pickle ran."""

    marker = ""

    def __reduce__(self) -> Any:
        return (open, (self.marker, "w"))


# ------------------------------------------------------------------ bad entries are misses


@pytest.mark.parametrize("damage", ["tampered", "truncated", "foreign", "garbage", "empty"])
def test_damaged_query_entry_is_a_counted_miss(
    pg: Database, cache: QueryCache, client: redis.Redis, damage: str
) -> None:
    cache.attach(pg.Session)
    assert name(pg) == "user1"
    key, entry = only_entry(client, cache)
    if damage == "tampered":
        bad = entry[:-1] + bytes([entry[-1] ^ 1])
    elif damage == "truncated":
        bad = entry[: len(entry) - 5]
    elif damage == "foreign":  # same layout and stamps, signed with another key
        other = EntryCodec(b"someone else's secret")
        stamps = EntryCodec.stamps_of(entry)
        assert stamps is not None
        bad = other.seal(stamps, [[["name", 25]], 1, [[0, ["mallory"]]]])
    elif damage == "garbage":
        bad = b"\x01\x00" + b"\xff" * 40
    else:
        bad = b""
    client.set(key, bad, keepttl=True)
    cache._storage.reader.near.clear()
    with pg.counter.expect(1):
        assert name(pg) == "user1"  # a miss, never an exception nor a forged row
    if damage in {"tampered", "truncated", "foreign"}:
        assert cache.stats().corrupt == 1
    with pg.counter.expect(0):
        assert name(pg) == "user1"  # refilled


def test_unsigned_pickle_is_never_loaded(
    pg: Database, cache: QueryCache, client: redis.Redis, tmp_path: Path
) -> None:
    """Without a secret the MAC key is public: a forged pickle passes it but is refused."""
    cache.attach(pg.Session)
    assert name(pg) == "user1"
    key, entry = only_entry(client, cache)
    evil = Evil()
    evil.marker = str(tmp_path / "pwned")
    stamps = EntryCodec.stamps_of(entry)
    assert stamps is not None
    client.set(key, forge(stamps, pickle.dumps(evil), flags=2), keepttl=True)
    cache._storage.reader.near.clear()
    with pg.counter.expect(1):
        assert name(pg) == "user1"
    assert not (tmp_path / "pwned").exists()
    assert cache.stats().corrupt == 1


def test_signed_cache_rejects_entries_without_its_secret(
    redis_url: str, namespace: str, client: redis.Redis, tmp_path: Path
) -> None:
    with custom_cache(redis_url, namespace, secret=b"s3cret") as qc:
        qc.set("v", {"a": 1})
        key, entry = only_entry(client, qc, "k")
        evil = Evil()
        evil.marker = str(tmp_path / "pwned")
        stamps = EntryCodec.stamps_of(entry)
        assert stamps is not None
        client.set(key, forge(stamps, pickle.dumps(evil), flags=2), keepttl=True)
        assert qc.get("v", "default") == "default"
        assert not (tmp_path / "pwned").exists()
        assert qc.stats().corrupt == 1


@dataclass(frozen=True)
class Point:
    x: int
    y: int


def test_pickle_needs_a_secret_and_roundtrips_with_one(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    with custom_cache(redis_url, namespace) as plain:
        with pytest.raises(TypeError, match="Point"):
            plain.set("p", Point(1, 2))
        assert entry_keys(client, plain, "k") == []  # nothing stored
    env = {"REDIS_URL": redis_url, "SQLA_CACHE_SECRET": "from-the-environment"}
    signed = QueryCache.from_env(namespace=namespace, environ=env)
    try:
        assert signed.config.secret == b"from-the-environment"
        assert signed.set("p", Point(1, 2))
        assert signed.get("p") == Point(1, 2)
        # query rows stay msgpack even with a secret: no executable encoding on the hot path
        assert signed.set("rows", [[1, "a"]])
        entry = client.get(f"{namespace}:k:rows")
        assert entry is not None and not entry[1] & 2
    finally:
        signed.clear()
        signed.close()


def test_damaged_generic_value_is_a_counted_miss(cache: QueryCache, client: redis.Redis) -> None:
    cache.set("g", list(range(100)))
    key, entry = only_entry(client, cache, "k")
    client.set(key, entry[:-3], keepttl=True)
    assert cache.get("g", "miss") == "miss"
    assert cache.stats().corrupt == 1
    assert cache.get_or_set("g", lambda: [1]) == [1]


# ------------------------------------------------------------------ compression


def test_all_compressors_are_installed_for_the_tests() -> None:
    assert available_compressors() == ["zlib", "zstd", "lz4"]


@pytest.mark.parametrize("compression", ["zlib", "zstd", "lz4"])
def test_compressed_entries_roundtrip_and_carry_their_codec(
    pg: Database, redis_url: str, namespace: str, client: redis.Redis, compression: str
) -> None:
    big = select(User.name, User.balance).options(cached())
    with custom_cache(redis_url, namespace, compression=compression, compress_threshold=10) as qc:
        qc.attach(pg.Session)
        with pg.Session() as s:
            fresh = s.execute(big).all()
        _, entry = only_entry(client, qc)
        flags = entry[1]
        assert flags & 1  # compressed
        assert (flags >> 2) & 3 == {"zlib": 0, "zstd": 1, "lz4": 2}[compression]
        qc._storage.reader.near.clear()
        with pg.counter.expect(0), pg.Session() as s:
            assert s.execute(big).all() == fresh
    # another cache, with another compressor configured, reads the same entries
    with custom_cache(redis_url, namespace + "x", compression="zlib") as reader:
        value = {"text": "abc" * 1000}
        with custom_cache(redis_url, namespace + "x", compression=compression) as writer:
            writer.set("doc", value)
            assert reader.get("doc") == value


def test_threshold_and_per_call_override(
    pg: Database, cache: QueryCache, client: redis.Redis
) -> None:
    small, large = "x" * 100, "y" * 5000
    cache.set("small", small)
    cache.set("large", large)
    cache.set("forced", small, compress=True)
    cache.set("raw", large, compress=False)
    cache.set("lz4", large, compress="lz4")
    ns = cache.config.namespace

    def flags(key: str) -> int:
        entry = client.get(f"{ns}:k:{key}")
        assert entry is not None
        return entry[1]

    assert flags("small") & 1 == 0  # under the 1 KB threshold
    assert flags("large") & 1 and (flags("large") >> 2) & 3 == 0  # zlib by default
    assert flags("forced") & 1
    assert flags("raw") & 1 == 0
    assert (flags("lz4") >> 2) & 3 == 2
    assert [cache.get(k) for k in ("small", "large", "forced", "raw", "lz4")] == [
        small,
        large,
        small,
        large,
        large,
    ]
    cache.attach(pg.Session)
    stmt = select(User.name).options(cached(compress="zstd"))
    with pg.Session() as s:
        s.scalars(stmt).all()
    (key,) = entry_keys(client, cache)
    entry = client.get(key)
    assert entry is not None and (entry[1] >> 2) & 3 == 1


def test_unknown_compressors_are_clear_errors(redis_url: str, namespace: str) -> None:
    with pytest.raises(ConfigurationError, match="brotli"):
        QueryCache.from_url(redis_url, namespace=namespace, compression="brotli")
    with pytest.raises(ValueError, match="unknown compressor"):
        cached(compress="brotli")
    codec = EntryCodec(None)
    with pytest.raises(CorruptEntry):  # an id no version knows
        codec.decode_payload(1 | (3 << 2), b"data")


# ------------------------------------------------------------------ bad input


def test_bad_input_raises_and_stores_nothing(
    redis_url: str, namespace: str, client: redis.Redis
) -> None:
    with custom_cache(redis_url, namespace, max_entry_bytes=4096) as qc:
        with pytest.raises(TypeError, match="cannot cache value of type object"):
            qc.set("k", object())
        with pytest.raises(ValueError, match="too large"):
            qc.set("k", b"x" * 5000, compress=False)
        with pytest.raises(TypeError, match="cannot cache"):
            qc.get_or_set("k", object)
        with pytest.raises(ValueError, match="too large"):
            qc.get_or_set("k", lambda: "z" * 10_000, compress=False)
        for key in ("", None, 5):
            with pytest.raises(ValueError, match="non-empty strings"):
                qc.set(key, 1)  # type: ignore[arg-type]
        for tags in ([""], [None], ["ok", 3], ""):
            with pytest.raises(TypeError, match="non-empty strings"):
                qc.set("k", 1, tags=tags)  # type: ignore[arg-type]
        with pytest.raises(TypeError, match="non-empty strings"):
            qc.invalidate_tags("")
        with pytest.raises(ValueError, match="ttl"):
            qc.set("k", 1, ttl=0)
        assert entry_keys(client, qc, "k") == []
        assert qc.get("k", "nothing") == "nothing"


def test_glob_characters_and_non_ascii_are_literal_except_in_delete_pattern(
    cache: QueryCache,
) -> None:
    keys = ["user:*", "user:1", "user:[12]", "user:?", "ключ:✓", "タグ"]
    for i, key in enumerate(keys):
        assert cache.set(key, i, tags=[key])
    assert [cache.get(k) for k in keys] == list(range(len(keys)))
    assert cache.delete("user:*") is True  # only the literal key
    assert [cache.get(k) for k in keys] == [None, 1, 2, 3, 4, 5]
    cache.invalidate_tags("user:[12]")  # only the value tagged with exactly that
    assert [cache.get(k) for k in keys] == [None, 1, None, 3, 4, 5]
    cache.invalidate_tags("ключ:✓")
    assert cache.get("ключ:✓") is None and cache.get("タグ") == 5
    assert cache.delete_pattern("user:*") == 3  # a glob here: user:1, user:[12], user:?
    assert cache.get("user:1") is None and cache.get("タグ") == 5
