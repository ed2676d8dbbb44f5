"""``QueryCache.memoize``: the seed guide's AI-response cache, for any expensive function.

The key is the function's module and qualified name plus a digest of its arguments, bound to its
signature first (so ``f(1)`` and ``f(x=1)`` share an entry) and fingerprinted with the same rules
as query parameters: only values with a faithful ``repr`` (numbers, strings, bytes, dates,
Decimal, UUID and lists/tuples/dicts of them).  Anything else is a clear ``TypeError`` at call
time, never a silent collision; pass ``key=`` to derive the key yourself (e.g. for methods).

Entries are generic values (``<ns>:k:memo:<name>:<digest>``), so tags, ``invalidate_tags``,
``clear()`` and ``delete_pattern("memo:*")`` reach them.  Synchronous functions go through the
shared read-through (one round trip per hit, a Redis lock so one caller builds a missing value).
Coroutine functions do the same without ever blocking the event loop on the lock: the builder
holds the Redis lock while it awaits, the others poll the entry with ``asyncio.sleep`` until it
appears or ``lock_wait`` passes.  Their Redis commands are the store's short, timeout-bounded
synchronous calls.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import inspect
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, TypeVar

from . import _generic
from ._keys import UnkeyableParameter, fingerprint_parameters
from ._options import _clean
from ._store import FAILED

if TYPE_CHECKING:
    from ._cache import Core

F = TypeVar("F", bound=Callable[..., Any])
_POLL_SECONDS = 0.01


def _decode(payload: Any) -> Any:
    return payload[1]


class _Memo:
    """What a memoized function needs to find, build and invalidate its entries."""

    def __init__(
        self,
        core: Core,
        fn: Callable[..., Any],
        ttl: float | None,
        tags: tuple[str, ...],
        region: str | None,
        key: Callable[..., str] | None,
    ) -> None:
        self.core = core
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.signature = inspect.signature(fn)
        self.ttl = _generic._ttl(core, ttl, region)
        self.tags = tags
        self.deps = core.keys.dependencies((), tags)
        self.key_fn = key

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The generic cache key (relative to the namespace) of one call."""
        if self.key_fn is not None:
            return f"memo:{self.name}:{self.key_fn(*args, **kwargs)}"
        bound = self.signature.bind(*args, **kwargs)
        bound.apply_defaults()
        try:
            fingerprint = fingerprint_parameters(dict(bound.arguments))
        except UnkeyableParameter as exc:
            raise TypeError(
                f"cannot memoize {self.name}: argument of type {exc} has no stable key; "
                "pass key=<callable returning a string> to memoize()"
            ) from None
        digest = hashlib.blake2b(fingerprint.encode(), digest_size=16).hexdigest()
        return f"memo:{self.name}:{digest}"

    def call_sync(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        return _generic.get_or_set(
            self.core, self.key(args, kwargs), lambda: self.fn(*args, **kwargs),
            ttl=self.ttl, tags=self.tags,
        )  # fmt: skip

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        core = self.core
        stats = core.stats
        redis_key = core.keys.generic(self.key(args, kwargs))
        keys = [redis_key, *self.deps]
        started = time.perf_counter()
        deadline = time.monotonic() + core.config.lock_wait
        mutex = None
        try:
            while True:
                values = core.store.mget(keys)
                if values is FAILED:
                    stats.bypasses += 1
                    return await self.fn(*args, **kwargs)
                opened = core.reader._open(redis_key, values, _decode, None)
                if opened is not None:
                    elapsed = time.perf_counter() - started
                    if mutex is not None:
                        stats.lock_waited(elapsed)
                    stats.hit(elapsed)
                    return opened[1]
                if mutex is None:
                    mutex = core.store.lock(redis_key + ":lock")
                    if mutex.acquire(wait=False):
                        return await self._build(keys, values, args, kwargs)
                if time.monotonic() >= deadline:  # the builder is too slow: do it ourselves
                    return await self._build(keys, values, args, kwargs)
                await asyncio.sleep(_POLL_SECONDS)
        finally:
            if mutex is not None:
                mutex.release()

    async def _build(
        self, keys: list[str], values: list[bytes | None], args: Any, kwargs: Any
    ) -> Any:
        core = self.core
        stamps = core.versions.ensure(keys[1:], values[1:])
        value = await self.fn(*args, **kwargs)
        core.stats.misses += 1
        if stamps is not None:
            entry = _generic.seal_value(core, stamps, self.tags, value, None)
            core.store.pipeline([("SET", keys[0], entry, "PX", max(1, int(self.ttl * 1000)))])
        return value

    def invalidate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return _generic.delete(self.core, self.key(args, kwargs))


def memoize(
    core: Core,
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    region: str | None = None,
    key: Callable[..., str] | None = None,
) -> Callable[[F], F]:
    clean_tags = _clean("tags", tags)
    _generic._ttl(core, ttl, region)  # bad ttl or unknown region: fail here, not at call time

    def decorate(fn: F) -> F:
        memo = _Memo(core, fn, ttl, clean_tags, region, key)
        wrapper: Any
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def async_wrapper(*args: Any, **kwargs: Any) -> Any:
                return await memo.call_async(args, kwargs)

            wrapper = async_wrapper
        else:

            @functools.wraps(fn)
            def sync_wrapper(*args: Any, **kwargs: Any) -> Any:
                return memo.call_sync(args, kwargs)

            wrapper = sync_wrapper
        wrapper.invalidate = lambda *a, **kw: memo.invalidate(a, kw)
        wrapper.cache_key = lambda *a, **kw: memo.key(a, kw)
        return wrapper  # type: ignore[no-any-return]

    return decorate
