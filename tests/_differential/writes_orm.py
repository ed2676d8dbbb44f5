"""Write paths through the ORM: unit-of-work flushes, ORM bulk DML and upserts."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st
from sqlalchemy import delete, insert, update

from .common import NAMES, NICKNAMES, Params, pick, score, some, tenant, user
from .paths import (
    SYNC,
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
from .schema import Group, Item, SpecialItem, Tenant, TenantStat, User


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


# parameters ---------------------------------------------------------------------------------------


def _p_add_user(c: DrawContext) -> Params:
    g = c.draw(st.one_of(st.none(), c.pool.strategy("groups")))
    return {"id": fresh(c, "users"), **user_fields(c), "nick": c.draw(NICKNAMES), "g": g}


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


def _p_move(c: DrawContext) -> Params:
    return {
        "u": user(c.draw, c.pool),
        "t": tenant(c.draw, c.pool),
        "expire": c.draw(st.booleans()),
        "rel": c.draw(st.booleans()),
    }


def _p_add_item(c: DrawContext) -> Params:
    return {
        "id": fresh(c, "items"),
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
    return {"ids": [fresh(c, "users") for _ in range(n)], **user_fields(c)}


ORM_PATHS: list[WritePath] = [
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
    WritePath("orm_score_expression", "orm", _orm_score_expr, p_user, USERS, frozenset({"d_user"})),
    WritePath("orm_move_user", "orm", _orm_move_user, _p_move, USERS, frozenset({"d_user"})),
    WritePath(
        "orm_delete_user",
        "orm",
        _orm_delete_user,
        p_user,
        USERS,
        frozenset({"d_user", "d_membership"}),
    ),
    WritePath(
        "orm_membership",
        "orm",
        _orm_membership,
        p_user_group,
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
        lambda c: {"id": fresh(c, "tenants"), "name": c.draw(NAMES)},
        frozenset({"d_tenant", "d_tenant_stat"}),
        frozenset({"d_tenant", "d_tenant_stat"}),
    ),
    WritePath(
        "orm_rename_tenant",
        "orm",
        _orm_rename_tenant,
        p_tenant,
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
        p_group,
        reach("d_group"),
        reach("d_group"),
    ),
    WritePath("bulk_update_users", "session", _bulk_update_users, _p_bulk_update, USERS),
    WritePath("bulk_delete_users", "session", _bulk_delete_users, _p_bulk_delete, USERS),
    WritePath("bulk_update_items", "session", _bulk_update_items, _p_bulk_items, reach("d_item")),
    WritePath("bulk_insert_users", "session", _bulk_insert_users, _p_bulk_insert, USERS),
    WritePath("orm_upsert_user", "session", _orm_upsert_user, p_upsert, USERS),
]
