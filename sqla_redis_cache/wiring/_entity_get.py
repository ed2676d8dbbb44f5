"""Recognising a ``session.get()`` the entity cache may answer, and transactions it must not.

``session.get(cls, pk, options=[cached()])`` reaches ``do_orm_execute`` as an ordinary SELECT;
these checks tell it apart (the mapper's own primary-key clause, no other options, no refresh
or ``populate_existing``) and refuse transactions whose view of the table the cache cannot
share: one that wrote the table, or one reading from an older snapshot.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy.orm import Mapper

from ._compat import (
    get_clause,
    locks_rows,
    populates_existing,
    refreshes,
    statement_options,
    where_criteria,
)
from ._options import CachedOption


def primary_key_get(orm_state: Any) -> tuple[Mapper[Any], tuple[Any, ...]] | None:
    """(mapper, pk) when ``orm_state`` is a plain ``session.get()`` with only ``cached()``."""
    if refreshes(orm_state) or populates_existing(orm_state):
        return None
    statement = orm_state.statement
    mapper = orm_state.bind_mapper
    if mapper is None or locks_rows(statement):
        return None
    criteria = where_criteria(statement)
    clause, params = get_clause(mapper)
    if len(criteria) != 1:
        return None
    # SQLAlchemy 2.1 passes the mapper's clause itself, 2.0 an annotated copy of it
    if criteria[0] is not clause and not criteria[0].compare(clause):
        return None
    if not all(isinstance(o, CachedOption) for o in statement_options(statement)):
        return None
    given = orm_state.parameters or {}
    try:
        pk = tuple(given[params[col].key] for col in mapper.primary_key)
    except KeyError:
        return None
    return mapper, pk


def schema_map(bind: Any) -> Mapping[str | None, str | None] | None:
    """The ``schema_translate_map`` of an Engine (or option copy) or Connection."""
    get = getattr(bind, "get_execution_options", None)
    if get is None:
        return None
    translate: Mapping[str | None, str | None] | None = get().get("schema_translate_map")
    return translate
