"""Declared consequences of writes: ``table -> extra tables and tags``.

A write to a table may change more than the table: a trigger fills a summary table, a report or
an HTTP response built from it carries a tag.  Such consequences are declared in the
configuration::

    QueryCache.from_url(url, invalidates={
        "emissions": {"tables": ["emission_totals"], "tags": ["analytics", "dashboard"]},
    })

It also covers what no analysis can see: triggers, materialised views, foreign keys declared
only in the database.  Rules are followed transitively (a table reached through a rule brings
its own rules) and the closure is computed once per set of written tables.

A rule says what a write *does*, so it applies wherever writes count, not only at commit: the
writing transaction records the expanded tables as written (its reads of a trigger's target
then bypass the cache, see their own rows, and never store uncommitted ones), and its reads
carrying one of the rule's tags bypass too (``_reads``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any


class WriteRules:
    def __init__(self, rules: Mapping[str, Mapping[str, Any]]) -> None:
        self._rules = {
            table: (tuple(rule.get("tables", ())), tuple(rule.get("tags", ())))
            for table, rule in rules.items()
        }
        self._memo: dict[frozenset[str], tuple[frozenset[str], frozenset[str]]] = {}

    def expand(self, tables: Iterable[str]) -> tuple[frozenset[str], frozenset[str]]:
        """(tables, tags) invalidated by writing ``tables``."""
        written = frozenset(tables)
        if not self._rules:
            return written, frozenset()
        memo = self._memo.get(written)
        if memo is not None:
            return memo
        seen = set(written)
        tags: set[str] = set()
        todo = list(written)
        while todo:
            extra_tables, extra_tags = self._rules.get(todo.pop(), ((), ()))
            tags.update(extra_tags)
            for table in extra_tables:
                if table not in seen:
                    seen.add(table)
                    todo.append(table)
        result = frozenset(seen), frozenset(tags)
        if len(self._memo) > 1024:
            self._memo.clear()
        self._memo[written] = result
        return result

    def tags(self, written: Iterable[str]) -> frozenset[str]:
        """The tags that writing ``written`` invalidates."""
        if not self._rules:
            return frozenset()
        return self.expand(written)[1]
