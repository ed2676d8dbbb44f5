"""Write paths: each makes one change through one API and says what it did.

``run(target, params)`` writes through ``target`` (:class:`Target`): a Session for ``orm``
(unit of work) and ``session`` (ORM bulk DML) paths; a Session (``session.execute``) or a
Connection (``engine.begin()``, AUTOCOMMIT, an open Core transaction) for ``core`` paths.  The
machine decides where it runs and whether it commits; nothing here commits.

``flushes`` are the tables whose rows the ORM unit of work writes as entities (the entity
cache writes them through); ``writes`` is every table the path may change, including
``ON DELETE CASCADE`` children and the trigger-maintained counter.  Both only serve the
known-fault gates (``common.KNOWN_FAULTS``); correctness is judged by comparing reads.

To add a write path: write ``run`` and ``draw`` and append a ``WritePath`` to ``PATHS``
(``dialects`` limits it, ``fault`` names the known fault that skips it while open).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import Connection, delete, insert, literal, select, text, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from .common import NAMES, NICKNAMES, Draw, Params, Pool, pick, score, some, tenant, user
from .schema import Audit, Group, Item, SpecialItem, Tenant, TenantStat, User, membership

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


def _absent(what: str, key: Any) -> str:
    return f"{what} {key} absent"


# ORM unit of work -------------------------------------------------------------------------


def _orm_add_user(t: Target, p: Params) -> str:
    u = User(id=p["id"], tenant_id=p["t"], name=p["name"], score=p["score"], nickname=p["nick"])
    t.s.add(u)
    group = t.s.get(Group, p["g"]) if p["g"] else None
    if group is not None:
        u.groups.append(group)
    return "added"


def _orm_modify_user(t: Target, p: Params) -> str:
    u = t.s.get(User, p["u"])
    if u is None:
        return _absent("user", p["u"])
    for attr in ("name", "score", "nickname"):
        if attr in p:
            setattr(u, attr, p[attr])
    return "modified"


def _orm_score_expr(t: Target, p: Params) -> str:
    u = t.s.get(User, p["u"])
    if u is None:
        return _absent("user", p["u"])
    u.score = User.score + 1  # type: ignore[assignment]  # a SQL expression: value unknown
    return "score = score + 1"


def _orm_move_user(t: Target, p: Params) -> str:
    u = t.s.get(User, p["u"])
    if u is None:
        return _absent("user", p["u"])
    if p["expire"]:
        t.s.expire(u)  # the old tenant_id is never loaded before the change
    if p["rel"]:
        dest = t.s.get(Tenant, p["t"])
        if dest is None:
            return _absent("tenant", p["t"])
        u.tenant = dest
    else:
        u.tenant_id = p["t"]
    return "moved"


def _orm_delete_user(t: Target, p: Params) -> str:
    u = t.s.get(User, p["u"])
    if u is None:
        return _absent("user", p["u"])
    t.s.delete(u)
    return "deleted"


def _orm_membership(t: Target, p: Params) -> str:
    u, g = t.s.get(User, p["u"]), t.s.get(Group, p["g"])
    if u is None or g is None:
        return _absent("user/group", (p["u"], p["g"]))
    if g in u.groups:
        u.groups.remove(g)
        return "left group"
    u.groups.append(g)
    return "joined group"


def _orm_add_item(t: Target, p: Params) -> str:
    common = {"id": p["id"], "tenant_id": p["t"], "label": p["label"]}
    t.s.add(SpecialItem(power=p["power"], **common) if p["special"] else Item(**common))
    return "added"


def _orm_modify_item(t: Target, p: Params) -> str:
    i = t.s.get(Item, p["i"])
    if i is None:
        return _absent("item", p["i"])
    i.label = p["label"]
    if isinstance(i, SpecialItem):
        i.power = p["power"]
    return f"modified {type(i).__name__}"


def _orm_delete_item(t: Target, p: Params) -> str:
    i = t.s.get(Item, p["i"])
    if i is None:
        return _absent("item", p["i"])
    t.s.delete(i)
    return "deleted"


def _orm_add_tenant(t: Target, p: Params) -> str:
    t.s.add_all([Tenant(id=p["id"], name=p["name"]), TenantStat(tenant_id=p["id"], n_users=0)])
    return "added"


def _orm_rename_tenant(t: Target, p: Params) -> str:
    row = t.s.get(Tenant, p["t"])
    if row is None:
        return _absent("tenant", p["t"])
    row.name = p["name"]
    return "renamed"


def _orm_delete_tenant(t: Target, p: Params) -> str:
    row = t.s.get(Tenant, p["t"])
    if row is None:
        return _absent("tenant", p["t"])
    if p["load_users"]:
        _ = row.users  # loaded children are deleted by the ORM, the rest by the database
    t.s.delete(row)
    return "deleted (ON DELETE CASCADE)"


def _orm_delete_group(t: Target, p: Params) -> str:
    g = t.s.get(Group, p["g"])
    if g is None:
        return _absent("group", p["g"])
    t.s.delete(g)
    return "deleted"


# ORM bulk DML -----------------------------------------------------------------------------


def _sync(stmt: Any, p: Params) -> Any:
    return stmt.execution_options(synchronize_session=p["sync"])


def _bulk_update_users(t: Target, p: Params) -> str:
    where = User.tenant_id == p["t"] if p["by_tenant"] else User.id.in_(p["us"])
    values: dict[str, Any] = {"name": p["name"]}
    if p["move_to"] is not None:
        values["tenant_id"] = p["move_to"]
    if p["bump"]:
        values["score"] = User.score + 1
    n = t.execute(_sync(update(User).where(where).values(**values), p)).rowcount
    return f"{n} row(s)"


def _bulk_delete_users(t: Target, p: Params) -> str:
    n = t.execute(_sync(delete(User).where(User.id.in_(p["us"])), p)).rowcount
    return f"{n} row(s)"


def _bulk_update_items(t: Target, p: Params) -> str:
    stmt = update(Item).where(Item.tenant_id == p["t"]).values(label=p["label"])
    return f"{t.execute(_sync(stmt, p)).rowcount} row(s)"


def _bulk_insert_users(t: Target, p: Params) -> str:
    rows = [
        {"id": i, "tenant_id": p["t"], "name": p["name"], "score": p["score"]} for i in p["ids"]
    ]
    t.s.execute(insert(User), rows)
    return f"{len(rows)} row(s)"


def _orm_upsert_user(t: Target, p: Params) -> str:
    stmt = t.dml_insert(User).values(id=p["u"], tenant_id=p["t"], name=p["name"], score=p["score"])
    stmt = stmt.on_conflict_do_update(
        index_elements=[User.id], set_={"name": stmt.excluded.name, "score": p["score"]}
    )
    t.s.execute(stmt)
    return "upserted"


# Core and textual SQL ---------------------------------------------------------------------

_U = User.__table__


def _core_update_users(t: Target, p: Params) -> str:
    stmt = update(_U).where(_U.c.tenant_id == p["t"]).values(nickname=p["nick"])
    return f"{t.execute(stmt).rowcount} row(s)"


def _core_insert_user(t: Target, p: Params) -> str:
    values = {"id": p["id"], "tenant_id": p["t"], "name": p["name"], "score": p["score"]}
    t.execute(insert(_U).values(**values, bio=""))
    return "inserted"


def _core_delete_user(t: Target, p: Params) -> str:
    return f"{t.execute(delete(_U).where(_U.c.id == p['u'])).rowcount} row(s)"


def _core_upsert_user(t: Target, p: Params) -> str:
    stmt = t.dml_insert(_U).values(
        id=p["u"], tenant_id=p["t"], name=p["name"], score=p["score"], bio=""
    )
    if p["nothing"]:
        t.execute(stmt.on_conflict_do_nothing())
    else:
        t.execute(stmt.on_conflict_do_update(index_elements=["id"], set_={"tenant_id": p["t"]}))
    return "upserted"


def _core_membership(t: Target, p: Params) -> str:
    if p["add"]:
        stmt = t.dml_insert(membership).values(user_id=p["u"], group_id=p["g"])
        return f"{t.execute(stmt.on_conflict_do_nothing()).rowcount} row(s) added"
    stmt = delete(membership).where(membership.c.user_id == p["u"])
    return f"{t.execute(stmt).rowcount} row(s) removed"


def _core_delete_tenant(t: Target, p: Params) -> str:
    stmt = delete(Tenant.__table__).where(Tenant.__table__.c.id == p["t"])
    return f"{t.execute(stmt).rowcount} row(s) (ON DELETE CASCADE)"


def _core_insert_select(t: Target, p: Params) -> str:
    source = select(User.id, User.name).where(User.tenant_id == p["t"])
    stmt = insert(Audit.__table__).from_select(["user_id", "name"], source)
    return f"{t.execute(stmt).rowcount} row(s)"


def _text_update_users(t: Target, p: Params) -> str:
    sql = "UPDATE d_user SET name = :name WHERE tenant_id = :t"
    if p["upper"]:
        sql = "UPDATE D_USER SET NAME = :name WHERE TENANT_ID = :t"
    return f"{t.execute(text(sql), {'name': p['name'], 't': p['t']}).rowcount} row(s)"


def _text_delete_membership(t: Target, p: Params) -> str:
    sql = text("DELETE FROM d_membership WHERE group_id = :g")
    return f"{t.execute(sql, {'g': p['g']}).rowcount} row(s)"


def _text_delete_cascading(t: Target, p: Params) -> str:
    table, key = p["table"]
    sql = text(f"DELETE FROM {table} WHERE id = :k")  # fixed table names
    return f"{t.execute(sql, {'k': p[key]}).rowcount} row(s) (ON DELETE CASCADE)"


def _text_quoted_upper(t: Target, p: Params) -> str:
    sql = text('UPDATE "D_USER" SET score = score + 1 WHERE id = :u')
    return f"{t.execute(sql, {'u': p['u']}).rowcount} row(s)"


def _sqlite_insert_or_replace(t: Target, p: Params) -> str:
    sql = text("INSERT OR REPLACE INTO d_tenant (id, name) VALUES (:t, :name)")
    t.execute(sql, {"t": p["t"], "name": p["name"]})
    return "replaced (deletes the old row: ON DELETE CASCADE)"


def _pg_truncate_cascade(t: Target, p: Params) -> str:
    t.execute(text("TRUNCATE d_group CASCADE"))
    return "truncated d_group, d_membership"


def _driver_sql(t: Target, p: Params) -> str:
    if t.dialect == "postgresql":
        sql = "UPDATE d_user SET nickname = %(n)s WHERE id = %(u)s"
        args: Any = {"n": p["nick"], "u": p["u"]}
    else:
        sql, args = "UPDATE d_user SET nickname = ? WHERE id = ?", (p["nick"], p["u"])
    return f"{t.connection().exec_driver_sql(sql, args).rowcount} row(s)"


def _pg_cte_update(t: Target, p: Params) -> str:
    changed = update(_U).where(_U.c.id == p["u"]).values(score=p["score"]).returning(_U.c.id).cte()
    return f"{len(t.execute(select(changed.c.id)).all())} row(s)"


def _pg_nested_dml_cte(t: Target, p: Params) -> str:
    gone = (
        delete(membership)
        .where(membership.c.group_id == p["g"])
        .returning(membership.c.user_id)
        .cte()
    )
    source = select(gone.c.user_id, literal("left"))
    t.execute(insert(Audit.__table__).from_select(["user_id", "name"], source))
    return "archived memberships"


# parameters -------------------------------------------------------------------------------


def _new(c: DrawContext, kind: str) -> int:
    # fresh ids, also in a rolled-back or failed write: an id is never reused for a new row
    return c.pool.new_id(kind)


def _user_fields(c: DrawContext) -> Params:
    return {
        "t": tenant(c.draw, c.pool),
        "name": c.draw(NAMES),
        "score": score(c.draw, c.exact_scores),
    }


def _p_add_user(c: DrawContext) -> Params:
    g = c.draw(st.one_of(st.none(), c.pool.strategy("groups")))
    return {"id": _new(c, "users"), **_user_fields(c), "nick": c.draw(NICKNAMES), "g": g}


def _p_modify_user(c: DrawContext) -> Params:
    p: Params = {"u": user(c.draw, c.pool)}
    changes = c.draw(st.sets(st.sampled_from(["name", "score", "nickname"]), min_size=1))
    if "name" in changes:
        p["name"] = c.draw(NAMES)
    if "score" in changes:
        p["score"] = score(c.draw, c.exact_scores)
    if "nickname" in changes:
        p["nickname"] = c.draw(NICKNAMES)
    return p


def _p_u(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool)}


def _p_move(c: DrawContext) -> Params:
    return {
        "u": user(c.draw, c.pool),
        "t": tenant(c.draw, c.pool),
        "expire": c.draw(st.booleans()),
        "rel": c.draw(st.booleans()),
    }


def _p_ug(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool), "g": pick(c.draw, c.pool, "groups")}


def _p_g(c: DrawContext) -> Params:
    return {"g": pick(c.draw, c.pool, "groups")}


def _p_add_item(c: DrawContext) -> Params:
    return {
        "id": _new(c, "items"),
        "t": tenant(c.draw, c.pool),
        "label": c.draw(NAMES),
        "special": c.draw(st.booleans()),
        "power": c.draw(st.integers(0, 99)),
    }


def _p_item(c: DrawContext) -> Params:
    return {
        "i": pick(c.draw, c.pool, "items"),
        "label": c.draw(NAMES),
        "power": c.draw(st.integers(0, 99)),
    }


def _p_t(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "name": c.draw(NAMES)}


def _p_delete_tenant(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "load_users": c.draw(st.booleans())}


def _p_bulk_update(c: DrawContext) -> Params:
    return {
        "sync": c.draw(SYNC),
        "by_tenant": c.draw(st.booleans()),
        "t": tenant(c.draw, c.pool),
        "us": some(c.draw, c.pool, "users"),
        "name": c.draw(NAMES),
        "move_to": c.draw(st.one_of(st.none(), c.pool.strategy("tenants"))),
        "bump": c.draw(st.booleans()),
    }


def _p_bulk_delete(c: DrawContext) -> Params:
    return {"sync": c.draw(SYNC), "us": some(c.draw, c.pool, "users", 2)}


def _p_bulk_items(c: DrawContext) -> Params:
    return {"sync": c.draw(SYNC), "t": tenant(c.draw, c.pool), "label": c.draw(NAMES)}


def _p_bulk_insert(c: DrawContext) -> Params:
    n = c.draw(st.integers(1, 3))
    return {"ids": [_new(c, "users") for _ in range(n)], **_user_fields(c)}


def _p_upsert(c: DrawContext) -> Params:
    u = c.draw(st.one_of(c.pool.strategy("users"), st.just(0)))
    return {
        "u": u or _new(c, "users"),
        **_user_fields(c),
        "nothing": c.draw(st.booleans()),
    }


def _p_core_users(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "nick": c.draw(NICKNAMES)}


def _p_core_insert(c: DrawContext) -> Params:
    return {"id": _new(c, "users"), **_user_fields(c)}


def _p_membership(c: DrawContext) -> Params:
    return {**_p_ug(c), "add": c.draw(st.booleans())}


def _p_text_users(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "name": c.draw(NAMES), "upper": c.draw(st.booleans())}


def _p_text_cascading(c: DrawContext) -> Params:
    return {
        "table": c.draw(st.sampled_from([("d_tenant", "t"), ("d_user", "u"), ("d_item", "i")])),
        "t": tenant(c.draw, c.pool),
        "u": user(c.draw, c.pool),
        "i": pick(c.draw, c.pool, "items"),
    }


def _p_driver_sql(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool), "nick": c.draw(NICKNAMES)}


def _p_cte_update(c: DrawContext) -> Params:
    return {"u": user(c.draw, c.pool), "score": score(c.draw, True)}


USERS = reach("d_user")

PATHS: list[WritePath] = [
    WritePath(
        "orm_add_user",
        "orm",
        _orm_add_user,
        _p_add_user,
        USERS,
        frozenset({"d_user", "d_membership"}),
    ),
    WritePath(
        "orm_modify_user", "orm", _orm_modify_user, _p_modify_user, USERS, frozenset({"d_user"})
    ),
    WritePath("orm_score_expression", "orm", _orm_score_expr, _p_u, USERS, frozenset({"d_user"})),
    WritePath("orm_move_user", "orm", _orm_move_user, _p_move, USERS, frozenset({"d_user"})),
    WritePath(
        "orm_delete_user",
        "orm",
        _orm_delete_user,
        _p_u,
        USERS,
        frozenset({"d_user", "d_membership"}),
    ),
    WritePath(
        "orm_membership",
        "orm",
        _orm_membership,
        _p_ug,
        frozenset({"d_membership"}),
        frozenset({"d_membership"}),
    ),
    WritePath(
        "orm_add_item",
        "orm",
        _orm_add_item,
        _p_add_item,
        reach("d_item"),
        reach("d_item"),
    ),
    WritePath(
        "orm_modify_item", "orm", _orm_modify_item, _p_item, reach("d_item"), reach("d_item")
    ),
    WritePath(
        "orm_delete_item", "orm", _orm_delete_item, _p_item, reach("d_item"), reach("d_item")
    ),
    WritePath(
        "orm_add_tenant",
        "orm",
        _orm_add_tenant,
        lambda c: {"id": _new(c, "tenants"), "name": c.draw(NAMES)},
        frozenset({"d_tenant", "d_tenant_stat"}),
        frozenset({"d_tenant", "d_tenant_stat"}),
    ),
    WritePath(
        "orm_rename_tenant",
        "orm",
        _orm_rename_tenant,
        _p_t,
        frozenset({"d_tenant"}),
        frozenset({"d_tenant"}),
    ),
    WritePath(
        "orm_delete_tenant",
        "orm",
        _orm_delete_tenant,
        _p_delete_tenant,
        reach("d_tenant"),
        frozenset({"d_tenant"}),
    ),
    WritePath(
        "orm_delete_group",
        "orm",
        _orm_delete_group,
        _p_g,
        reach("d_group"),
        reach("d_group"),
    ),
    WritePath("bulk_update_users", "session", _bulk_update_users, _p_bulk_update, USERS),
    WritePath("bulk_delete_users", "session", _bulk_delete_users, _p_bulk_delete, USERS),
    WritePath("bulk_update_items", "session", _bulk_update_items, _p_bulk_items, reach("d_item")),
    WritePath("bulk_insert_users", "session", _bulk_insert_users, _p_bulk_insert, USERS),
    WritePath("orm_upsert_user", "session", _orm_upsert_user, _p_upsert, USERS),
    WritePath("core_update_users", "core", _core_update_users, _p_core_users, USERS),
    WritePath("core_insert_user", "core", _core_insert_user, _p_core_insert, USERS),
    WritePath("core_delete_user", "core", _core_delete_user, _p_u, USERS),
    WritePath("core_upsert_user", "core", _core_upsert_user, _p_upsert, USERS),
    WritePath(
        "core_membership", "core", _core_membership, _p_membership, frozenset({"d_membership"})
    ),
    WritePath("core_delete_tenant", "core", _core_delete_tenant, _p_t, reach("d_tenant")),
    WritePath("core_insert_select", "core", _core_insert_select, _p_t, frozenset({"d_audit"})),
    WritePath("text_update_users", "core", _text_update_users, _p_text_users, USERS),
    WritePath(
        "text_delete_membership",
        "core",
        _text_delete_membership,
        _p_g,
        frozenset({"d_membership"}),
    ),
    WritePath(
        "text_delete_cascading",
        "core",
        _text_delete_cascading,
        _p_text_cascading,
        reach("d_tenant"),
        fault="text_on_delete_cascade",
    ),
    WritePath(
        "text_quoted_upper_name",
        "core",
        _text_quoted_upper,
        _p_u,
        USERS,
        dialects=SQLITE,
        fault="sqlite_case_folded_names",
    ),
    WritePath(
        "sqlite_insert_or_replace",
        "core",
        _sqlite_insert_or_replace,
        _p_t,
        reach("d_tenant"),
        dialects=SQLITE,
        fault="text_on_delete_cascade",
    ),
    WritePath(
        "pg_truncate_cascade",
        "core",
        _pg_truncate_cascade,
        lambda c: {},
        reach("d_group"),
        dialects=PG,
        fault="text_on_delete_cascade",
        in_open_tx=False,
    ),
    WritePath("exec_driver_sql", "core", _driver_sql, _p_driver_sql, USERS),
    WritePath("pg_cte_update", "core", _pg_cte_update, _p_cte_update, USERS, dialects=PG),
    WritePath(
        "pg_nested_dml_cte",
        "core",
        _pg_nested_dml_cte,
        _p_g,
        frozenset({"d_membership", "d_audit"}),
        dialects=PG,
        fault="nested_dml_cte",
    ),
]
