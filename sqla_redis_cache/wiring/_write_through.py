"""Entity write-through: after a commit, the entity cache holds what the database holds, never
an older value.

What a flush saw is not what a transaction commits: a savepoint may roll it back, a later bulk
UPDATE/DELETE, ``text()`` statement, trigger or ``ON DELETE CASCADE`` may change or remove the
row, and the database coerces what the application assigned (``Numeric`` rounding, ``CHAR``
padding, JSON keys, time zones).  So flushes only *note* the rows they wrote (per connection),
and the rows are **reloaded from the database** in the connection's ``commit`` event: inside
the transaction, after its last write, before the database commits; one ``SELECT … WHERE pk IN``
per mapped class, through the same column types as an ORM load.  The session's
``after_commit`` then writes those values through, in the commit path's pipeline
(``_commit``).  A write that runs after the reload (another ``commit`` listener) makes the
connection write no rows through at all.

Only hierarchies whose entity cache this process has used (a cached ``get``, ``get_entity``,
``cache_entity``) are reloaded, and only under READ COMMITTED-like isolation; other rows are
left to the token replacement that invalidates them anyway.  An application that never uses the
entity cache pays no statement and no Redis command for it.

Never an older value.  Entries are stamped with version tokens; the commit replaces the tokens
of the tables it wrote.  A later commit of any kind (flush, bulk DML, ``text()``, another
process) replaces them again after *its* database commit, so it makes this entry stale, unless
its replacement reached Redis *before* this write-through (a late write-through).  To catch
that, the ``commit`` event reads the tokens of every table the entry depends on *before* the
reload ``SELECT``, in the same round trip that sets the rows' pending markers.  The
write-through then swaps the written tables' tokens only if unchanged (``io.ReplaceToken`` with
``expected``): the entry's stamp becomes current only if no one replaced the token since that
read.  Tables the transaction did not write (a ``column_property``
over another table, the other tables of a hierarchy) are stamped with the token read before the
reload, exactly as a cached query is stamped with tokens read before it ran.  Any commit after
the reload therefore leaves the entry stale.  Under REPEATABLE READ / SERIALIZABLE the reload
would read the transaction's older snapshot, so nothing is written through there.

The pending marker (set in the same round trip) keeps the older guarantee too: a late
write-through of an older commit finds a newer writer's marker and does not overwrite its
entry.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import bindparam, select, tuple_
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Mapper
from sqlalchemy.orm.exc import UnmappedColumnError

from ..io._ops import CompareAndSet, Get, Operation, Set, Unlink
from ..io._scripts import PENDING
from ..storage._keys import UnkeyableParameter
from ..storage._store import FAILED, Store
from ..storage._versions import Versions
from ._compat import flushed_states
from ._entities import Entities
from ._entity_get import schema_map
from ._runtime_settings import tainted
from ._transaction import ConnectionKeys, snapshot_isolated

_MARKER_PREFIX = b"\x00sqla-redis-cache:pending:"

#: beyond this many rows written in one commit, they are invalidated, not reloaded
RELOAD_LIMIT = 1000


class _Reload(NamedTuple):
    """One mapped class's reload statement and how to read its rows."""

    statement: Any
    keys: list[str]  # attribute keys, in column order
    pk: list[int]  # positions of the primary key in a row
    discriminator: int | None  # position of the polymorphic discriminator


class Reloaded(NamedTuple):
    """A connection's written rows as the database held them just before its commit."""

    marker: bytes
    #: token key -> token read before the reload (None: missing)
    tokens: dict[str, bytes | None]
    #: entity key -> (mapper, column values or None when the row is gone, token keys)
    rows: dict[str, tuple[Mapper[Any], dict[str, Any] | None, list[str]]]


class WriteThrough:
    """The three steps of the write-through: note at flush, reload before the commit, entries
    for the commit path's plan (``_commit``) after it."""

    def __init__(
        self,
        entities: Entities,
        store: Store,
        versions: Versions,
        conn_keys: ConnectionKeys,
        lock_timeout: float,
    ) -> None:
        self.entities = entities
        self.store = store
        self.versions = versions
        self.k = conn_keys
        self.marker_ttl_ms = max(1, int(lock_timeout * 1000))
        self._reloads: dict[Mapper[Any], _Reload] = {}

    # flush: note the rows ------------------------------------------------------------------------

    def note_flush(self, session: Any, flush_context: Any) -> None:
        """``after_flush``: note the rows of entity-cached hierarchies the flush wrote."""
        entities = self.entities
        conns: dict[Mapper[Any], Any] = {}
        notes: dict[Any, dict[str, tuple[Mapper[Any], tuple[Any, ...]]]] = {}
        for state, (isdelete, listonly) in flushed_states(flush_context).items():
            mapper = state.mapper
            if listonly or not entities.hierarchy(mapper).used:
                continue
            if not entities.writes_through(mapper):
                continue
            if isdelete:
                identity = state.key
            else:
                obj = state.obj()
                if obj is None:
                    continue
                identity = mapper.identity_key_from_instance(obj)
            if identity is None or None in identity[1]:
                continue
            conn = conns.get(mapper)
            if conn is None:
                conn = conns[mapper] = session.connection(bind_arguments={"mapper": mapper})
            # tenant schemas, changed session settings: the row may not be the shared one,
            # so it is only invalidated (its tables' tokens), never written through
            if schema_map(conn) or tainted(conn.engine):
                continue
            try:
                key = entities.key(conn.engine, mapper, identity[1])
            except UnkeyableParameter:
                continue
            noted = notes.get(conn)
            if noted is None:
                noted = notes[conn] = conn.info.setdefault(self.k.entity_writes, {})
            noted[key] = (mapper, tuple(identity[1]))

    # the connection's commit event: reload before the database commits --------------------------

    def reload_before_commit(self, conn: Any) -> None:
        """Reload the rows noted on ``conn`` (first step of its ``commit`` event, ``_commit``)."""
        info = conn.info
        noted = info.pop(self.k.entity_writes, None)
        if noted:
            info[self.k.entity_reloaded] = self._reload(conn, noted)

    def forget(self, info: dict[str, Any]) -> None:
        """The transaction ended without a commit to write through (rollback, a new begin)."""
        info.pop(self.k.entity_writes, None)
        info.pop(self.k.entity_reloaded, None)

    def _reload(
        self, conn: Any, noted: Mapping[str, tuple[Mapper[Any], tuple[Any, ...]]]
    ) -> Reloaded | None:
        if len(noted) > RELOAD_LIMIT or self.versions.owes or snapshot_isolated(conn):
            return None
        deps: dict[Mapper[Any], list[str]] = {}
        by_mapper: dict[Mapper[Any], dict[tuple[Any, ...], str]] = {}
        for key, (mapper, pk) in noted.items():
            by_mapper.setdefault(mapper, {})[pk] = key
            if mapper not in deps:
                deps[mapper] = self.entities.deps(self.entities.hierarchy(mapper))
        token_keys = sorted({k for keys in deps.values() for k in keys})
        marker = _MARKER_PREFIX + os.urandom(8).hex().encode()
        ttl = self.marker_ttl_ms
        operations: list[Operation] = [Set(key, marker, ttl) for key in noted]
        operations.extend(Get(key) for key in token_keys)
        replies = self.store.run(operations)  # before the SELECT: see the module docstring
        if replies is FAILED:
            return None
        tokens = dict(zip(token_keys, replies[len(noted) :], strict=True))
        rows: dict[str, tuple[Mapper[Any], dict[str, Any] | None, list[str]]] = {
            key: (mapper, None, deps[mapper]) for key, (mapper, _) in noted.items()
        }
        try:
            for mapper, keys in by_mapper.items():
                reload = self._reload_of(mapper)
                pks = list(keys) if len(reload.pk) > 1 else [pk[0] for pk in keys]
                for row in conn.execute(reload.statement, {"pks": pks}):
                    pk = tuple(row[i] for i in reload.pk)
                    found = keys.get(pk)
                    if found is None:  # the database returns the key in another form: skip it
                        continue
                    d = reload.discriminator
                    if d is not None and mapper.polymorphic_map.get(row[d]) is not mapper:
                        continue  # the row changed class: removed, not written through
                    values = dict(zip(reload.keys, row, strict=True))
                    rows[found] = (mapper, values, deps[mapper])
        except DBAPIError:
            raise  # the transaction may be aborted: the commit must fail, not lose it silently
        except Exception:  # a result processor that fails: no write-through, never a failed commit
            return None
        return Reloaded(marker, tokens, rows)

    def _reload_of(self, mapper: Mapper[Any]) -> _Reload:
        found = self._reloads.get(mapper)
        if found is None:
            props = [p for p in mapper.column_attrs if not p.deferred]
            columns = [p.expression for p in props]
            keys = [p.key for p in props]
            pk_cols = list(mapper.primary_key)
            pk = [keys.index(mapper.get_property_by_column(c).key) for c in pk_cols]
            target = pk_cols[0] if len(pk_cols) == 1 else tuple_(*pk_cols)
            statement = (
                select(*columns)
                .select_from(mapper.selectable)
                .where(target.in_(bindparam("pks", expanding=True)))
            )
            discriminator = None
            if mapper.polymorphic_on is not None:
                try:  # a discriminator may be an expression no attribute maps
                    prop = mapper.get_property_by_column(mapper.polymorphic_on)
                except UnmappedColumnError:
                    prop = None
                discriminator = keys.index(prop.key) if prop is not None else None
            found = self._reloads[mapper] = _Reload(statement, keys, pk, discriminator)
        return found

    # after the commit: the entries of the commit path's plan -------------------------------------

    def entries(
        self, reloaded: list[Reloaded], written: set[str]
    ) -> tuple[Callable[[Mapping[str, bytes]], list[Operation]], dict[str, bytes]]:
        """For rows ``reloaded`` by the connections of one commit whose written tables' token
        keys are ``written``: a function from the new tokens to the entries' operations (a
        compare-and-set where this transaction's marker still stands, else a removal), and the
        tokens to swap only if unchanged since the reload (see the module docstring)."""
        expected: dict[str, bytes] = {}
        conflicting: set[str] = set()
        for done in reloaded:
            for key, token in done.tokens.items():
                if key not in written or (token is not None and token.startswith(PENDING)):
                    continue  # a pending token vouches for nothing: plain replacement
                value = b"" if token is None else token
                if expected.setdefault(key, value) != value:
                    conflicting.add(key)
        for key in conflicting:
            del expected[key]
        entities = self.entities

        def operations(new_tokens: Mapping[str, bytes]) -> list[Operation]:
            out: list[Operation] = []
            ttl = entities.ttl_ms()
            for done in reloaded:
                for key, (mapper, row, deps) in done.rows.items():
                    entry = None
                    if row is not None:
                        stamps = _stamps(deps, new_tokens, expected, done.tokens)
                        if stamps is not None:
                            entry = entities.seal(stamps, mapper, row)
                    if entry is not None:  # only where this transaction's marker still stands
                        out.append(CompareAndSet(key, done.marker, entry, ttl))
                    else:
                        out.append(Unlink(key))
            return out

        return operations, expected


def _stamps(
    deps: list[str],
    new_tokens: Mapping[str, bytes],
    expected: Mapping[str, bytes],
    read_before: Mapping[str, bytes | None],
) -> bytes | None:
    """The entry's stamps, or None when a token cannot vouch for the reloaded values."""
    parts = []
    for key in deps:
        if key in new_tokens:  # replaced by this commit: only a swap of a known token will do
            if key not in expected:
                return None
            parts.append(new_tokens[key])
            continue
        token = read_before.get(key)
        if token is None or token.startswith(PENDING):
            return None
        parts.append(token)
    return b"".join(parts)
