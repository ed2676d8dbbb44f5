"""The state machine: random writes through every path, each cached read checked against the
database.

Every cached read runs in a fresh session of side A or B and is compared with the same read
on the reference engine; inside an open transaction, with what that transaction's own
connection returns (read-your-own-writes; ``tx_rules``).  After every write, commit and
rollback, every table is read whole (the canaries) and the latest reads again: a stale entry
only shows when the same thing is read before another write to its table replaces the token.
Each run ends by reading its recent reads, and the entities it wrote, through both sides.

The database is the model: nothing here predicts values, so a write that fails (a foreign key,
a lock held by the other open transaction, a row deleted meanwhile) is rolled back and the run
goes on.  A divergence raises :class:`Divergence` with the numbered steps of the run;
Hypothesis then shrinks the run and prints the minimal one with its reproduction blob.
"""

from __future__ import annotations

import os
import uuid
from typing import Any, ClassVar

from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sqla_redis_cache import cached

from .common import WRITE_THROUGH, Pool, gated_faults, plain
from .env import Divergence, Env, OpenTx, RemoteSide, Side, expected_failure, short
from .reads import CANARIES, SHAPES, Extract, ReadShape
from .schema import seed
from .tx_rules import TransactionRules
from .writes import PATHS, DrawContext, Target, WritePath

_BY_NAME = {s.name: s for s in SHAPES}
#: the shapes the end of a run reads for every entity id it wrote
_ENTITY_CHECKS = {"users": "get_user", "items": "get_item", "tenants": "get_tenant"}


class DifferentialMachine(TransactionRules, RuleBasedStateMachine):
    env: ClassVar[Env]
    totals: ClassVar[dict[str, int]] = {}

    def __init__(self) -> None:
        super().__init__()
        env = self.env
        self.dialect = env.dialect
        self.gates = gated_faults()
        seed(env.ref)
        namespace = "d" + uuid.uuid4().hex[:12]
        self.a = env.side("A", namespace)
        self.b = env.side("B", namespace)
        self.c = env.remote(namespace)  # reads only, from another process
        self.pool = Pool()
        self.txs: list[OpenTx] = []
        self.tx_count = 0
        self.commits = 0
        self.log: list[str] = []
        self.recent: dict[str, tuple[ReadShape, dict[str, Any]]] = {}
        self.paths = [
            p
            for p in PATHS
            if self.dialect in p.dialects and (p.fault is None or p.fault not in self.gates)
        ]
        self.tx_shapes = [
            s
            for s in SHAPES
            if not (s.reads_rule_target and "write_rules_in_transaction" in self.gates)
        ]
        self.max_open = 2 if self.dialect == "postgresql" else 1
        #: PostgreSQL: change capture's listener (side A's process), for outside writes
        self.capture: Any = None
        if env.captured:
            self.capture = self.a.cache.change_capture(self.a.engine)
            self.capture.start()

    # bookkeeping ---------------------------------------------------------------------------

    def note(self, line: str) -> None:
        self.log.append(f"{len(self.log) + 1:3d}. {line}")

    def count(self, key: str) -> None:
        self.totals[key] = self.totals.get(key, 0) + 1

    def diverged(self, what: str, got: Any, expected: Any) -> None:
        self.count("divergences")
        steps = "\n".join(self.log)
        raise Divergence(
            f"{what}\n  cached:   {got!r}\n  database: {expected!r}\n"
            f"steps ({self.dialect}; A, B and C (another process) are caches on one "
            f"namespace):\n{steps}"
        )

    def side(self, data: st.DataObject) -> Side:
        return data.draw(st.sampled_from([self.a, self.b]), label="side")

    def reader(self, data: st.DataObject) -> Side | RemoteSide:
        return data.draw(st.sampled_from([self.a, self.b, self.c]), label="reader")

    def sqlite_locked(self) -> bool:
        return self.dialect == "sqlite" and any(t.wrote and not t.idle for t in self.txs)

    def active(self) -> list[OpenTx]:
        return [t for t in self.txs if not t.idle]

    def committed(self, tables: set[str] | frozenset[str], by: OpenTx | None = None) -> None:
        self.commits += 1
        for tx in self.active():
            if tx is not by:
                tx.committed_by_others |= tables

    @invariant()
    def counted(self) -> None:
        self.count("steps")  # runs after every step (and once after __init__)

    # reads ---------------------------------------------------------------------------------

    def compare(
        self, side: Side | RemoteSide, shape: ReadShape, p: dict[str, Any], how: str
    ) -> None:
        if isinstance(side, RemoteSide):
            got, outcome = side.read(shape.name, p)
        else:
            before = side.cache.stats()
            with side.sessions() as s:
                got = plain(shape.run(s, p, (cached(),), Extract()))
            after = side.cache.stats()
            outcome = "hit" if after.hits > before.hits else "miss"
            if after.hits == before.hits and after.misses == before.misses:
                outcome = "bypass"
            if after.near.get("hits", 0) > before.near.get("hits", 0):
                outcome = "hit from memory"
        self.count(f"read_{outcome.split()[0]}")
        if outcome == "hit from memory":
            self.count("hits_from_memory")
        self.count(f"shape:{shape.name}")
        with self.env.ref_sessions() as s:
            expected = plain(shape.run(s, p, (), Extract()))
        if shape.unordered:
            got, expected = sorted(got, key=repr), sorted(expected, key=repr)
        self.note(f"{how}{shape.name} {p} via {side.label}: {outcome}")
        if got != expected:
            self.diverged(f"{shape.name} {p} via {side.label} ({outcome})", got, expected)

    def remember(self, shape: ReadShape, p: dict[str, Any]) -> None:
        key = f"{shape.name} {p}"
        self.recent.pop(key, None)
        self.recent[key] = (shape, p)
        if len(self.recent) > 8:
            del self.recent[next(iter(self.recent))]

    def check_recent(self, n: int = 3, canaries: bool = True) -> None:
        """Read every table and the latest reads again, through the side whose turn it is."""
        side = (self.a, self.b, self.c)[len(self.log) % 3]
        checks = [(c, {}) for c in CANARIES] if canaries else []
        for shape, p in [*checks, *list(self.recent.values())[-n:]]:
            self.compare(side, shape, p, "  check ")

    @rule(data=st.data())
    def read(self, data: st.DataObject) -> None:
        shape = data.draw(st.sampled_from(SHAPES), label="shape")
        p = shape.draw(data.draw, self.pool)
        self.remember(shape, p)
        self.compare(self.reader(data), shape, p, "read ")

    @precondition(lambda self: bool(self.recent))
    @rule(data=st.data())
    def reread(self, data: st.DataObject) -> None:
        shape, p = data.draw(st.sampled_from(list(self.recent.values())), label="recent")
        self.compare(self.reader(data), shape, p, "read ")

    # writes --------------------------------------------------------------------------------

    def draw_path(self, data: st.DataObject, kinds: set[str], tx: OpenTx | None) -> WritePath:
        paths = [
            p
            for p in self.paths
            if p.kind in kinds and (tx is None or p.in_open_tx) and self.allowed(p, tx)
        ]
        return data.draw(st.sampled_from(paths), label="path")

    def allowed(self, path: WritePath, tx: OpenTx | None) -> bool:
        """The gate of the entity write-through values fault: within one transaction, never
        mix unit-of-work writes of a table with other writes reaching it, nor flush a table
        another transaction committed meanwhile (the flush would publish stale columns)."""
        if tx is None or WRITE_THROUGH not in self.gates:
            return True
        db_side = path.writes - path.flushes
        return not (
            db_side & tx.entity_flushed or path.flushes & (tx.db_written | tx.committed_by_others)
        )

    def params(self, data: st.DataObject, path: WritePath) -> dict[str, Any]:
        self.pool.touching = True
        try:
            return path.draw(DrawContext(data.draw, self.pool, WRITE_THROUGH in self.gates))
        finally:
            self.pool.touching = False

    @precondition(lambda self: not self.sqlite_locked())
    @rule(data=st.data())
    def write(self, data: st.DataObject) -> None:
        """One write in its own transaction, committed (mostly) or rolled back."""
        path = self.draw_path(data, {"orm", "session", "core"}, None)
        p = self.params(data, path)
        side = self.side(data)
        commit = data.draw(st.integers(0, 7), label="commit unless 0") > 0
        how = "session"
        if path.kind == "core":
            # outside: the reference engine, no cache attached (as psql or another service);
            # only change capture's listener sees it (PostgreSQL)
            hows = ["session", "begin", "autocommit", *(["outside"] * 2 if self.capture else [])]
            how = data.draw(st.sampled_from(hows), label="how")
        autoflush = data.draw(st.booleans(), label="autoflush") if how == "session" else True
        end = "commit" if commit or how == "autocommit" else "rollback"
        desc = f"write {path.name} {p} via {side.label} {how}"
        desc += f" (autoflush={autoflush})" if how == "session" else ""
        try:
            if how == "session":
                with side.sessions(autoflush=autoflush) as s:
                    result = path.run(Target(self.dialect, session=s), p)
                    s.commit() if commit else s.rollback()
            elif how == "outside":
                with self.env.ref.connect() as conn:
                    conn.begin()
                    result = path.run(Target(self.dialect, conn=conn), p)
                    conn.commit() if commit else conn.rollback()
            elif how == "begin":
                with side.engine.connect() as conn:
                    conn.begin()
                    result = path.run(Target(self.dialect, conn=conn), p)
                    conn.commit() if commit else conn.rollback()
            else:
                auto = side.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
                with auto as conn:
                    result = path.run(Target(self.dialect, conn=conn), p)
        except Exception as exc:
            if not expected_failure(exc):
                raise
            self.count("writes_failed")
            self.note(f"{desc}: failed, rolled back ({short(exc)})")
        else:
            self.count("writes")
            self.count(f"path:{path.name}")
            if end == "commit":
                self.committed(path.writes)
            self.note(f"{desc}: {result}, {end}")
        if how == "outside":
            self.count("outside_writes")
            # the listener confirms it delivered everything committed before this point
            if not self.capture.sync(10.0):
                raise Divergence("the change-capture listener did not confirm within 10 s")
        self.check_recent()

    # teardown ------------------------------------------------------------------------------

    def teardown(self) -> None:
        try:
            for tx in list(self.txs):
                if tx.idle:
                    tx.close()
                    self.txs.remove(tx)
                else:
                    self.end_tx(tx, commit=False, why="(end of run)")
            for shape, p in self.recent.values():
                for side in (self.a, self.b, self.c):
                    self.compare(side, shape, p, "final read ")
            for n, (kind, name) in enumerate(_ENTITY_CHECKS.items()):
                key = _BY_NAME[name].get[1]  # type: ignore[index]
                for i, pk in enumerate(self.pool.hot.get(kind, ())):
                    side = (self.a, self.b, self.c)[(n + i) % 3]
                    self.compare(side, _BY_NAME[name], {key: pk}, "final read ")
        finally:
            trace = os.environ.get("SQLA_CACHE_DIFF_TRACE")
            if trace:
                with open(trace, "a") as f:
                    f.write("\n".join(["--- run", *self.log, ""]))
            for tx in self.txs:
                tx.close()
            if self.capture is not None:
                self.capture.stop()
            self.a.close()
            self.b.close()
            self.c.close()
