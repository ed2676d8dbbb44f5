"""Read-through with stampede protection: the one lookup both query results and generic values use.

A lookup is one round trip: ``MGET entry token₁ … tokenₙ`` (a pipeline of GETs on Redis Cluster).
A valid entry is a hit.  Otherwise dogpile's :class:`~dogpile.Lock` runs the dogpile algorithm
over a Redis lock: one caller builds the value while the others wait (bounded by ``lock_wait``)
and then re-read; past a region's soft TTL, one caller rebuilds while the others keep getting
the aged value.  Invalidated entries are never served; only aged ones are.

The stamps written with a new value are the tokens read *before* it was built (see
``_versions``).  When Redis fails at any step the value is built and returned uncached.

Refresh-ahead: when the caller can hand over a *detached* builder (one that does not need the
caller's connection or transaction), the lock winner past the soft TTL does not rebuild inline:
it passes the lock to a small background pool and returns the aged value like everyone else.
The background job re-reads the tokens first, so what it stores is stamped with tokens read
before its own query.  Without a detached builder the winner rebuilds inline (dogpile's default).

The near cache has two parts.  :class:`NearCache` keeps decoded values of immutable results,
keyed by Redis key and checked against the entry's MAC: it saves decoding.  The tracked values
(``_near``, through ``Store.read``) keep the entry and its tokens themselves in process while
Redis's client tracking says they are unchanged: a repeated hit then sends nothing to Redis.
Without tracking (``near_cache_tracking=False``, a custom I/O) every lookup reads the entry and
the current tokens from Redis.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Generic, TypeVar

from dogpile import Lock, NeedRegenerationException

from ..io._ops import Set
from ..io._protocol import Mutex
from ._capture import CaptureGate
from ._codec import CorruptEntry, EntryCodec, EntryTooLarge, Unencodable
from ._stats import Tally
from ._store import FAILED, Store
from ._versions import Versions

T = TypeVar("T")
log = logging.getLogger("sqla_redis_cache")

#: background refresh threads per cache: refreshes are rare (one per key per soft TTL)
REFRESH_WORKERS = 2


class NearCache:
    """A bounded in-process map: key -> (entry MAC, created, decoded value)."""

    __slots__ = ("_data", "size")

    def __init__(self, size: int) -> None:
        self.size = size
        self._data: dict[str, tuple[bytes, float, Any]] = {}

    def get(self, key: str, mac: bytes) -> tuple[float, Any] | None:
        item = self._data.get(key)
        if item is None or item[0] != mac:
            return None
        return item[1], item[2]

    def put(self, key: str, mac: bytes, created: float, value: Any) -> None:
        if self.size <= 0:
            return
        data = self._data
        if len(data) >= self.size and key not in data:
            try:
                del data[next(iter(data))]
            except (StopIteration, KeyError, RuntimeError):
                pass
        data[key] = (mac, created, value)

    def clear(self) -> None:
        self._data.clear()


class Reader:
    """Bound to one cache's store, versions and codec."""

    def __init__(
        self,
        store: Store,
        versions: Versions,
        codec: EntryCodec,
        near_size: int = 0,
        capture: CaptureGate | None = None,
    ) -> None:
        self.store = store
        #: change capture: the listener's liveness in the lookup's MGET (``_capture``)
        self.capture = capture
        self.versions = versions
        self.codec = codec
        self.stats = store.stats
        self.near = NearCache(near_size)
        self._pool: ThreadPoolExecutor | None = None
        self._pool_lock = threading.Lock()

    def submit(self, job: Callable[[], None]) -> bool:
        """Run ``job`` on the background refresh pool; False if the reader is closed."""
        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(
                    REFRESH_WORKERS, thread_name_prefix="sqla-redis-cache-refresh"
                )
            try:
                self._pool.submit(job)
            except RuntimeError:  # shut down
                return False
        return True

    def close(self, wait: bool = True) -> None:
        with self._pool_lock:
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.shutdown(wait=wait)

    def open_entry(
        self,
        key: str,
        values: Sequence[bytes | None],
        decode: Callable[[Any], Any],
        keep: Callable[[Any], bool] | None,
        count: bool = True,
    ) -> tuple[float, Any] | None:
        """(created, decoded value) of a fresh, valid entry; None otherwise.

        ``count``: count a corrupt entry in the stats (once per lookup, not per re-read).
        """
        entry = values[0]
        if entry is None:
            return None
        stamps = Versions.stamps(values[1:])
        if stamps is None or EntryCodec.stamps_of(entry) != stamps:
            return None
        mac = EntryCodec.mac_of(entry)
        if keep is not None:
            local = self.near.get(key, mac)
            if local is not None:
                return local
        try:
            opened = self.codec.open(entry, None)
        except CorruptEntry:
            self.stats.corrupt += count
            return None
        assert opened is not None
        try:
            value = decode(opened[1])
        except Exception:
            self.stats.corrupt += count
            return None
        if keep is not None and keep(value):
            self.near.put(key, mac, opened[0], value)
        return opened[0], value

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
        compress: bool | str | None = None,
        lock_name: str | None = None,
        keep_local: Callable[[T], bool] | None = None,
        refresh: Callable[[], T] | None = None,
        strict: bool = False,
        store_if: Callable[[T], bool] | None = None,
        tally: Tally | None = None,
        label: str | None = None,
        live: str | None = None,
    ) -> tuple[T, bool]:
        """The value for ``key`` and whether it came from the cache.

        ``keep_local(value)`` says whether a decoded value may be shared through the near cache
        (only immutable values may); None keeps nothing locally.  ``refresh`` is a builder safe
        to run on another thread, used for refresh-ahead in the background.  ``strict`` raises
        :class:`Unencodable` for a value that cannot be stored instead of returning it uncached.
        ``store_if(value)`` False returns a built value without storing it (waiters on the lock
        then build their own).  ``tally``: the per-table / per-region counters of this read's
        group (``_stats``); ``label``: what a "not cached" log line names (the statement).
        ``live``: the change-capture liveness key the value depends on (``_capture``): read in
        the same round trip; when it is missing the value is built and nothing is stored.
        """
        started = time.perf_counter()
        if self.versions.owes and not self.versions.settle():
            self.stats.bypasses += 1
            if tally is not None:
                tally.bypasses += 1
            return build(), False
        keys = [key, *deps]
        capture = self.capture
        if live is None and (capture is None or time.monotonic() < capture.next_load):
            # no table under change capture: the tracked near cache may answer
            values, alive = self.store.read(keys), True
        else:  # the liveness key (or the captured set) rides along: always from Redis
            values, alive = capture.get_many(self.store, keys, live)  # type: ignore[union-attr]
        if values is FAILED or not alive:
            if values is not FAILED and capture is not None:
                capture.no_listener()
            self.stats.bypasses += 1
            if tally is not None:
                tally.bypasses += 1
            return build(), False
        opened = self.open_entry(key, values, decode, keep_local)
        if opened is not None and (
            refresh_after is None or time.time() - opened[0] < refresh_after
        ):
            self.stats.hit(time.perf_counter() - started)
            if tally is not None:
                tally.hits += 1
            return opened[1], True  # type: ignore[no-any-return]
        fill = _Fill(self, keys, values, build, ttl, encode, decode, compress, keep_local)
        fill.aged = opened is not None
        fill.opened = opened
        fill.refresh = refresh
        fill.strict = strict
        fill.store_if = store_if
        fill.tally = tally
        fill.label = label
        return fill.run(lock_name or key + ":lock", refresh_after, started)


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
        compress: bool | str | None,
        keep_local: Callable[[T], bool] | None,
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
        self.keep_local = keep_local
        self.aged = False
        self.refresh: Callable[[], T] | None = None
        self.strict = False
        self.store_if: Callable[[T], bool] | None = None
        self.opened: tuple[float, Any] | None = None
        self.tally: Tally | None = None
        self.label: str | None = None
        #: the value could not be stored: the execution counts as uncacheable, not a miss
        self.refused = False

    def value_and_created(self) -> tuple[T, float]:
        if self.first:  # what read() already opened: no second decode
            self.first = False
            opened = self.opened
        else:
            values = self.reader.store.get_many(self.keys)
            self.values = None if values is FAILED else values
            opened = (
                None
                if self.values is None
                else self.reader.open_entry(
                    self.keys[0], self.values, self.decode, self.keep_local, count=False
                )
            )
        if opened is None:
            raise NeedRegenerationException()
        return opened[1], opened[0]

    def create(self) -> tuple[T, float]:
        stamps = None
        if self.values is not None:
            stamps = self.reader.versions.ensure(
                self.keys[1:], self.values[1:], max(1, int(self.ttl * 1000))
            )
        value = self.build()
        self.built = True
        return value, self.store(stamps, value)

    def store(self, stamps: bytes | None, value: T) -> float:
        reader = self.reader
        created = time.time()
        if stamps is None or (self.store_if is not None and not self.store_if(value)):
            return created
        try:
            entry = reader.codec.seal(  # values from user code (strict) must read back
                stamps,
                self.encode(value),
                compress=self.compress,
                created=created,
                verify=self.strict,
            )
        except Unencodable as exc:
            self.refused = True
            reason = "entry_too_large" if isinstance(exc, EntryTooLarge) else "unencodable_value"
            reader.stats.refused(reason, self.label or self.keys[0])
            if self.strict:
                raise
            return created
        reader.store.run([Set(self.keys[0], entry, max(1, int(self.ttl * 1000)))])
        if self.tally is not None:
            self.tally.bytes += len(entry)
        if self.keep_local is not None and self.keep_local(value):
            reader.near.put(self.keys[0], EntryCodec.mac_of(entry), created, value)
        return created

    def refresh_in_background(self, mutex: Mutex) -> None:
        """dogpile's ``async_creator``: owns ``mutex`` from here on and releases it."""
        refresh = self.refresh
        assert refresh is not None
        reader = self.reader

        def job() -> None:
            try:
                values = reader.store.get_many(self.keys)  # tokens before the query
                if values is FAILED:
                    return
                stamps = reader.versions.ensure(
                    self.keys[1:], values[1:], max(1, int(self.ttl * 1000))
                )
                if stamps is not None:
                    self.store(stamps, refresh())
            except Exception:
                log.warning("background refresh of %s failed", self.keys[0], exc_info=True)
            finally:
                mutex.release()

        if not reader.submit(job):
            mutex.release()

    def run(self, lock_name: str, refresh_after: float | None, started: float) -> tuple[T, bool]:
        reader = self.reader
        mutex = reader.store.lock(lock_name)
        # background threads cannot drive an event loop's I/O: refresh inline there
        background = (
            self.refresh_in_background
            if self.refresh is not None and not reader.store.routed
            else None
        )
        lock = Lock(mutex, self.create, self.value_and_created, refresh_after, background)  # type: ignore[no-untyped-call]
        with lock as value:
            result: T = value
        tally = self.tally
        if self.built:
            if not self.refused:  # a value that cannot be stored was counted as uncacheable
                reader.stats.misses += 1
                if tally is not None:
                    tally.misses += 1
            return result, False
        elapsed = time.perf_counter() - started
        if not self.aged:  # missed, then got another caller's value: we waited on its lock
            reader.stats.lock_waited(elapsed)
        reader.stats.hit(elapsed)
        if tally is not None:
            tally.hits += 1
        return result, True
