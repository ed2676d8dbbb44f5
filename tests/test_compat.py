"""The SQLAlchemy internals the cache reads (``wiring._compat``) fail loudly when they change.

Each internal is removed on purpose here: ``check()`` (run by the first ``attach()``) must name
it and the SQLAlchemy version instead of letting the cache run on a wrong default.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import sqlalchemy
from sqlalchemy import create_engine
from sqlalchemy.engine import Connection
from sqlalchemy.engine.default import DefaultExecutionContext
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.sql.base import CompileState, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Select

from sqla_redis_cache import QueryCache
from sqla_redis_cache.wiring import _compat


@pytest.fixture
def unchecked(monkeypatch: pytest.MonkeyPatch) -> None:
    """Forget that this process already passed the check."""
    monkeypatch.setattr(_compat, "_checked", [])


def test_the_installed_sqlalchemy_has_every_internal(unchecked: None) -> None:
    assert _compat._problems() == []
    _compat.check()


@pytest.mark.parametrize(
    ("owner", "name"),
    [
        (Connection, "_is_autocommit_isolation"),
        (DefaultExecutionContext, "invoked_statement"),
        (DefaultExecutionContext, "cache_hit"),
        (DefaultExecutionContext, "is_text"),
        (Executable, "_with_options"),
        (Select, "_for_update_arg"),
        (Select, "_where_criteria"),
        (SQLCompiler, "compile_state"),
        (CompileState, "statement"),
        (QueryContext.default_load_options, "_refresh_state"),
        (QueryContext.default_load_options, "_populate_existing"),
        (Mapper, "_get_clause"),
        (ClassManager, "new_instance"),
        (DefaultExecutionContext, "_expanded_parameters"),
    ],
)
def test_a_renamed_internal_is_a_clear_error_at_attach(
    unchecked: None, monkeypatch: pytest.MonkeyPatch, owner: Any, name: str
) -> None:
    for cls in owner.__mro__:  # wherever the class hierarchy defines it
        if name in vars(cls):
            monkeypatch.delattr(cls, name)
    cache = QueryCache.in_memory()
    engine = create_engine("sqlite://")
    try:
        with pytest.raises(_compat.IncompatibleSQLAlchemy) as raised:
            cache.attach(engine)
        message = str(raised.value)
        assert f"SQLAlchemy {sqlalchemy.__version__}" in message
        assert f".{name}" in message
    finally:
        cache.close()
        engine.dispose()


def test_connect_parameters_that_cannot_be_read_are_a_clear_error(
    unchecked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_compat, "connect_parameters", lambda engine: None)
    with pytest.raises(_compat.IncompatibleSQLAlchemy, match=r"Pool\._creator"):
        _compat.check()


def test_after_commit_at_a_savepoint_release_is_checked(
    unchecked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Were a savepoint's release no longer told apart in ``after_commit``, it would publish
    the transaction's writes before they are committed."""
    monkeypatch.setattr(Session, "in_nested_transaction", lambda self: False)
    with pytest.raises(_compat.IncompatibleSQLAlchemy, match="after_commit at a savepoint"):
        _compat.check()


def test_sqlite_drivers_say_whether_they_are_in_a_transaction() -> None:
    import sqlite3

    raw = sqlite3.connect(":memory:")
    try:
        assert _compat.sqlite_in_transaction(raw) is False
        raw.execute("SAVEPOINT a")
        assert _compat.sqlite_in_transaction(raw) is True
    finally:
        raw.close()

    async def aiosqlite_says() -> list[bool | None]:
        from sqlalchemy.ext.asyncio import create_async_engine

        engine = create_async_engine("sqlite+aiosqlite://")
        try:
            async with engine.connect() as conn:
                raw_conn = await conn.get_raw_connection()
                said = [_compat.sqlite_in_transaction(raw_conn.dbapi_connection)]
                await conn.exec_driver_sql("SAVEPOINT a")
                said.append(_compat.sqlite_in_transaction(raw_conn.dbapi_connection))
                await conn.rollback()
                return said
        finally:
            await engine.dispose()

    assert asyncio.run(aiosqlite_says()) == [False, True]
    assert _compat.sqlite_in_transaction(object()) is None


def test_engine_copies_lead_to_their_engine(unchecked: None) -> None:
    engine = create_engine("sqlite://")
    try:
        copy = engine.execution_options(isolation_level="AUTOCOMMIT").execution_options(x=1)
        assert _compat.base_engine(copy) is engine
        assert _compat.base_engine(engine) is engine
        found = _compat.connect_parameters(create_engine("sqlite://", connect_args={"timeout": 3}))
        assert found is not None and found[1]["timeout"] == 3
        assert _compat.connect_parameters(create_engine("sqlite://", creator=lambda: None)) is None
    finally:
        engine.dispose()


def test_the_greenlet_marker_is_set_in_sqlalchemy_greenlets() -> None:
    """The asyncio router recognises SQLAlchemy's greenlet by this attribute: were it renamed,
    Redis calls inside AsyncSession work would take the blocking client."""
    bridge = _compat.concurrency()

    def inside() -> bool:
        return bool(getattr(bridge.getcurrent(), bridge.marker, False))

    async def main() -> tuple[bool, bool]:
        return inside(), await bridge.spawn(inside)

    outside, spawned = asyncio.run(main())
    assert (outside, spawned) == (False, True)


def test_a_compiler_without_bind_names_is_a_clear_error(
    unchecked: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fine-grained reads find their bound values through ``SQLCompiler.bind_names``."""
    real_init = SQLCompiler.__init__

    def init(self: Any, *args: Any, **kwargs: Any) -> None:
        real_init(self, *args, **kwargs)
        del self.bind_names

    monkeypatch.setattr(SQLCompiler, "__init__", init)
    assert "SQLCompiler.bind_names" in _compat._problems()
