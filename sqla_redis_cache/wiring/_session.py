"""Session wiring: attach/detach, the ``cached()`` option, and commit-time invalidation.

``do_orm_execute`` only translates the ``cached()`` option into an execution option; it never
answers a query itself, so SQLAlchemy's autoflush, loader options and result handling run as
usual and the cursor-level hook (``_execution``) decides hit or miss with full knowledge of the
transaction's writes.  The one exception is a plain ``session.get(cls, pk, options=[cached()])``,
which the entity cache (``_entities``) may answer under the conditions it documents.

``after_flush`` lets ``_entities`` note the rows a flush wrote (they are reloaded from the
database just before it commits); ``after_commit`` hands the written tables to
``_entities.publish`` (tokens and write-through of the reloaded rows in one pipeline).
Connections a session drives are marked so that ``_core_commit`` leaves their commits to the
session.

``after_begin`` notes each connection a session transaction uses (and installs the engine hooks
on engines met for the first time).  ``after_commit`` runs once the database commit succeeded:
it collects the tables those connections wrote and replaces their version tokens in one round
trip, so by the time ``commit()`` returns every process misses on them.  A rollback collects
nothing.

Engines a session meets at run time (unbound sessionmakers, ``binds``, option copies) get their
hooks in ``after_begin``, which SQLAlchemy fires before the first statement runs on the new
connection; SQLAlchemy checks for engine listeners at each event point, so that first
transaction is fully tracked.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._listeners import Listeners
from ._options import SESSION_WIRED, CachedOption

if TYPE_CHECKING:
    from ._attach import Core

CONNECTIONS = "sqla_redis_cache.connections"


class SessionHooks(Listeners):
    def __init__(self, core: Core) -> None:
        self.core = core
        self.option_key = core.option_key

    def do_orm_execute(self, state: Any) -> Any:
        if not state.is_select:
            return None
        for option in state.user_defined_options:
            if isinstance(option, CachedOption):
                served = self.core.entities.try_get(state, option)  # session.get()
                if served is not None:
                    return served
                state.update_execution_options(
                    **{self.option_key: option.payload, SESSION_WIRED: True}
                )
                return None
        return None

    def after_begin(self, session: Any, transaction: Any, connection: Any) -> None:
        info = session.info
        conns = info.get(CONNECTIONS)
        if conns is None:
            conns = info[CONNECTIONS] = []
        conns.append(connection)
        connection.info[self.core.conn_keys.session_owned] = (
            True  # its commit is published by after_commit
        )
        self.core.ensure_engine(connection.engine)

    def after_flush(self, session: Any, flush_context: Any) -> None:
        self.core.entities.after_flush(session, flush_context)

    def after_commit(self, session: Any) -> None:
        info = session.info
        tables: set[str] = set()
        for conn in info.get(CONNECTIONS, ()):
            written = conn.info.pop(self.core.conn_keys.committing, None)
            if written:
                tables |= written
        self.core.entities.publish(session, tables)  # invalidates, and writes entities through

    def after_transaction_end(self, session: Any, transaction: Any) -> None:
        if transaction.parent is None:
            session.info.pop(CONNECTIONS, None)

    EVENTS = (
        "do_orm_execute",
        "after_begin",
        "after_flush",
        "after_commit",
        "after_transaction_end",
    )
