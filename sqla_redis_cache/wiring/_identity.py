"""Database identity: which database, reached how, as whom.

Cached rows are shared by every connection whose identity is equal, in every process sharing
the namespace, so the identity must capture everything fixed at connect time that changes what
the same SQL returns: dialect and driver, host, port and database, the user (``$user`` in the
search path, privileges, row-level security) and every connect parameter, whether it comes from
the URL query or ``connect_args`` (``options=-csearch_path=...``, asyncpg ``server_settings``,
a role, a time zone).  Only parameters known not to change results are left out, so that
processes differing in them (``application_name``, timeouts, TLS files) still share entries;
passwords are left out too (a rotation must not empty the cache).

SQLAlchemy keeps the effective connect parameters (URL plus ``connect_args``) only inside the
connect function it builds for the pool; they are read from there once per engine.  An engine
built with ``creator=`` (or a pool whose connect function is not SQLAlchemy's) says nothing about
where it connects: it gets a random identity of its own, so its entries are shared by no other
engine object or process (a warning says so once).  Parameters a ``do_connect`` listener changes
are not seen either: prefer the URL or ``connect_args`` for anything that changes results.

SQLite: a file database is identified by its absolute path, resolved where the engine runs.
An in-memory database exists per DBAPI connection (``:memory:``, ``mode=memory`` URIs without
``cache=shared``): each connection gets a random identity of its own, kept in its pool record,
and the entity cache, which answers before a connection exists, is not used for it.  A shared
in-memory database, or an in-memory engine on a ``StaticPool`` (one connection), gets a random
identity per engine.

What a connection changes at run time (``SET``, roles, temporary tables) is not part of the
identity: reads on such connections bypass the cache (``_runtime_settings``).
"""

from __future__ import annotations

import logging
import os
import weakref
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from ..storage._keys import UnkeyableParameter
from ._compat import base_engine, connect_parameters

log = logging.getLogger("sqla_redis_cache")

#: connect parameters that cannot change what a query returns (nor where it goes)
NEUTRAL_PARAMETERS = frozenset(
    {
        "password",
        "passwd",
        "passfile",
        "application_name",
        "fallback_application_name",
        "connect_timeout",
        "command_timeout",
        "timeout",
        "check_same_thread",
        "isolation_level",  # SQLAlchemy reads the effective level from the server
        "keepalives",
        "keepalives_idle",
        "keepalives_interval",
        "keepalives_count",
        "tcp_user_timeout",
        "sslmode",
        "sslcert",
        "sslkey",
        "sslrootcert",
        "sslcrl",
        "sslpassword",
        "ssl",
        "ssl_context",
        "statement_cache_size",
        "prepared_statement_cache_size",
        "prepared_statement_name_func",
        "max_cached_statement_lifetime",
        "max_cacheable_statement_size",
        "cached_statements",
        # driver object hooks (cursor / connection classes): how rows are fetched, not which
        "cursor_factory",
        "factory",
        "connection_class",
    }
)

#: engine -> its identity; None: a database per connection (in-memory SQLite)
_engines: weakref.WeakKeyDictionary[Engine, bytes | None] = weakref.WeakKeyDictionary()
#: the per-connection identity, in the pool record's ``info`` (lives as long as the connection)
CONNECTION_IDENTITY = "sqla_redis_cache.identity"


def engine_identity(engine: Engine) -> bytes | None:
    """The identity of ``engine``'s database; None when it differs per connection."""
    engine = base_engine(engine)
    try:
        return _engines[engine]
    except KeyError:
        pass
    ident = _engines[engine] = _compute(engine)
    return ident


def entity_engine_id(engine: Engine) -> bytes:
    """The identity of ``engine``'s database for keys made without a connection (the entity
    cache); a database per connection cannot have one."""
    ident = engine_identity(engine)
    if ident is None:
        raise UnkeyableParameter(
            "an in-memory SQLite database exists per connection: its entities cannot be "
            "cached (use a StaticPool or a shared-cache URI)"
        )
    return ident


def connection_identity(conn: Any, info: dict[str, Any]) -> bytes:
    """The identity of the database behind ``conn`` (a Connection whose ``info`` is given):
    the hot-path lookup, one dictionary get."""
    ident: bytes | None = info.get(CONNECTION_IDENTITY)
    if ident is None:
        ident = engine_identity(conn.engine)
        if ident is None:  # a database of its own
            ident = b"sqlite:memory:" + os.urandom(16).hex().encode()
        info[CONNECTION_IDENTITY] = ident
    return ident


def _random(reason: str) -> bytes:
    return f"{reason}:{os.urandom(16).hex()}".encode()


def _compute(engine: Engine) -> bytes | None:
    dialect = engine.dialect
    url = engine.url
    head = f"{dialect.name}+{dialect.driver}"
    found = connect_parameters(engine)
    if found is None:
        log.warning(
            "sqla_redis_cache: engine %s connects through a custom creator or pool; its "
            "database cannot be identified, so its cached entries are kept for this engine "
            "object only (not shared with other engines or processes)",
            url.render_as_string(hide_password=True),
        )
        return _random(head + ":creator")
    args, kwargs = found
    if dialect.name == "sqlite":
        return _sqlite_identity(engine, head, args, kwargs)
    params = sorted(
        (str(k), repr(v)) for k, v in kwargs.items() if str(k) not in NEUTRAL_PARAMETERS
    )
    return repr((head, url.username, url.host, url.port, url.database, args, params)).encode()


def _sqlite_identity(
    engine: Engine, head: str, args: Sequence[Any], kwargs: Mapping[str, Any]
) -> bytes | None:
    target = str(args[0] if args else kwargs.get("database", ""))
    uri = bool(kwargs.get("uri"))
    path, _, query = target.partition("?") if uri else (target, "", "")
    if uri and path.startswith("file:"):
        path = path[len("file:") :]
    options = dict(part.partition("=")[::2] for part in query.split("&") if part)
    if path in ("", ":memory:") or options.get("mode") == "memory":
        if options.get("cache") == "shared" or isinstance(engine.pool, StaticPool):
            return _random(head + ":memory")  # one database for the engine's connections
        return None  # one database per connection
    params = sorted(
        (str(k), repr(v))
        for k, v in kwargs.items()
        if str(k) not in NEUTRAL_PARAMETERS and k not in ("database", "uri")
    )
    options.pop("cache", None)
    return repr((head, os.path.abspath(path), sorted(options.items()), params)).encode()
