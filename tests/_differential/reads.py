"""Read shapes: each runs one cached read and returns plain, comparable values.

A shape's ``run(session, params, opts, x)`` executes its read with ``opts`` (``(cached(),)`` on
the attached side, ``()`` for the reference) and turns the result into tuples of column values.
ORM objects go through ``x`` (:class:`Extract`): outside a transaction it returns their column
values and the shape follows relationships (``x.nested``).  Inside an open transaction the
identity map decides attribute values (pending edits, objects loaded earlier), so ``x.full``
is False and only identities are compared.  ``get`` marks ``session.get`` shapes: inside a
transaction they are compared in full but without related objects, and only when the object
is not in the identity map yet.

To add a shape: write ``run`` (and ``draw`` for its parameters) and append a ``ReadShape`` to
``SHAPES``; the machine picks it up.  ``unordered`` results are sorted before comparing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st
from sqlalchemy import and_, exists, func, or_, select, union
from sqlalchemy.orm import Session, joinedload, selectinload, with_polymorphic

from .common import NAMES, Draw, Params, Pool, pick, plain, some, tenant, user
from .schema import (
    Audit,
    DBase,
    Group,
    Item,
    SpecialItem,
    Tenant,
    TenantStat,
    User,
    membership,
)


@dataclass(frozen=True)
class Extract:
    full: bool = True
    nested: bool = True

    def user(self, u: User | None) -> Any:
        if u is None or not self.full:
            return None if u is None else ("User", u.id)
        return plain((u.id, u.tenant_id, u.name, u.score, u.nickname))

    def item(self, i: Item | None) -> Any:
        if i is None or not self.full:
            return None if i is None else ("Item", i.id)
        power = i.power if isinstance(i, SpecialItem) else None
        return plain((type(i).__name__, i.id, i.tenant_id, i.label, power))

    def tenant(self, t: Tenant | None) -> Any:
        if t is None or not self.full:
            return None if t is None else ("Tenant", t.id)
        return plain((t.id, t.name))


Run = Callable[[Session, Params, tuple[Any, ...], Extract], Any]


@dataclass(frozen=True)
class ReadShape:
    name: str
    run: Run
    draw: Callable[[Draw[Any], Pool], Params] = lambda draw, pool: {}
    unordered: bool = False
    #: ``session.get`` shapes: the class and the parameter holding the primary key
    get: tuple[type, str] | None = None
    #: tables read, for gating (see KNOWN_FAULTS "write_rules_in_transaction")
    reads_rule_target: bool = False

    def __repr__(self) -> str:
        return f"read {self.name}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))


def _rows(s: Session, stmt: Any, opts: tuple[Any, ...]) -> list[Any]:
    return [plain(tuple(r)) for r in s.execute(stmt.options(*opts))]


USER_COLS = (User.id, User.tenant_id, User.name, User.score, User.nickname)


def _users_where(*criteria: Any) -> Run:
    def run(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
        crit = [c(p) for c in criteria]
        return _rows(s, select(*USER_COLS).where(*crit).order_by(User.id), opts)

    return run


def _orm_users_selectin(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    stmt = select(User).where(User.tenant_id == p["t"]).order_by(User.id)
    users = s.scalars(stmt.options(selectinload(User.groups), *opts)).all()
    if not x.full:
        return [x.user(u) for u in users]
    return [(x.user(u), tuple(g.id for g in u.groups)) for u in users]


def _orm_tenants_joined(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    stmt = select(Tenant).where(Tenant.id.in_(p["ts"])).order_by(Tenant.id)
    tenants = s.scalars(stmt.options(joinedload(Tenant.users), *opts)).unique().all()
    if not x.full:
        return [x.tenant(t) for t in tenants]
    return [(x.tenant(t), tuple(x.user(u) for u in t.users)) for t in tenants]


def _orm_lazy(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    t = s.scalars(select(Tenant).where(Tenant.id == p["t"]).options(*opts)).first()
    if t is None or not x.full:
        return x.tenant(t)
    users = tuple((x.user(u), tuple(g.id for g in u.groups)) for u in t.users)
    return (x.tenant(t), users, tuple(x.item(i) for i in t.items))


def _group_users_lazy(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    g = s.get(Group, p["g"], options=list(opts))
    if g is None or not x.nested:
        return None if g is None else (g.id, g.name)
    return (g.id, g.name, tuple(x.user(u) for u in g.users))


def _items_poly(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    entity = with_polymorphic(Item, [SpecialItem]) if p["wp"] else Item
    stmt = select(entity).where(entity.tenant_id == p["t"]).order_by(entity.id)
    return [x.item(i) for i in s.scalars(stmt.options(*opts))]


def _get(cls: type, key: str) -> Run:
    def run(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
        obj = s.get(cls, p[key], options=list(opts))
        if cls is User:
            u: Any = obj
            return None if u is None else (x.user(u), u.bio if x.full else None)
        if cls is Item:
            return x.item(obj)  # type: ignore[arg-type]
        return x.tenant(obj)  # type: ignore[arg-type]

    return run


def _legacy_query(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
    q = s.query(User).filter_by(tenant_id=p["t"]).options(*opts).order_by(User.id)
    return [x.user(u) for u in q.all()]


def _stmt(build: Callable[[Params], Any]) -> Run:
    def run(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
        return _rows(s, build(p), opts)

    return run


_group_counts = (
    select(membership.c.group_id, func.count().label("n")).group_by(membership.c.group_id).cte()
)

SHAPES: list[ReadShape] = [
    ReadShape(
        "users_eq_tenant",
        _users_where(lambda p: User.tenant_id == p["t"]),
        lambda d, pool: {"t": tenant(d, pool)},
    ),
    ReadShape(
        "users_in_tenants",
        _users_where(lambda p: User.tenant_id.in_(p["ts"])),
        lambda d, pool: {"ts": some(d, pool, "tenants")},
    ),
    ReadShape(
        "users_nickname_null",
        _users_where(lambda p: User.nickname.is_(None), lambda p: User.tenant_id == p["t"]),
        lambda d, pool: {"t": tenant(d, pool)},
    ),
    ReadShape(  # fine-grained on a string column (every candidate column is invalidated)
        "users_eq_name",
        _users_where(lambda p: User.name == p["name"]),
        lambda d, pool: {"name": d(NAMES)},
    ),
    ReadShape(  # fine-grained on the tenant, ANDed with a range on another column
        "users_eq_tenant_score_range",
        _users_where(lambda p: User.tenant_id == p["t"], lambda p: User.score >= p["lo"]),
        lambda d, pool: {"t": tenant(d, pool), "lo": d(st.integers(0, 40))},
    ),
    ReadShape(  # fine-grained on the nickname values (NULL among them)
        "users_in_nicknames",
        _users_where(lambda p: User.nickname.in_(p["nicks"])),
        lambda d, pool: {"nicks": d(st.lists(st.sampled_from(["x", "y", "zz"]), max_size=2))},
    ),
    ReadShape(
        "users_score_range",
        _users_where(lambda p: User.score.between(p["lo"], p["lo"] + 10)),
        lambda d, pool: {"lo": d(st.integers(0, 40))},
    ),
    ReadShape(
        "users_pk",
        _users_where(lambda p: User.id == p["u"]),
        lambda d, pool: {"u": user(d, pool)},
    ),
    ReadShape(
        "users_or",
        _users_where(lambda p: or_(User.tenant_id == p["t"], User.name == p["name"])),
        lambda d, pool: {"t": tenant(d, pool), "name": d(st.sampled_from(["ann", "u3"]))},
    ),
    ReadShape(
        "join_user_tenant",
        _stmt(
            lambda p: (
                select(User.id, Tenant.id, Tenant.name)
                .join(User.tenant)
                .where(Tenant.id == p["t"])
                .order_by(User.id)
            )
        ),
        lambda d, pool: {"t": tenant(d, pool)},
    ),
    ReadShape(
        "join_m2m",
        _stmt(
            lambda p: (
                select(User.id, User.name, Group.name)
                .join(User.groups)
                .where(Group.id == p["g"])
                .order_by(User.id)
            )
        ),
        lambda d, pool: {"g": pick(d, pool, "groups")},
    ),
    ReadShape(
        "subquery_in",
        _stmt(
            lambda p: (
                select(User.id, User.score)
                .where(
                    User.id.in_(select(membership.c.user_id).where(membership.c.group_id == p["g"]))
                )
                .order_by(User.id)
            )
        ),
        lambda d, pool: {"g": pick(d, pool, "groups")},
    ),
    ReadShape(
        "scalar_subquery",
        _stmt(
            lambda p: select(
                Tenant.id,
                select(func.count(User.id))
                .where(User.tenant_id == Tenant.id)
                .scalar_subquery()
                .label("n"),
            ).order_by(Tenant.id)
        ),
    ),
    ReadShape(
        "cte_group_counts",
        _stmt(
            lambda p: (
                select(Group.id, Group.name, _group_counts.c.n)
                .outerjoin(_group_counts, _group_counts.c.group_id == Group.id)
                .order_by(Group.id)
            )
        ),
    ),
    ReadShape(
        "union",
        _stmt(
            lambda p: union(
                select(User.id).where(User.tenant_id == p["t"]),
                select(membership.c.user_id).where(membership.c.group_id == p["g"]),
            )
        ),
        lambda d, pool: {"t": tenant(d, pool), "g": pick(d, pool, "groups")},
        unordered=True,
    ),
    ReadShape(
        "aggregate",
        _stmt(
            lambda p: (
                select(User.tenant_id, func.count(), func.sum(User.score))
                .group_by(User.tenant_id)
                .order_by(User.tenant_id)
            )
        ),
    ),
    ReadShape(
        "exists_special",
        _stmt(
            lambda p: (
                select(Tenant.id)
                .where(exists().where(and_(Item.tenant_id == Tenant.id, Item.kind == "special")))
                .order_by(Tenant.id)
            )
        ),
    ),
    ReadShape(
        "special_items",
        _stmt(
            lambda p: select(SpecialItem.id, SpecialItem.label, SpecialItem.power).order_by(
                SpecialItem.id
            )
        ),
    ),
    ReadShape(
        "membership_count",
        _stmt(lambda p: select(func.count()).select_from(membership)),
    ),
    ReadShape(
        "audit",
        _stmt(lambda p: select(Audit.user_id, Audit.name).order_by(Audit.user_id, Audit.name)),
    ),
    ReadShape(
        "tenant_stats",
        _stmt(
            lambda p: select(TenantStat.tenant_id, TenantStat.n_users).order_by(
                TenantStat.tenant_id
            )
        ),
        reads_rule_target=True,
    ),
    ReadShape(
        "orm_users_selectin",
        _orm_users_selectin,
        lambda d, pool: {"t": tenant(d, pool)},
    ),
    ReadShape(
        "orm_tenants_joined",
        _orm_tenants_joined,
        lambda d, pool: {"ts": some(d, pool, "tenants")},
    ),
    ReadShape("orm_lazy_loads", _orm_lazy, lambda d, pool: {"t": tenant(d, pool)}),
    ReadShape(
        "orm_group_users_lazy",
        _group_users_lazy,
        lambda d, pool: {"g": pick(d, pool, "groups")},
        get=(Group, "g"),
    ),
    ReadShape(
        "orm_items_polymorphic",
        _items_poly,
        lambda d, pool: {"t": tenant(d, pool), "wp": d(st.booleans())},
    ),
    ReadShape("legacy_query", _legacy_query, lambda d, pool: {"t": tenant(d, pool)}),
    ReadShape("get_user", _get(User, "u"), lambda d, pool: {"u": user(d, pool)}, get=(User, "u")),
    ReadShape(
        "get_item",
        _get(Item, "i"),
        lambda d, pool: {"i": pick(d, pool, "items")},
        get=(Item, "i"),
    ),
    ReadShape(
        "get_tenant", _get(Tenant, "t"), lambda d, pool: {"t": tenant(d, pool)}, get=(Tenant, "t")
    ),
]


def _table_scan(table: Any) -> Run:
    def run(s: Session, p: Params, opts: tuple[Any, ...], x: Extract) -> Any:
        return _rows(s, select(table).order_by(*table.primary_key.columns), opts)

    return run


#: one read per table, of nothing else: checked after every write.  A write whose
#: invalidation misses a table it changed shows here, whatever else it invalidated.
CANARIES = [
    ReadShape(f"table_{t.name}", _table_scan(t), reads_rule_target=t.name == "d_tenant_stat")
    for t in DBase.metadata.sorted_tables
    if t.name != "d_audit"  # its ids come from a sequence; the "audit" shape reads it
]
SHAPES.extend(CANARIES)
