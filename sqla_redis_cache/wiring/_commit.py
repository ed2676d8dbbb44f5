"""The commit path: written tables (and written entities) -> invalidation plan -> one pipeline.

Every invalidation takes the same three steps, whoever asks for it:

1. **what was written**: the tables a transaction wrote (recorded by ``_writes`` in the
   connection's transaction state, ``_transaction``), and the entity rows its flushes wrote,
   reloaded from the database just before it committed (``_write_through``); or the tables and
   tags named by ``invalidate_tables`` / ``invalidate_tags`` / ``clear``;
2. **the plan** (:meth:`CommitPath.plan`): the token keys to replace (the tables with what the
   declared rules add, ``_write_rules``; the whole namespace when a write's target is unknown;
   for a table whose written rows are all known, the value tokens of their old and new values,
   else its unknown-rows token: ``_values``),
   the entity entries to write through, and for a Core commit the commit id that keeps the
   tokens pending;
3. **one pipeline** (:meth:`CommitPath.run`): ``storage._versions`` replaces the tokens and
   writes the entries in one round trip of single-key operations (owed and retried in the
   background if Redis fails).

Who asks, and when:

- a Session: its ``after_commit`` (``_session``), once the database commit succeeded, with
  every connection of the transaction (:meth:`CommitPath.after_session_commit`);
- a Core connection outside a Session (``engine.begin()``, ``connect()``): see below;
- a write under AUTOCOMMIT isolation, at once (``_writes``); the facade's explicit
  invalidation.

The connection events every engine gets (:class:`TransactionHooks`) are one listener per
event, whose steps run in the order written in it: at ``commit``, the entity rows are reloaded
inside the transaction, then the transaction's writes become the commit's, then a Core
connection's tokens are made pending.  No step relies on another listener having run first.

Core connections.  A Session tells us when its commit succeeded; a bare Connection does not:
SQLAlchemy's ``commit`` event fires *before* the DBAPI commit and there is no event after it.
So the tables a Core transaction wrote are invalidated twice:

- in the ``commit`` event, just before the database commits, their tokens are made *pending*
  for this commit (a random commit id): entries stop being served at once, and nothing is
  stored for those tables while the commit is in flight (a reader could otherwise store the old
  rows under new tokens);
- again at the first moment known to follow the commit: the connection's next ``begin`` or its
  return to the pool (``checkin``), which for ``with engine.begin():`` is the end of the block.
  This ends the commit's claim; if it never comes (a connection left idle, a crashed process)
  the claim expires after ``lock_timeout`` and the tables are cached again.

A pending token is one value holding the ids of every commit in flight on that table, each with
its expiry; all its transitions are one single-key script (``io._scripts.REPLACE_TOKEN``, safe
on Redis Cluster): a Core commit adds its id, the invalidation after it removes it, and every
other invalidation (a Session commit, an autocommit write, ``invalidate_tables``) keeps the ids,
with a fresh random part.  A table becomes cacheable again only with an ordinary token, written
when the last commit in flight ends, which is after all of them.  Interleaved, on one table:

1. C1 and C2 (Core) are in flight: the token is pending for {C1, C2}; readers neither hit nor
   store (an entry is never stamped with a pending token).
2. A Session S commits: its invalidation keeps {C1, C2}; a reader still stores nothing,
   although it already sees S's row, because C1's and C2's rows are not visible yet.
3. C2 commits and ends its claim: the token stays pending for {C1}.
4. C1's ``commit()`` returns: reads still bypass (pending for C1) and see its row; at its next
   begin or checkin C1 ends its claim, the token becomes ordinary, and results read from then
   on include every commit above.

Had S's plain replacement overwritten the pending token (as a bare ``SET`` would), a reader
could have stored C1's old row during step 2 and served it after C1's ``commit()`` returned;
had C2's end made the token ordinary, the same during step 3.  The guarantee is bounded by
``lock_timeout``: a commit in flight for longer loses its protection, as does one whose end
never comes (both are re-covered by the invalidation when it does come).

Invalidating after a commit that failed only costs misses.  Connections a Session drives are
left to the session (one invalidation, after the commit); whatever it did not take is
invalidated here at the next begin or checkin.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import event

from ..io._ops import Operation
from ..storage._keys import KeyBuilder
from ..storage._versions import Versions
from ._listeners import Listeners
from ._runtime_settings import STATE
from ._transaction import ALL_TABLES, ConnectionKeys, session_connections
from ._write_rules import WriteRules
from ._write_through import Reloaded, WriteThrough


class InvalidationPlan(NamedTuple):
    """What one invalidation sends, in one round trip."""

    #: the tokens to replace: tables (with what declared rules add) and tags, or the namespace
    token_keys: list[str]
    #: the written entities' entries, given the new tokens (write-through); None: no entity
    entries: Callable[[Mapping[str, bytes]], list[Operation]] | None = None
    #: tokens replaced only if they still hold these values (compare-and-swap, write-through)
    expected: Mapping[str, bytes] | None = None
    #: a Core commit about to happen: its tokens stay pending until it ends
    pending: str | None = None
    #: a Core commit that is over: its claim ends
    committed: str | None = None
    #: value tokens to delete (fine-grained: the values the commit's known rows touched)
    drop: list[str] | None = None
    #: if Redis fails, owed instead of ``drop``: those tables' unknown-rows tokens
    fallback: list[str] | None = None


class CommitPath:
    """Plans and runs every invalidation of one cache (see the module docstring)."""

    def __init__(
        self,
        conn_keys: ConnectionKeys,
        keys: KeyBuilder,
        versions: Versions,
        rules: WriteRules,
        write_through: WriteThrough,
    ) -> None:
        self.k = conn_keys
        self.keys = keys
        self.versions = versions
        self.rules = rules
        self.write_through = write_through

    # the plan and the pipeline -------------------------------------------------------------

    def plan(
        self,
        tables: Iterable[str] = (),
        tags: Iterable[str] = (),
        *,
        entities: list[Reloaded] | None = None,
        pending: str | None = None,
        committed: str | None = None,
        values: Mapping[str, Iterable[tuple[str, str]]] | None = None,
    ) -> InvalidationPlan:
        """The plan for ``tables`` and ``tags`` written (``ALL_TABLES``: the namespace), with
        the entity rows ``entities`` reloaded before the commit.  ``values``: for tables whose
        written rows are all known, the (column, value) pairs they touched; every other table
        is written with unknown rows."""
        tables = set(tables)
        keys = self.keys
        if ALL_TABLES in tables:  # a write whose target is unknown: everything, no entity
            return InvalidationPlan([keys.all_key], pending=pending, committed=committed)
        expanded, rule_tags = self.rules.expand(tables)
        token_keys = [keys.table(t) for t in expanded]
        drop: list[str] = []
        fallback: list[str] = []
        for table in expanded:
            known = None if values is None else values.get(table)
            if known is None:  # every fine-grained result of the table misses
                token_keys.append(keys.unknown_rows(table))
            else:  # deleted: a write creates no key (readers create what they read)
                drop.extend(keys.value(table, column, text) for column, text in known)
                fallback.append(keys.unknown_rows(table))
        token_keys.extend(keys.tag(t) for t in rule_tags.union(tags))
        if not entities:
            return InvalidationPlan(
                token_keys, pending=pending, committed=committed, drop=drop, fallback=fallback
            )
        written = {keys.table(t) for t in tables}
        entries, expected = self.write_through.entries(entities, written)
        return InvalidationPlan(
            token_keys, entries, expected, pending, committed, drop=drop, fallback=fallback
        )

    def run(self, plan: InvalidationPlan) -> bool:
        """Replace the plan's tokens and write its entries in one round trip; False (and the
        invalidation owed, retried in the background) when Redis failed."""
        ok = self.versions.invalidate(
            plan.token_keys,
            plan.entries,
            pending=plan.pending,
            committed=plan.committed,
            expected=plan.expected,
            counted=sum(1 for key in plan.token_keys if not self.keys.bookkeeping(key)),
            drop=plan.drop or (),
            fallback=plan.fallback or (),
        )
        if ok and plan.committed is None:  # (a Core commit's end repeats its pending step)
            prefix = self.keys.prefix + "t:"
            tables = {key[len(prefix) :] for key in plan.token_keys if key.startswith(prefix)}
            if tables:
                self.versions.store.stats.tables_invalidated(tables)
        return ok

    def invalidate(self, tables: Iterable[str] = (), tags: Iterable[str] = ()) -> bool:
        """Explicit invalidation, and writes under AUTOCOMMIT (already committed)."""
        return self.run(self.plan(tables, tags))

    def invalidate_everything(self) -> bool:
        """Every entry of the namespace misses from now on (``clear()``)."""
        return self.run(self.plan((ALL_TABLES,)))

    # sessions ----------------------------------------------------------------------------------

    def after_session_commit(self, session: Any) -> None:
        """The database commit of ``session`` succeeded: invalidate what its connections wrote
        (and write through the entity rows they reloaded)."""
        k = self.k
        tables: set[str] = set()
        reloaded: list[Reloaded] = []
        values: dict[str, set[tuple[str, str]]] = {}
        unknown: set[str] = set()
        for conn in session_connections(session):
            info = conn.info
            written = info.pop(k.committing, None)
            known = info.pop(k.committing_values, None) or {}
            if written:
                tables |= written
                unknown.update(t for t in written if t not in known)
                for table, pairs in known.items():
                    values.setdefault(table, set()).update(pairs)
            if conn.closed:
                continue
            info.pop(k.entity_writes, None)  # noted, but this connection never committed
            done = info.pop(k.entity_reloaded, None)
            late = info.pop(k.written, None)
            for key in (k.unknown, k.flushed, k.values):
                info.pop(key, None)
            if late:  # written after the reload (and committed): invalidate tables, not rows
                tables |= late
                unknown |= late
            elif done is not None:
                reloaded.append(done)
        fine = {t: v for t, v in values.items() if t not in unknown}
        self.run(self.plan(tables, entities=reloaded, values=fine))

    # Core connections ----------------------------------------------------------------------------

    def before_core_commit(self, conn: Any) -> None:
        """A connection no Session drives is about to commit: its tables' tokens become
        pending for this commit (see the module docstring)."""
        info = conn.info
        if info.get(self.k.session_owned):
            return
        tables = info.get(self.k.committing)
        if tables:
            claim = info.get(self.k.claim)
            commit_id = claim[0] if claim else os.urandom(6).hex()
            info[self.k.claim] = (commit_id, set(tables) | (claim[1] if claim else set()))
            self.run(self.plan(tables, pending=commit_id))

    def after_core_commit(self, info: dict[str, Any]) -> None:
        """The connection begins again or goes back to the pool, so its last commit is over:
        invalidate what it committed and end the commit's claim."""
        k = self.k
        # a session marks its connections after their begin; the mark ends with the transaction
        info.pop(k.session_owned, None)
        graph = info.pop(k.schema_changed, None)
        if graph is not None:  # its DDL is committed (or undone) now: read the graph again
            graph.mark_stale()
        tables = info.pop(k.committing, None) or set()
        info.pop(k.committing_values, None)  # a Core commit: unknown rows (pending tokens)
        # (commit id, tables) of a commit made pending in ``before_core_commit``: a rollback
        # event after a failed commit may have dropped ``committing``, the claim still has to end
        claim = info.pop(k.claim, None)
        commit_id = None
        if claim is not None:
            commit_id, claimed = claim
            tables = tables | claimed
        if tables:
            self.run(self.plan(tables, committed=commit_id))


class TransactionHooks(Listeners):
    """The connection events of every engine a cache serves: one listener per event, its steps
    in the order written here (no step depends on another listener's order)."""

    EVENTS = ("begin", "commit", "rollback", "rollback_savepoint")

    def __init__(
        self, conn_keys: ConnectionKeys, commit_path: CommitPath, write_through: WriteThrough
    ) -> None:
        self.k = conn_keys
        self.commit_path = commit_path
        self.write_through = write_through
        # pools outlive the engines that share them (``execution_options()`` copies): the
        # checkin listener is removed from each pool once, when the cache is closed
        self._pools: list[Any] = []

    def begin(self, conn: Any) -> None:
        info = conn.info
        self.commit_path.after_core_commit(info)  # the previous transaction's commit is over
        self.write_through.forget(info)
        for key in (self.k.written, self.k.tx_used, self.k.unknown, self.k.flushed, self.k.values):
            info.pop(key, None)

    def commit(self, conn: Any) -> None:
        # 1. inside the transaction, after its last write: reload the entity rows it wrote
        self.write_through.reload_before_commit(conn)
        # 2. the transaction's writes become the commit's
        info = conn.info
        info.pop(self.k.tx_used, None)
        state = info.get(STATE)
        if state is not None:
            state.commit()
        written = info.pop(self.k.written, None)
        unknown = info.pop(self.k.unknown, None) or set()
        unknown |= info.pop(self.k.flushed, None) or set()  # no after_flush told their rows
        values = info.pop(self.k.values, None) or {}
        if written:
            committing = info.setdefault(self.k.committing, set())
            known = info.get(self.k.committing_values)
            for table in written:
                pairs = values.get(table)
                # known in this commit, and in every earlier one this connection still holds
                if (
                    pairs is not None
                    and table not in unknown
                    and (table not in committing or (known is not None and table in known))
                ):
                    if known is None:
                        known = info[self.k.committing_values] = {}
                    known.setdefault(table, set()).update(pairs)
                    continue
                if known is not None:  # unknown rows in one of the commits it holds
                    known.pop(table, None)
            committing.update(written)
        # 3. no Session will say when a Core connection's commit succeeded: pending tokens now
        self.commit_path.before_core_commit(conn)

    def rollback(self, conn: Any) -> None:
        if conn.invalidated:  # e.g. a task cancelled mid-query: its info went with it
            return
        info = conn.info
        k = self.k
        for key in (
            k.written,
            k.committing,
            k.tx_used,
            k.unknown,
            k.flushed,
            k.values,
            k.committing_values,
        ):
            info.pop(key, None)
        state = info.get(STATE)
        if state is not None:
            state.rollback()
        self.write_through.forget(info)

    def rollback_savepoint(self, conn: Any, name: str, context: Any) -> None:
        state = conn.info.get(STATE)
        if state is not None:  # a reset inside the savepoint is undone
            state.pending.clear()

    def checkin(self, dbapi_connection: Any, record: Any) -> None:
        if record is not None:
            self.commit_path.after_core_commit(record.info)

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
