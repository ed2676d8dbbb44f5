"""``cached()`` / ``uncached()``: the ORM options a statement opts in or out with, and what
``cached()`` carries to the store.

The option is a :class:`~sqlalchemy.orm.UserDefinedOption` that SQLAlchemy hands to the
``do_orm_execute`` hook, which turns it into a :class:`CacheDirective` execution option.  The
directive then travels with the execution down to the cursor, where the real work happens, after
the session's autoflush has run.  ``propagate_to_loaders`` carries it to lazy and eager loads of
objects the statement returns.  ``uncached()`` marks a statement that must run uncached
whatever policy ``attach(..., default=..., tables=...)`` set (``_policy``); it carries nothing.

Both options are part of the statement's compiled-cache key by their class alone (not their
payload: ``ttl=60`` and ``ttl=600`` share one compiled form).  SQLAlchemy pairs a cached
compiled query's options with the executed statement's *by position* when it builds the
options of its eager and lazy loads (``QueryContext``); an option left out of the key would let
``.options(cached(), selectinload(...))`` reuse the form compiled for
``.options(selectinload(...), cached())`` (or for a statement without the option), and the
loads would then carry the wrong options: a ``cached()`` lost, or one gained.  In the key, each
order and presence compiles once, and the payload still comes from the executed statement
(SQLAlchemy hands loads the executed statement's form of every option but loader strategies).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import UserDefinedOption
from sqlalchemy.sql.cache_key import HasCacheKey

from .._compression import COMPRESSORS
from .._config import clean_names, seconds

#: execution option set by every cache's session wiring on the ORM statements it has seen, so
#: that the engine-level reading of ``cached()`` (``attach(engine)``) leaves them alone
SESSION_WIRED = "sqla_redis_cache.session_wired"


@dataclass(frozen=True, slots=True)
class CacheDirective:
    """What one cached execution asks for."""

    region: str | None = None
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    #: tables the statement depends on beyond those visible in its SQL (views, functions, text)
    tables: tuple[str, ...] = ()
    #: compression override: None (threshold), True/False, or a compressor name
    compress: bool | str | None = None
    #: soft TTL overriding the region's (refresh-ahead)
    refresh_after: float | None = None


class CachedOption(HasCacheKey, UserDefinedOption):
    """Marks a statement as cacheable; build it with :func:`cached`."""

    __slots__ = ()
    _cache_key_traversal = []  # noqa: RUF012  (keyed by its class only: module docstring)
    propagate_to_loaders = True
    payload: CacheDirective

    def __repr__(self) -> str:
        return f"cached({self.payload!r})"


class UncachedOption(HasCacheKey, UserDefinedOption):
    """Marks a statement as never cached; build it with :func:`uncached`."""

    __slots__ = ()
    _cache_key_traversal = []  # noqa: RUF012  (keyed by its class only: module docstring)
    propagate_to_loaders = True

    def __repr__(self) -> str:
        return "uncached()"


def uncached() -> UncachedOption:
    """Run this SELECT uncached, whatever the cache policy of its session or engine says.

    Like ``cached()``, it also applies to the lazy and eager loads of the objects the
    statement returns.
    """
    return UncachedOption()


def cached(
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    region: str | None = None,
    tables: Iterable[str] | str | None = None,
    compress: bool | str | None = None,
    refresh_after: float | None = None,
) -> CachedOption:
    """Cache this SELECT in Redis.

    :param ttl: seconds; defaults to the region's TTL.
    :param tags: names to invalidate the result by, with ``QueryCache.invalidate_tags``.
    :param region: a TTL profile (``db_query`` unless given).
    :param tables: extra tables the result depends on that do not appear in its SQL, such as
        the base tables of a view.  Also makes statements with ``text()`` fragments cacheable.
    :param compress: force compression on/off, or pick a compressor ("zlib", "zstd", "lz4").
    :param refresh_after: soft TTL in seconds: past it, one caller refreshes the entry in the
        background while the others keep getting it (refresh-ahead).
    """
    if ttl is not None:
        ttl = seconds("ttl", ttl)
    if refresh_after is not None:
        refresh_after = seconds("refresh_after", refresh_after)
    if compress is not None and not isinstance(compress, bool | str):
        raise TypeError("compress must be None, a bool or a compressor name")
    if isinstance(compress, str) and compress not in COMPRESSORS:
        raise ValueError(f"unknown compressor {compress!r}; choose one of {', '.join(COMPRESSORS)}")
    return CachedOption(
        CacheDirective(
            region=region,
            ttl=ttl,
            tags=clean_names("tags", tags),
            tables=clean_names("tables", tables),
            compress=compress,
            refresh_after=refresh_after,
        )
    )
