"""Write paths through Core statements and textual SQL (``text()``, ``exec_driver_sql``)."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from sqlalchemy import delete, insert, literal, select, text, update

from .common import NAMES, NICKNAMES, Params, pick, score, tenant, user
from .paths import (
    PG,
    SQLITE,
    USERS,
    DrawContext,
    Target,
    WritePath,
    fresh,
    p_group,
    p_tenant,
    p_upsert,
    p_user,
    p_user_group,
    reach,
    user_fields,
)
from .schema import Audit, Tenant, User, membership

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


# parameters ---------------------------------------------------------------------------------------


def _p_core_users(c: DrawContext) -> Params:
    return {"t": tenant(c.draw, c.pool), "nick": c.draw(NICKNAMES)}


def _p_core_insert(c: DrawContext) -> Params:
    return {"id": fresh(c, "users"), **user_fields(c)}


def _p_membership(c: DrawContext) -> Params:
    return {**p_user_group(c), "add": c.draw(st.booleans())}


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


SQL_PATHS: list[WritePath] = [
    WritePath("core_update_users", "core", _core_update_users, _p_core_users, USERS),
    WritePath("core_insert_user", "core", _core_insert_user, _p_core_insert, USERS),
    WritePath("core_delete_user", "core", _core_delete_user, p_user, USERS),
    WritePath("core_upsert_user", "core", _core_upsert_user, p_upsert, USERS),
    WritePath(
        "core_membership", "core", _core_membership, _p_membership, frozenset({"d_membership"})
    ),
    WritePath("core_delete_tenant", "core", _core_delete_tenant, p_tenant, reach("d_tenant")),
    WritePath("core_insert_select", "core", _core_insert_select, p_tenant, frozenset({"d_audit"})),
    WritePath("text_update_users", "core", _text_update_users, _p_text_users, USERS),
    WritePath(
        "text_delete_membership",
        "core",
        _text_delete_membership,
        p_group,
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
        p_user,
        USERS,
        dialects=SQLITE,
        fault="sqlite_case_folded_names",
    ),
    WritePath(
        "sqlite_insert_or_replace",
        "core",
        _sqlite_insert_or_replace,
        p_tenant,
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
        p_group,
        frozenset({"d_membership", "d_audit"}),
        dialects=PG,
        fault="nested_dml_cte",
    ),
]
