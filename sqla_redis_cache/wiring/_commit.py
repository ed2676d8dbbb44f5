"""Invalidation for Core connections used outside a Session (``engine.begin()``, ``connect()``).

A Session tells us when its commit succeeded (``after_commit``); a bare Connection does not:
SQLAlchemy's ``commit`` event fires *before* the DBAPI commit and there is no event after it.
So the tables a Core transaction wrote are published twice:

- in the ``commit`` event, just before the database commits, their tokens are made *pending*
  for this commit (a random commit id): entries stop being served at once, and nothing is
  stored for those tables while the commit is in flight (a reader could otherwise store the old
  rows under new tokens);
- again at the first moment known to follow the commit: the connection's next ``begin`` or its
  return to the pool (``checkin``), which for ``with engine.begin():`` is the end of the block.
  This ends the commit's claim; if it never comes (a connection left idle, a crashed process)
  the claim expires after ``lock_timeout`` and the tables are cached again.

A pending token is one value holding the ids of every commit in flight on that table, each with
its expiry; all its transitions are one single-key script (``_versions.REPLACE_TOKEN``, safe on
Redis Cluster): a Core commit adds its id, its publish removes it, and every other replacement
(a Session commit, an autocommit write, ``invalidate_tables``) keeps the ids, with a fresh
random part.  A table becomes cacheable again only with an ordinary token, written when the last
commit in flight ends, which is after all of them.  Interleaved, on one table:

1. C1 and C2 (Core) are in flight: the token is pending for {C1, C2}; readers neither hit nor
   store (an entry is never stamped with a pending token).
2. A Session S commits: its replacement keeps {C1, C2}; a reader still stores nothing, although
   it already sees S's row, because C1's and C2's rows are not visible yet.
3. C2 commits and publishes: the token stays pending for {C1}.
4. C1's ``commit()`` returns: reads still bypass (pending for C1) and see its row; at its next
   begin or checkin C1 publishes, the token becomes ordinary, and results read from then on
   include every commit above.

Had S's plain replacement overwritten the pending token (as a bare ``SET`` would), a reader
could have stored C1's old row during step 2 and served it after C1's ``commit()`` returned;
had C2's publish made the token ordinary, the same during step 3.  The guarantee is bounded by
``lock_timeout``: a commit in flight for longer loses its protection, as does one whose publish
never comes (both are re-covered by the publish when it does come).

Publishing after a commit that failed only costs misses.  Under AUTOCOMMIT isolation every
statement commits by itself, and ``_execution`` publishes the write as soon as it ran.
Connections a Session drives are left to the session wiring (one publish, after the commit);
whatever it did not take is published here at the next begin or checkin.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from sqlalchemy import event

from ._listeners import Listeners

if TYPE_CHECKING:
    from ._attach import Core


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
        self._claim = core.conn_keys.committing + ":claim"

    def commit(self, conn: Any) -> None:
        info = conn.info
        if info.get(self.core.conn_keys.session_owned):
            return
        tables = info.get(self.core.conn_keys.committing)
        if tables:
            claim = info.get(self._claim)
            commit_id = claim[0] if claim else os.urandom(6).hex()
            info[self._claim] = (commit_id, set(tables) | (claim[1] if claim else set()))
            self.core.invalidate_written(tables, pending=commit_id)

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
        tables = info.pop(self.core.conn_keys.committing, None) or set()
        # (commit id, tables) of a commit made pending in ``commit``: a rollback event after a
        # failed commit may have dropped ``committing``, the claim still has to end
        claim = info.pop(self._claim, None)
        commit_id = None
        if claim is not None:
            commit_id, claimed = claim
            tables = tables | claimed
        if tables:
            self.core.invalidate_written(tables, committed=commit_id)

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
