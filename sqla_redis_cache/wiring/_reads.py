"""Engine-level wiring: where cached reads are served and writes are seen.

Reads
    A statement opted in with ``cached()`` carries a :class:`~._options.CacheDirective` in its
    execution options, put there by the session wiring.  On an engine attached by itself
    (``attach(engine)``), statements no session wiring has seen (sessions not attached, Core
    connections) are read for the ``cached()`` option itself, in the statement being executed
    (``invoked_statement``: the compiled statement may be shared with executions that lack the
    option).  The ``do_execute`` dialect event sees it at the last moment before the cursor
    runs: after the session's autoflush, with the final SQL string and DBAPI parameters.
    A hit swaps the execution context's cursor for a :class:`~._cursor.CachedCursor` over the
    cached raw rows and tells SQLAlchemy the statement ran; SQLAlchemy then builds the result
    exactly as from the database.  A miss runs the real cursor, stores its rows, and serves
    them the same way.

Writes
    ``after_cursor_execute`` records the table of every INSERT/UPDATE/DELETE (ORM flush, ORM
    bulk DML, Core DML, and DML nested in them as data-modifying CTEs), of textual SQL
    (``_sqlwrites``) and of DDL in the DBAPI connection's ``info``, with every table the
    database changes along with them (``ON DELETE``/``ON UPDATE`` actions, ``TRUNCATE ...
    CASCADE``: ``_fkgraph``).
    Under AUTOCOMMIT isolation the write is already committed, so it is published at once.
    Otherwise reads of those tables on that connection bypass the cache until the transaction
    ends, so a transaction sees its own writes and nothing uncommitted is stored.  The tables
    and tags that declared ``invalidates`` rules add (``_write_rules``: what triggers write)
    count as written from the same statement on, not only at commit.  The
    connection's ``commit`` event hands the set over to whoever invalidates after the commit
    (the session wiring, or ``_core_commit``).

Snapshot isolation
    Under REPEATABLE READ / SERIALIZABLE a transaction reads from a snapshot taken at its first
    statement, possibly older than the version tokens read now; such reads after the first
    statement bypass the cache rather than store an old snapshot under new tokens.  The level
    may be set on the engine or connection, or in SQL (``SET TRANSACTION ...``, ``BEGIN
    ISOLATION LEVEL ...``, session defaults): ``_conn_state`` tracks the latter.

Identity
    The key names the database behind the connection (``_identity``); a connection whose
    session settings changed at run time (``SET search_path``, roles, temporary tables) reads
    around the cache (``_conn_state``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy.engine.default import NO_CACHE_KEY

from ..storage._keys import UnkeyableParameter
from ..storage._rows import decode_result, encode_result, immutable_rows
from ._analysis import cte_written_tables, ddl_tables, read_plan, written_tables
from ._commit import autocommitting
from ._cursor import CachedCursor
from ._fkgraph import ForeignKeyGraphs
from ._identity import base_engine, connection_identity, engine_identity
from ._listeners import Listeners
from ._options import SESSION_WIRED, CacheDirective, CachedOption
from ._runtime_settings import STATE, might_change_state, observe
from ._sqlwrites import analyse_sql

if TYPE_CHECKING:
    from ._attach import Core

#: marks "a write whose target table is unknown": every cached read bypasses, commit clears all
ALL_TABLES = "*"
_NONE: frozenset[str] = frozenset()

_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"})


def _snapshot_isolated(conn: Any) -> bool:
    state = conn.info.get(STATE)
    if state is not None and (state.tx_snapshot or state.snapshot):
        return True
    dialect = conn.dialect
    if dialect.name == "sqlite":  # pysqlite does not BEGIN before SELECT
        return False
    level = (
        conn.get_execution_options().get("isolation_level")
        or getattr(dialect, "isolation_level", None)
        or dialect.default_isolation_level
    )
    return level in _SNAPSHOT_LEVELS


def detached(engine: Any, statement: str, parameters: Any) -> Any:
    """A builder for refresh-ahead that runs ``statement`` on its own pooled connection.

    None for async drivers, whose connections cannot be used from a plain thread (the lock
    winner then refreshes inline), and for databases that exist per connection.  A pooled
    connection whose session settings changed refuses to refresh (its rows are not shared).
    """
    if engine.dialect.is_async or engine_identity(engine) is None:
        return None

    def build() -> tuple[Any, list[Any]]:
        raw = engine.raw_connection()
        try:
            state = raw.info.get(STATE)
            if state is not None and state.blocks_any():
                raise RuntimeError("the pooled connection's session settings were changed")
            cursor = raw.cursor()
            try:
                if parameters is None:
                    cursor.execute(statement)
                else:
                    cursor.execute(statement, parameters)
                description = cursor.description
                return description, (cursor.fetchall() if description is not None else [])
            finally:
                cursor.close()
        finally:
            raw.close()  # back to the pool, which rolls back

    return build


def cached_option(context: Any) -> CacheDirective | None:
    """The ``cached()`` option of the statement being executed, when no session wiring
    translated it (a Session or Core connection on an engine attached by itself)."""
    options = getattr(getattr(context, "invoked_statement", None), "_with_options", None)
    if options:
        for option in options:
            if isinstance(option, CachedOption):
                return option.payload
    return None


class EngineHooks(Listeners):
    """The listeners one cache installs on each engine it serves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.option_key = core.option_key
        self.k = core.conn_keys
        self._deps: dict[tuple[frozenset[str], tuple[str, ...]], list[str]] = {}
        self.fk_graphs = ForeignKeyGraphs()

    # reads -----------------------------------------------------------------------------------

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        directive: CacheDirective | None = context.execution_options.get(self.option_key)
        if directive is None:
            directive = self._engine_directive(context)
            if directive is None:
                return False
        return self._serve(cursor, statement, parameters, context, directive)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any) -> bool:
        directive: CacheDirective | None = context.execution_options.get(self.option_key)
        if directive is None:
            directive = self._engine_directive(context)
            if directive is None:
                return False
        return self._serve(cursor, statement, None, context, directive)

    def _engine_directive(self, context: Any) -> CacheDirective | None:
        """The ``cached()`` option of a statement no session wiring has seen, on an engine
        attached by itself; None otherwise."""
        explicit = self.core.explicit_engines
        if not explicit or SESSION_WIRED in context.execution_options:
            return None
        directive = cached_option(context)
        if directive is None or base_engine(context.root_connection.engine) not in explicit:
            return None
        return directive

    def _serve(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        directive: CacheDirective,
    ) -> bool:
        core = self.core
        stats = core.stats
        if context.cache_hit is NO_CACHE_KEY:  # SQLAlchemy could not key it: neither do we
            stats.uncacheable += 1
            return False
        plan = read_plan(context)
        tables = plan.tables
        if plan.reason is not None and not (directive.tables and plan.reason.startswith("text")):
            stats.uncacheable += 1
            return False
        if directive.tables:
            tables = tables | frozenset(directive.tables)
        options = context.execution_options
        if options.get("stream_results") or options.get("yield_per"):
            stats.uncacheable += 1
            return False
        conn = context.root_connection
        info = conn.info
        written = info.get(self.k.written)
        if written and (
            ALL_TABLES in written
            or not written.isdisjoint(tables)
            or (directive.tags and not core.write_rules.tags(written).isdisjoint(directive.tags))
        ):
            stats.bypasses += 1
            return False
        state = info.get(STATE)
        if state is not None and state.blocks(tables):
            stats.bypasses += 1
            return False
        if info.get(self.k.tx_used) and _snapshot_isolated(conn):
            stats.bypasses += 1
            return False
        keys = core.keys
        try:
            key = keys.query(connection_identity(conn, info), statement, parameters)
        except UnkeyableParameter:
            stats.uncacheable += 1
            return False
        region = core.config.region(directive.region)
        dialect = context.dialect

        def build() -> tuple[Any, list[Any]]:
            if parameters is None:
                dialect.do_execute_no_params(cursor, statement, context)
            else:
                dialect.do_execute(cursor, statement, parameters, context)
            description = cursor.description
            return description, (cursor.fetchall() if description is not None else [])

        refresh_after = directive.refresh_after or region.refresh_after
        (description, rows), hit = core.reader.read(
            key,
            self._dependencies(tables, directive.tags),
            build,
            ttl=directive.ttl or region.ttl,
            refresh_after=refresh_after,
            encode=encode_result,
            decode=decode_result,
            compress=directive.compress,
            keep_local=immutable_rows,
            refresh=None if refresh_after is None else detached(conn.engine, statement, parameters),
        )
        if description is None:  # not a row-returning statement after all: leave it be
            return True
        if hit:
            cursor.close()
        context.cursor = CachedCursor(description, rows, getattr(cursor, "connection", None), hit)
        return True

    def _dependencies(self, tables: frozenset[str], tags: tuple[str, ...]) -> list[str]:
        deps = self._deps.get((tables, tags))
        if deps is None:
            if len(self._deps) > 4096:
                self._deps.clear()
            deps = self._deps[(tables, tags)] = self.core.keys.dependencies(tables, tags)
        return deps

    # writes ----------------------------------------------------------------------------------

    def after_cursor_execute(
        self,
        conn: Any,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        executemany: bool,
    ) -> None:
        info = conn.info
        info[self.k.tx_used] = True
        if context is None:
            return
        # session state: textual SQL and DDL, or set_config() in a statement that really ran
        if (context.is_text or context.isddl) or (
            not getattr(context.cursor, "hit", False) and might_change_state(statement)
        ):
            observe(conn, info, statement, context.dialect.name, autocommitting(conn))
        if context.isinsert or context.isupdate or context.isdelete:
            tables, truncated = written_tables(context), _NONE
        elif context.is_text:  # text() and exec_driver_sql: read the SQL itself
            found = analyse_sql(
                statement, context.dialect.name, context.dialect.default_schema_name
            )
            if found.schema_change:
                self._schema_changed(conn)
            tables, truncated = found.tables, found.truncated
            if tables is not None and not tables:
                return
        elif context.isddl:
            self._schema_changed(conn)
            tables, truncated = ddl_tables(context), _NONE
            if tables is not None and not tables:
                return
        elif statement.startswith("WITH"):  # data-modifying CTEs only exist at the top
            tables, truncated = cte_written_tables(context), _NONE
            if not tables:
                return
        else:
            return
        if tables is not None:  # and what the database changes with them (FK actions)
            tables = self.fk_graphs.expand(conn, tables, truncated)
        if autocommitting(conn):  # already committed by the database: publish now
            self.core.invalidate_written(tables if tables is not None else (ALL_TABLES,))
            return
        written = info.get(self.k.written)
        if written is None:
            written = info[self.k.written] = set()
        if tables is None:
            written.add(ALL_TABLES)
        else:  # with what declared rules add (trigger targets): their rows are uncommitted too
            written.update(self.core.write_rules.expand(tables)[0])

    def _schema_changed(self, conn: Any) -> None:
        graph = self.fk_graphs.state(conn)
        graph.mark_stale()  # and again once the transaction is over (``_core_commit``)
        conn.info[self.k.schema_changed] = graph

    def begin(self, conn: Any) -> None:
        info = conn.info
        info.pop(self.k.written, None)
        info.pop(self.k.tx_used, None)

    def commit(self, conn: Any) -> None:
        info = conn.info
        info.pop(self.k.tx_used, None)
        state = info.get(STATE)
        if state is not None:
            state.commit()
        written = info.pop(self.k.written, None)
        if written:
            info.setdefault(self.k.committing, set()).update(written)

    def rollback(self, conn: Any) -> None:
        if conn.invalidated:  # e.g. a task cancelled mid-query: its info went with it
            return
        info = conn.info
        for key in (self.k.written, self.k.committing, self.k.tx_used):
            info.pop(key, None)
        state = info.get(STATE)
        if state is not None:
            state.rollback()

    def rollback_savepoint(self, conn: Any, name: str, context: Any) -> None:
        state = conn.info.get(STATE)
        if state is not None:  # a reset inside the savepoint is undone
            state.pending.clear()

    EVENTS = (
        "do_execute",
        "do_execute_no_params",
        "after_cursor_execute",
        "begin",
        "commit",
        "rollback",
        "rollback_savepoint",
    )
