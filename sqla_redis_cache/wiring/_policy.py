"""Cache policies: which SELECTs are cached without a ``cached()`` option of their own.

``attach(target, default=cached(...), tables={"audit_log": None, "users": cached(ttl=600)})``
gives ``target`` a :class:`Policy`.  A policy only chooses the *directive* (region, TTL, tags)
a statement would otherwise get from ``cached()``; everything after that is the ordinary read
path, so no policy can make an unsafe statement cacheable: locking reads, statements
SQLAlchemy cannot key, ``text()`` fragments, unkeyable parameters and streamed results still
run uncached (and are counted by reason), and a transaction's own writes still bypass.  An
explicit ``cached(...)`` or ``uncached()`` on the statement always wins.

Where it is applied, and what that costs:

- sessions (``Session`` classes, sessionmakers, ``scoped_session``, ``async_sessionmaker``,
  sessions): ``do_orm_execute`` (``_session``) looks the policy up by the session's class, one
  dictionary lookup (memoised per class, most specific attached class first; a policy given
  for one Session object is looked up first), and hands the :class:`Policy` itself down in
  the execution options.  Refresh loads (``session.refresh()``, ``populate_existing``) are
  left uncached: they exist to read the database.
- engines: ``do_execute`` (``_reads``) reads it for SELECTs no session wiring has seen.
- ``tables``: which rule applies depends on the tables the statement reads, known only from
  its compiled form, so the :class:`Policy` is resolved in ``do_execute`` from
  ``_analysis.read_plan`` (memoised per compiled statement) with one more dictionary lookup
  (:meth:`Policy.resolve`, memoised per set of tables).

How ``tables`` rules combine for a statement reading several tables: each table gets its own
rule, or the default; ``None`` for any of them means the statement is never cached; otherwise
the rule with the shortest TTL gives the region, TTL and the rest, and the tags of all of
them are kept.  A table without a rule, under ``default=None``, has no say.  Table names are
the cache's (``schema.table`` for a table in a schema), as in ``invalidate_tables``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import replace
from typing import Any

from .._config import CacheConfig
from ._options import CacheDirective, CachedOption, UncachedOption

#: a policy entry: the directive of a ``cached()`` option, or None (never cached)
Rule = CacheDirective | None

_MEMO_LIMIT = 4096
_UNSET: Any = object()


def _rule(what: str, value: Any) -> Rule:
    if value is None or isinstance(value, UncachedOption):
        return None
    if isinstance(value, CachedOption):
        return value.payload
    raise TypeError(f"{what} must be cached(...), uncached() or None, not {value!r}")


class Policy:
    """One attach target's policy: a default rule and per-table rules."""

    __slots__ = ("_memo", "_ttl", "by_table", "default")

    def __init__(
        self,
        config: CacheConfig,
        default: Any = None,
        tables: Mapping[str, Any] | None = None,
    ) -> None:
        self.default = _rule("default", default)
        if tables is not None and not isinstance(tables, Mapping):
            raise TypeError("tables must be a mapping of table name to cached(...) or None")
        by_table: dict[str, Rule] = {}
        for name, value in (tables or {}).items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"table names must be non-empty strings, not {name!r}")
            by_table[name] = _rule(f"the policy of table {name!r}", value)
        self.by_table = by_table
        rules = [r for r in (self.default, *by_table.values()) if r is not None]
        for rule in rules:  # an unknown region is an error here, not at the first query
            config.region(rule.region)
        #: effective TTL of each rule (the rule's, else its region's)
        self._ttl = {id(r): r.ttl or config.region(r.region).ttl for r in rules}
        self._memo: dict[frozenset[str], Rule] = {}

    @property
    def empty(self) -> bool:
        """True when the policy caches nothing (no default, no table rule)."""
        return self.default is None and not self.by_table

    def resolve(self, tables: frozenset[str]) -> Rule:
        """The directive for a statement reading ``tables``; None: not cached."""
        if not self.by_table:
            return self.default
        found = self._memo.get(tables, _UNSET)
        if found is _UNSET:
            found = self.decide(tables)[0]
            if len(self._memo) >= _MEMO_LIMIT:
                self._memo.clear()
            self._memo[tables] = found
        return found  # type: ignore[no-any-return]

    def decide(self, tables: Iterable[str]) -> tuple[Rule, str, bool]:
        """The directive for a statement reading ``tables``, which rule decided, and whether
        a rule excludes it (rather than no rule covering it)."""
        by_table = self.by_table
        if not by_table or not tables:
            return self.default, "the default", False
        chosen: list[tuple[str, CacheDirective]] = []
        for table in sorted(tables):
            if table not in by_table:
                if self.default is not None:
                    chosen.append(("the default", self.default))
                continue
            rule = by_table[table]
            if rule is None:
                return None, f"table {table} is never cached", True
            chosen.append((f"the rule of table {table}", rule))
        if not chosen:
            return None, "no rule for the tables it reads, and no default", False
        ttl = self._ttl
        why, best = min(chosen, key=lambda item: (ttl[id(item[1])], item[0]))
        tags = sorted({tag for _, rule in chosen for tag in rule.tags})
        extra = sorted({table for _, rule in chosen for table in rule.tables})
        if len(chosen) > 1:
            best = replace(best, tags=tuple(tags), tables=tuple(extra))
            why += " (the shortest TTL of the tables read)"
        return best, why, False

    def __repr__(self) -> str:
        return f"<Policy default={self.default!r} tables={self.by_table!r}>"


class Policies:
    """The policies of one cache's attach targets, and their lookup by session and engine."""

    def __init__(self) -> None:
        #: Session classes (a sessionmaker's own class, an async_sessionmaker's) -> policy
        self._classes: dict[type, Policy] = {}
        #: single Session objects given to attach()
        self._sessions: dict[Any, Policy] = {}
        self._engines: dict[Any, Policy] = {}
        #: session class -> the policy of its most specific attached class (or None)
        self._by_type: dict[type, Policy | None] = {}
        #: any session policy at all (the hot path's first test)
        self.sessions = False
        self.engines = False

    def set(self, kind: str, target: Any, policy: Policy | None) -> None:
        """Give ``target`` (``kind``: "class", "session" or "engine") its policy; None
        removes it."""
        table = {"class": self._classes, "session": self._sessions, "engine": self._engines}[kind]
        if policy is None or policy.empty:
            table.pop(target, None)
        else:
            table[target] = policy
        self._by_type = {}
        self.sessions = bool(self._classes or self._sessions)
        self.engines = bool(self._engines)

    def for_session(self, session: Any) -> Policy | None:
        if self._sessions:
            found = self._sessions.get(session)
            if found is not None:
                return found
        kind = type(session)
        try:
            return self._by_type[kind]
        except KeyError:
            pass
        policy = None
        for cls in kind.__mro__:
            policy = self._classes.get(cls)
            if policy is not None:
                break
        if len(self._by_type) >= _MEMO_LIMIT:
            self._by_type = {}
        self._by_type[kind] = policy
        return policy

    def for_engine(self, engine: Any) -> Policy | None:
        return self._engines.get(engine)
