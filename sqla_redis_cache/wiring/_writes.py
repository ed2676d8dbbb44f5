"""Where writes are seen: the ``after_cursor_execute`` hook one cache installs on each engine.

``after_cursor_execute`` records the table of every INSERT/UPDATE/DELETE (ORM flush, ORM bulk
DML, Core DML, and DML nested in them as data-modifying CTEs: ``_analysis``), of textual SQL
(``_sqlwrites``) and of DDL in the connection's transaction state (``_transaction``), with every
table the database changes along with them (``ON DELETE``/``ON UPDATE`` actions, ``TRUNCATE ...
CASCADE``: ``_fkgraph``).  It also notes session settings a statement changes
(``_runtime_settings``).

Fine-grained invalidation (``_values``): a statement a flush emits for its own rows (the ORM's
persistence, while the connection's session is flushing, not a bulk ORM statement) leaves its
target table *flushed*: the session's ``after_flush`` then tells the values of the rows it
wrote.  Every other write (and the tables the database or declared rules change along) leaves
its tables *unknown*: all their results miss at commit.

Under AUTOCOMMIT isolation the write is already committed, so the commit path invalidates it at
once (``_commit``).  So is a write after which a SQLite connection is outside any database
transaction: DDL pysqlite runs without a ``BEGIN``, DML under the driver's own autocommit, and
the ``RELEASE`` of a ``SAVEPOINT`` that began the transaction (no ``BEGIN`` before it: pysqlite
begins only before DML, and SQLite begins one at a ``SAVEPOINT`` and commits it at its
``RELEASE``), which commits every write noted before it: those are invalidated then, as the
statement returns, whatever the outer transaction does next.  Otherwise reads of those tables
on that connection bypass the cache until the transaction ends, so a transaction sees its own
writes and nothing uncommitted is stored.
The tables that declared ``invalidates`` rules add (``_write_rules``: what triggers write) count
as written from the same statement on, not only at commit.  The connection's ``commit`` event
(``_commit``) hands the set over to the commit path.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.sql.selectable import TableClause

from ._analysis import cte_written_tables, ddl_tables, table_name, written_tables
from ._commit import CommitPath
from ._compat import flushing, is_autocommit, persistence_statement, sqlite_in_transaction
from ._fkgraph import ForeignKeyGraphs
from ._listeners import Listeners
from ._runtime_settings import might_change_state, observe
from ._sqlwrites import analyse_sql
from ._transaction import ALL_TABLES, ConnectionKeys
from ._write_rules import WriteRules

_NONE: frozenset[str] = frozenset()

#: execution option marking ORM DML a session executes (bulk INSERT/UPDATE/DELETE): its rows
#: are never the flush's own, even when it reaches the ORM's persistence
ORM_DML = "sqla_redis_cache.orm_dml"


def _sqlite_outside(conn: Any) -> bool:
    """True when a SQLite connection is outside a database transaction after a statement ran:
    whatever it wrote is committed (a driver that does not say: False, as before)."""
    return sqlite_in_transaction(conn.connection.dbapi_connection) is False


class WriteHooks(Listeners):
    """The write listener one cache installs on each engine it serves."""

    def __init__(
        self,
        conn_keys: ConnectionKeys,
        rules: WriteRules,
        fk_graphs: ForeignKeyGraphs,
        commit_path: CommitPath,
    ) -> None:
        self.k = conn_keys
        self.rules = rules
        self.fk_graphs = fk_graphs
        self.commit_path = commit_path

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
        sqlite_committed = context.dialect.name == "sqlite" and _sqlite_outside(conn)
        if sqlite_committed and info.get(self.k.written):
            # a RELEASE of the SAVEPOINT that began the transaction (or a textual COMMIT)
            # committed the writes noted so far: invalidate them now, as under AUTOCOMMIT
            self.commit_path.invalidate(info.pop(self.k.written))
        # session state: textual SQL and DDL, or set_config() in a statement that really ran
        if (context.is_text or context.isddl) or (
            not getattr(context.cursor, "hit", False) and might_change_state(statement)
        ):
            observe(conn, info, statement, context.dialect.name, is_autocommit(conn))
        own: str | None = None  # the table whose rows a flush writes with this statement
        if context.isinsert or context.isupdate or context.isdelete:
            tables, truncated = written_tables(context), _NONE
            own = self._flush_table(info, context)
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
        if sqlite_committed or is_autocommit(conn):  # committed already: invalidate now
            self.commit_path.invalidate(tables if tables is not None else (ALL_TABLES,))
            return
        written = info.get(self.k.written)
        if written is None:
            written = info[self.k.written] = set()
        unknown = info.get(self.k.unknown)
        if unknown is None:
            unknown = info[self.k.unknown] = set()
        if tables is None:
            written.add(ALL_TABLES)
            unknown.add(ALL_TABLES)
            return
        # with what declared rules add (trigger targets): their rows are uncommitted too
        expanded = self.rules.expand(tables)[0]
        written.update(expanded)
        for table in expanded:
            if table == own:
                flushed = info.get(self.k.flushed)
                if flushed is None:
                    flushed = info[self.k.flushed] = set()
                flushed.add(table)
            else:
                unknown.add(table)

    def _flush_table(self, info: dict[str, Any], context: Any) -> str | None:
        """The target table of a statement a flush emits for its own rows, else None."""
        options = context.execution_options
        if (
            not persistence_statement(context)
            or ORM_DML in options
            or options.get("schema_translate_map")  # tenant schemas: table level
        ):
            return None
        owner = info.get(self.k.owner)
        session = None if owner is None else owner()
        # a flush of the unit of work (``before_flush`` marks the session): the legacy bulk
        # mappings run as a "flush" too, but fire neither event and their rows are unknown
        if session is None or not flushing(session) or not session.info.get(self.k.flushed):
            return None
        table = getattr(context.compiled.statement, "table", None)
        if not isinstance(table, TableClause):
            return None
        return table_name(table, None)

    def _schema_changed(self, conn: Any) -> None:
        graph = self.fk_graphs.state(conn)
        graph.mark_stale()  # and again once the transaction is over (``_commit``)
        conn.info[self.k.schema_changed] = graph

    EVENTS = ("after_cursor_execute",)
