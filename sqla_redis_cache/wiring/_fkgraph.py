"""Tables the database changes by itself when a table is written: its foreign keys' actions.

A write can change rows of tables no SQL names: ``ON DELETE CASCADE / SET NULL / SET DEFAULT``
and the ``ON UPDATE`` actions of foreign keys referring to the written table, transitively;
SQLite's ``REPLACE`` (``INSERT OR REPLACE``, ``UPDATE OR REPLACE``), whose implicit delete of
the conflicting row fires the ``ON DELETE`` actions; an upsert's ``DO UPDATE`` re-keying a
referenced column; and PostgreSQL's ``TRUNCATE ... CASCADE``, which empties every table
referring to a truncated one *whatever its actions*.  Every write path (ORM, Core, ``text()``,
DDL) passes its written set through :meth:`ForeignKeyGraph.expand`.

Where the graph comes from: **the database's catalog** (``pg_constraint`` on PostgreSQL,
``pragma_foreign_key_list`` on SQLite), not only the ``MetaData`` of the application:

- textual SQL carries no ``Table`` objects, and a process that only runs textual writes (a
  worker, a script) may never have seen the ``MetaData`` that declares the keys;
- foreign keys declared only in the database (by migrations, by another application) are what
  the database acts on, so they are covered on every path, the ORM's included;
- it also knows how the database spells each table, which SQLite needs: it folds the case of
  every name, quoted or not, so ``UPDATE "R3_PARENTS"`` writes the table SQLAlchemy calls
  ``r3_parents`` (or ``R3_Parents``).

(The ``MetaData`` graph of compiled statements, ``_analysis.dependent_tables``, still applies
too: it works on every dialect, the catalog reader only on PostgreSQL and SQLite.)

When it is read, and what that costs:

- lazily, the first time a write on an engine needs it, **on the writing connection**, with a
  DBAPI cursor (no SQLAlchemy events).  Never at ``attach()`` (no database is needed to attach)
  and never on a second pooled connection (a pool of one would deadlock; an in-memory SQLite
  database exists per connection).  On PostgreSQL the read runs inside a savepoint, so that
  even a failing read (a ``statement_timeout``, say) can never abort the application's
  transaction; it is one statement (plus ``SAVEPOINT``/``RELEASE``) per engine.
- then memoised: the write path pays one dictionary lookup per written set.
- read again at the next write after DDL ran through the engine (marked at the DDL statement,
  and again when its transaction is certainly over: a concurrent reload may have run before
  the DDL committed), and after :data:`REFRESH_SECONDS` for DDL run by other programs
  (migrations in another process).  DDL and writes *in one transaction* need no reload: a
  foreign key added by ``ALTER TABLE child`` or ``CREATE TABLE child`` names ``child``, which
  that transaction's own write set already holds.
- when it cannot be read, each write invalidates the whole namespace (safe) until a retry
  after :data:`RETRY_SECONDS` succeeds, and a warning is logged.

The union of ``ON DELETE`` and ``ON UPDATE`` actions is followed for every write, whatever its
kind: an INSERT into a parent also invalidates its children.  That costs a few extra misses,
never a stale hit, and spares classifying every statement (an INSERT may be an upsert or a
REPLACE).  Names are reported bare and schema-qualified, like the textual analysis does.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from typing import Any

from ._compat import is_autocommit

log = logging.getLogger("sqla_redis_cache")

#: re-read the catalog after this long (DDL made by other programs)
REFRESH_SECONDS = 300.0
#: after a failed read, invalidate everything for this long before trying again
RETRY_SECONDS = 30.0

_MARK = "/* sqla_redis_cache: foreign keys */ "
#: child schema, child table, parent schema, parent table, ON DELETE, ON UPDATE
QUERIES: dict[str, str] = {
    "postgresql": _MARK + "SELECT cn.nspname, c.relname, pn.nspname, p.relname, "
    "k.confdeltype::text, k.confupdtype::text "
    "FROM pg_catalog.pg_constraint k "
    "JOIN pg_catalog.pg_class c ON c.oid = k.conrelid "
    "JOIN pg_catalog.pg_namespace cn ON cn.oid = c.relnamespace "
    "JOIN pg_catalog.pg_class p ON p.oid = k.confrelid "
    "JOIN pg_catalog.pg_namespace pn ON pn.oid = p.relnamespace "
    "WHERE k.contype = 'f'",
    # every table, with or without foreign keys: SQLite needs the spelling of each name
    "sqlite": _MARK + "SELECT 'main', m.name, 'main', f.\"table\", f.on_delete, f.on_update "
    "FROM sqlite_master m LEFT JOIN pragma_foreign_key_list(m.name) f "
    "WHERE m.type = 'table'",
}
#: PostgreSQL's confdeltype codes and SQLite's words for actions that change the child's rows
_ACTING = frozenset({"c", "n", "d", "CASCADE", "SET NULL", "SET DEFAULT"})
_SAVEPOINT = "sqla_redis_cache_fk"
_NONE: frozenset[str] = frozenset()

_Node = tuple[str, str]


class ForeignKeyGraph:
    """The foreign keys of one database, ready to expand written sets (immutable once built)."""

    def __init__(self, rows: list[tuple[Any, ...]], fold_case: bool) -> None:
        self._fold = fold_case
        self._nodes: dict[str, list[_Node]] = {}  # a name as written (folded) -> tables
        self._acting: dict[_Node, set[_Node]] = {}  # parent -> children with an action
        self._referring: dict[_Node, set[_Node]] = {}  # parent -> every child
        self._memo: dict[tuple[frozenset[str], frozenset[str]], frozenset[str]] = {}
        self._lock = threading.Lock()
        for child_schema, child, *_ in rows:  # first the tables' own spellings (SQLite
            self._node(child_schema, child)  # lists every table, with or without keys)...
        for child_schema, child, parent_schema, parent, on_delete, on_update in rows:
            if parent is None:
                continue
            c, p = self._node(child_schema, child), self._node(parent_schema, parent)
            self._referring.setdefault(p, set()).add(c)
            if on_delete in _ACTING or on_update in _ACTING:
                self._acting.setdefault(p, set()).add(c)

    def _node(self, schema: str, name: str) -> _Node:
        key = name.lower() if self._fold else name
        for node in self._nodes.get(key, ()):
            if node[0] == schema:
                return node  # ...then a REFERENCES clause's other case finds the table
        node = (schema, name)
        for form in (name, f"{schema}.{name}"):
            self._nodes.setdefault(form.lower() if self._fold else form, []).append(node)
        return node

    def expand(self, tables: frozenset[str], truncated: frozenset[str] = _NONE) -> frozenset[str]:
        """``tables`` plus every table the database changes with them."""
        memo_key = (tables, truncated)
        found = self._memo.get(memo_key)
        if found is None:
            found = self._expand(tables, truncated)
            with self._lock:
                if len(self._memo) > 4096:
                    self._memo.clear()
                self._memo[memo_key] = found
        return found

    def _expand(self, tables: frozenset[str], truncated: frozenset[str]) -> frozenset[str]:
        out = set(tables)
        reached: set[_Node] = set()
        for edges, names in ((self._acting, tables), (self._referring, truncated)):
            todo = [n for name in names for n in self._lookup(name, out)]
            while todo:
                for child in edges.get(todo.pop(), ()):
                    if child not in reached:
                        reached.add(child)
                        todo.append(child)
        for schema, name in reached:
            out.update((name, f"{schema}.{name}"))
        return frozenset(out)

    def _lookup(self, name: str, out: set[str]) -> list[_Node]:
        nodes = self._nodes.get(name.lower() if self._fold else name, [])
        if self._fold:  # also the catalog's spelling of that same name
            qualified = "." in name
            out.update(f"{s}.{n}" if qualified else n for s, n in nodes)
        return nodes


_EMPTY_GRAPH = ForeignKeyGraph([], fold_case=False)


class _EngineGraph:
    """The graph of one engine (pool) and when it must be read again."""

    __slots__ = ("__weakref__", "generation", "graph", "loaded_at", "loaded_generation", "retry_at")

    def __init__(self) -> None:
        self.graph: ForeignKeyGraph | None = None
        self.loaded_at = 0.0
        self.retry_at = 0.0
        self.generation = 0  # incremented by DDL
        self.loaded_generation = -1

    def mark_stale(self) -> None:
        self.generation += 1


class ForeignKeyGraphs:
    """The graphs of the engines one cache serves, keyed by their pool."""

    def __init__(self) -> None:
        self._engines: weakref.WeakKeyDictionary[Any, _EngineGraph] = weakref.WeakKeyDictionary()

    def state(self, conn: Any) -> _EngineGraph:
        pool = conn.engine.pool
        state = self._engines.get(pool)
        if state is None:
            state = self._engines.setdefault(pool, _EngineGraph())
        return state

    def expand(
        self, conn: Any, tables: frozenset[str], truncated: frozenset[str]
    ) -> frozenset[str] | None:
        """``tables`` and what the database changes with them; None when that is unknown."""
        state = self.state(conn)
        now = time.monotonic()
        if state.loaded_generation != state.generation or now - state.loaded_at >= REFRESH_SECONDS:
            if state.graph is None and now < state.retry_at:
                return None
            generation = state.generation  # DDL during the read makes it stale again
            graph = _load(conn)  # concurrent first writers may each read it: harmless
            state.graph = graph
            if graph is None:
                state.retry_at = now + RETRY_SECONDS
                return None
            state.loaded_at, state.loaded_generation = now, generation
        graph = state.graph
        return None if graph is None else graph.expand(tables, truncated)


def _load(conn: Any) -> ForeignKeyGraph | None:
    dialect = conn.dialect.name
    query = QUERIES.get(dialect)
    if query is None:  # no catalog reader for this dialect: the MetaData graph only
        return _EMPTY_GRAPH
    savepoint = dialect == "postgresql" and not is_autocommit(conn)
    try:
        cursor = conn.connection.cursor()  # the writing connection, below SQLAlchemy's events
        try:
            if savepoint:
                cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
            try:
                cursor.execute(query)
                rows = list(cursor.fetchall())
            except Exception:
                if savepoint:
                    cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
                    cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
                raise
            if savepoint:
                cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
        finally:
            cursor.close()
    except Exception as error:
        log.warning(
            "cannot read the database's foreign keys (%s); writes invalidate every table of "
            "the namespace until it can (retried in %.0f s)",
            error,
            RETRY_SECONDS,
        )
        return None
    return ForeignKeyGraph(rows, fold_case=dialect == "sqlite")
