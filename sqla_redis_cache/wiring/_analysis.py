"""Which tables a statement reads, and which tables a write touches.

Both questions are answered from the *compiled* statement that is about to run on a cursor, never
from the ORM statement the user wrote: by then eager joins, inheritance joins and loader
statements are all in the SQL, so each entry depends on exactly the tables its own SQL reads.
Results are memoised per compiled object (SQLAlchemy's compiled cache reuses them), so the hot
path pays a dictionary lookup.

Statements whose dependencies cannot be known (``text()`` fragments, ``FOR UPDATE``) are reported
as uncacheable; the caller runs them against the database.
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from sqlalchemy import MetaData, Table, exc
from sqlalchemy.sql import visitors
from sqlalchemy.sql.dml import UpdateBase
from sqlalchemy.sql.elements import TextClause
from sqlalchemy.sql.selectable import TableClause, TextualSelect

from ._compat import final_statement, locks_rows

_LOCKING = re.compile(r"\bFOR\s+(NO\s+KEY\s+UPDATE|UPDATE|KEY\s+SHARE|SHARE)\b", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class ReadPlan:
    tables: frozenset[str]
    #: None when cacheable, else why not (a code of ``storage._stats.REASONS``)
    reason: str | None = None


_read_memo: weakref.WeakKeyDictionary[Any, dict[Any, ReadPlan]] = weakref.WeakKeyDictionary()
_write_memo: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()
_cte_memo: weakref.WeakKeyDictionary[Any, frozenset[str]] = weakref.WeakKeyDictionary()


def table_name(table: TableClause, translate: Mapping[str | None, str | None] | None) -> str:
    schema = table.schema
    if translate and schema in translate:
        schema = translate[schema]
    return f"{schema}.{table.name}" if schema else table.name


def _translate_map(context: Any) -> Mapping[str | None, str | None] | None:
    value: Mapping[str | None, str | None] | None = context.execution_options.get(
        "schema_translate_map"
    )
    return value


def read_plan(context: Any) -> ReadPlan:
    """Tables read by the SELECT about to run in ``context`` (an execution context)."""
    compiled = context.compiled
    if compiled is None:
        return ReadPlan(frozenset(), "not_compiled")
    translate = _translate_map(context)
    memo_key = tuple(sorted(translate.items(), key=repr)) if translate else None
    per_compiled = _read_memo.get(compiled)
    if per_compiled is not None:
        plan = per_compiled.get(memo_key)
        if plan is not None:
            return plan
    else:
        per_compiled = _read_memo.setdefault(compiled, {})
    plan = _analyse_read(compiled, context, translate)
    per_compiled[memo_key] = plan
    return plan


def _analyse_read(
    compiled: Any, context: Any, translate: Mapping[str | None, str | None] | None
) -> ReadPlan:
    if context.isinsert or context.isupdate or context.isdelete or context.isddl:
        return ReadPlan(frozenset(), "not_a_select")
    roots = [compiled.statement]
    final = final_statement(compiled)
    if final is not None and final is not compiled.statement:
        roots.append(final)
    if _LOCKING.search(compiled.string) or any(
        locks_rows(root) for root in roots
    ):  # the second test also catches dialects that render no lock (SQLite)
        return ReadPlan(frozenset(), "locking_read")
    tables: set[str] = set()
    has_text = False
    for root in roots:
        for element in visitors.iterate(root):
            if isinstance(element, TableClause):
                tables.add(table_name(element, translate))
            elif isinstance(element, TextClause | TextualSelect):
                has_text = True
            elif isinstance(element, UpdateBase):
                return ReadPlan(frozenset(), "data_modifying_cte")
    if has_text:
        return ReadPlan(frozenset(tables), "text_fragment")
    if not tables:
        return ReadPlan(frozenset(), "reads_no_table")
    return ReadPlan(frozenset(tables))


def written_tables(context: Any) -> frozenset[str] | None:
    """Tables written by the DML that just ran, or None when they cannot be known.

    Includes the targets of data-modifying CTEs nested in it, and the tables a database-side
    ``ON DELETE`` / ``ON UPDATE`` action of a declared foreign key changes behind the ORM's
    back (``passive_deletes``), transitively.
    """
    compiled = context.compiled
    if compiled is None:
        return None
    memo = _write_memo.get(compiled)
    translate = _translate_map(context)
    if memo is not None and not translate:
        return memo
    statement = compiled.statement
    table = getattr(statement, "table", None)
    if not isinstance(table, TableClause):
        return None
    targets = [table, *(dependent_tables(table) if isinstance(table, Table) else ())]
    result = frozenset(table_name(t, translate) for t in targets)
    if "WITH" in compiled.string:  # DML nested as a CTE (INSERT ... SELECT FROM (DELETE ...))
        result |= cte_written_tables(context)
    if not translate:
        _write_memo[compiled] = result
    return result


_EMPTY: frozenset[str] = frozenset()


def cte_written_tables(context: Any) -> frozenset[str]:
    """Tables written by the DML in a statement, data-modifying CTEs included
    (``WITH x AS (DELETE ...) SELECT``, ``INSERT ... SELECT`` from such a CTE)."""
    compiled = context.compiled
    if compiled is None:
        return _EMPTY
    memo = _cte_memo.get(compiled)
    if memo is None:
        found: list[Any] = []
        for element in visitors.iterate(compiled.statement):
            table = getattr(element, "table", None)
            if isinstance(element, UpdateBase) and isinstance(table, TableClause):
                found.append(table)
                if isinstance(table, Table):
                    found.extend(dependent_tables(table))
        memo = _cte_memo[compiled] = frozenset(table_name(t, None) for t in found)
    return memo


def ddl_tables(context: Any) -> frozenset[str] | None:
    """Tables whose rows a DDL statement may change (empty for CREATE), None when unknown."""
    compiled = context.compiled
    statement = getattr(compiled, "statement", None)
    if type(statement).__name__.startswith("Create"):
        return frozenset()
    element = getattr(statement, "element", None)
    if isinstance(element, TableClause):
        deps = dependent_tables(element) if isinstance(element, Table) else ()
        return frozenset(table_name(t, _translate_map(context)) for t in (element, *deps))
    return None


_ACTIONS = frozenset({"CASCADE", "SET NULL", "SET DEFAULT"})
_graph_memo: weakref.WeakKeyDictionary[MetaData, tuple[int, dict[Table, tuple[Table, ...]]]] = (
    weakref.WeakKeyDictionary()
)


def _referencing(metadata: MetaData) -> dict[Table, tuple[Table, ...]]:
    """referenced table -> tables whose foreign keys to it carry a database-side action."""
    cached = _graph_memo.get(metadata)
    if cached is not None and cached[0] == len(metadata.tables):
        return cached[1]
    graph: dict[Table, set[Table]] = {}
    for child in metadata.tables.values():
        for fk in child.foreign_key_constraints:
            actions = {(fk.ondelete or "").upper(), (fk.onupdate or "").upper()}
            if not actions & _ACTIONS:
                continue
            try:
                parent = fk.referred_table
            except exc.SQLAlchemyError:  # refers to a table outside this MetaData
                continue
            graph.setdefault(parent, set()).add(child)
    frozen = {parent: tuple(children) for parent, children in graph.items()}
    _graph_memo[metadata] = (len(metadata.tables), frozen)
    return frozen


def dependent_tables(table: Table) -> list[Table]:
    """Tables changed by the database when rows of ``table`` are deleted or re-keyed."""
    graph = _referencing(table.metadata)
    seen: dict[Table, None] = {}
    todo = list(graph.get(table, ()))
    while todo:
        child = todo.pop()
        if child not in seen and child is not table:
            seen[child] = None
            todo.extend(graph.get(child, ()))
    return list(seen)
