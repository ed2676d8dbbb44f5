"""The keys a cached read's entry depends on, memoised off the hit path.

Every lookup reads its entry together with the version tokens it was stamped with, in one
``MGET``: the namespace token, a token per table read (or, for a table read fine-grained, its
unknown-rows token and one token per bound value, see ``_values``) and a token per tag.  Those
key lists are the same for every execution of a statement shape, so they are built once per
(tables, tags, region) and kept here, with what else a read of that group needs:

- the per-table / per-region statistics tally (``storage._stats.Tally``), so counting costs a
  hit one increment;
- the change-capture liveness key, when a table read is captured (``storage._capture``): the
  memo is rebuilt when the captured set changes (its ``generation``).

Value keys (``<table>.<column> = <value>``) depend on each execution's parameters; they are
memoised per (table, column, value).  Every memo is bounded: past its size it is emptied, which
costs a rebuild, never a wrong key.
"""

from __future__ import annotations

from typing import Any

from .._config import CacheConfig
from ..storage._capture import CaptureGate
from ..storage._keys import KeyBuilder
from ..storage._stats import StatsRecorder, Tally
from ..storage._store import Store

__all__ = ["EntryDependencies"]

#: (tables, tags, region) groups, and fine-grained base lists, kept at most
_GROUPS = 4096
#: value keys kept at most
_VALUES = 65536


class EntryDependencies:
    """The dependency keys of one cache's entries (see the module docstring)."""

    def __init__(
        self,
        config: CacheConfig,
        keys: KeyBuilder,
        stats: StatsRecorder,
        capture: CaptureGate | None,
        store: Store,
    ) -> None:
        self.config = config
        self.keys = keys
        self.stats = stats
        #: change capture: which tables need a live listener (``storage._capture``)
        self.capture = capture
        self.store = store
        self._groups: dict[Any, tuple[list[str], Tally | None, str | None, int]] = {}
        self._fine: dict[Any, list[str]] = {}
        self._values: dict[tuple[str, str, str], str] = {}

    def group(
        self, tables: frozenset[str], tags: tuple[str, ...], region: str | None
    ) -> tuple[list[str], Tally | None, str | None]:
        """The dependency keys of an entry, the statistics tally of its group, and the
        change-capture liveness key its reads need (None when no table is captured)."""
        memo = (tables, tags, region)
        found = self._groups.get(memo)
        capture = self.capture
        if capture is not None and not capture.primed:
            capture.prime(self.store)
        generation = 0 if capture is None else capture.generation
        if found is None or found[3] != generation:
            if len(self._groups) > _GROUPS:
                self._groups.clear()
            tally = None
            if self.config.table_stats:
                tally = self.stats.tally(tables, region or self.config.default_region)
            live = None if capture is None else capture.live_key_for(tables)
            found = self._groups[memo] = (
                self.keys.dependencies(tables, tags),
                tally,
                live,
                generation,
            )
        return found[0], found[1], found[2]

    def fine(
        self,
        tables: frozenset[str],
        tags: tuple[str, ...],
        values: dict[str, list[tuple[str, str]]],
    ) -> list[str]:
        """The dependency keys of a fine-grained entry: the namespace, the table tokens of the
        tables read table-level, the unknown-rows tokens of the others, the tags, then the
        value tokens (see ``_values``; ``values`` names tables the statement reads)."""
        fine = tuple(values)  # sorted by table (``_values.read_values``)
        memo = (tables, tags, fine)
        base = self._fine.get(memo)
        if base is None:
            if len(self._fine) > _GROUPS:
                self._fine.clear()
            base = self._fine[memo] = self.keys.dependencies(tables, tags, frozenset(fine))
        deps = base.copy()
        known = self._values
        for table in fine:
            for column, text in values[table]:
                item = (table, column, text)
                key = known.get(item)
                if key is None:
                    if len(known) > _VALUES:
                        known.clear()
                    key = known[item] = self.keys.value(table, column, text)
                deps.append(key)
        return deps
