"""Where cached reads are served: the ``do_execute`` hook one cache installs on each engine.

A statement opted in with ``cached()`` carries a :class:`~._options.CacheDirective` in its
execution options, put there by the session wiring (``_session``).  On an engine attached by
itself (``attach(engine)``), statements no session wiring has seen (sessions not attached, Core
connections) are read for the ``cached()`` option itself, in the statement being executed
(``invoked_statement``: the compiled statement may be shared with executions that lack the
option).  The ``do_execute`` dialect event sees it at the last moment before the cursor runs:
after the session's autoflush, with the final SQL string and DBAPI parameters.

1. ``_analysis.read_plan``: the tables the compiled SQL reads; statements SQLAlchemy cannot
   key, ``text()`` fragments, locking reads and streamed results run uncached.
2. Bypass when this transaction wrote one of those tables (``_transaction``: read-your-writes,
   and the tags declared rules add), when the connection changed its session settings at run
   time (``_runtime_settings``), or under snapshot isolation after the transaction's first
   statement: such a transaction reads from a snapshot possibly older than the version tokens
   read now, and must not store it under them.
3. The key: the database identity of the connection (``_identity``), the SQL and parameters.
4. ``storage._reader``: one round trip; a hit swaps the execution context's cursor for a
   :class:`~._cursor.CachedCursor` over the cached raw rows and tells SQLAlchemy the statement
   ran, so SQLAlchemy builds the result exactly as from the database.  A miss runs the real
   cursor under the stampede lock, stores its rows, and serves them the same way.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Engine

from .._config import CacheConfig
from ..storage._keys import KeyBuilder, UnkeyableParameter
from ..storage._reader import Reader
from ..storage._rows import decode_result, encode_result, immutable_rows
from ..storage._stats import StatsRecorder
from ._analysis import read_plan
from ._compat import NO_CACHE_KEY, base_engine, invoked_options, serve_cursor
from ._cursor import CachedCursor
from ._identity import connection_identity, engine_identity
from ._listeners import Listeners
from ._options import SESSION_WIRED, CacheDirective, CachedOption
from ._runtime_settings import STATE
from ._transaction import ALL_TABLES, ConnectionKeys, snapshot_isolated
from ._write_rules import WriteRules


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
    for option in invoked_options(context):
        if isinstance(option, CachedOption):
            return option.payload
    return None


class ReadHooks(Listeners):
    """The read listeners one cache installs on each engine it serves: ``do_execute``."""

    def __init__(
        self,
        *,
        option_key: str,
        conn_keys: ConnectionKeys,
        config: CacheConfig,
        keys: KeyBuilder,
        reader: Reader,
        stats: StatsRecorder,
        rules: WriteRules,
        explicit_engines: weakref.WeakSet[Engine],
    ) -> None:
        self.option_key = option_key
        self.k = conn_keys
        self.config = config
        self.keys = keys
        self.reader = reader
        self.stats = stats
        self.rules = rules
        #: engines attached by themselves: ``cached()`` is read from the statements they run
        self.explicit_engines = explicit_engines
        self._deps: dict[tuple[frozenset[str], tuple[str, ...]], list[str]] = {}

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
        explicit = self.explicit_engines
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
        stats = self.stats
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
            or (directive.tags and not self.rules.tags(written).isdisjoint(directive.tags))
        ):
            stats.bypasses += 1
            return False
        state = info.get(STATE)
        if state is not None and state.blocks(tables):
            stats.bypasses += 1
            return False
        if info.get(self.k.tx_used) and snapshot_isolated(conn):
            stats.bypasses += 1
            return False
        try:
            key = self.keys.query(connection_identity(conn, info), statement, parameters)
        except UnkeyableParameter:
            stats.uncacheable += 1
            return False
        region = self.config.region(directive.region)
        dialect = context.dialect

        def build() -> tuple[Any, list[Any]]:
            if parameters is None:
                dialect.do_execute_no_params(cursor, statement, context)
            else:
                dialect.do_execute(cursor, statement, parameters, context)
            description = cursor.description
            return description, (cursor.fetchall() if description is not None else [])

        refresh_after = directive.refresh_after or region.refresh_after
        (description, rows), hit = self.reader.read(
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
        # the DBAPI connection of the real cursor (PEP 249 extension: some drivers lack it)
        connection = getattr(cursor, "connection", None)
        serve_cursor(context, CachedCursor(description, rows, connection, hit))
        return True

    def _dependencies(self, tables: frozenset[str], tags: tuple[str, ...]) -> list[str]:
        deps = self._deps.get((tables, tags))
        if deps is None:
            if len(self._deps) > 4096:
                self._deps.clear()
            deps = self._deps[(tables, tags)] = self.keys.dependencies(tables, tags)
        return deps

    EVENTS = ("do_execute", "do_execute_no_params")
