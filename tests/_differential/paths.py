"""What every write path is made of: where it writes (:class:`Target`), how it is described
(:class:`WritePath`), and the parameter drawers several paths share.

``run(target, params)`` writes through ``target``: a Session for ``orm`` (unit of work) and
``session`` (ORM bulk DML) paths; a Session (``session.execute``) or a Connection
(``engine.begin()``, AUTOCOMMIT, an open Core transaction) for ``core`` paths.  The machine
decides where a path runs and whether it commits; no path commits.

``flushes`` are the tables whose rows the ORM unit of work writes as entities (the entity
cache writes them through); ``writes`` is every table the path may change, including
``ON DELETE CASCADE`` children and the trigger-maintained counter.  Both only serve the
known-fault gates (``common.KNOWN_FAULTS``); correctness is judged by comparing reads.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import Connection
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .common import NAMES, Draw, Params, Pool, pick, score, tenant, user

BOTH = frozenset({"postgresql", "sqlite"})
PG = frozenset({"postgresql"})
SQLITE = frozenset({"sqlite"})
SYNC = st.sampled_from(["auto", "fetch", "evaluate", False])

# tables each table's rows reach through ON DELETE CASCADE and the d_user trigger
_REACH = {
    "d_tenant": {"d_user", "d_membership", "d_item", "d_special_item", "d_tenant_stat"},
    "d_user": {"d_membership", "d_tenant_stat"},
    "d_group": {"d_membership"},
    "d_item": {"d_special_item"},
}


def reach(*tables: str) -> frozenset[str]:
    out = set(tables)
    for t in tables:
        out |= _REACH.get(t, set())
    return frozenset(out)


@dataclass
class Target:
    dialect: str
    session: Session | None = None
    conn: Connection | None = None

    def execute(self, stmt: Any, params: Any = None) -> Any:
        if self.session is not None:
            return self.session.execute(stmt, params)
        assert self.conn is not None
        return self.conn.execute(stmt, params)

    def connection(self) -> Connection:
        if self.session is not None:
            return self.session.connection()
        assert self.conn is not None
        return self.conn

    @property
    def s(self) -> Session:
        assert self.session is not None
        return self.session

    def dml_insert(self, table: Any) -> Any:
        return (postgresql.insert if self.dialect == "postgresql" else sqlite.insert)(table)


@dataclass(frozen=True)
class DrawContext:
    draw: Draw[Any]
    pool: Pool
    #: only two-decimal scores (while the entity write-through values fault is open)
    exact_scores: bool


@dataclass(frozen=True)
class WritePath:
    name: str
    kind: str  # "orm" | "session" | "core"
    run: Callable[[Target, Params], str]
    draw: Callable[[DrawContext], Params]
    writes: frozenset[str]
    flushes: frozenset[str] = frozenset()
    dialects: frozenset[str] = BOTH
    fault: str | None = None
    #: False: only in a transaction of its own (TRUNCATE's lock would block every reader)
    in_open_tx: bool = True

    def __repr__(self) -> str:
        return f"write {self.name}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))


def fresh(c: DrawContext, kind: str) -> int:
    # fresh ids, also in a rolled-back or failed write: an id is never reused for a new row
    return c.pool.new_id(kind)


def user_fields(c: DrawContext) -> Params:
    return {
        "t": tenant(c.draw, c.pool),
        "name": c.draw(NAMES),
        "score": score(c.draw, c.exact_scores),
    }


def p_user(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool)}


def p_user_group(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool), "g": pick(c.draw, c.pool, "groups")}


def p_group(c: DrawContext) -> Params:
    return {"g": pick(c.draw, c.pool, "groups")}


def p_tenant(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "name": c.draw(NAMES)}


def p_upsert(c: DrawContext) -> Params:
    u = c.draw(st.one_of(c.pool.strategy("users"), st.just(0)))
    return {
        "u": u or fresh(c, "users"),
        **user_fields(c),
        "nothing": c.draw(st.booleans()),
    }


USERS = reach("d_user")
