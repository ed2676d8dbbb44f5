"""Every SQLAlchemy internal the library reads, in one place, checked when a cache attaches.

The cache works below SQLAlchemy's public API in a few places: it serves hits at the cursor,
recognises a plain ``session.get()``, reads the connect parameters SQLAlchemy keeps only inside
its pool's connect function, and runs Redis I/O from SQLAlchemy's asyncio greenlet.  A release
that renames one of these must not make caching silently wrong (a ``getattr(..., None)``
default would read "no lock", "no refresh", "not autocommit").  So:

- each internal is read here, and only here, directly (no ``getattr`` default; the few
  defaults left are for statement types that legitimately lack the attribute, and say so);
- :func:`check` verifies every one of them against the installed SQLAlchemy the first time a
  cache attaches (once per process) and raises :class:`IncompatibleSQLAlchemy`, naming the
  version and what changed, instead of letting the cache run on wrong assumptions;
- tests/test_compat.py runs :func:`check` and breaks each access on purpose; CI runs the whole
  suite on SQLAlchemy 2.0 and 2.1 (``.ci/run``).  The two behaviours no attribute test can
  show (a hit served by assigning the context's ``cursor``; the greenlet marker) are exercised
  by every cached read and every asyncio test.

What is read, and where it is used:

==================================================  ============================================
internal                                            used by
==================================================  ============================================
``Connection._is_autocommit_isolation()``           writes invalidated at once (AUTOCOMMIT)
``OptionEngine._proxied``                           one engine behind ``execution_options()``
``DefaultExecutionContext.invoked_statement``,      ``cached()`` read from the statement on an
``Executable._with_options``                        engine attached by itself
``HasCacheKey._cache_key_traversal`` (defined)      ``cached()`` / ``uncached()`` in the
                                                    compiled-cache key (``_options``)
``DefaultExecutionContext.cache_hit`` /             statements SQLAlchemy cannot key run
``NO_CACHE_KEY``                                    uncached
``DefaultExecutionContext.cursor`` (assigned)       a hit is served as a cursor over cached rows
``SQLCompiler.compile_state.statement``,            tables read, locking reads
``Select._for_update_arg``
``ORMExecuteState.load_options._refresh_state`` /   a plain ``session.get()`` the entity cache
``._populate_existing``, ``Mapper._get_clause``,    may answer; refresh loads are left out of
``Select._where_criteria``, the                     cache policies
``_sa_orm_load_options`` execution option
``UOWTransaction.states``                           rows a flush wrote (write-through,
                                                    fine-grained values)
``SQLCompiler.bind_names``,                         the bound values a fine-grained result
``DefaultExecutionContext._expanded_parameters``    depends on (``_values``)
``Session._flushing``, the ``compiled_cache``        a write is a flush's own statement
execution option of the ORM's persistence          (``_writes``)
``InstanceState.committed_state``,                  committed values of a loaded object; a
``ClassManager.new_instance()``,                    detached instance built from cached values
``NO_VALUE`` / ``NEVER_SET``
``Pool._creator`` closure (``cargs``/``cparams``)   the database identity of an engine
``Dialect.isolation_level``,                        snapshot isolation set on the engine, or
``Dialect.default_isolation_level``                 the database's default
``SimpleResultMetaData``                            the result of an entity-cache hit
``Session.in_nested_transaction()`` during a        a savepoint's release is no commit: nothing
savepoint's ``after_commit`` (behaviour)            is invalidated or written through then
aiosqlite adapter ``_connection.in_transaction``    SQLite transactions that began (snapshot;
                                                    a RELEASE that committed)
``util.concurrency`` ``await_`` / ``greenlet_spawn``  Redis I/O awaited from the greenlet
and ``__sqlalchemy_greenlet_provider__``
==================================================  ============================================
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, NamedTuple

import sqlalchemy
from sqlalchemy import literal
from sqlalchemy.engine import Connection, Engine, IteratorResult
from sqlalchemy.engine.base import OptionEngineMixin
from sqlalchemy.engine.default import NO_CACHE_KEY, DefaultExecutionContext
from sqlalchemy.engine.result import SimpleResultMetaData
from sqlalchemy.orm import Mapper, Session
from sqlalchemy.orm.base import NEVER_SET, NO_VALUE
from sqlalchemy.orm.context import QueryContext
from sqlalchemy.orm.instrumentation import ClassManager
from sqlalchemy.orm.state import InstanceState
from sqlalchemy.orm.unitofwork import UOWTransaction
from sqlalchemy.sql.base import CompileState, Executable
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.selectable import Select

__all__ = [
    "NEVER_SET",
    "NO_CACHE_KEY",
    "NO_VALUE",
    "Concurrency",
    "IncompatibleSQLAlchemy",
    "IteratorResult",
    "SimpleResultMetaData",
    "base_engine",
    "check",
    "committed_state",
    "concurrency",
    "connect_parameters",
    "default_isolation_level",
    "engine_isolation_level",
    "final_statement",
    "flushed_states",
    "get_clause",
    "invoked_options",
    "is_autocommit",
    "locks_rows",
    "new_instance",
    "populates_existing",
    "refresh_load",
    "refreshes",
    "releases_savepoint",
    "serve_cursor",
    "sqlite_in_transaction",
    "where_criteria",
]

#: the attribute SQLAlchemy's asyncio greenlets carry
GREENLET_MARKER = "__sqlalchemy_greenlet_provider__"


class IncompatibleSQLAlchemy(RuntimeError):
    """The installed SQLAlchemy changed an internal the cache relies on."""


# engines and connections -----------------------------------------------------------------


def base_engine(engine: Engine) -> Engine:
    """The engine behind ``engine.execution_options(...)`` copies, which share its pool and
    events."""
    while isinstance(engine, OptionEngineMixin):
        engine = engine._proxied
    return engine


def is_autocommit(conn: Connection) -> bool:
    """True when ``conn`` runs under AUTOCOMMIT isolation (each statement commits itself)."""
    return conn._is_autocommit_isolation()


def engine_isolation_level(dialect: Any) -> str | None:
    """The isolation level given to ``create_engine(isolation_level=...)``, if any."""
    level: str | None = dialect.isolation_level
    return level


def default_isolation_level(dialect: Any) -> str | None:
    """The database's default isolation level, which SQLAlchemy reads at an engine's first
    connection (None before it: the attribute does not exist yet)."""
    level: str | None = getattr(dialect, "default_isolation_level", None)
    return level


def sqlite_in_transaction(dbapi_connection: Any) -> bool | None:
    """Whether a SQLite driver connection is inside a database transaction (a ``BEGIN``, a
    DML statement pysqlite began one for, or a ``SAVEPOINT`` that opened one); None when the
    driver does not say.  pysqlite (``sqlite3``) has ``in_transaction``; SQLAlchemy's aiosqlite
    adapter keeps the ``aiosqlite.Connection`` (which has it too) as ``_connection``."""
    found = getattr(dbapi_connection, "in_transaction", None)  # absent: not pysqlite
    if found is None:
        inner = getattr(dbapi_connection, "_connection", None)  # absent: not aiosqlite
        found = getattr(inner, "in_transaction", None)
    return None if found is None else bool(found)


def releases_savepoint(session: Session) -> bool:
    """In ``after_commit``: True when the commit is a savepoint's release (SQLAlchemy fires
    ``after_commit`` for nested transactions too, before it makes the parent current again)."""
    return session.in_nested_transaction()


def connect_parameters(engine: Engine) -> tuple[Sequence[Any], Mapping[str, Any]] | None:
    """(args, kwargs) SQLAlchemy's pool passes to the driver's ``connect()``; None when the
    pool's connect function is not SQLAlchemy's (``creator=``, a custom pool).

    SQLAlchemy keeps the effective parameters (URL plus ``connect_args``) only in the closure
    of the connect function ``create_engine`` builds; they are read from there.
    """
    creator: Any = engine.pool._creator
    code = getattr(creator, "__code__", None)  # a custom creator may be any callable
    if code is None or getattr(creator, "__module__", "") != "sqlalchemy.engine.create":
        return None
    cells = dict(zip(code.co_freevars, creator.__closure__ or (), strict=False))
    try:
        args = (cells.get("cargs_tup") or cells["cargs"]).cell_contents  # 2.1 / 2.0
        kwargs = cells["cparams"].cell_contents
    except (KeyError, ValueError):
        return None
    if not isinstance(kwargs, Mapping):
        return None
    return list(args), kwargs


# statements and execution contexts ----------------------------------------------------------


def invoked_options(context: Any) -> Sequence[Any]:
    """The options of the statement being executed (not of a compiled form it may share with
    other executions)."""
    statement = context.invoked_statement
    if statement is None:  # a compiled-only or textual execution
        return ()
    options: Sequence[Any] = statement._with_options
    return options


def serve_cursor(context: Any, cursor: Any) -> None:
    """Make SQLAlchemy build the result from ``cursor`` instead of the DBAPI cursor: assigned
    in ``do_execute``, read by the execution context once the hook reports the statement ran."""
    context.cursor = cursor


def final_statement(compiled: Any) -> Any:
    """The statement SQLAlchemy compiled after ORM processing (eager joins included), or None
    for compilations without a compile state (DDL, textual)."""
    compile_state = compiled.compile_state
    return None if compile_state is None else compile_state.statement


def locks_rows(statement: Any) -> bool:
    """True for ``SELECT ... FOR UPDATE / FOR SHARE`` (statements that are not selects have no
    locking clause: the attribute is missing there, legitimately)."""
    return getattr(statement, "_for_update_arg", None) is not None


def where_criteria(statement: Any) -> tuple[Any, ...]:
    """The WHERE criteria of a select (empty for other statements)."""
    criteria: tuple[Any, ...] = getattr(statement, "_where_criteria", ())
    return criteria


def statement_options(statement: Any) -> Sequence[Any]:
    options: Sequence[Any] = statement._with_options
    return options


def bind_names(compiled: Any) -> Mapping[Any, str]:
    """BindParameter -> the name its value has in ``compiled_parameters``."""
    names: Mapping[Any, str] = compiled.bind_names
    return names


def expanded_parameters(context: Any) -> Mapping[str, Sequence[str]]:
    """An expanding parameter's name -> the names of its values, in this execution."""
    expanded: Mapping[str, Sequence[str]] = context._expanded_parameters
    return expanded


# the ORM ---------------------------------------------------------------------------------------


def flushing(session: Any) -> bool:
    """True while ``session`` runs a flush."""
    return bool(session._flushing)


def persistence_statement(context: Any) -> bool:
    """True for a statement the ORM's persistence emits (a flush, or bulk mappings), which
    always carries the mapper's compiled cache as an execution option."""
    return context.execution_options.get("compiled_cache") is not None


def refreshes(orm_state: Any) -> bool:
    """True for a ``session.refresh()`` load."""
    return orm_state.load_options._refresh_state is not None


def populates_existing(orm_state: Any) -> bool:
    return bool(orm_state.load_options._populate_existing)


#: the execution option in which the ORM hands its load options down to the execution context
ORM_LOAD_OPTIONS = "_sa_orm_load_options"


def refresh_load(context: Any) -> bool:
    """True when the statement being executed is an ORM refresh load (``session.refresh()``,
    ``populate_existing``), seen from the execution context."""
    load_options = context.execution_options.get(ORM_LOAD_OPTIONS)
    if load_options is None:
        return False
    return load_options._refresh_state is not None or bool(load_options._populate_existing)


def get_clause(mapper: Mapper[Any]) -> tuple[Any, Mapping[Any, Any]]:
    """The mapper's own primary-key clause and its bind parameters (what ``session.get()``
    runs)."""
    clause, params = mapper._get_clause
    return clause, params


def flushed_states(flush_context: Any) -> Mapping[InstanceState[Any], tuple[bool, bool]]:
    """state -> (is a delete, list-only) for every object a flush processed."""
    states: Mapping[InstanceState[Any], tuple[bool, bool]] = flush_context.states
    return states


def committed_state(state: InstanceState[Any]) -> Mapping[str, Any]:
    """Values changed since the last flush, as they were before (never pending ones)."""
    return state.committed_state


def new_instance(mapper: Mapper[Any]) -> Any:
    """An instance of the mapped class without calling its ``__init__``."""
    return mapper.class_manager.new_instance()


# asyncio ---------------------------------------------------------------------------------------


class Concurrency(NamedTuple):
    """SQLAlchemy's asyncio bridge, as the I/O layer uses it (``io._asyncio``)."""

    #: run a coroutine from inside SQLAlchemy's greenlet, switching back to the event loop
    await_: Callable[[Awaitable[Any]], Any]
    #: run a function in such a greenlet, from a coroutine
    spawn: Callable[..., Awaitable[Any]]
    #: greenlet.getcurrent
    getcurrent: Callable[[], Any]
    #: the attribute that marks SQLAlchemy's greenlets
    marker: str


MISSING_GREENLET = (
    "asyncio support needs the 'greenlet' package: install 'sqla-redis-cache[asyncio]' "
    "(which brings 'sqlalchemy[asyncio]')"
)


def concurrency() -> Concurrency:
    """SQLAlchemy's asyncio bridge (2.0: ``await_only``, 2.1: ``await_``); ImportError naming
    the extra when greenlet is not installed (it is optional for SQLAlchemy 2.1)."""
    try:
        from greenlet import getcurrent
    except ImportError as exc:
        raise ImportError(MISSING_GREENLET) from exc
    from sqlalchemy.util import concurrency as bridge

    await_ = bridge.await_ if hasattr(bridge, "await_") else bridge.await_only
    return Concurrency(await_, bridge.greenlet_spawn, getcurrent, GREENLET_MARKER)


# the check ---------------------------------------------------------------------------------------


def _problems() -> list[str]:
    """What the installed SQLAlchemy lacks of what this module reads (empty when all is well)."""
    problems: list[str] = []

    def need(owner: Any, *names: str) -> None:
        for name in names:
            if not hasattr(owner, name):
                problems.append(f"{getattr(owner, '__name__', owner)}.{name}")

    need(Connection, "_is_autocommit_isolation")
    need(DefaultExecutionContext, "invoked_statement", "cache_hit", "is_text")
    need(Executable, "_with_options")
    need(Select, "_for_update_arg", "_where_criteria")
    need(SQLCompiler, "compile_state")
    if not hasattr(literal(1).compile(), "bind_names"):
        problems.append("SQLCompiler.bind_names")
    need(DefaultExecutionContext, "_expanded_parameters")
    if not hasattr(Session(), "_flushing"):
        problems.append("Session._flushing")
    need(CompileState, "statement")
    need(QueryContext.default_load_options, "_refresh_state", "_populate_existing")
    need(Mapper, "_get_clause")
    need(ClassManager, "new_instance")
    if "committed_state" not in InstanceState.__slots__:
        problems.append("InstanceState.committed_state")
    if not hasattr(UOWTransaction(Session()), "states"):
        problems.append("UOWTransaction.states")
    engine = sqlalchemy.create_engine("sqlite://", connect_args={"timeout": 7})
    try:
        problems.extend(_savepoint_problems(engine))
        copy = engine.execution_options(sqla_redis_cache_check=True)
        if base_engine(copy) is not engine:
            problems.append("OptionEngine._proxied")
        found = connect_parameters(engine)
        if found is None or found[1].get("timeout") != 7:
            problems.append("the connect parameters in Pool._creator's closure")
        if not hasattr(engine.dialect, "isolation_level"):
            problems.append("Dialect.isolation_level")
    finally:
        engine.dispose()
    return problems


def _savepoint_problems(engine: Engine) -> list[str]:
    """``after_commit`` fires at a savepoint's release while the savepoint is still the
    session's transaction, and only once more for the outermost commit; pysqlite says whether
    its connection is in a transaction."""
    seen: list[bool] = []
    with Session(engine) as session:
        sqlalchemy.event.listen(
            session, "after_commit", lambda s: seen.append(releases_savepoint(s))
        )
        session.begin_nested().commit()
        session.commit()
        raw = session.connection().connection.dbapi_connection
        session.connection().exec_driver_sql("BEGIN")
        began = sqlite_in_transaction(raw)
        session.rollback()
    problems: list[str] = []
    if seen != [True, False]:
        problems.append(f"Session after_commit at a savepoint's release ({seen})")
    if began is not True:
        problems.append("sqlite3.Connection.in_transaction")
    return problems


_checked: list[bool] = []
_check_lock = threading.Lock()


def check() -> None:
    """Raise :class:`IncompatibleSQLAlchemy` when the installed SQLAlchemy lacks an internal
    this module reads; the first call does the work (once per process)."""
    if _checked:
        return
    with _check_lock:
        if _checked:
            return
        problems = _problems()
        if problems:
            raise IncompatibleSQLAlchemy(
                f"sqla-redis-cache cannot run on SQLAlchemy {sqlalchemy.__version__}: it reads "
                f"internals this release changed ({', '.join(problems)}); it supports "
                "SQLAlchemy 2.0.30 to 2.1 (see sqla_redis_cache/wiring/_compat.py)"
            )
        _checked.append(True)
