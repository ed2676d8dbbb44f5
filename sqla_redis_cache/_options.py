"""``cached()``: the ORM option a statement opts in with, and what it carries to the store.

The option is a :class:`~sqlalchemy.orm.UserDefinedOption`, so SQLAlchemy leaves it out of the
statement's compiled-cache key (adding it never forces a recompile) and hands it to the
``do_orm_execute`` hook, which turns it into a :class:`CacheDirective` execution option.  The
directive then travels with the execution down to the cursor, where the real work happens, after
the session's autoflush has run.  ``propagate_to_loaders`` carries it to lazy and eager loads of
objects the statement returns.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from sqlalchemy.orm import UserDefinedOption


@dataclass(frozen=True, slots=True)
class CacheDirective:
    """What one cached execution asks for."""

    region: str | None = None
    ttl: float | None = None
    tags: tuple[str, ...] = ()
    #: tables the statement depends on beyond those visible in its SQL (views, functions, text)
    tables: tuple[str, ...] = ()


class CachedOption(UserDefinedOption):
    """Marks a statement as cacheable; build it with :func:`cached`."""

    __slots__ = ()
    propagate_to_loaders = True
    payload: CacheDirective

    def __repr__(self) -> str:
        return f"cached({self.payload!r})"


def _clean(kind: str, values: Iterable[str] | str | None) -> tuple[str, ...]:
    if values is None:
        return ()
    if isinstance(values, str):
        values = (values,)
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{kind} must be non-empty strings, got {value!r}")
        out.append(value)
    return tuple(sorted(set(out)))


def cached(
    *,
    ttl: float | None = None,
    tags: Iterable[str] | str | None = None,
    region: str | None = None,
    tables: Iterable[str] | str | None = None,
) -> CachedOption:
    """Cache this SELECT in Redis.

    :param ttl: seconds; defaults to the region's TTL.
    :param tags: names to invalidate the result by, with ``QueryCache.invalidate_tags``.
    :param region: a TTL profile (``db_query`` unless given).
    :param tables: extra tables the result depends on that do not appear in its SQL, such as
        the base tables of a view.  Also makes statements with ``text()`` fragments cacheable.
    """
    if ttl is not None and ttl <= 0:
        raise ValueError("ttl must be positive")
    return CachedOption(
        CacheDirective(
            region=region, ttl=ttl, tags=_clean("tags", tags), tables=_clean("tables", tables)
        )
    )
