"""Why a statement is, or is not, cached: ``QueryCache.explain(statement, session)``.

The report is made by the read path itself, so it cannot drift from what an execution does.
``explain`` executes the statement through the session with an :class:`ExplainOption` added
(a ``UserDefinedOption``: no recompilation).  The session's ORM steps run as for a real
execution (autoflush, compilation, the connection of its transaction), the session wiring
(``_session``) or the engine wiring (``_reads``) turn the option into an
:class:`ExplainRequest` carrying what the statement's options or the policy chose, and
``do_execute`` takes exactly the decisions of a real read: the policy's rule for the tables
read, SQLAlchemy's cache key, the tables and their refusals, the transaction's own writes and
session settings, snapshot isolation, the key.  At the first decision that refuses, or just
before it would look Redis up, it raises :class:`Explained` with what it found: the statement
never reaches the database, and nothing is counted.  SQLAlchemy re-raises an exception that is
not the driver's from ``do_execute`` as it is (``handle_error`` listeners are skipped with
``skip_user_error_events``, so an application's error reporting never sees it).  Then the
entry and its tokens are read (one round trip, as a hit) to say whether an entry is stored
and fresh.

Dependencies are reported as the list of keys an entry is stamped with, each with its kind
(the namespace, a table, a tag; any other key, such as a value-level dependency, is reported
with its key) and its token's state, so new kinds of dependency appear without a new field.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import UserDefinedOption

from ..io._scripts import PENDING
from ..storage import Storage
from ..storage._codec import CorruptEntry, EntryCodec
from ..storage._stats import REASONS
from ..storage._store import FAILED
from ._options import CacheDirective

#: reasons only explain reports (an execution is not counted as uncacheable for them)
EXPLAIN_REASONS = {
    "not_opted_in": "no cached() option, and no cache policy applies to it",
    "uncached_option": "the statement has uncached()",
    "policy": "the cache policy excludes it",
    "not_attached": "the cache is attached neither to this session nor to its engine",
    "own_writes": "this transaction wrote a table it reads: reads of it bypass the cache until "
    "the transaction ends",
    "session_settings": "the connection changed its session settings (SET ...): its reads "
    "bypass the cache",
    "snapshot": "the transaction reads from a snapshot (REPEATABLE READ / SERIALIZABLE, or a "
    "SQLite transaction that began and wrote nothing): its reads bypass the cache",
    "no_capture_listener": "it reads a table under change capture and no listener of the "
    "namespace is alive: its reads bypass the cache until one runs (sqla-redis-cache capture "
    "run, or capture.start())",
}


#: ``ExplainRequest.choice`` of a statement with ``uncached()``
UNCACHED: Any = object()


class ExplainOption(UserDefinedOption):
    """Added by :func:`explain` to the statement it explains."""

    __slots__ = ()
    propagate_to_loaders = False


class ExplainRequest:
    """What the session or engine wiring chose for an explained statement, in place of its
    directive in the execution options."""

    __slots__ = ("choice", "decided_by")

    def __init__(self, choice: Any, decided_by: str) -> None:
        #: a CacheDirective, a Policy, or None (no option, no session policy)
        self.choice = choice
        self.decided_by = decided_by


class Explained(Exception):
    """Raised from ``do_execute`` with what the read path found."""

    def __init__(
        self,
        request: ExplainRequest,
        *,
        reason: str | None,
        statement: str,
        parameters: Any,
        directive: CacheDirective | None = None,
        tables: frozenset[str] = frozenset(),
        key: str | None = None,
        deps: list[str] | None = None,
        decided_by: str | None = None,
        values: dict[str, list[tuple[str, str]]] | None = None,
    ) -> None:
        super().__init__(reason)
        self.request = request
        self.reason = reason
        self.statement = statement
        self.parameters = parameters
        self.directive = directive
        self.tables = tables
        self.key = key
        self.deps = deps or []
        #: fine-grained: table -> (column, value text) the entry depends on (``_values``)
        self.values = values or {}
        self.decided_by = decided_by or request.decided_by


@dataclass(frozen=True)
class Dependency:
    """One key an entry is stamped with."""

    #: "namespace", "table", "tag", "unknown rows" (of a table read fine-grained), "value"
    #: (``table.column = value``: fine-grained), or "other" (a key of another kind)
    kind: str
    name: str
    key: str
    #: the token now: "present", "missing" (the next fill creates it), "pending" (a commit in
    #: flight: nothing is served or stored), or "unknown" (Redis did not answer)
    token: str = "unknown"


@dataclass(frozen=True)
class Explanation:
    """What :meth:`QueryCache.explain` found for one statement in one session."""

    #: would this execution be served from or stored in the cache
    cacheable: bool
    #: why not, in words (None when cacheable)
    reason: str | None = None
    #: why not, as a stable code (the keys of ``stats().uncacheable_by_reason`` and of
    #: :data:`EXPLAIN_REASONS`)
    reason_code: str | None = None
    #: what chose caching for it: "cached() option", "policy: ...", ...
    decided_by: str | None = None
    sql: str | None = None
    parameters: Any = None
    key: str | None = None
    region: str | None = None
    ttl: float | None = None
    refresh_after: float | None = None
    tables: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    #: fine-grained: the values the entry depends on, ``table.column = value`` (the value's
    #: text: ``i:5`` an integer, ``s:abc`` a string, ``u:...`` a UUID, ``n`` NULL)
    values: tuple[str, ...] = ()
    dependencies: tuple[Dependency, ...] = ()
    #: an entry is stored under ``key``
    stored: bool = False
    #: ... and its stamps equal the current tokens: the next execution is a hit
    fresh: bool = False
    age_seconds: float | None = None
    entry_bytes: int | None = None
    #: Redis did not answer the lookup (stored/fresh unknown)
    redis_unavailable: bool = field(default=False)

    def as_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["parameters"] = None if self.parameters is None else repr(self.parameters)
        return out

    def __str__(self) -> str:
        lines = [
            f"cacheable : {'yes' if self.cacheable else 'no'}",
        ]
        if self.reason:
            lines.append(f"reason    : {self.reason} [{self.reason_code}]")
        if self.decided_by:
            lines.append(f"decided by: {self.decided_by}")
        if self.sql:
            lines.append(f"sql       : {' '.join(self.sql.split())}")
        if self.parameters is not None:
            lines.append(f"parameters: {self.parameters!r}")
        if self.key:
            lines.append(f"key       : {self.key}")
        if self.region:
            extra = f", refresh after {self.refresh_after:g} s" if self.refresh_after else ""
            lines.append(f"region    : {self.region}, ttl {self.ttl:g} s{extra}")
        if self.tables:
            lines.append(f"tables    : {', '.join(self.tables)}")
        if self.tags:
            lines.append(f"tags      : {', '.join(self.tags)}")
        if self.values:
            lines.append(f"values    : {', '.join(self.values)}")
        for dep in self.dependencies:
            lines.append(f"depends on: {dep.kind} {dep.name} ({dep.key}): token {dep.token}")
        if self.key:
            if self.redis_unavailable:
                state = "unknown (Redis unavailable)"
            elif not self.stored:
                state = "not stored"
            else:
                state = f"stored, {'fresh' if self.fresh else 'stale'}"
                if self.age_seconds is not None:
                    state += f", {self.age_seconds:.1f} s old, {self.entry_bytes} bytes"
            lines.append(f"entry     : {state}")
        return "\n".join(lines)


def reason_text(code: str | None) -> str | None:
    if code is None:
        return None
    return REASONS.get(code) or EXPLAIN_REASONS.get(code) or code


def dependency(
    keys_prefix: str,
    all_key: str,
    key: str,
    token: bytes | object | None,
    named: dict[str, str] | None = None,
) -> Any:
    if named and key in named:
        kind, name = "value", named[key]
    elif key == all_key:
        kind, name = "namespace", keys_prefix.rstrip(":")
    elif key.startswith(keys_prefix + "t:"):
        kind, name = "table", key[len(keys_prefix) + 2 :]
    elif key.startswith(keys_prefix + "g:"):
        kind, name = "tag", key[len(keys_prefix) + 2 :]
    elif key.startswith(keys_prefix + "u:"):
        kind, name = "unknown rows", key[len(keys_prefix) + 2 :]
    else:
        kind, name = "other", key[len(keys_prefix) :]
    if token is FAILED:
        state = "unknown"
    elif token is None:
        state = "missing"
    elif isinstance(token, bytes) and token.startswith(PENDING):
        state = "pending"
    else:
        state = "present"
    return Dependency(kind, name, key, state)


def report(storage: Storage, found: Explained, region_ttl: Any) -> Explanation:
    """The :class:`Explanation` of what the read path raised, with the entry looked up."""
    directive = found.directive
    code = found.reason
    base: dict[str, Any] = {
        "cacheable": code is None,
        "reason": reason_text(code),
        "reason_code": code,
        "decided_by": found.decided_by,
        "sql": found.statement,
        "parameters": found.parameters,
        "tables": tuple(sorted(found.tables)),
    }
    if directive is not None:
        region, ttl, refresh_after = region_ttl(directive)
        base.update(region=region, ttl=ttl, refresh_after=refresh_after, tags=tuple(directive.tags))
    if found.key is None:
        return Explanation(**base)
    keys = storage.keys
    named = {
        keys.value(table, column, text): f"{table}.{column} = {text}"
        for table, pairs in found.values.items()
        for column, text in pairs
    }
    base["values"] = tuple(named.values())
    gate = storage.capture
    if not gate.primed:
        gate.prime(storage.store)
    live = gate.live_key_for(frozenset(found.tables))
    fetch = [found.key, *found.deps] if live is None else [found.key, *found.deps, live]
    values: Any = storage.store.get_many(fetch)
    unavailable = values is FAILED
    if live is not None and not unavailable and values.pop() is None and code is None:
        code = "no_capture_listener"
        base.update(cacheable=False, reason=reason_text(code), reason_code=code)
    tokens: list[Any] = [FAILED] * len(found.deps) if unavailable else values[1:]
    base["key"] = found.key
    base["dependencies"] = tuple(
        dependency(keys.prefix, keys.all_key, key, token, named)
        for key, token in zip(found.deps, tokens, strict=True)
    )
    base["redis_unavailable"] = unavailable
    if unavailable or values[0] is None:
        return Explanation(**base)
    entry: bytes = values[0]
    stamps = None if None in tokens else b"".join(tokens)
    fresh = stamps is not None and not any(t.startswith(PENDING) for t in tokens)
    fresh = fresh and EntryCodec.stamps_of(entry) == stamps
    age = None
    try:
        opened = storage.codec.open(entry, None)
        if opened is not None:
            age = max(0.0, time.time() - opened[0])
    except CorruptEntry:
        fresh = False
    return Explanation(**base, stored=True, fresh=fresh, age_seconds=age, entry_bytes=len(entry))
