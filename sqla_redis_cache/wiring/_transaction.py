"""Names of one cache's bookkeeping in ``Connection.info``.

``Connection.info`` belongs to the DBAPI connection and is shared by everything that uses it,
including a second ``QueryCache`` attached to the same engine.  Each cache therefore keeps its
write sets under its own names: one cache consuming its pending invalidations at commit must
never take away those of another cache (which would then miss the commit and serve stale data).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ConnectionKeys:
    #: tables written in the current transaction
    written: str
    #: tables of a transaction being committed, until they are published
    committing: str
    #: the transaction has run a statement (snapshot isolation rule)
    tx_used: str
    #: the connection is driven by a Session, whose after_commit publishes
    session_owned: str
    #: entity rows a Session flushed in the current transaction (written through at commit)
    entity_writes: str
    #: those rows as reloaded just before the database commit, until they are published
    entity_reloaded: str
    #: the transaction ran DDL: the foreign-key graph is read again once it is over
    schema_changed: str

    @classmethod
    def for_cache(cls, tag: str) -> ConnectionKeys:
        prefix = f"sqla_redis_cache:{tag}:"
        return cls(
            prefix + "written",
            prefix + "committing",
            prefix + "tx_used",
            prefix + "session",
            prefix + "entity_writes",
            prefix + "entity_reloaded",
            prefix + "schema_changed",
        )
