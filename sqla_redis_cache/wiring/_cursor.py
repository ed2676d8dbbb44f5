"""A DBAPI-cursor look-alike over rows that came from the cache.

Serving a hit at the cursor level means SQLAlchemy builds the result exactly as it would from
the database: the same result processors, the same ORM loading, identity map rules and
``unique()`` requirements.  Nothing is merged into objects already in the session.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from ..storage._rows import Description


class CachedCursor:
    """Implements the read half of PEP 249's cursor over a list of rows."""

    __slots__ = ("_pos", "_rows", "arraysize", "connection", "description", "hit", "rowcount")

    lastrowid = None

    def __init__(
        self,
        description: Description,
        rows: list[tuple[Any, ...]],
        connection: Any = None,
        hit: bool = False,
    ) -> None:
        #: True when the rows came from the cache rather than the database
        self.hit = hit
        #: the DBAPI connection of the cursor this one stands in for (PEP 249 extension)
        self.connection = connection
        self.description = description
        self._rows = rows
        self._pos = 0
        self.rowcount = len(rows)
        self.arraysize = 1

    def fetchone(self) -> tuple[Any, ...] | None:
        if self._pos >= len(self._rows):
            return None
        row = self._rows[self._pos]
        self._pos += 1
        return row

    def fetchmany(self, size: int | None = None) -> list[tuple[Any, ...]]:
        size = self.arraysize if size is None else size
        rows = self._rows[self._pos : self._pos + size]
        self._pos += len(rows)
        return rows

    def fetchall(self) -> list[tuple[Any, ...]]:
        rows = self._rows[self._pos :] if self._pos else self._rows
        self._pos = len(self._rows)
        return rows

    def __iter__(self) -> Iterator[tuple[Any, ...]]:
        while (row := self.fetchone()) is not None:
            yield row

    def close(self) -> None:
        self._rows = []

    async def _async_soft_close(self) -> None:
        """Called by SQLAlchemy's asyncio extension on the cursor of a buffered Core result
        (``AsyncSession.execute(select(table.c.x))``); the rows are already in memory."""

    def setinputsizes(self, *args: Any) -> None:
        pass

    def setoutputsize(self, *args: Any) -> None:
        pass
