"""asyncio twins of the QueryCache API, as a mixin kept apart from the synchronous facade.

Each method runs the synchronous implementation in SQLAlchemy's greenlet, where every Redis call
is awaited on the running loop (see ``io._asyncio``): the same semantics by construction, and the
event loop never blocks.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from functools import partial
from typing import TYPE_CHECKING, Any, TypeVar

from .features import _generic
from .io._asyncio import awaiting

if TYPE_CHECKING:
    from .io._asyncio import LoopRouter
    from .storage import Storage

T = TypeVar("T")


class AsyncAPI:
    """``aget``, ``aset``, ``aget_or_set``, ``adelete``, ``adelete_pattern``,
    ``ainvalidate_tables``, ``ainvalidate_tags`` and ``aclose``."""

    _storage: Storage

    if TYPE_CHECKING:  # provided by QueryCache

        def invalidate_tables(self, *tables: str) -> bool: ...
        def invalidate_tags(self, *tags: str) -> bool: ...
        def close(self) -> None: ...

    def _async_router(self) -> LoopRouter:
        return self._storage.async_router()

    async def aget(self, key: str, default: Any = None) -> Any:
        """Awaitable :meth:`get`."""
        return await self._async_router().run(_generic.get_value, self._storage, key, default)

    async def aset(
        self,
        key: str,
        value: Any,
        *,
        ttl: float | None = None,
        tags: Iterable[str] | str | None = None,
        compress: bool | str | None = None,
        region: str | None = None,
    ) -> bool:
        """Awaitable :meth:`set`."""
        fn = partial(_generic.set_value, ttl=ttl, tags=tags, compress=compress, region=region)
        result: bool = await self._async_router().run(fn, self._storage, key, value)
        return result

    async def aget_or_set(
        self,
        key: str,
        creator: Callable[[], Awaitable[T]] | Callable[[], T],
        *,
        ttl: float | None = None,
        tags: Iterable[str] | str | None = None,
        compress: bool | str | None = None,
        region: str | None = None,
    ) -> T:
        """Awaitable :meth:`get_or_set`; ``creator`` may be a coroutine function.

        Concurrent misses of one loop wait on an asyncio lock while one of them runs
        ``creator`` (and on the Redis lock across processes).
        """
        router = self._async_router()
        fn = partial(_generic.get_or_set, ttl=ttl, tags=tags, compress=compress, region=region)
        result: T = await router.run(fn, self._storage, key, awaiting(router, creator))
        return result

    async def adelete(self, key: str) -> bool:
        """Awaitable :meth:`delete`."""
        return await self._async_router().run(_generic.delete, self._storage, key)

    async def adelete_pattern(self, pattern: str) -> int:
        """Awaitable :meth:`delete_pattern`."""
        return await self._async_router().run(_generic.delete_pattern, self._storage, pattern)

    async def ainvalidate_tables(self, *tables: str) -> bool:
        """Awaitable :meth:`invalidate_tables`."""
        return await self._async_router().run(lambda: self.invalidate_tables(*tables))

    async def ainvalidate_tags(self, *tags: str) -> bool:
        """Awaitable :meth:`invalidate_tags`."""
        return await self._async_router().run(lambda: self.invalidate_tags(*tags))

    async def aclose(self) -> None:
        """Close the running loop's asyncio Redis connections, then as :meth:`close`.

        Call it from the loop that used the cache, e.g. at the end of a FastAPI lifespan.
        """
        await self._async_router().aclose()
        self.close()
