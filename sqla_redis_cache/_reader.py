"""Read-through with stampede protection: the one lookup both query results and generic values use.

A lookup is one round trip: ``MGET entry token₁ … tokenₙ`` (a pipeline of GETs on Redis Cluster).
A valid entry is a hit.  Otherwise dogpile's :class:`~dogpile.Lock` runs the dogpile algorithm
over a Redis lock: one caller builds the value while the others wait (bounded by ``lock_wait``)
and then re-read; past a region's soft TTL, one caller rebuilds while the others keep getting
the aged value.  Invalidated entries are never served; only aged ones are.

The stamps written with a new value are the tokens read *before* it was built (see
``_versions``).  When Redis fails at any step the value is built and returned uncached.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Generic, TypeVar

from dogpile import Lock, NeedRegenerationException

from ._codec import CorruptEntry, EntryCodec, Unencodable
from ._store import FAILED, Store
from ._versions import Versions

T = TypeVar("T")


class Reader:
    """Bound to one cache's store, versions and codec."""

    def __init__(self, store: Store, versions: Versions, codec: EntryCodec) -> None:
        self.store = store
        self.versions = versions
        self.codec = codec
        self.stats = store.stats

    def _open(self, values: Sequence[bytes | None]) -> tuple[float, Any] | None:
        entry = values[0]
        if entry is None:
            return None
        stamps = Versions.stamps(values[1:])
        if stamps is None:
            return None
        try:
            return self.codec.open(entry, stamps)
        except CorruptEntry:
            self.stats.corrupt += 1
            return None

    def read(
        self,
        key: str,
        deps: Sequence[str],
        build: Callable[[], T],
        *,
        ttl: float,
        refresh_after: float | None = None,
        encode: Callable[[T], Any] = lambda v: v,
        decode: Callable[[Any], T] = lambda v: v,
        compress: bool | None = None,
        lock_name: str | None = None,
    ) -> tuple[T, bool]:
        """The value for ``key`` and whether it came from the cache."""
        started = time.perf_counter()
        if self.versions.has_pending and not self.versions.settle():
            self.stats.bypasses += 1
            return build(), False
        keys = [key, *deps]
        values = self.store.mget(keys)
        if values is FAILED:
            self.stats.bypasses += 1
            return build(), False
        opened = self._open(values)
        if opened is not None and (
            refresh_after is None or time.time() - opened[0] < refresh_after
        ):
            value = decode(opened[1])
            self.stats.hit(time.perf_counter() - started)
            return value, True
        return _Fill(self, keys, values, build, ttl, encode, decode, compress).run(
            lock_name or key + ":lock", refresh_after, started
        )


class _Fill(Generic[T]):
    """One miss (or aged hit) going through dogpile's lock."""

    def __init__(
        self,
        reader: Reader,
        keys: list[str],
        values: list[bytes | None],
        build: Callable[[], T],
        ttl: float,
        encode: Callable[[T], Any],
        decode: Callable[[Any], T],
        compress: bool | None,
    ) -> None:
        self.reader = reader
        self.keys = keys
        self.values: list[bytes | None] | None = values
        self.first = True
        self.built = False
        self.build = build
        self.ttl = ttl
        self.encode = encode
        self.decode = decode
        self.compress = compress

    def value_and_created(self) -> tuple[T, float]:
        if self.first:
            self.first = False
        else:
            values = self.reader.store.mget(self.keys)
            self.values = None if values is FAILED else values
        opened = self._opened()
        if opened is None:
            raise NeedRegenerationException()
        return self.decode(opened[1]), opened[0]

    def _opened(self) -> tuple[float, Any] | None:
        return None if self.values is None else self.reader._open(self.values)

    def create(self) -> tuple[T, float]:
        reader = self.reader
        stamps = None
        if self.values is not None:
            stamps = reader.versions.ensure(self.keys[1:], self.values[1:])
        value = self.build()
        self.built = True
        if stamps is not None:
            try:
                entry = reader.codec.seal(stamps, self.encode(value), compress=self.compress)
            except Unencodable:
                reader.stats.uncacheable += 1
            else:
                reader.store.pipeline(
                    [("SET", self.keys[0], entry, "PX", max(1, int(self.ttl * 1000)))]
                )
        return value, time.time()

    def run(self, lock_name: str, refresh_after: float | None, started: float) -> tuple[T, bool]:
        reader = self.reader
        mutex = reader.store.lock(lock_name)
        with Lock(mutex, self.create, self.value_and_created, refresh_after) as value:
            result: T = value
        if self.built:
            reader.stats.misses += 1
            return result, False
        reader.stats.hit(time.perf_counter() - started)
        return result, True
