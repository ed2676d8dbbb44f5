"""Session wiring: the ``cached()`` option, the connections of a transaction, and its commit.

``do_orm_execute`` only translates the ``cached()`` option, or else the policy of the session's
attach target (``_policy``), into an execution option; it never answers a query itself, so
SQLAlchemy's autoflush, loader options and result handling run as usual and the cursor-level
hook (``_reads``) decides hit or miss with full knowledge of the transaction's writes. The one
exception is a plain ``session.get(cls, pk, options=[cached()])``, which the entity cache
(``_entities``) may answer under the conditions it documents.

``after_begin`` notes each connection a session transaction uses and marks it as driven by a
session, so that the Core commit steps (``_commit``) leave its commit to the session; it also
installs the engine hooks on engines met for the first time (unbound sessionmakers, ``binds``,
option copies): SQLAlchemy fires it before the first statement runs on the new connection and
checks for engine listeners at each event point, so that first transaction is fully tracked.

``before_flush`` marks the session, so that the statements up to its ``after_flush`` count as
the flush's own (``_writes``); ``after_flush`` tells the values of the rows they wrote, per
connection (``_values``: fine-grained invalidation), and lets the write-through
(``_write_through``) note the rows a flush wrote (they are reloaded from the database just
before it commits).  ``after_commit`` runs once the
database commit succeeded and hands the session to the commit path (``_commit``): the tables
its connections wrote and the reloaded rows, invalidated and written through in one round trip,
so by the time ``commit()`` returns every process misses on them.  A rollback invalidates
nothing.  SQLAlchemy also fires ``after_commit`` when a savepoint is released
(``begin_nested()`` committed): nothing is committed then, so it is ignored; the writes made
inside the savepoint stay in the connection's write set (its reads keep bypassing) and are
invalidated, or dropped, with the outermost transaction.  A savepoint rolled back keeps its
tables in the write set too: bypassing a little longer and invalidating them at commit only
costs misses, while the rows it flushed are reloaded from the database at commit anyway.
"""

from __future__ import annotations

import weakref
from collections.abc import Callable
from typing import Any

from sqlalchemy.engine import Engine

from ._commit import CommitPath
from ._compat import populates_existing, refreshes, releases_savepoint
from ._entities import Entities
from ._explain import UNCACHED, ExplainOption, ExplainRequest
from ._listeners import Listeners
from ._options import SESSION_WIRED, CachedOption, UncachedOption
from ._policy import Policies
from ._row_values import RowValues
from ._transaction import CONNECTIONS, ConnectionKeys, session_connections, snapshot_isolated
from ._values import MAX_VALUES_PER_TABLE
from ._write_through import WriteThrough
from ._writes import ORM_DML


class SessionHooks(Listeners):
    """The listeners one cache installs on the sessionmakers and sessions it is attached to."""

    def __init__(
        self,
        *,
        option_key: str,
        conn_keys: ConnectionKeys,
        entities: Entities,
        write_through: WriteThrough,
        commit_path: CommitPath,
        engine_met: Callable[[Engine], object],
        policies: Policies,
        trust_loaded_values: bool = False,
    ) -> None:
        self.option_key = option_key
        #: take an UPDATE/DELETE's old values from what the Session loaded even when another
        #: transaction may have changed the row since (``CacheConfig.trust_loaded_values``)
        self.trust_loaded_values = trust_loaded_values
        self.policies = policies
        self.k = conn_keys
        self.entities = entities
        self.write_through = write_through
        self.commit_path = commit_path
        self.engine_met = engine_met

    def do_orm_execute(self, state: Any) -> Any:
        if not state.is_select:
            if state.is_insert or state.is_update or state.is_delete:  # bulk ORM DML
                state.update_execution_options(**{ORM_DML: True})
            return None
        options = state.user_defined_options
        for option in options:
            if isinstance(option, CachedOption):
                if len(options) > 1 and self._explain(state, options):
                    return None
                served = self.entities.try_get(state, option)  # session.get()
                if served is not None:
                    return served
                state.update_execution_options(
                    **{self.option_key: option.payload, SESSION_WIRED: True}
                )
                return None
            if isinstance(option, UncachedOption | ExplainOption):
                self._explain(state, options)
                return None
        policy = self._policy(state)
        if policy is not None:
            state.update_execution_options(**{self.option_key: policy, SESSION_WIRED: True})
        return None

    def _policy(self, state: Any) -> Any:
        policies = self.policies
        if not policies.sessions:
            return None
        policy = policies.for_session(state.session)
        if policy is None or refreshes(state) or populates_existing(state):
            return None
        return policy

    def _explain(self, state: Any, options: list[Any]) -> bool:
        """``QueryCache.explain``: hand down what the options or the policy chose for the
        statement, in place of its directive; False when it is not being explained."""
        if not any(isinstance(option, ExplainOption) for option in options):
            return False
        request = ExplainRequest(None, "no cached() option, and no policy of the session")
        for option in options:
            if isinstance(option, CachedOption):
                request = ExplainRequest(option.payload, "cached() option")
                break
            if isinstance(option, UncachedOption):
                request = ExplainRequest(UNCACHED, "uncached() option")
                break
        else:
            policy = self._policy(state)
            if policy is not None:
                request = ExplainRequest(policy, "policy of the session")
        state.update_execution_options(**{self.option_key: request, SESSION_WIRED: True})
        return True

    def after_begin(self, session: Any, transaction: Any, connection: Any) -> None:
        info = session.info
        conns = info.get(CONNECTIONS)
        if conns is None:
            conns = info[CONNECTIONS] = []
        conns.append(connection)
        connection.info[self.k.session_owned] = True  # its commit is invalidated by after_commit
        connection.info[self.k.owner] = weakref.ref(session)  # is it flushing? (``_writes``)
        self.engine_met(connection.engine)

    def before_flush(self, session: Any, flush_context: Any, instances: Any) -> None:
        session.info[self.k.flushed] = True  # this flush's own statements (``_writes``)

    def after_flush(self, session: Any, flush_context: Any) -> None:
        session.info.pop(self.k.flushed, None)
        self._note_values(session, flush_context)
        self.write_through.note_flush(session, flush_context)

    def _note_values(self, session: Any, flush_context: Any) -> None:
        """The values of the rows this flush's own statements wrote (``_values``); a table
        whose rows are not all known becomes unknown."""
        k = self.k
        for conn in session_connections(session):
            if conn.closed:
                continue
            info = conn.info
            flushed = info.pop(k.flushed, None)
            if not flushed:
                continue
            unknown = info.setdefault(k.unknown, set())
            noted = info.setdefault(k.values, {})
            try:
                found = RowValues.of_flush(
                    session, flush_context, flushed, self._old_values_certain(session, conn)
                )
            except Exception:  # never fail a flush over what only narrows an invalidation
                unknown.update(flushed)
                continue
            for table, values in found.items():
                if values is None:
                    unknown.add(table)
                    continue
                mine = noted.setdefault(table, set())
                mine.update(values)
                if len(mine) > MAX_VALUES_PER_TABLE:
                    unknown.add(table)

    def _old_values_certain(self, session: Any, conn: Any) -> bool:
        """Whether the old values the Session holds for the rows it updates or deletes are
        the rows' values as this transaction writes them.  Under READ COMMITTED (and on SQLite,
        whose drivers read outside a transaction until the first write) another transaction may
        have changed a row between its load and this ``UPDATE``: its old values are then
        unknown, and so are the table's rows.  Under PostgreSQL's REPEATABLE READ or
        SERIALIZABLE they are certain when the rows were loaded in this transaction: its reads
        never come from the cache (``_transaction.reads_snapshot``), the database refuses to
        update a row changed since the snapshot, and ``expire_on_commit`` makes every object
        kept from an earlier transaction reload; objects added from outside the session
        (``detached_to_persistent``) are never trusted."""
        if self.trust_loaded_values:
            return True
        return (
            conn.dialect.name == "postgresql"
            and snapshot_isolated(conn)
            and bool(session.expire_on_commit)
            and not session.info.get(self.k.foreign_objects)
        )

    def detached_to_persistent(self, session: Any, instance: Any) -> None:
        session.info[self.k.foreign_objects] = True  # its loaded values come from elsewhere

    def after_commit(self, session: Any) -> None:
        if releases_savepoint(session):  # RELEASE SAVEPOINT: nothing is committed yet
            return
        self.commit_path.after_session_commit(session)

    def after_soft_rollback(self, session: Any, previous_transaction: Any) -> None:
        session.info.pop(self.k.flushed, None)  # a flush that failed before its after_flush

    def after_transaction_end(self, session: Any, transaction: Any) -> None:
        session.info.pop(self.k.flushed, None)
        if transaction.parent is None:
            session.info.pop(CONNECTIONS, None)

    EVENTS = (
        "do_orm_execute",
        "after_begin",
        "detached_to_persistent",
        "before_flush",
        "after_flush",
        "after_soft_rollback",
        "after_commit",
        "after_transaction_end",
    )
