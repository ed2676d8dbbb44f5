"""Fine-grained invalidation: which values of which columns a result depends on, and which
values a commit's rows touched.

Table tokens make every cached result of a table miss when any of its rows is written.  Most
results read a few rows picked by equality (a tenant's rows, a parent's children, one primary
key), so a result whose SELECT constrains a table's column by equality to bound values depends
on those values only:

- **readers** (:func:`read_values`): a cached SELECT whose top-level WHERE has, ANDed with
  anything else, ``col = :v``, ``col IN (:v1, ...)`` (at most :data:`MAX_IN` values) or
  ``col IS NULL`` on a table read exactly once, at the top level (not under an outer join's
  nullable side, not in any subquery, CTE, alias or union) depends, for that table, on the
  table's *unknown-rows* token (``<ns>:u:<table>``) and on the *value tokens* of those values
  (``<ns>:v:<digest>``), no longer on its table token.  One constraint per table is enough
  (the one with the fewest values, a primary key first): every row the result can contain has
  that value, and every commit that writes such a row replaces that value's token.  Every other
  shape (ranges, OR, functions of columns, ``text()``, a table read twice) keeps the table token.
- **writers** (:class:`RowValues`): a flush's INSERT / UPDATE / DELETE of rows whose old and
  new values the ORM knows (attribute history: loaded values, the assigned ones) deletes the
  value tokens of each written row's old and new value of *every* candidate column of the table
  (``_commit``), and replaces the table token (table-level results depend on it).  Anything
  else that writes a table (bulk ORM DML, Core, ``text()``, DDL, database-side cascades,
  declared rules, an attribute assigned while its old value was never loaded, a
  server-generated value, more than :data:`MAX_VALUES_PER_TABLE` values in one commit) is
  *unknown rows*: the table token and the unknown-rows token are replaced, so every result of
  the table misses, as before.

Why there is no registry of constrained columns.  The writer invalidates the values of every
candidate column, whichever columns readers constrain, so there is nothing to register and no
race between a reader starting to constrain a new column and a concurrent commit (cacheops'
"schemes" problem): a reader's entry depends only on keys every writer of its rows deletes or
replaces.
Tokens are created and read as table tokens are (``storage._versions``): read *before* the
query, created if missing, so an evicted value token means a miss, never a stale hit.  Being
random, a deleted token is as good as a replaced one (the next reader creates a value no entry
carries), so a commit deletes value tokens rather than writing new ones: writes create no key,
and a reader creates a value token with the lifetime of the entry it stores, so none outlives
the entries that need it.  Each value token is its own key (a single-key command; Redis Cluster
safe), and the commit sends them in the same single round trip as the table tokens; if Redis
fails there, the tables' unknown-rows tokens are owed instead (``storage._versions``).

Candidate columns are those whose equality in the database is equality of the Python values:
integers, UUIDs (``as_uuid``) and strings without a collation, of the exact built-in column
types (a ``TypeDecorator``, ``CHAR`` padding, ``Enum`` or ``CITEXT`` could make two different
Python values equal in SQL), on PostgreSQL and SQLite.  A value's text (:func:`canonical`) is
only made from the exact Python type of its column (``int``, ``str``, ``uuid.UUID``) or None;
any other value (``"5"`` bound to an integer column, a ``bool``) makes the reader table-level and
the writer unknown.

Certainty (see docs/write-paths.md): the old values the ORM holds are what the Session loaded.
Another transaction may have changed the row since, under READ COMMITTED and on SQLite, so an
UPDATE or DELETE uses them only where they are certain (PostgreSQL REPEATABLE READ or
SERIALIZABLE, ``_session.SessionHooks._old_values_certain``) or the application says so
(``trust_loaded_values``); otherwise its table's rows are unknown.  The writers' side (which
values a flush touched) is ``_row_values``.
"""

from __future__ import annotations

import uuid
import weakref
from collections.abc import Iterable, Mapping
from typing import Any, NamedTuple

from sqlalchemy import Column, Table, types
from sqlalchemy.sql import operators, visitors
from sqlalchemy.sql.elements import (
    BinaryExpression,
    BindParameter,
    BooleanClauseList,
    ColumnClause,
    Null,
)
from sqlalchemy.sql.selectable import (
    CompoundSelect,
    FromClause,
    Join,
    Select,
    TableClause,
)

from ._analysis import table_name
from ._compat import (
    bind_names,
    expanded_parameters,
    final_statement,
    where_criteria,
)

#: an IN list longer than this keeps the table-level dependency
MAX_IN = 32
#: values of one table one commit may invalidate; past it, the commit is "unknown rows"
MAX_VALUES_PER_TABLE = 256
#: dialects whose equality of candidate columns is equality of the Python values
DIALECTS = frozenset({"postgresql", "sqlite"})

_INT = "i"
_STR = "s"
_UUID = "u"
_KINDS: dict[type[Any], str] = {
    types.Integer: _INT,
    types.SmallInteger: _INT,
    types.BigInteger: _INT,
    types.INTEGER: _INT,
    types.SMALLINT: _INT,
    types.BIGINT: _INT,
    types.String: _STR,
    types.Text: _STR,
    types.Unicode: _STR,
    types.UnicodeText: _STR,
    types.VARCHAR: _STR,
    types.NVARCHAR: _STR,
    types.TEXT: _STR,
    types.Uuid: _UUID,
    types.UUID: _UUID,
}
_PYTHON = {_INT: int, _STR: str, _UUID: uuid.UUID}


def column_kind(column: Any) -> str | None:
    """The kind of a candidate column (``"i"``, ``"s"``, ``"u"``), None for any other."""
    type_ = column.type
    kind = _KINDS.get(type(type_))
    if kind is None:
        return None
    if kind == _STR and getattr(type_, "collation", None) is not None:
        return None
    if kind == _UUID and not getattr(type_, "as_uuid", False):
        return None
    return kind


def canonical(kind: str, value: Any) -> str | None:
    """The text of ``value`` in a column of ``kind`` (the same for reader and writer), or None
    when the value's Python type is not exactly the column's (then nothing is fine-grained)."""
    if value is None:
        return "n"
    if type(value) is not _PYTHON[kind]:
        return None
    return f"{kind}:{value}"


_candidates: weakref.WeakKeyDictionary[Table, tuple[tuple[Column[Any], str], ...]] = (
    weakref.WeakKeyDictionary()
)


def candidate_columns(table: Table) -> tuple[tuple[Column[Any], str], ...]:
    """(column, kind) of every candidate column of ``table`` (memoised)."""
    found = _candidates.get(table)
    if found is None:
        found = tuple((c, kind) for c in table.columns if (kind := column_kind(c)) is not None)
        _candidates[table] = found
    return found


# readers ----------------------------------------------------------------------------------------


class Constraint(NamedTuple):
    """The equality a result's rows of one table satisfy: ``column`` of ``kind`` equals the
    bound parameter named ``name`` (``many``: an expanding IN list), or IS NULL (``name`` None)."""

    table: str
    column: str
    kind: str
    name: str | None
    many: bool


_EQ_OPS = (operators.eq, operators.is_)
_read_memo: weakref.WeakKeyDictionary[Any, tuple[Constraint, ...]] = weakref.WeakKeyDictionary()


def read_values(context: Any) -> dict[str, list[tuple[str, str]]] | None:
    """table -> [(column, canonical value)] for each table the SELECT in ``context`` reads
    fine-grained (an empty list: an empty IN, which no row satisfies); None when none is."""
    compiled = context.compiled
    if compiled is None or context.dialect.name not in DIALECTS:
        return None
    if context.execution_options.get("schema_translate_map"):
        return None
    constraints = _read_memo.get(compiled)
    if constraints is None:
        try:
            constraints = _constraints(compiled)
        except Exception:  # a statement shape this analysis does not know: table level
            constraints = ()
        _read_memo[compiled] = constraints
    if not constraints:
        return None
    params = context.compiled_parameters
    if len(params) != 1:
        return None
    values = params[0]
    out: dict[str, list[tuple[str, str]]] = {}
    for c in constraints:
        if c.name is None:
            out[c.table] = [(c.column, "n")]
            continue
        if c.many:
            names = expanded_parameters(context).get(c.name)
            if names is None or len(names) > MAX_IN:
                continue
        else:
            names = [c.name]
        found: list[tuple[str, str]] = []
        for name in names:
            if name not in values:
                break
            text = canonical(c.kind, values[name])
            if text is None:
                break
            found.append((c.column, text))
        else:
            out[c.table] = found
    return out or None


def _conjuncts(criteria: Iterable[Any]) -> Iterable[Any]:
    for element in criteria:
        if isinstance(element, BooleanClauseList) and element.operator is operators.and_:
            yield from _conjuncts(element.clauses)
        else:
            yield element


def _tables_of(from_: Any, out: set[str]) -> bool:
    """Add the tables ``from_`` reads to ``out``; False for a FROM element not understood."""
    if isinstance(from_, TableClause):
        out.add(table_name(from_, None))
        return True
    if isinstance(from_, Join):
        return _tables_of(from_.left, out) and _tables_of(from_.right, out)
    element = getattr(from_, "element", None)
    if isinstance(element, FromClause | Select | CompoundSelect):
        if isinstance(element, Select):
            return all(_tables_of(f, out) for f in element.get_final_froms())
        if isinstance(element, CompoundSelect):
            return all(
                all(_tables_of(f, out) for f in s.get_final_froms())
                for s in element.selects
                if isinstance(s, Select)
            ) and all(isinstance(s, Select) for s in element.selects)
        return _tables_of(element, out)
    return False


def _direct(from_: Any, nullable: bool, direct: dict[str, int], weak: set[str]) -> bool:
    """Tables read directly at the top level (through joins), and those on a nullable side."""
    if isinstance(from_, TableClause):
        name = table_name(from_, None)
        direct[name] = direct.get(name, 0) + 1
        if nullable:
            weak.add(name)
        return True
    if isinstance(from_, Join):
        return _direct(from_.left, nullable or from_.full, direct, weak) and _direct(
            from_.right, nullable or from_.isouter or from_.full, direct, weak
        )
    return False


def _constraints(compiled: Any) -> tuple[Constraint, ...]:
    statement = final_statement(compiled)
    if statement is None:
        statement = compiled.statement
    if not isinstance(statement, Select):
        return ()
    criteria = where_criteria(statement)
    if not criteria:
        return ()
    direct: dict[str, int] = {}
    weak: set[str] = set()
    for from_ in statement.get_final_froms():
        if not _direct(from_, False, direct, weak):
            return ()  # a subquery, alias, function... at the top: table level for all
    nested: set[str] = set()
    for element in visitors.iterate(statement):
        if element is statement:
            continue
        if isinstance(element, Select):
            for from_ in element.get_final_froms():
                if not _tables_of(from_, nested):
                    return ()
        elif (
            isinstance(element, FromClause)
            and not isinstance(element, TableClause | Join)
            and not _tables_of(element, nested)
        ):
            return ()
    eligible = {t for t, n in direct.items() if n == 1 and t not in weak and t not in nested}
    if not eligible:
        return ()
    names = bind_names(compiled)
    best: dict[str, tuple[tuple[int, int], Constraint]] = {}
    for term in _conjuncts(criteria):
        found = _constraint(term, eligible, names)
        if found is None:
            continue
        constraint, rank = found
        current = best.get(constraint.table)
        if current is None or rank < current[0]:
            best[constraint.table] = (rank, constraint)
    return tuple(c for _, c in sorted(best.values(), key=lambda item: item[1].table))


def _constraint(
    term: Any, eligible: set[str], names: Mapping[Any, str]
) -> tuple[Constraint, tuple[int, int]] | None:
    if not isinstance(term, BinaryExpression):
        return None
    op = term.operator
    left, right = term.left, term.right
    if op in _EQ_OPS and isinstance(left, BindParameter) and isinstance(right, ColumnClause):
        left, right = right, left
    if not isinstance(left, ColumnClause) or not isinstance(left.table, TableClause):
        return None
    if left.is_literal:
        return None
    table = table_name(left.table, None)
    if table not in eligible:
        return None
    base = left.table.c.get(left.key)
    if base is None or base.name != left.name:
        return None
    kind = column_kind(base)
    if kind is None:
        return None
    pk = 0 if base.primary_key else 1
    if op is operators.is_ and isinstance(right, Null):
        return Constraint(table, left.name, kind, None, False), (pk, 1)
    if not isinstance(right, BindParameter) or (right.literal_execute and not right.expanding):
        return None
    name = names.get(right)
    if name is None:
        return None
    if op is operators.eq and not right.expanding:
        return Constraint(table, left.name, kind, name, False), (pk, 1)
    if op is operators.in_op and right.expanding:
        return Constraint(table, left.name, kind, name, True), (pk, 2)
    return None
