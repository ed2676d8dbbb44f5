"""Count the SQL statements that really reach the database driver.

SQLAlchemy events (``before_cursor_execute``, ``do_execute``...) are useless for this:
the cache answers hits from a ``do_execute`` listener, so the statement "executes" as
far as SQLAlchemy is concerned but never reaches the driver. These counters sit
*below* SQLAlchemy, inside the DBAPI driver objects:

==========  ===============================================================================
driver      hook (injected through the ``do_connect`` event, i.e. the driver's connect kwargs)
==========  ===============================================================================
psycopg2    ``cursor_factory=``: a ``psycopg2.extensions.cursor`` subclass counting
            ``execute`` / ``executemany`` / ``callproc`` / ``copy_expert``
pysqlite    ``factory=``: a ``sqlite3.Connection`` subclass whose ``cursor()`` returns a
            counting ``sqlite3.Cursor`` and whose ``execute*`` shortcuts count too
aiosqlite   same ``factory=`` (aiosqlite passes it to ``sqlite3.connect`` in its thread)
asyncpg     ``connection_class=``: an ``asyncpg.Connection`` subclass counting its public
            query methods, and whose ``prepare()`` returns a counting ``PreparedStatement``
==========  ===============================================================================

asyncpg's query logger (``Connection.add_query_logger``) is deliberately NOT used: it
never sees ``PreparedStatement.fetch()`` (which is how SQLAlchemy's asyncpg dialect runs
every non-executemany statement) and it reports via ``loop.call_soon``, i.e. after the
awaiting code has already resumed.

What is counted: one per driver call (``executemany`` of N rows counts 1, however many
round trips the driver makes), only while the connection is checked out of the pool,
and except transaction control (``BEGIN``, ``COMMIT``, ``ROLLBACK``, ``SAVEPOINT``,
``RELEASE`` ...), which goes to :attr:`Counter.ignored` instead. So dialect
initialisation queries on first connect, ``pool_pre_ping`` pings, reset-on-return
rollbacks and the BEGIN/COMMIT that drivers issue themselves are not counted.
The cache's own reads of the database catalog (its foreign-key graph, once per engine and
after DDL) carry a ``/* sqla_redis_cache: ... */`` comment and go to :attr:`Counter.catalog`.
A call is counted when it is issued, whether or not the server then rejects it.
"""

from __future__ import annotations

import re
import sqlite3
import threading
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import URL, Engine, create_engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

__all__ = [
    "Counter",
    "Window",
    "instrument_engine",
    "make_counted_async_engine",
    "make_counted_engine",
]

_TRANSACTION_CONTROL = re.compile(
    r"""^\s*(?:
        BEGIN | START\s+TRANSACTION | COMMIT | END | ROLLBACK | ABORT
        | SAVEPOINT | RELEASE | PREPARE\s+TRANSACTION
    )\b | ^[\s;]*$""",
    re.IGNORECASE | re.VERBOSE,
)
_CATALOG = re.compile(r"^\s*/\* sqla_redis_cache: ")


@dataclass
class Window:
    """Statements counted inside one :meth:`Counter.measure` / :meth:`Counter.expect` block."""

    statements: list[str] = field(default_factory=list)

    @property
    def count(self) -> int:
        return len(self.statements)


class Counter:
    """Statements that reached the driver of one engine (see module docstring)."""

    def __init__(self, *, count_transaction_control: bool = False) -> None:
        self.count_transaction_control = count_transaction_control
        self.statements: list[str] = []
        """SQL of every counted call, in order."""
        self.ignored: list[str] = []
        """Transaction-control statements seen while checked out but not counted."""
        self.catalog: list[str] = []
        """The cache's own catalog reads (see module docstring), not counted."""
        self._lock = threading.Lock()
        self._live: weakref.WeakSet[Any] = weakref.WeakSet()

    @property
    def count(self) -> int:
        return len(self.statements)

    def reset(self) -> None:
        with self._lock:
            self.statements.clear()
            self.ignored.clear()
            self.catalog.clear()

    @contextmanager
    def measure(self) -> Iterator[Window]:
        """``with counter.measure() as w: ...`` then ``w.count`` / ``w.statements``."""
        window = Window()
        start = self.count
        try:
            yield window
        finally:
            with self._lock:
                if len(self.statements) < start:  # reset() inside the block
                    start = 0
                window.statements[:] = self.statements[start:]

    @contextmanager
    def expect(self, n: int) -> Iterator[Window]:
        """Assert that exactly *n* statements reach the database inside the block."""
        with self.measure() as window:
            yield window
        if window.count != n:
            listing = "\n".join(f"  {i}. {s}" for i, s in enumerate(window.statements, 1))
            raise AssertionError(
                f"expected {n} statement(s) to reach the database, got {window.count}"
                + (f":\n{listing}" if listing else "")
            )

    def __repr__(self) -> str:
        return f"<Counter count={self.count}>"

    # -- called by the driver hooks -------------------------------------------------

    def _record(self, connection: Any, sql: Any) -> None:
        with self._lock:
            if connection not in self._live:
                return
        text = _sql_text(sql, connection)
        with self._lock:
            if _CATALOG.match(text):
                self.catalog.append(text)
            elif not self.count_transaction_control and _TRANSACTION_CONTROL.match(text):
                self.ignored.append(text)
            else:
                self.statements.append(text)

    def _checkout(self, key: Any) -> None:
        with self._lock:
            self._live.add(key)

    def _checkin(self, key: Any) -> None:
        with self._lock:
            self._live.discard(key)


def _sql_text(sql: Any, connection: Any) -> str:
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    if isinstance(sql, str):
        return sql
    as_string = getattr(sql, "as_string", None)  # psycopg2.sql.Composable
    if as_string is not None:
        try:
            return str(as_string(connection))
        except Exception:
            pass
    return str(sql)


def _counted_key(dbapi_connection: Any) -> Any:
    """The object the driver hooks see as "their" connection."""
    driver = getattr(dbapi_connection, "driver_connection", dbapi_connection)
    inner = getattr(driver, "_connection", None)  # aiosqlite.Connection -> sqlite3.Connection
    return inner if isinstance(inner, sqlite3.Connection) else driver


# --------------------------------------------------------------------------- psycopg2


def _psycopg2_cursor_class(base: type[Any], counter: Counter) -> type[Any]:
    class CountingCursor(base):  # type: ignore[misc,valid-type]
        def execute(self, query: Any, vars: Any = None) -> Any:
            counter._record(self.connection, query)
            return super().execute(query, vars)

        def executemany(self, query: Any, vars_list: Any) -> Any:
            counter._record(self.connection, query)
            return super().executemany(query, vars_list)

        def callproc(self, procname: Any, parameters: Any = None) -> Any:
            counter._record(self.connection, f"CALL {procname}")
            return super().callproc(procname, parameters)

        def copy_expert(self, sql: Any, file: Any, size: int = 8192) -> Any:
            counter._record(self.connection, sql)
            return super().copy_expert(sql, file, size)

    return CountingCursor


def _install_psycopg2(engine: Engine, counter: Counter) -> None:
    import psycopg2.extensions

    @event.listens_for(engine, "do_connect")
    def _inject(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        base = cparams.get("cursor_factory") or psycopg2.extensions.cursor
        cparams["cursor_factory"] = _psycopg2_cursor_class(base, counter)


# --------------------------------------------------------------------------- sqlite3


def _sqlite_connection_class(counter: Counter) -> type[sqlite3.Connection]:
    class CountingCursor(sqlite3.Cursor):
        def execute(self, sql: str, parameters: Any = (), /) -> CountingCursor:
            counter._record(self.connection, sql)
            return super().execute(sql, parameters)

        def executemany(self, sql: str, seq_of_parameters: Any, /) -> CountingCursor:
            counter._record(self.connection, sql)
            return super().executemany(sql, seq_of_parameters)

        def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
            counter._record(self.connection, sql_script)
            return super().executescript(sql_script)

    class CountingConnection(sqlite3.Connection):
        # sqlite3.Connection.cursor() does not consult a subclass-level default, and the
        # execute*() shortcuts run a plain sqlite3.Cursor from C: override all of them.
        def cursor(self, factory: Any = None) -> Any:
            return super().cursor(factory or CountingCursor)

        def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
            counter._record(self, sql)
            return super().execute(sql, parameters)

        def executemany(self, sql: str, parameters: Any, /) -> sqlite3.Cursor:
            counter._record(self, sql)
            return super().executemany(sql, parameters)

        def executescript(self, sql_script: str, /) -> sqlite3.Cursor:
            counter._record(self, sql_script)
            return super().executescript(sql_script)

    return CountingConnection


def _install_sqlite(engine: Engine, counter: Counter) -> None:
    @event.listens_for(engine, "do_connect")
    def _inject(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        if cparams.get("factory") not in (None, sqlite3.Connection):
            raise NotImplementedError(
                f"{dialect.name}+{dialect.driver} already sets a sqlite3 connection "
                "factory; statement counting cannot be combined with it"
            )
        cparams["factory"] = _sqlite_connection_class(counter)


# --------------------------------------------------------------------------- asyncpg


def _asyncpg_connection_class(base: type[Any], counter: Counter) -> type[Any]:
    from asyncpg.prepared_stmt import PreparedStatement  # type: ignore[import-untyped,import-not-found,unused-ignore]

    class CountingPreparedStatement(PreparedStatement):  # type: ignore[misc]
        __slots__ = ()  # same layout as PreparedStatement, so __class__ can be swapped

        # explain() goes through Connection.fetchval, which counts it.
        async def fetch(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return await super().fetch(*args, **kw)

        async def fetchval(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return await super().fetchval(*args, **kw)

        async def fetchrow(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return await super().fetchrow(*args, **kw)

        async def fetchmany(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return await super().fetchmany(*args, **kw)

        async def executemany(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return await super().executemany(*args, **kw)

        def cursor(self, *args: Any, **kw: Any) -> Any:
            counter._record(self._connection, self.get_query())
            return super().cursor(*args, **kw)

    class CountingConnection(base):  # type: ignore[misc,valid-type]
        async def prepare(self, query: str, **kw: Any) -> Any:
            stmt = await super().prepare(query, **kw)
            stmt.__class__ = CountingPreparedStatement
            return stmt

        async def execute(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return await super().execute(query, *args, **kw)

        async def executemany(self, command: str, args: Any, **kw: Any) -> Any:
            counter._record(self, command)
            return await super().executemany(command, args, **kw)

        async def fetch(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return await super().fetch(query, *args, **kw)

        async def fetchval(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return await super().fetchval(query, *args, **kw)

        async def fetchrow(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return await super().fetchrow(query, *args, **kw)

        async def fetchmany(self, query: str, args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return await super().fetchmany(query, args, **kw)

        def cursor(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, query)
            return super().cursor(query, *args, **kw)

        async def copy_from_query(self, query: str, *args: Any, **kw: Any) -> Any:
            counter._record(self, f"COPY ({query}) TO STDOUT")
            return await super().copy_from_query(query, *args, **kw)

        async def copy_from_table(self, table_name: str, **kw: Any) -> Any:
            counter._record(self, f"COPY {table_name} TO STDOUT")
            return await super().copy_from_table(table_name, **kw)

        async def copy_to_table(self, table_name: str, **kw: Any) -> Any:
            counter._record(self, f"COPY {table_name} FROM STDIN")
            return await super().copy_to_table(table_name, **kw)

        async def copy_records_to_table(self, table_name: str, **kw: Any) -> Any:
            counter._record(self, f"COPY {table_name} FROM STDIN")
            return await super().copy_records_to_table(table_name, **kw)

    return CountingConnection


def _install_asyncpg(engine: Engine, counter: Counter) -> None:
    import asyncpg

    @event.listens_for(engine, "do_connect")
    def _inject(dialect: Any, conn_rec: Any, cargs: Any, cparams: dict[str, Any]) -> None:
        base = cparams.get("connection_class") or asyncpg.Connection
        cparams["connection_class"] = _asyncpg_connection_class(base, counter)


# --------------------------------------------------------------------------- public API

_INSTALLERS = {
    "psycopg2": _install_psycopg2,
    "pysqlite": _install_sqlite,
    "aiosqlite": _install_sqlite,
    "asyncpg": _install_asyncpg,
}


def instrument_engine(
    engine: Engine | AsyncEngine, *, count_transaction_control: bool = False
) -> Counter:
    """Attach a :class:`Counter` to an engine that has not connected yet.

    Works by rewriting the driver's connect arguments (``do_connect`` event), so it
    cannot be used with ``creator=`` / ``async_creator=`` engines, and connections the
    pool already holds are not counted.
    """
    sync_engine = engine.sync_engine if isinstance(engine, AsyncEngine) else engine
    driver = sync_engine.dialect.driver
    try:
        install = _INSTALLERS[driver]
    except KeyError:
        raise NotImplementedError(
            f"no statement counter for driver {driver!r}; supported: {sorted(_INSTALLERS)}"
        ) from None

    counter = Counter(count_transaction_control=count_transaction_control)
    install(sync_engine, counter)

    @event.listens_for(sync_engine, "checkout")
    def _on_checkout(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        counter._checkout(_counted_key(dbapi_connection))

    @event.listens_for(sync_engine, "checkin")
    def _on_checkin(dbapi_connection: Any, record: Any) -> None:
        if dbapi_connection is not None:
            counter._checkin(_counted_key(dbapi_connection))

    return counter


def _reject_creators(kw: dict[str, Any]) -> None:
    for name in ("creator", "async_creator"):
        if name in kw:
            raise ValueError(f"{name}= bypasses the driver hooks; pass connect_args instead")


def make_counted_engine(
    url: str | URL, *, count_transaction_control: bool = False, **kw: Any
) -> tuple[Engine, Counter]:
    """``create_engine(url, **kw)`` plus a :class:`Counter` (psycopg2 or pysqlite)."""
    _reject_creators(kw)
    engine = create_engine(url, **kw)
    try:
        counter = instrument_engine(engine, count_transaction_control=count_transaction_control)
    except BaseException:
        engine.dispose()
        raise
    return engine, counter


def make_counted_async_engine(
    url: str | URL, *, count_transaction_control: bool = False, **kw: Any
) -> tuple[AsyncEngine, Counter]:
    """``create_async_engine(url, **kw)`` plus a :class:`Counter` (asyncpg or aiosqlite)."""
    _reject_creators(kw)
    engine = create_async_engine(url, **kw)
    try:
        counter = instrument_engine(engine, count_transaction_control=count_transaction_control)
    except BaseException:
        engine.sync_engine.dispose()
        raise
    return engine, counter
