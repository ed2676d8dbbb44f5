"""The generic key/value API: set, get, get_or_set, delete, delete_pattern.

Generic values live under ``ns:k:<key>`` in the same authenticated envelope as query results,
with the payload ``[tags, value]``.  Their stamps are the tokens of the namespace and of their
tags, so ``invalidate_tags`` and ``clear()`` reach them exactly as they reach cached queries.
A value stored with tags costs a second round trip on ``get`` (to read the tag tokens named in
the entry); ``get_or_set`` knows the tags up front and reads everything in one.

Keys and tags are literal strings everywhere (glob characters included) except in
``delete_pattern``, whose argument is a Redis glob relative to the namespace.

Bad input raises before anything is written: a TTL that is not a finite number of seconds
between 1 ms and ten years is a ValueError (``get_or_set`` checks it before running the
creator), a value the codec cannot encode or that would not read back as stored (a dict keyed by
tuples: msgpack returns the keys as lists) is a TypeError, one whose entry exceeds
``max_entry_bytes`` a ValueError (``get_or_set`` raises them too, after running the creator,
rather than silently caching nothing).  With a secret such values travel pickled instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from .._config import clean_names, seconds
from ..io._ops import Set, Unlink
from ..storage import Storage
from ..storage._codec import CorruptEntry, EntryCodec, EntryTooLarge, Unencodable
from ..storage._keys import escape_glob
from ..storage._store import FAILED
from ..storage._versions import Versions

T = TypeVar("T")
_MISSING: Any = object()


def _deps(storage: Storage, tags: Sequence[str]) -> list[str]:
    return storage.keys.dependencies((), tags)


def ttl_seconds(storage: Storage, ttl: float | None, region: str | None) -> float:
    """``ttl`` checked, else the TTL of ``region`` (the default region when None)."""
    if ttl is not None:
        return seconds("ttl", ttl)
    return storage.config.region(region).ttl


def _bad_value(what: str, exc: Unencodable) -> Exception:
    if isinstance(exc, EntryTooLarge):
        return ValueError(f"{what} is too large to cache: {exc}")
    return TypeError(f"cannot cache {what}: {exc}")


def seal_value(
    storage: Storage, stamps: bytes, tags: Sequence[str], value: Any, compress: bool | str | None
) -> bytes:
    try:
        return storage.codec.seal(stamps, [list(tags), value], compress=compress, verify=True)
    except Unencodable as exc:
        raise _bad_value(f"value of type {type(value).__qualname__}", exc) from exc


def set_value(
    storage: Storage,
    key: str,
    value: Any,
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    compress: bool | str | None = None,
    region: str | None = None,
) -> bool:
    """Store ``value``; False if Redis was unavailable.  Bad input raises, storing nothing."""
    redis_key = storage.keys.generic(key)
    clean_tags = clean_names("tags", tags)
    seconds = ttl_seconds(storage, ttl, region)
    # validate the value before touching Redis
    seal_value(storage, b"", clean_tags, value, compress)
    deps = _deps(storage, clean_tags)
    tokens = storage.store.get_many(deps)
    if tokens is FAILED:
        return False
    stamps = storage.versions.ensure(deps, tokens)
    if stamps is None:
        return False
    entry = seal_value(storage, stamps, clean_tags, value, compress)
    reply = storage.store.run([Set(redis_key, entry, int(seconds * 1000))])
    return reply is not FAILED


def get_value(storage: Storage, key: str, default: Any = None) -> Any:
    redis_key = storage.keys.generic(key)
    if storage.versions.owes and not storage.versions.settle():
        return default
    started = time.perf_counter()
    values = storage.store.read([redis_key, storage.keys.all_key])
    if values is FAILED:
        return default
    entry, all_token = values
    value = _open(storage, entry, all_token)
    if value is _MISSING:
        storage.stats.misses += 1
        return default
    storage.stats.hit(time.perf_counter() - started)
    return value


def _open(storage: Storage, entry: bytes | None, all_token: bytes | None) -> Any:
    if entry is None or all_token is None:
        return _MISSING
    codec: EntryCodec = storage.codec
    try:
        opened = codec.open(entry, None)
    except CorruptEntry:
        storage.stats.corrupt += 1
        return _MISSING
    assert opened is not None
    tags, value = opened[1]
    tokens: list[bytes | None] = [all_token]
    if tags:
        more = storage.store.read([storage.keys.tag(t) for t in tags])
        if more is FAILED:
            return _MISSING
        tokens.extend(more)
    stamps = Versions.stamps(tokens)
    if stamps is None or codec.stamps_of(entry) != stamps:
        return _MISSING
    return value


def get_or_set(
    storage: Storage,
    key: str,
    creator: Callable[[], T],
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    compress: bool | str | None = None,
    region: str | None = None,
) -> T:
    """Cache-aside: ``creator`` runs once per miss across processes (stampede lock)."""
    return read_through(
        storage, key, creator, ttl=ttl, tags=tags, compress=compress, region=region
    )[0]


def read_through(
    storage: Storage,
    key: str,
    creator: Callable[[], T],
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    compress: bool | str | None = None,
    region: str | None = None,
    store_if: Callable[[T], bool] | None = None,
) -> tuple[T, bool]:
    """(value, True when it came from the cache): :func:`get_or_set` for callers that must
    know, such as the ASGI middleware (a response built by ``creator`` was already sent).
    ``store_if(value)`` False keeps a built value out of the cache."""
    redis_key = storage.keys.generic(key)
    clean_tags = clean_names("tags", tags)
    seconds = ttl_seconds(storage, ttl, region)
    refresh = storage.config.region(region).refresh_after if ttl is None else None

    def encode(value: T) -> list[Any]:
        return [list(clean_tags), value]

    def decode(payload: list[Any]) -> T:
        result: T = payload[1]
        return result

    try:
        return storage.reader.read(
            redis_key,
            _deps(storage, clean_tags),
            creator,
            ttl=seconds,
            refresh_after=refresh,
            encode=encode,
            decode=decode,
            compress=compress,
            refresh=creator if refresh is not None else None,
            strict=True,
            store_if=store_if,
        )
    except Unencodable as exc:
        raise _bad_value(f"the value returned by {creator!r}", exc) from exc


def delete(storage: Storage, key: str) -> bool:
    reply = storage.store.run([Unlink(storage.keys.generic(key))])
    return reply is not FAILED and bool(reply[0])


def delete_pattern(storage: Storage, pattern: str) -> int:
    """Delete generic keys matching a glob relative to the namespace; how many, -1 when Redis
    failed (as ``clear()`` reports it)."""
    if not isinstance(pattern, str) or not pattern:
        raise ValueError("pattern must be a non-empty string")
    deleted = storage.store.delete_matching(storage.keys.pattern(pattern))
    return -1 if deleted is FAILED else int(deleted)


def delete_namespace(storage: Storage) -> int:
    """Delete every key of the namespace (after ``clear()`` invalidated them all); how many,
    -1 when Redis failed."""
    everything = escape_glob(storage.keys.prefix) + "*"
    deleted = storage.store.delete_matching(everything)
    if deleted is FAILED:
        return -1
    storage.stats.drain()[1]()  # the shared stats went too: do not resurrect them on close
    return int(deleted)
