"""Entity cache with write-through: ``session.get(..., options=[cached()])`` and the entity API.

An entity entry holds the committed column values of one row, keyed by database identity,
the base table of its class hierarchy (after ``schema_translate_map``: each tenant schema has
entries of its own) and its primary key (``ns:e:<digest>``), so that
``session.get(Employee, 2)`` finds the ``Manager`` stored by a flush of that manager.
Flushes under a ``schema_translate_map`` are only invalidated, not written through, and an
engine whose connections changed session settings at run time (``_runtime_settings``) is no longer
answered for: the entity cache answers before a connection exists, so it cannot see which
settings the query would have run with.

Freshness works as for queries: an entry is stamped with the tokens of the namespace and of
every table its loaded columns read (the tables of its class hierarchy, and those a
``column_property`` selects from), so any write those tables see (bulk DML, Core, text(),
another process) turns it into a miss.  What a Session commits is *written through*
(``_write_through``): the rows it wrote are reloaded from the database just before the commit
and written with the tables' new tokens after it, so the next ``get`` anywhere is a hit with
exactly what the database holds, and deleted rows are removed.  Only the hierarchies this
process reads through the entity cache are written through; the others are only invalidated.

``session.get(cls, pk, options=[cached()])`` is answered here before any SQL when the session
holds no pending changes, its transaction wrote none of those tables and does not read from a
snapshot (REPEATABLE READ / SERIALIZABLE, a SQLite transaction that began: ``_transaction``),
the object is not in the identity map already, and no other loader options were given; a hit
adds a clean persistent object to the session (no ``load`` event fires for it).  A miss loads
from the database and stores the row with the tokens read before the query.  Values the codec
cannot store (or rows with unloaded, server-generated columns) are simply not cached.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import inspect
from sqlalchemy.orm import InstanceState, Mapper, make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.sql import visitors
from sqlalchemy.sql.selectable import TableClause

from ..io._ops import Set, Unlink
from ..storage._codec import CorruptEntry, EntryTooLarge, Unencodable
from ..storage._keys import UnkeyableParameter, fingerprint_parameters
from ..storage._store import FAILED
from ..storage._versions import Versions
from . import _compat
from ._analysis import table_name
from ._compat import NEVER_SET, NO_VALUE, IteratorResult, SimpleResultMetaData
from ._entity_get import primary_key_get, schema_map
from ._identity import entity_engine_id
from ._options import SESSION_WIRED, CachedOption
from ._runtime_settings import tainted
from ._transaction import (
    ConnectionKeys,
    bind_reads_snapshot,
    reads_snapshot,
    transaction_blocks,
)

if TYPE_CHECKING:
    from ..storage import Storage


class _Hierarchy:
    """What the cache needs to know about one mapped class hierarchy (memoised)."""

    __slots__ = ("_translated", "base", "classes", "table_objects", "tables", "used")

    def __init__(self, mapper: Mapper[Any]) -> None:
        self.base = mapper.base_mapper
        mappers = list(self.base.self_and_descendants)
        tables: set[TableClause] = {t for m in mappers for t in m.tables}
        for m in mappers:  # what column_property expressions read
            for prop in m.column_attrs:
                for column in prop.columns:
                    for element in visitors.iterate(column):
                        if isinstance(element, TableClause):
                            tables.add(element)
        self.table_objects = tables
        #: every table a loaded column reads: an entry depends on all of them
        self.tables = sorted({table_name(t, None) for t in tables})
        self.classes = {_class_path(m.class_): m for m in mappers}
        #: this process has read the hierarchy through the entity cache (write-through is on)
        self.used = False
        self._translated: dict[Any, list[str]] = {}

    def tables_for(self, translate: Mapping[str | None, str | None] | None) -> list[str]:
        """The hierarchy's table names under a ``schema_translate_map``."""
        if not translate:
            return self.tables
        memo_key = tuple(sorted(translate.items(), key=repr))
        found = self._translated.get(memo_key)
        if found is None:
            if len(self._translated) > 256:
                self._translated.clear()
            found = self._translated[memo_key] = sorted(
                {table_name(t, translate) for t in self.table_objects}
            )
        return found


def _class_path(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


class Entities:
    """Entity lookups, explicit API and write-through for one cache."""

    def __init__(self, storage: Storage, conn_keys: ConnectionKeys) -> None:
        self.config = storage.config
        self.keys = storage.keys
        self.store = storage.store
        self.versions = storage.versions
        self.codec = storage.codec
        self.stats = storage.stats
        #: change capture: an entity of a captured table needs a live listener
        self.capture = storage.capture
        self.k = conn_keys
        setting = storage.config.write_through
        self._only: frozenset[str] | None = (
            None if setting is True else frozenset(() if setting is False else setting)
        )
        self._hierarchies: dict[Mapper[Any], _Hierarchy] = {}

    # keys ------------------------------------------------------------------------------------

    def hierarchy(self, mapper: Mapper[Any]) -> _Hierarchy:
        base = mapper.base_mapper
        found = self._hierarchies.get(base)
        if found is None:
            found = self._hierarchies[base] = _Hierarchy(base)
        return found

    def key(
        self,
        engine: Any,
        mapper: Mapper[Any],
        pk: Sequence[Any],
        translate: Mapping[str | None, str | None] | None = None,
    ) -> str:
        digest = hashlib.blake2b(entity_engine_id(engine), digest_size=20)
        base_table = table_name(mapper.base_mapper.local_table, translate)  # type: ignore[arg-type]
        digest.update(b"\x00" + base_table.encode())
        digest.update(b"\x00" + fingerprint_parameters(tuple(pk)).encode())
        return self.keys.prefix + "e:" + digest.hexdigest()

    def deps(
        self, hierarchy: _Hierarchy, translate: Mapping[str | None, str | None] | None = None
    ) -> list[str]:
        return self.keys.dependencies(hierarchy.tables_for(translate), ())

    def writes_through(self, mapper: Mapper[Any]) -> bool:
        only = self._only
        if only is None:
            return True
        return mapper.class_.__name__ in only or any(
            table_name(t, None) in only for t in mapper.tables
        )

    # reading -----------------------------------------------------------------------------------

    def lookup(
        self,
        engine: Any,
        mapper: Mapper[Any],
        pk: Sequence[Any],
        translate: Mapping[str | None, str | None] | None = None,
    ) -> tuple[str, list[str], list[bytes | None] | None, dict[str, Any] | None, Mapper[Any]]:
        """(key, deps, values read, committed values or None, stored mapper)."""
        hierarchy = self.hierarchy(mapper)
        hierarchy.used = True
        key = self.key(engine, mapper, pk, translate)
        deps = self.deps(hierarchy, translate)
        if self.versions.owes and not self.versions.settle():
            return key, deps, None, None, mapper
        capture = self.capture
        if not capture.primed:
            capture.prime(self.store)
        live = None
        if capture.tables:
            live = capture.live_key_for(frozenset(hierarchy.tables_for(translate)))
        if live is None and not capture.due():  # the near cache may answer (``Store.read``)
            values, alive = self.store.read([key, *deps]), True
        else:  # the liveness key, or the captured set, rides along: always from Redis
            values, alive = capture.get_many(self.store, [key, *deps], live)
        if values is FAILED or not alive:  # no listener: from the database, nothing stored
            if values is not FAILED:
                capture.no_listener()
            return key, deps, None, None, mapper
        entry = values[0]
        stamps = Versions.stamps(values[1:])
        if entry is None or stamps is None or self.codec.stamps_of(entry) != stamps:
            return key, deps, values, None, mapper
        try:
            opened = self.codec.open(entry, None)
            assert opened is not None
            path, row = opened[1]
            stored = hierarchy.classes[path]
        except (CorruptEntry, KeyError, TypeError, ValueError, AssertionError):
            self.stats.corrupt += 1
            return key, deps, values, None, mapper
        return key, deps, values, dict(row), stored

    def store_loaded(
        self, key: str, deps: list[str], values: list[bytes | None], state: InstanceState[Any]
    ) -> None:
        """Fill after a miss, stamped with the tokens read before the query."""
        stamps = self.versions.ensure(deps, values[1:])
        row = self._snapshot(state)
        if stamps is None or row is None:
            return
        entry = self.seal(stamps, state.mapper, row)
        if entry is not None:
            self.store.run([Set(key, entry, self.ttl_ms())])

    def ttl_ms(self) -> int:
        return max(1, int(self.config.region(None).ttl * 1000))

    def seal(self, stamps: bytes, mapper: Mapper[Any], row: dict[str, Any]) -> bytes | None:
        try:
            return self.codec.seal(stamps, [_class_path(mapper.class_), row])
        except Unencodable as exc:
            self.stats.refused(
                "entry_too_large" if isinstance(exc, EntryTooLarge) else "unencodable_value"
            )
            return None

    @staticmethod
    def _snapshot(state: InstanceState[Any]) -> dict[str, Any] | None:
        """Committed column values, or None when a non-deferred column is not loaded.

        Values changed since the last flush are taken from ``committed_state`` (never pending
        ones).
        """
        loaded = state.dict
        committed = _compat.committed_state(state)
        row: dict[str, Any] = {}
        for prop in state.mapper.column_attrs:
            key = prop.key
            if key in committed:
                value = committed[key]
                if value is NO_VALUE or value is NEVER_SET:
                    return None
            elif key in loaded:
                value = loaded[key]
            elif prop.deferred:
                continue
            else:
                return None
            row[key] = value
        return row

    def build(self, mapper: Mapper[Any], row: Mapping[str, Any]) -> Any:
        """A detached instance carrying ``row`` as its committed state."""
        obj = _compat.new_instance(mapper)
        for key, value in row.items():
            set_committed_value(obj, key, value)
        make_transient_to_detached(obj)
        return obj

    # session.get ---------------------------------------------------------------------------

    def try_get(self, orm_state: Any, option: CachedOption) -> Any:
        """A Result for an eligible ``session.get(..., options=[cached()])``, else None."""
        get = primary_key_get(orm_state)
        if get is None:
            return None
        mapper, pk = get
        session = orm_state.session
        if session.new or session.dirty or session.deleted:
            return None
        if transaction_blocks(session, self.k):
            return None
        identity = mapper.identity_key_from_primary_key(pk)
        if identity in session.identity_map:
            return None
        bind = session.get_bind(mapper)
        engine = bind.engine
        if tainted(engine):
            return None
        snapshot = bind_reads_snapshot(bind)
        if snapshot is None:  # the engine's first use: its connection tells the database's level
            snapshot = reads_snapshot(session.connection(bind_arguments={"mapper": mapper}))
        if snapshot:
            return None
        translate = orm_state.execution_options.get("schema_translate_map") or schema_map(bind)
        try:
            started = time.perf_counter()
            key, deps, values, row, stored = self.lookup(engine, mapper, pk, translate)
        except UnkeyableParameter:
            return None
        stats = self.stats
        if row is not None:
            if not issubclass(stored.class_, mapper.class_):
                return None  # let the database answer as SQLAlchemy would
            obj = self.build(stored, row)
            session.add(obj)
            stats.hit(time.perf_counter() - started)
            return IteratorResult(SimpleResultMetaData([mapper.class_.__name__]), iter([(obj,)]))
        # from the database, not from a query-cache entry of the same SELECT
        result = orm_state.invoke_statement(execution_options={SESSION_WIRED: True})
        if values is None:  # Redis failed, or change capture has no live listener
            stats.bypasses += 1
            return result
        stats.misses += 1
        frozen = result.freeze()
        loaded = frozen().scalars().all()
        if len(loaded) == 1 and not transaction_blocks(session, self.k):
            self.store_loaded(key, deps, values, inspect(loaded[0]))
        return frozen()

    # explicit API -------------------------------------------------------------------------------

    def get_entity(self, cls: Any, pk: Any, bind: Any) -> Any:
        mapper = inspect(cls)
        pk = tuple(pk) if isinstance(pk, tuple | list) else (pk,)
        _, _, _, row, stored = self.lookup(bind, mapper, pk, schema_map(bind))
        if row is None or not issubclass(stored.class_, mapper.class_):
            return None
        return self.build(stored, row)

    def cache_entity(self, obj: Any, bind: Any) -> bool:
        state: InstanceState[Any] = inspect(obj)
        if state.key is None:
            raise ValueError("cache_entity() needs a persistent or detached object")
        mapper = state.mapper
        hierarchy = self.hierarchy(mapper)
        hierarchy.used = True
        translate = schema_map(bind)
        deps = self.deps(hierarchy, translate)
        values = self.store.get_many(deps)
        if values is FAILED:
            return False
        stamps = self.versions.ensure(deps, values)
        row = self._snapshot(state)
        if stamps is None or row is None:
            return False
        entry = self.seal(stamps, mapper, row)
        if entry is None:
            return False
        key = self.key(bind, mapper, state.key[1], translate)
        return self.store.run([Set(key, entry, self.ttl_ms())]) is not FAILED

    def forget_entity(self, cls: Any, pk: Any, bind: Any) -> bool:
        mapper = inspect(cls)
        pk = tuple(pk) if isinstance(pk, tuple | list) else (pk,)
        key = self.key(bind, mapper, pk, schema_map(bind))
        return self.store.run([Unlink(key)]) is not FAILED
