"""Where cached reads are served: the ``do_execute`` hook one cache installs on each engine.

A statement opted in with ``cached()`` carries a :class:`~._options.CacheDirective` in its
execution options, put there by the session wiring (``_session``); a statement that a session's
cache policy covers carries the :class:`~._policy.Policy`, resolved here for the tables it reads
(one memoised lookup).  On an engine attached by itself (``attach(engine)``), statements no
session wiring has seen (sessions not attached, Core connections) are read for the
``cached()`` / ``uncached()`` option itself, in the statement being executed
(``invoked_statement``: the compiled statement may be shared with executions that lack the
option), else the engine's policy applies to their SELECTs.  ``QueryCache.explain`` takes the
same path with an :class:`~._explain.ExplainRequest` and stops before the database
(``_explain``).  The ``do_execute`` dialect event sees it at the last moment before the cursor runs:
after the session's autoflush, with the final SQL string and DBAPI parameters.

1. ``_analysis.read_plan``: the tables the compiled SQL reads; statements SQLAlchemy cannot
   key, ``text()`` fragments, locking reads and streamed results run uncached, counted by
   reason (``storage._stats.REASONS``) and logged once per statement at DEBUG.
2. Bypass when this transaction wrote one of those tables (``_transaction``: read-your-writes,
   and the tags declared rules add), when the connection changed its session settings at run
   time (``_runtime_settings``), or when the transaction reads from a snapshot
   (``_transaction.reads_snapshot``: REPEATABLE READ / SERIALIZABLE, from its first statement
   on; a SQLite transaction that has begun at the database and not written): its snapshot may
   be older than the version tokens read now, so it must not store it under them, and a first
   read served from the cache would leave the snapshot to a later statement (two states in one
   transaction).
3. The key: the database identity of the connection (``_identity``), the SQL and parameters.
4. ``storage._reader``: one round trip; a hit swaps the execution context's cursor for a
   :class:`~._cursor.CachedCursor` over the cached raw rows and tells SQLAlchemy the statement
   ran, so SQLAlchemy builds the result exactly as from the database.  A miss runs the real
   cursor under the stampede lock, stores its rows, and serves them the same way.

Fine-grained dependencies (``_values``): a SELECT constraining a table's column by equality to
bound values depends, for that table, on the table's unknown-rows token and those values' tokens
instead of the table token; the value keys are computed per execution from its parameters and
read in the same ``MGET`` as the entry.

The dependency keys, the per-table and per-region counters (``storage._stats.Tally``) and the
change-capture liveness key come from one memoised lookup per (tables, tags, region)
(``_dependencies``), so counting costs a hit one increment.
"""

from __future__ import annotations

import weakref
from typing import Any

from sqlalchemy.engine import Engine

from .._config import CacheConfig
from ..storage._keys import KeyBuilder, UnkeyableParameter
from ..storage._reader import Reader
from ..storage._rows import decode_result, encode_result, immutable_rows
from ..storage._stats import StatsRecorder, Tally
from ._analysis import read_plan
from ._compat import NO_CACHE_KEY, base_engine, invoked_options, refresh_load, serve_cursor
from ._cursor import CachedCursor
from ._dependencies import EntryDependencies
from ._explain import UNCACHED, Explained, ExplainOption, ExplainRequest
from ._identity import connection_identity, engine_identity
from ._listeners import Listeners
from ._options import SESSION_WIRED, CacheDirective, CachedOption, UncachedOption
from ._policy import Policies, Policy
from ._runtime_settings import STATE
from ._transaction import ALL_TABLES, ConnectionKeys, reads_snapshot
from ._values import read_values
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


def is_select(context: Any) -> bool:
    """True when the compiled statement is a SELECT (not DML, DDL, ``text()``)."""
    compiled = context.compiled
    return compiled is not None and bool(compiled.statement.is_select)


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
        policies: Policies,
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
        self.policies = policies
        self.dependencies = EntryDependencies(config, keys, stats, reader.capture, reader.store)

    def do_execute(self, cursor: Any, statement: str, parameters: Any, context: Any) -> bool:
        directive: Any = context.execution_options.get(self.option_key)
        if directive is None:
            directive = self._engine_directive(context)
            if directive is None:
                return False
        return self._serve(cursor, statement, parameters, context, directive)

    def do_execute_no_params(self, cursor: Any, statement: str, context: Any) -> bool:
        directive: Any = context.execution_options.get(self.option_key)
        if directive is None:
            directive = self._engine_directive(context)
            if directive is None:
                return False
        return self._serve(cursor, statement, None, context, directive)

    def _engine_directive(self, context: Any) -> Any:
        """For a statement no session wiring has seen, on an engine attached by itself: its
        ``cached()`` option, else the engine's policy (SELECTs only); None otherwise."""
        explicit = self.explicit_engines
        if not explicit or SESSION_WIRED in context.execution_options:
            return None
        choice: Any = None
        explain = False
        for option in invoked_options(context):
            if isinstance(option, CachedOption | UncachedOption):
                if choice is None:
                    choice = option
            elif isinstance(option, ExplainOption):
                explain = True
        if choice is None and not explain and not self.policies.engines:
            return None
        if base_engine(context.root_connection.engine) not in explicit:
            return None
        if explain:
            if choice is None:
                return ExplainRequest(None, "no cached() option")
            if isinstance(choice, UncachedOption):
                return ExplainRequest(UNCACHED, "uncached() option")
            return ExplainRequest(choice.payload, "cached() option")
        if choice is not None:
            return choice.payload if isinstance(choice, CachedOption) else None
        return self._engine_policy(context)

    def _engine_policy(self, context: Any) -> Policy | None:
        """The policy of the (explicitly attached) engine, for a SELECT that is no refresh."""
        engine = base_engine(context.root_connection.engine)
        if engine not in self.explicit_engines or not self.policies.engines:
            return None
        policy = self.policies.for_engine(engine)
        if policy is None or not is_select(context) or refresh_load(context):
            return None
        return policy

    def _explained(self, context: Any, request: ExplainRequest, statement: str, params: Any) -> Any:
        """The directive an explained statement would get; raises :class:`Explained` when
        it gets none."""
        choice = request.choice
        if choice is UNCACHED:
            raise Explained(
                request, reason="uncached_option", statement=statement, parameters=params
            )
        if choice is None:
            choice = self._engine_policy(context)
            if choice is None:
                raise Explained(
                    request, reason="not_opted_in", statement=statement, parameters=params
                )
            request.decided_by = "policy of the engine"
        if choice.__class__ is Policy:
            tables = read_plan(context).tables
            choice, why, excluded = choice.decide(tables)
            request.decided_by = f"{request.decided_by} ({why})"
            if choice is None:
                reason = "policy" if excluded else "not_opted_in"
                raise Explained(
                    request, reason=reason, statement=statement, parameters=params, tables=tables
                )
        return choice

    def _refuse(self, reason: str, statement: str, explaining: Any, *details: Any) -> bool:
        """An execution that cannot be cached: counted by reason, or explained."""
        if explaining is not None:
            directive, tables, parameters = details
            raise Explained(
                explaining,
                reason=reason,
                statement=statement,
                parameters=parameters,
                directive=directive,
                tables=tables,
            )
        self.stats.refused(reason, statement)
        return False

    def _bypass(self, reason: str, tally: Tally | None, explaining: Any, *details: Any) -> bool:
        """A read that skips the cache in this transaction: counted, or explained."""
        if explaining is not None:
            directive, tables, statement, parameters = details
            raise Explained(
                explaining,
                reason=reason,
                statement=statement,
                parameters=parameters,
                directive=directive,
                tables=tables,
            )
        self.stats.bypasses += 1
        if tally is not None:
            tally.bypasses += 1
        return False

    def _serve(
        self,
        cursor: Any,
        statement: str,
        parameters: Any,
        context: Any,
        directive: Any,
    ) -> bool:
        explaining: ExplainRequest | None = None
        if directive.__class__ is not CacheDirective:  # a policy, or explain
            if directive.__class__ is ExplainRequest:
                explaining = directive
                directive = self._explained(context, directive, statement, parameters)
            else:
                directive = directive.resolve(read_plan(context).tables)
                if directive is None:  # the policy's rule for these tables: never cached
                    return False
        if context.cache_hit is NO_CACHE_KEY:  # SQLAlchemy could not key it: neither do we
            return self._refuse(
                "unkeyable_statement", statement, explaining, directive, frozenset(), parameters
            )
        plan = read_plan(context)
        tables = plan.tables
        reason = plan.reason
        if reason is not None and not (directive.tables and reason == "text_fragment"):
            return self._refuse(reason, statement, explaining, directive, tables, parameters)
        if directive.tables:
            tables = tables | frozenset(directive.tables)
        options = context.execution_options
        if options.get("stream_results") or options.get("yield_per"):
            return self._refuse(
                "streamed_result", statement, explaining, directive, tables, parameters
            )
        deps, tally, live = self.dependencies.group(tables, directive.tags, directive.region)
        values = None
        if reason is None and self.config.fine_grained:
            values = read_values(context)
            if values is not None:
                deps = self.dependencies.fine(tables, directive.tags, values)
        conn = context.root_connection
        info = conn.info
        written = info.get(self.k.written)
        if written and (
            ALL_TABLES in written
            or not written.isdisjoint(tables)
            or (directive.tags and not self.rules.tags(written).isdisjoint(directive.tags))
        ):
            return self._bypass(
                "own_writes", tally, explaining, directive, tables, statement, parameters
            )
        state = info.get(STATE)
        if state is not None and state.blocks(tables):
            return self._bypass(
                "session_settings", tally, explaining, directive, tables, statement, parameters
            )
        if reads_snapshot(conn, bool(written)):
            return self._bypass(
                "snapshot", tally, explaining, directive, tables, statement, parameters
            )
        try:
            key = self.keys.query(connection_identity(conn, info), statement, parameters)
        except UnkeyableParameter:
            return self._refuse(
                "unkeyable_parameter", statement, explaining, directive, tables, parameters
            )
        if explaining is not None:
            raise Explained(
                explaining,
                reason=None,
                statement=statement,
                parameters=parameters,
                directive=directive,
                tables=tables,
                key=key,
                deps=deps,
                values=values,
            )
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
            deps,
            build,
            ttl=directive.ttl or region.ttl,
            refresh_after=refresh_after,
            encode=encode_result,
            decode=decode_result,
            compress=directive.compress,
            keep_local=immutable_rows,
            refresh=None if refresh_after is None else detached(conn.engine, statement, parameters),
            tally=tally,
            label=statement,
            live=live,
        )
        if description is None:  # not a row-returning statement after all: leave it be
            return True
        if hit:
            cursor.close()
        # the DBAPI connection of the real cursor (PEP 249 extension: some drivers lack it)
        connection = getattr(cursor, "connection", None)
        serve_cursor(context, CachedCursor(description, rows, connection, hit))
        return True

    EVENTS = ("do_execute", "do_execute_no_params")
