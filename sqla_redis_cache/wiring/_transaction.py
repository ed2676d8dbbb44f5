"""Per-connection transaction state: what one cache keeps in ``Connection.info``, and reads of it.

``Connection.info`` belongs to the DBAPI connection and is shared by everything that uses it,
including a second ``QueryCache`` attached to the same engine.  Each cache therefore keeps its
write sets under its own names (:class:`ConnectionKeys`): one cache consuming its pending
invalidations at commit must never take away those of another cache (which would then miss the
commit and serve stale data).

The life of a transaction's bookkeeping, by the module that writes each name:

- ``written``: tables written in the transaction (``_writes``, on every write); reads of them
  bypass the cache (``_reads``); moved to ``committing`` by the ``commit`` event (``_commit``);
- ``committing``: tables of a transaction being committed, until they are invalidated (by the
  session's ``after_commit``, or for a Core connection at its next begin or checkin);
- ``claim``: (commit id, tables) of a Core commit whose tokens were made pending (``_commit``);
- ``tx_used``: the transaction ran a statement;
- ``session_owned``: a Session drives the connection, so its ``after_commit`` invalidates;
- ``entity_writes``, ``entity_reloaded``: the rows a flush wrote, and those rows as reloaded
  just before the commit (``_write_through``);
- ``schema_changed``: the transaction ran DDL: the foreign-key graph is read again after it;
- ``unknown``: written tables some of whose written rows are not known (``_writes``: any
  write that is not a flush's own statement); ``flushed``: tables a flush's own statements
  wrote, waiting for its ``after_flush`` to tell their rows' values (``_session``, ``_values``);
  ``values``: table -> (column, value) pairs the transaction's known rows touched;
  ``committing_values``: the same for ``committing`` (a table written with unknown rows in
  any of the commits it holds is absent); ``owner``: the session driving the connection.

The functions below answer the questions several hooks ask of that state: does this
transaction read from a snapshot, may the entity cache answer for this session.

Snapshots.  A transaction under REPEATABLE READ / SERIALIZABLE takes its snapshot at its first
statement and sees that one state until it ends.  No read of it is served from the cache, the
first one included: a first read answered from the cache would leave the snapshot to a later
statement, and the transaction would see two states (the cached one, and a newer one if
anything committed in between).  Bypassed, the first read takes the snapshot as it would
without the cache.  A SQLite transaction that has begun at the database (pysqlite and
aiosqlite begin before the first DML; a ``BEGIN`` or a ``SAVEPOINT`` begins one at once) reads
a snapshot too: in WAL mode other connections commit meanwhile and it keeps seeing what it
first read, so its reads bypass as well until it ends, or until it writes: a transaction
that wrote holds SQLite's only write lock (in WAL mode, taking it fails if the snapshot is not
the latest), so nothing commits meanwhile and its reads of other tables are as fresh as any.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy.engine import Connection

from ._compat import default_isolation_level, engine_isolation_level, sqlite_in_transaction
from ._runtime_settings import STATE

#: marks "a write whose target table is unknown": every cached read bypasses, commit clears all
ALL_TABLES = "*"

#: ``Session.info`` key: the connections the session's current transaction uses
CONNECTIONS = "sqla_redis_cache.connections"

_SNAPSHOT_LEVELS = frozenset({"REPEATABLE READ", "SERIALIZABLE", "SNAPSHOT"})


@dataclass(frozen=True, slots=True)
class ConnectionKeys:
    """The ``Connection.info`` names of one cache (see the module docstring)."""

    written: str
    committing: str
    claim: str
    tx_used: str
    session_owned: str
    entity_writes: str
    entity_reloaded: str
    schema_changed: str
    unknown: str
    flushed: str
    values: str
    committing_values: str
    owner: str
    foreign_objects: str

    @classmethod
    def for_cache(cls, tag: str) -> ConnectionKeys:
        prefix = f"sqla_redis_cache:{tag}:"
        return cls(
            prefix + "written",
            prefix + "committing",
            prefix + "committing:claim",
            prefix + "tx_used",
            prefix + "session",
            prefix + "entity_writes",
            prefix + "entity_reloaded",
            prefix + "schema_changed",
            prefix + "unknown",
            prefix + "flushed",
            prefix + "values",
            prefix + "committing:values",
            prefix + "owner",
            prefix + "foreign_objects",
        )


def session_connections(session: Any) -> list[Any]:
    """The connections the session's current transaction uses (noted in ``after_begin``)."""
    conns: list[Any] = session.info.get(CONNECTIONS, [])
    return conns


def snapshot_isolated(conn: Any) -> bool:
    """True when ``conn``'s transaction reads from a snapshot taken at its first statement
    (REPEATABLE READ, SERIALIZABLE, SNAPSHOT: on the engine, the connection, or set in SQL)."""
    state = conn.info.get(STATE)
    if state is not None and (state.tx_snapshot or state.snapshot):
        return True
    dialect = conn.dialect
    if dialect.name == "sqlite":  # pysqlite does not BEGIN before SELECT
        return False
    level = (
        conn.get_execution_options().get("isolation_level")
        or engine_isolation_level(dialect)
        or default_isolation_level(dialect)
    )
    return level in _SNAPSHOT_LEVELS


def reads_snapshot(conn: Any, wrote: bool = False) -> bool:
    """True when reads on ``conn``'s transaction must not be served from the cache: it runs
    under snapshot isolation (before its first statement too), or it is a SQLite transaction
    that has begun at the database and has not written (``wrote``: then it holds SQLite's only
    write lock, its snapshot is the latest and stays so; see the module docstring)."""
    if snapshot_isolated(conn):
        return True
    if wrote or conn.dialect.name != "sqlite":
        return False
    if conn.invalidated:
        return True
    # a driver that does not say: assume it began (bypass) rather than risk two states
    return sqlite_in_transaction(conn.connection.dbapi_connection) is not False


def bind_reads_snapshot(bind: Any) -> bool | None:
    """:func:`reads_snapshot` for a Session's bind before it has a connection: for an engine,
    whether the transactions it begins are snapshot-isolated; None when that is unknown (the
    database's default level is read at the engine's first connection)."""
    if isinstance(bind, Connection):
        return not bind.closed and reads_snapshot(bind)
    dialect = bind.dialect
    if dialect.name == "sqlite":  # its connections begin only at a BEGIN, DML or SAVEPOINT
        return False
    level = (
        bind.get_execution_options().get("isolation_level")
        or engine_isolation_level(dialect)
        or default_isolation_level(dialect)
    )
    return None if level is None else level in _SNAPSHOT_LEVELS


def transaction_blocks(session: Any, k: ConnectionKeys) -> bool:
    """True when the session's transaction wrote, reads from a snapshot, or runs on a
    connection whose session settings changed (the entity cache must not answer for it)."""
    for conn in session_connections(session):
        if conn.closed:
            continue
        info = conn.info
        if info.get(k.written) or info.get(k.committing):
            return True
        state = info.get(STATE)
        if state is not None and state.blocks_any():
            return True
        if reads_snapshot(conn):
            return True
    return False
