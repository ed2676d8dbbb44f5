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

from ._options import CachedOption
from ._reads import _snapshot_isolated
from ._runtime_settings import STATE
from ._transaction import ConnectionKeys


def primary_key_get(orm_state: Any) -> tuple[Mapper[Any], tuple[Any, ...]] | None:
    """(mapper, pk) when ``orm_state`` is a plain ``session.get()`` with only ``cached()``."""
    if orm_state.load_options._refresh_state is not None:
        return None
    if orm_state.load_options._populate_existing:
        return None
    statement = orm_state.statement
    mapper = orm_state.bind_mapper
    if mapper is None or getattr(statement, "_for_update_arg", None) is not None:
        return None
    criteria: tuple[Any, ...] = getattr(statement, "_where_criteria", ())
    clause, params = mapper._get_clause
    if len(criteria) != 1:
        return None
    # SQLAlchemy 2.1 passes the mapper's clause itself, 2.0 an annotated copy of it
    if criteria[0] is not clause and not criteria[0].compare(clause):
        return None
    if not all(isinstance(o, CachedOption) for o in statement._with_options):
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


def transaction_blocks(session: Any, k: ConnectionKeys) -> bool:
    """True when the session's transaction wrote, reads from an older snapshot, or runs on a
    connection whose session settings changed."""
    from ._session import CONNECTIONS

    for conn in session.info.get(CONNECTIONS, ()):
        if conn.closed:
            continue
        info = conn.info
        if info.get(k.written) or info.get(k.committing):
            return True
        state = info.get(STATE)
        if state is not None and state.blocks_any():
            return True
        if info.get(k.tx_used) and _snapshot_isolated(conn):
            return True
    return False
