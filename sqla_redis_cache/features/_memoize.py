"""``QueryCache.memoize``: cache the results of any expensive function (an API call, a model's
completion, a report) by its arguments.

The key is the function's module and qualified name plus a digest of its arguments, bound to its
signature first (so ``f(1)`` and ``f(x=1)`` share an entry) and fingerprinted with the same rules
as query parameters: only values with a faithful ``repr`` (numbers, strings, bytes, dates,
Decimal, UUID and lists/tuples/dicts of them).  Anything else is a clear ``TypeError`` at call
time, never a silent collision; pass ``key=`` to derive the key yourself (e.g. for methods).

Entries are generic values (``<ns>:k:memo:<name>:<digest>``), so tags, ``invalidate_tags``,
``clear()`` and ``delete_pattern("memo:*")`` reach them.  Synchronous functions go through the
shared read-through (one round trip per hit, a Redis lock so one caller builds a missing value).
Coroutine functions take the very same path through the cache's asyncio I/O (``io._asyncio``):
Redis commands are awaited on the running loop and concurrent callers of one loop queue on an
``asyncio.Lock`` in front of the Redis lock, so the event loop never blocks (this needs the
``asyncio`` extra, which brings greenlet).
"""

from __future__ import annotations

import functools
import hashlib
import inspect
from collections.abc import Callable, Iterable
from typing import Any, TypeVar

from .._config import clean_names
from ..io._asyncio import awaiting
from ..storage import Storage
from ..storage._keys import UnkeyableParameter, fingerprint_parameters
from . import _generic

F = TypeVar("F", bound=Callable[..., Any])


class _Memo:
    """What a memoized function needs to find, build and invalidate its entries."""

    def __init__(
        self,
        storage: Storage,
        fn: Callable[..., Any],
        ttl: float | None,
        tags: tuple[str, ...],
        region: str | None,
        key: Callable[..., str] | None,
    ) -> None:
        self.storage = storage
        self.fn = fn
        self.name = f"{fn.__module__}.{fn.__qualname__}"
        self.signature = inspect.signature(fn)
        self.ttl = _generic.ttl_seconds(storage, ttl, region)
        self.tags = tags
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
            self.storage, self.key(args, kwargs), lambda: self.fn(*args, **kwargs),
            ttl=self.ttl, tags=self.tags,
        )  # fmt: skip

    async def call_async(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        loop_router = self.storage.async_router()
        key = self.key(args, kwargs)
        read = functools.partial(_generic.get_or_set, ttl=self.ttl, tags=self.tags)
        creator = awaiting(loop_router, lambda: self.fn(*args, **kwargs))
        return await loop_router.run(read, self.storage, key, creator)

    def invalidate(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> bool:
        return _generic.delete(self.storage, self.key(args, kwargs))


def memoize(
    storage: Storage,
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    region: str | None = None,
    key: Callable[..., str] | None = None,
) -> Callable[[F], F]:
    clean_tags = clean_names("tags", tags)
    _generic.ttl_seconds(storage, ttl, region)  # bad ttl, unknown region: fail here, not later

    def decorate(fn: F) -> F:
        memo = _Memo(storage, fn, ttl, clean_tags, region, key)
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
