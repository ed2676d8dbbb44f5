"""Change capture's PostgreSQL side: the URL the listener connects with, the triggers, the catalog.

One plpgsql function, ``sqla_redis_cache_notify()``, created in the schema ``install`` runs in
(the connection's ``current_schema()``), and one statement-level trigger per captured table,
``sqla_redis_cache_capture``, ``AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE``.  The function
calls ``pg_notify`` on the channel :data:`CHANNEL` with a JSON array ``[schema, table]``:

- ``pg_notify`` is transactional: PostgreSQL delivers notifications when the transaction
  commits (never for one rolled back) and folds identical ones of one transaction into one, so a
  transaction that updates a table 10,000 times sends one notification for it;
- one notification per table keeps every payload far under PostgreSQL's 8,000-byte limit
  (two identifiers of at most 63 bytes), whatever the statement: a CTE or a function writing
  300 tables sends 300 small notifications, never one large payload;
- statement level, not row level: the writer pays one function call per statement, not per
  row.  The array leaves room for row values (issue 12's fine-grained invalidation could add
  the keys of transition tables as a third element); table level is always correct.

Everything install creates carries a marker (the function's comment, the trigger's fixed name
and function), so ``uninstall`` removes exactly that and nothing else.  Identifiers are always
quoted.  Errors (a bad URL, a database that is not PostgreSQL, missing privileges) become one
:class:`~.._errors.ConfigurationError` line.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import create_engine, exc
from sqlalchemy.engine import URL, Connection, Engine, make_url
from sqlalchemy.pool import NullPool

from .._errors import ConfigurationError

#: the notification channel of every capture trigger
CHANNEL = "sqla_redis_cache"
FUNCTION = "sqla_redis_cache_notify"
TRIGGER = "sqla_redis_cache_capture"
#: the listener's (and the DDL's) ``application_name`` unless the URL sets one
APPLICATION_NAME = "sqla-redis-cache capture"
#: the comment marking the function install created
MARKER = "sqla-redis-cache change capture"

#: asyncpg query parameters and their libpq equivalents (others have no meaning to libpq)
_ASYNCPG_TO_LIBPQ = {"ssl": "sslmode"}
_ASYNCPG_SSL = {"true": "require", "false": "disable"}
_LIBPQ_PARAMETERS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "application_name",
        "connect_timeout",
        "options",
        "target_session_attrs",
        "host",
        "port",
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "passfile",
        "service",
    }
)


def listener_url(url: Any) -> URL:
    """The application's database URL (any PostgreSQL driver) for a synchronous psycopg2
    connection; a clear error for anything else."""
    try:
        parsed = make_url(url) if isinstance(url, str) else url
    except exc.ArgumentError as error:
        raise ConfigurationError(f"change capture: bad database URL ({error})") from None
    if not isinstance(parsed, URL):
        raise ConfigurationError(f"change capture: bad database URL {url!r}")
    backend = parsed.get_backend_name()
    if backend != "postgresql":
        raise ConfigurationError(
            f"change capture needs PostgreSQL; the database URL is for {backend!r}"
        )
    driver = parsed.get_driver_name()
    query: dict[str, Any] = dict(parsed.query)
    if driver == "asyncpg":
        query = {_ASYNCPG_TO_LIBPQ.get(k, k): v for k, v in query.items()}
        if "sslmode" in query:  # asyncpg's ssl=true / false
            query["sslmode"] = _ASYNCPG_SSL.get(str(query["sslmode"]).lower(), query["sslmode"])
        query = {k: v for k, v in query.items() if k in _LIBPQ_PARAMETERS}
    return parsed.set(drivername="postgresql+psycopg2", query=query)


def listener_engine(url: Any) -> Engine:
    """A small engine of its own (no pool, no cache attached) for the DDL and the listener."""
    try:
        import psycopg2  # noqa: F401
    except ImportError:  # pragma: no cover - the postgres extra installs it
        raise ConfigurationError(
            "change capture needs psycopg2: pip install 'sqla-redis-cache[postgres]'"
        ) from None
    target = listener_url(url)
    connect_args = {}
    if "application_name" not in target.query:  # the listener shows in pg_stat_activity
        connect_args["application_name"] = APPLICATION_NAME
    return create_engine(target, poolclass=NullPool, connect_args=connect_args)


def one_line(error: BaseException) -> str:
    """The first line of a database error, without SQLAlchemy's statement dump."""
    origin = getattr(error, "orig", None) or error
    text = str(origin).strip().splitlines()
    return text[0] if text else type(origin).__name__


def _quote(conn: Connection, name: str) -> str:
    return conn.dialect.identifier_preparer.quote_identifier(name)


def _function_sql(conn: Connection, schema: str) -> str:
    function = f"{_quote(conn, schema)}.{FUNCTION}"
    return (
        f"CREATE OR REPLACE FUNCTION {function}() RETURNS trigger LANGUAGE plpgsql AS $body$\n"
        "BEGIN\n"
        f"  PERFORM pg_notify('{CHANNEL}',\n"
        "    json_build_array(TG_TABLE_SCHEMA, TG_TABLE_NAME)::text);\n"
        "  RETURN NULL;\n"
        "END\n"
        "$body$"
    )


def default_schema(conn: Connection) -> str:
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar()
    if not schema:
        raise ConfigurationError("change capture: the connection has no current schema")
    return str(schema)


def _relation(conn: Connection, schema: str, name: str) -> tuple[str, str]:
    """(schema, table) of a table name as the cache spells it (``name`` or ``schema.name``)."""
    if "." in name:
        schema, name = name.split(".", 1)
    row = conn.exec_driver_sql(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relname = %(name)s AND c.relkind IN ('r', 'p')",
        {"schema": schema, "name": name},
    ).first()
    if row is None:
        raise ConfigurationError(f"change capture: no table {schema}.{name}")
    return str(row[0]), str(row[1])


def _schema_tables(conn: Connection, schema: str) -> list[tuple[str, str]]:
    rows = conn.exec_driver_sql(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %(schema)s AND c.relkind IN ('r', 'p') ORDER BY c.relname",
        {"schema": schema},
    )
    return [(str(s), str(t)) for s, t in rows]


_OURS = (
    "FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid"
    " JOIN pg_namespace n ON n.oid = c.relnamespace"
    " JOIN pg_proc p ON p.oid = t.tgfoid"
    f" WHERE t.tgname = '{TRIGGER}' AND p.proname = '{FUNCTION}'"
    f" AND obj_description(p.oid, 'pg_proc') = '{MARKER}'"
)


#: (schema, table) of every table carrying the capture trigger
CAPTURED_SQL = f"SELECT n.nspname, c.relname {_OURS} ORDER BY 1, 2"


def captured(conn: Connection) -> list[tuple[str, str]]:
    """(schema, table) of every table carrying the capture trigger."""
    rows = conn.exec_driver_sql(CAPTURED_SQL)
    return [(str(s), str(t)) for s, t in rows]


def cache_names(tables: Iterable[tuple[str, str]], schema: str) -> set[str]:
    """The names the cache may know (schema, table) by: ``schema.table``, and the bare name
    for tables of the default schema (``Table(..., schema=None)``)."""
    names: set[str] = set()
    for table_schema, table in tables:
        names.add(f"{table_schema}.{table}")
        if table_schema == schema:
            names.add(table)
    return names


def _ddl_error(action: str, error: exc.DBAPIError) -> ConfigurationError:
    return ConfigurationError(f"change capture {action}: {one_line(error)}")


def install(
    engine: Engine, tables: Iterable[str] | None, connection: Connection | None = None
) -> tuple[list[tuple[str, str]], str]:
    """Create the function and the triggers (idempotent); (captured tables, default schema).
    ``connection``: run in that connection's transaction (a migration's), not one of our own."""
    try:
        if connection is not None:
            return _install(connection, tables)
        with engine.begin() as conn:
            return _install(conn, tables)
    except exc.DBAPIError as error:
        raise _ddl_error("install", error) from None


def _install(conn: Connection, tables: Iterable[str] | None) -> tuple[list[tuple[str, str]], str]:
    schema = default_schema(conn)
    if tables is None:
        targets = _schema_tables(conn, schema)
    else:
        targets = [_relation(conn, schema, name) for name in tables]
    conn.exec_driver_sql(_function_sql(conn, schema))
    function = f"{_quote(conn, schema)}.{FUNCTION}"
    conn.exec_driver_sql(f"COMMENT ON FUNCTION {function}() IS '{MARKER}'")
    for table_schema, table in targets:
        target = f"{_quote(conn, table_schema)}.{_quote(conn, table)}"
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {target}")
        conn.exec_driver_sql(
            f"CREATE TRIGGER {TRIGGER} AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE"
            f" ON {target} FOR EACH STATEMENT EXECUTE FUNCTION {function}()"
        )
    return captured(conn), schema


def uninstall(
    engine: Engine, tables: Iterable[str] | None, connection: Connection | None = None
) -> tuple[list[tuple[str, str]], str]:
    """Drop the triggers of ``tables`` (None: all), and the function once no trigger uses it;
    (tables still captured, default schema)."""
    try:
        if connection is not None:
            return _uninstall(connection, tables)
        with engine.begin() as conn:
            return _uninstall(conn, tables)
    except exc.DBAPIError as error:
        raise _ddl_error("uninstall", error) from None


def _uninstall(conn: Connection, tables: Iterable[str] | None) -> tuple[list[tuple[str, str]], str]:
    schema = default_schema(conn)
    present = captured(conn)
    if tables is None:
        targets = present
    else:
        wanted = {_relation(conn, schema, name) for name in tables}
        targets = [t for t in present if t in wanted]
    for table_schema, table in targets:
        target = f"{_quote(conn, table_schema)}.{_quote(conn, table)}"
        conn.exec_driver_sql(f"DROP TRIGGER IF EXISTS {TRIGGER} ON {target}")
    unused = conn.exec_driver_sql(
        "SELECT n.nspname FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace"
        f" WHERE p.proname = '{FUNCTION}' AND obj_description(p.oid, 'pg_proc') ="
        f" '{MARKER}' AND NOT EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgfoid = p.oid)"
    ).scalars()
    for function_schema in list(unused):
        conn.exec_driver_sql(
            f"DROP FUNCTION IF EXISTS {_quote(conn, str(function_schema))}.{FUNCTION}()"
        )
    return captured(conn), schema
