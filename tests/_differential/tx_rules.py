"""The machine's transaction rules: open a Session or Core transaction and keep it across
steps, write, flush, take savepoints, read inside it, end it.

A read inside a transaction is compared with what the transaction's own connection returns
(a second Session bound to that connection, no cache): read-your-own-writes, and the
isolation it asked for.  Under REPEATABLE READ / SERIALIZABLE the snapshot is taken by the
first statement that reaches the database; cached reads served before that are checked once
it is certainly taken (:meth:`TransactionRules.pin`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from hypothesis import strategies as st
from hypothesis.stateful import precondition, rule
from sqlalchemy import text
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from sqla_redis_cache import cached

from .common import WRITE_THROUGH, plain
from .env import Frame, OpenTx, expected_failure, short
from .reads import Extract, ReadShape

if TYPE_CHECKING:
    from .machine import DifferentialMachine as _Base
else:
    _Base = object


class TransactionRules(_Base):
    """Rules on open transactions; mixed into :class:`~.machine.DifferentialMachine`."""

    def readable(self) -> list[OpenTx]:
        return [t for t in self.active() if t.session is not None]

    @precondition(lambda self: bool(self.readable()))
    @rule(data=st.data())
    def tx_read(self, data: st.DataObject) -> None:
        tx = data.draw(st.sampled_from(self.readable()), label="tx")
        shape = data.draw(st.sampled_from(self.tx_shapes), label="shape")
        self.read_in(tx, data, shape, shape.draw(data.draw, self.pool))

    @precondition(lambda self: bool(self.readable()) and bool(self.recent))
    @rule(data=st.data())
    def tx_reread(self, data: st.DataObject) -> None:
        """A recent read, likely cached: does the transaction bypass what it must?"""
        tx = data.draw(st.sampled_from(self.readable()), label="tx")
        recent = [(s, p) for s, p in self.recent.values() if s in self.tx_shapes]
        if recent:
            shape, p = data.draw(st.sampled_from(recent), label="recent")
            self.read_in(tx, data, shape, p)

    @precondition(lambda self: bool(self.readable()) and not self.sqlite_locked())
    @rule(data=st.data())
    def tx_interleave(self, data: st.DataObject) -> None:
        """Read in an open transaction, commit elsewhere, read the same again: the second
        read must show what the transaction's isolation shows, not what the cache holds."""
        tx = data.draw(st.sampled_from(self.readable()), label="tx")
        recent = [(s, p) for s, p in self.recent.values() if s in self.tx_shapes]
        if recent and data.draw(st.booleans(), label="a recent read"):
            shape, p = data.draw(st.sampled_from(recent), label="recent")
        else:
            shape = data.draw(st.sampled_from(self.tx_shapes), label="shape")
            p = shape.draw(data.draw, self.pool)
        self.read_in(tx, data, shape, p)
        if tx in self.txs and not self.sqlite_locked():
            self.write(data)
            if tx in self.readable():
                self.read_in(tx, data, shape, p)

    def read_in(self, tx: OpenTx, data: st.DataObject, shape: ReadShape, p: dict[str, Any]) -> None:
        s = tx.session
        assert s is not None
        if shape.get is not None and identity_key(shape.get[0], p[shape.get[1]]) in s.identity_map:
            self.note(f"in {tx}: {shape.name} {p}: skipped, already in the identity map")
            return
        x = Extract(full=shape.get is not None, nested=False)
        if not tx.pinned and data.draw(st.integers(0, 3), label="snapshot now unless >0") == 0:
            self.pin(tx)
        try:
            got = plain(shape.run(s, p, (cached(),), x))
            if not tx.pinned:  # checked once the snapshot is certainly taken
                tx.unpinned.append((shape, p, got, len(self.log) + 1))
                self.note(f"in {tx}: read {shape.name} {p} (before any statement)")
                return
            with Session(bind=s.connection()) as own_view:
                expected = plain(shape.run(own_view, p, (), x))
        except Exception as exc:
            if not expected_failure(exc):
                raise
            self.note(f"in {tx}: {shape.name} {p}: autoflush failed ({short(exc)})")
            self.end_tx(tx, commit=False, why="after the failed autoflush")
            return
        if shape.unordered:
            got, expected = sorted(got, key=repr), sorted(expected, key=repr)
        self.count("tx_reads")
        self.note(f"in {tx}: read {shape.name} {p}")
        if got != expected:
            self.diverged(f"in {tx}: {shape.name} {p} (its own view)", got, expected)

    def pin(self, tx: OpenTx) -> None:
        """Take a snapshot-isolated transaction's snapshot (a plain read on its connection)
        and check that what it read from the cache before is what that snapshot holds: the
        first statement of the transaction would have taken it without a cache."""
        if tx.pinned:
            return
        tx.pinned = True
        assert tx.session is not None
        with Session(bind=tx.session.connection()) as own_view:
            for shape, p, seen, step in tx.unpinned:
                x = Extract(full=shape.get is not None, nested=False)
                got, expected = seen, plain(shape.run(own_view, p, (), x))
                if shape.unordered:
                    got, expected = sorted(got, key=repr), sorted(expected, key=repr)
                self.note(f"in {tx}: snapshot taken; step {step} {shape.name} {p} checked")
                if got != expected:
                    what = f"in {tx}: {shape.name} {p} at step {step}, before its first statement"
                    self.diverged(what, got, expected)
        tx.unpinned.clear()

    @precondition(lambda self: len(self.active()) < self.max_open)
    @rule(data=st.data())
    def open_tx(self, data: st.DataObject) -> None:
        side = self.side(data)
        self.tx_count += 1
        if data.draw(st.integers(0, 3), label="core unless >0") == 0:
            conn = side.engine.connect()
            conn.begin()
            tx = OpenTx(self.tx_count, side, conn=conn)
        else:
            autoflush = data.draw(st.booleans(), label="autoflush")
            s = side.sessions(autoflush=autoflush)
            tx = OpenTx(self.tx_count, side, session=s, autoflush=autoflush)
            if self.dialect == "postgresql":
                isolations = ["", "REPEATABLE READ", "SERIALIZABLE"]
                if "set_transaction_isolation" not in self.gates:
                    isolations.append("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
                tx.isolation = data.draw(st.sampled_from(isolations), label="isolation")
                if tx.isolation.startswith("SET"):
                    s.execute(text(tx.isolation))
                elif tx.isolation:
                    s.connection(execution_options={"isolation_level": tx.isolation})
                tx.pinned = not tx.isolation
        self.txs.append(tx)
        self.note(f"open {tx}")
        recent = [(s, p) for s, p in self.recent.values() if s in self.tx_shapes]
        if not tx.pinned and recent and data.draw(st.booleans(), label="first read cached"):
            self.read_in(tx, data, *data.draw(st.sampled_from(recent), label="recent"))

    def draw_tx(self, data: st.DataObject, sessions_only: bool = False) -> OpenTx:
        txs = [t for t in self.active() if t.session is not None or not sessions_only]
        return data.draw(st.sampled_from(txs), label="tx")

    def failed(self, tx: OpenTx, what: str, exc: Exception) -> None:
        if not expected_failure(exc):
            raise exc
        self.note(f"in {tx}: {what} failed ({short(exc)})")
        self.end_tx(tx, commit=False, why=f"after the failed {what}")

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data())
    def tx_write(self, data: st.DataObject) -> None:
        self.write_in(self.draw_tx(data), data)

    def write_in(self, tx: OpenTx, data: st.DataObject) -> None:
        kinds = {"core"} if tx.session is None else {"orm", "session", "core"}
        path = self.draw_path(data, kinds, tx)
        p = self.params(data, path)
        self.pin(tx)
        tx.wrote = True
        try:
            result = path.run(tx.target(self.dialect), p)
        except Exception as exc:
            self.failed(tx, f"write {path.name} {p}", exc)
            return
        self.count("writes")
        self.count(f"path:{path.name}")
        for flushed in (tx.entity_flushed, *(f.entity_flushed for f in tx.frames)):
            flushed.update(path.flushes)
        tx.db_written |= path.writes - path.flushes
        if path.kind == "orm":
            tx.orm_written |= path.writes
        self.note(f"in {tx}: write {path.name} {p}: {result}")
        self.check_recent(2, canaries=False)  # nobody else sees it

    @precondition(lambda self: any(t.session is not None for t in self.active()))
    @rule(data=st.data())
    def tx_flush(self, data: st.DataObject) -> None:
        tx = self.draw_tx(data, sessions_only=True)
        assert tx.session is not None
        self.pin(tx)
        try:
            tx.session.flush()
        except Exception as exc:
            self.failed(tx, "flush", exc)
            return
        self.note(f"in {tx}: flush")

    @precondition(lambda self: any(len(t.frames) < 2 for t in self.active()))
    @rule(data=st.data())
    def tx_savepoint(self, data: st.DataObject) -> None:
        self.savepoint(data.draw(st.sampled_from([t for t in self.active() if len(t.frames) < 2])))

    def savepoint(self, tx: OpenTx) -> bool:
        self.pin(tx)
        try:  # a Session flushes pending changes first
            handle = tx.session.begin_nested() if tx.session else tx.conn.begin_nested()  # type: ignore[union-attr]
        except Exception as exc:
            self.failed(tx, "SAVEPOINT", exc)
            return False
        tx.frames.append(Frame(handle))
        self.note(f"in {tx}: SAVEPOINT (depth {len(tx.frames)})")
        return True

    @precondition(lambda self: any(len(t.frames) < 2 for t in self.active()))
    @rule(data=st.data())
    def tx_savepoint_round(self, data: st.DataObject) -> None:
        """SAVEPOINT, a write (flushed), RELEASE or ROLLBACK TO, then reads inside the
        transaction and outside: a released savepoint is committed by nothing but the
        outermost commit (SQLite: unless it began the transaction), a rolled-back one never."""
        tx = data.draw(st.sampled_from([t for t in self.active() if len(t.frames) < 2]))
        if not self.savepoint(tx):
            return
        self.write_in(tx, data)
        if tx not in self.txs or not tx.frames:
            return
        if tx.session is not None:
            try:
                tx.session.flush()
            except Exception as exc:
                self.failed(tx, "flush", exc)
                return
        self.end_savepoint(tx, data.draw(st.booleans(), label="rollback"))
        recent = [(s, p) for s, p in self.recent.values() if s in self.tx_shapes]
        if recent and tx in self.readable():
            shape, p = data.draw(st.sampled_from(recent), label="recent")
            self.read_in(tx, data, shape, p)
        self.check_recent(2, canaries=False)

    @precondition(lambda self: any(t.frames for t in self.active()))
    @rule(data=st.data())
    def tx_end_savepoint(self, data: st.DataObject) -> None:
        tx = data.draw(st.sampled_from([t for t in self.active() if t.frames]), label="tx")
        self.end_savepoint(tx, data.draw(st.booleans(), label="rollback"))

    def end_savepoint(self, tx: OpenTx, rollback: bool) -> None:
        frame = tx.frames[-1]
        if rollback and frame.entity_flushed and WRITE_THROUGH in self.gates:
            rollback = False  # gated: write-through would publish the rolled-back flush
        try:
            frame.handle.rollback() if rollback else frame.handle.commit()
        except Exception as exc:
            self.failed(tx, "RELEASE SAVEPOINT", exc)
            return
        tx.frames.pop()
        self.note(f"in {tx}: {'ROLLBACK TO' if rollback else 'RELEASE'} SAVEPOINT")

    @precondition(lambda self: bool(self.active()))
    @rule(data=st.data())
    def tx_end(self, data: st.DataObject) -> None:
        tx = self.draw_tx(data)
        self.pin(tx)
        self.end_tx(tx, commit=data.draw(st.integers(0, 3), label="commit unless 0") > 0)

    def end_tx(self, tx: OpenTx, *, commit: bool, why: str = "") -> None:
        if (
            commit
            and "fine_grained_lost_update" in self.gates
            and tx.session is not None
            and tx.isolation == ""
            and tx.orm_written & tx.committed_by_others
        ):  # gated: its flushes may carry old values another commit changed since
            commit, why = False, "(gated: fine_grained_lost_update)"
        outcome = "commit" if commit else "rollback"
        handle: Any = tx.session if tx.session is not None else tx.conn
        try:
            handle.commit() if commit else handle.rollback()
        except Exception as exc:
            if not expected_failure(exc):
                raise
            outcome, commit = f"commit failed, rolled back ({short(exc)})", False
            handle.rollback()
        if commit:
            self.committed(tx.db_written | tx.entity_flushed, by=tx)
        if tx.conn is not None and commit and tx.n % 2 == 0:
            tx.idle = True  # the connection stays open after commit(), closed by close_idle
            outcome += ", connection left open"
        else:
            self.txs.remove(tx)
            tx.close()
        self.note(f"end {tx}: {outcome}" + (f" {why}" if why else ""))
        self.check_recent()

    @precondition(lambda self: any(t.idle for t in self.txs))
    @rule(data=st.data())
    def close_idle(self, data: st.DataObject) -> None:
        tx = data.draw(st.sampled_from([t for t in self.txs if t.idle]), label="idle")
        tx.close()
        self.txs.remove(tx)
        self.note(f"close {tx}")
