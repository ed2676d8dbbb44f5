"""Invalidation for Core connections used outside a Session (``engine.begin()``, ``connect()``).

A Session tells us when its commit succeeded (``after_commit``); a bare Connection does not:
SQLAlchemy's ``commit`` event fires *before* the DBAPI commit and there is no event after it.
So the tables a Core transaction wrote are published twice:

- in the ``commit`` event, just before the database commits, as *pending* tokens: entries
  stop being served at once, and nothing is stored for those tables while the commit is in
  flight (a reader could otherwise store the old rows under the new tokens);
- again at the first moment known to follow the commit: the connection's next ``begin`` or its
  return to the pool (``checkin``), which for ``with engine.begin():`` is the end of the block.
  This replaces the pending tokens with ordinary ones; if it never comes (a connection left
  idle, a crashed process) the pending tokens expire after ``lock_timeout`` and the tables are
  cached again.

Publishing after a commit that failed only costs misses.  Under AUTOCOMMIT isolation every
statement commits by itself, and ``_execution`` publishes the write as soon as it ran.
Connections a Session drives are left to the session wiring (one publish, after the commit);
whatever it did not take is published here at the next begin or checkin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ._listeners import Listeners

if TYPE_CHECKING:
    from ._core import Core


def autocommitting(conn: Any) -> bool:
    """True when ``conn`` runs under AUTOCOMMIT isolation (each statement commits itself)."""
    check = getattr(conn, "_is_autocommit_isolation", None)
    return bool(check()) if check is not None else False


class CoreCommitHooks(Listeners):
    """Listeners installed after ``EngineHooks`` on every engine a cache serves."""

    def __init__(self, core: Core) -> None:
        self.core = core
        # pools outlive the engines that share them (``execution_options()`` copies): the
        # checkin listener is removed from each pool once, when the cache is closed
        self._pools: list[Any] = []

    def commit(self, conn: Any) -> None:
        info = conn.info
        if info.get(self.core.conn_keys.session_owned):
            return
        pending = info.get(self.core.conn_keys.committing)
        if pending:
            self.core.invalidate_written(pending, pending=True)

    def begin(self, conn: Any) -> None:
        self._publish(conn.info)

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            self._publish(record.info)

    def _publish(self, info: dict[str, Any]) -> None:
        # a session marks its connections after their begin; the mark ends with the transaction
        info.pop(self.core.conn_keys.session_owned, None)
        graph = info.pop(self.core.conn_keys.schema_changed, None)
        if graph is not None:  # its DDL is committed (or undone) now: read the graph again
            graph.mark_stale()
        pending = info.pop(self.core.conn_keys.committing, None)
        if pending:
            self.core.invalidate_written(pending)

    EVENTS = ("commit", "begin")

    def install(self, engine: Any) -> None:
        super().install(engine)
        pool = engine.pool
        if not event.contains(pool, "checkin", self.checkin):
            event.listen(pool, "checkin", self.checkin)
            self._pools.append(pool)

    def release_pools(self) -> None:
        for pool in self._pools:
            if event.contains(pool, "checkin", self.checkin):
                event.remove(pool, "checkin", self.checkin)
        self._pools = []
