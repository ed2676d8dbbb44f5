"""Redis clients for each deployment, synchronous and asyncio, built from one :class:`CacheConfig`.

One place decides how the cache reaches Redis, so the sync store and the asyncio store (which
calls :func:`make_async_client`) see the same deployment with the same options:

- a single server: ``redis.Redis`` over a connection pool (TCP, TLS or unix socket);
- Redis Cluster: ``RedisCluster`` from the startup nodes; it learns the slot map, follows
  ``MOVED``/``ASK`` and re-reads the map after a connection error, which is how a promoted
  replica is found after a master dies;
- Sentinel: ``Sentinel(...).master_for(name)``.  Every command, reads included, goes to the
  current master: a replica may lag, and a cache validated against lagging version tokens would
  serve what a commit has just invalidated.

All of them get the cache's short timeouts and **no retries** (``Retry(NoBackoff(), 0)``): a
failed call is a miss handled by ``Store``'s breaker, not seconds of retrying on the request path.

At startup :func:`connect_sync` sends one ``PING``: credentials or certificates Redis rejects are
a :class:`ConfigurationError` right there; an unreachable Redis is not (logged at INFO; the
store warns when it is used), since the cache must fail open (a cluster whose nodes cannot be
reached yet is connected on first use).
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable
from typing import Any
from urllib.parse import unquote, urlsplit

from redis.backoff import NoBackoff
from redis.exceptions import (
    AuthenticationError,
    AuthorizationError,
    NoPermissionError,
    RedisClusterException,
    RedisError,
    ResponseError,
)
from redis.exceptions import (
    ConnectionError as RedisConnectionError,
)
from redis.retry import Retry

from .._config import CacheConfig
from .._errors import ConfigurationError
from .._redis_settings import redact, url_db
from ._sync import SyncIO

log = logging.getLogger("sqla_redis_cache")

__all__ = ["connect_sync", "make_async_client", "make_sync_client"]


def _url_credentials(url: str) -> dict[str, Any]:
    parts = urlsplit(url)
    out: dict[str, Any] = {}
    if parts.username:
        out["username"] = unquote(parts.username)
    if parts.password:
        out["password"] = unquote(parts.password)
    return out


def _tls_options(config: CacheConfig) -> dict[str, Any]:
    if not config.tls_enabled:
        return {}
    options: dict[str, Any] = {
        "ssl_cert_reqs": ssl.CERT_REQUIRED if config.tls_verify else ssl.CERT_NONE,
        "ssl_check_hostname": config.tls_verify,
    }
    if config.tls_ca_certs:
        options["ssl_ca_certs"] = config.tls_ca_certs
    if config.tls_certfile:
        options["ssl_certfile"] = config.tls_certfile
    if config.tls_keyfile:
        options["ssl_keyfile"] = config.tls_keyfile
    return options


def _options(config: CacheConfig, retry: Any) -> dict[str, Any]:
    """Keyword arguments every connection of this deployment gets."""
    options: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
        "retry": retry,
    }
    if config.username:
        options["username"] = config.username
    if config.password:
        options["password"] = config.password
    options.update(config.redis_options)
    return options


def _cluster_nodes(config: CacheConfig) -> tuple[tuple[str, int], ...]:
    parts = urlsplit(config.url)
    return config.cluster_nodes or ((parts.hostname or "localhost", parts.port or 6379),)


def _sentinel_kwargs(config: CacheConfig) -> dict[str, Any]:
    options: dict[str, Any] = {
        "socket_timeout": config.socket_timeout,
        "socket_connect_timeout": config.connect_timeout,
    }
    if config.sentinel_password:
        options["password"] = config.sentinel_password
        if config.sentinel_username:
            options["username"] = config.sentinel_username
    if config.tls_enabled:
        options["ssl"] = True
        options.update(_tls_options(config))
    return options


def _node_options(config: CacheConfig, retry: Any) -> dict[str, Any]:
    """Connection options for cluster nodes and sentinel-managed masters."""
    options = {**_url_credentials(config.url), **_options(config, retry)}
    if config.tls_enabled:
        options.update(ssl=True, **_tls_options(config))
    return options


def _pool_options(
    config: CacheConfig, retry: Any, parse_url: Callable[[str], Any], ssl_class: type
) -> dict[str, Any]:
    """Connection pool options for a single server (the URL's, then the config's)."""
    kwargs: dict[str, Any] = dict(parse_url(config.url))
    kwargs.update(_options(config, retry))
    if config.tls_enabled:
        kwargs["connection_class"] = ssl_class
        kwargs.update(_tls_options(config))
    return kwargs


def make_sync_client(config: CacheConfig) -> Any:
    """A redis-py client for ``config``'s deployment (connects lazily, except a cluster,
    which reads its slot map here)."""
    import redis
    from redis.cluster import ClusterNode, RedisCluster
    from redis.connection import ConnectionPool, SSLConnection, parse_url
    from redis.sentinel import Sentinel

    retry = Retry(NoBackoff(), 0)
    if config.sentinel_nodes:
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinel_nodes),
            sentinel_kwargs=_sentinel_kwargs(config),
            **_node_options(config, retry),
        )
        return sentinel.master_for(  # type: ignore[no-untyped-call]
            config.sentinel_master, db=url_db(config.url)
        )
    if config.cluster:
        nodes = [ClusterNode(h, p) for h, p in _cluster_nodes(config)]  # type: ignore[no-untyped-call]
        return RedisCluster(startup_nodes=nodes, **_node_options(config, retry))
    pool = ConnectionPool(**_pool_options(config, retry, parse_url, SSLConnection))
    return redis.Redis(connection_pool=pool)


def make_async_client(config: CacheConfig) -> Any:
    """The ``redis.asyncio`` counterpart of :func:`make_sync_client` (same deployment, same
    options); nothing connects until the first command is awaited."""
    import redis.asyncio as aioredis
    from redis.asyncio.cluster import ClusterNode, RedisCluster
    from redis.asyncio.connection import ConnectionPool, SSLConnection, parse_url
    from redis.asyncio.retry import Retry as AsyncRetry
    from redis.asyncio.sentinel import Sentinel

    retry = AsyncRetry(NoBackoff(), 0)
    if config.sentinel_nodes:
        assert config.sentinel_master is not None
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            list(config.sentinel_nodes),
            sentinel_kwargs=_sentinel_kwargs(config),
            **_node_options(config, retry),
        )
        return sentinel.master_for(config.sentinel_master, db=url_db(config.url))
    if config.cluster:
        nodes = [ClusterNode(h, p) for h, p in _cluster_nodes(config)]
        return RedisCluster(startup_nodes=nodes, **_node_options(config, retry))
    pool = ConnectionPool(**_pool_options(config, retry, parse_url, SSLConnection))
    return aioredis.Redis(connection_pool=pool)


# --------------------------------------------------------------------------- startup


def rejected(exc: BaseException) -> str | None:
    """Why Redis refused us for good (credentials, permissions, TLS), else None."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, AuthenticationError | AuthorizationError | NoPermissionError):
            return f"{type(current).__name__}: {current}"
        if isinstance(current, ResponseError) and str(current).startswith(
            ("WRONGPASS", "NOAUTH", "NOPERM")
        ):
            return f"{type(current).__name__}: {current}"
        # certificate verification, a required client certificate, TLS against a plain port...
        # (a connection cut mid-handshake is only an outage)
        text = str(current)
        tls_error = isinstance(current, ssl.SSLError) or "[SSL: " in text
        if tls_error and "EOF" not in text and not isinstance(current, ssl.SSLEOFError):
            return f"TLS handshake refused: {current}"
        current = current.__cause__ or current.__context__
    return None


def _refuse(config: CacheConfig, reason: str) -> ConfigurationError:
    who = f"user {config.username!r}" if config.username else "the default user"
    return ConfigurationError(
        f"Redis at {redact(config.url)} rejected the connection for {who}: {reason}"
    )


class _Deferred:
    """Stands in for a cluster client whose nodes could not be reached at startup: the first
    command builds the real client (a Redis error while it cannot)."""

    def __init__(self, build: Callable[[], Any], io: SyncIO) -> None:
        self._build = build
        self._io = io

    def __getattr__(self, name: str) -> Any:
        try:
            client = self._build()
        except RedisClusterException as exc:
            raise RedisConnectionError(str(exc)) from exc
        self._io.client = client
        return getattr(client, name)

    def close(self) -> None:
        pass

    def disconnect_connection_pools(self) -> None:
        pass


def connect_sync(config: CacheConfig) -> SyncIO:
    """The synchronous :class:`SyncIO` for ``config``, checked once (see module docstring)."""
    try:
        client = make_sync_client(config)
    except (RedisError, RedisClusterException, OSError) as exc:
        reason = rejected(exc)
        if reason is not None:
            raise _refuse(config, reason) from exc
        log.info("Redis Cluster unreachable at startup, will retry on use (%s)", exc)
        io = SyncIO(None, cluster=config.cluster)
        io.client = _Deferred(lambda: make_sync_client(config), io)
        return io
    try:
        client.ping()
    except (RedisError, OSError) as exc:
        reason = rejected(exc)
        if reason is not None:
            client.close()
            raise _refuse(config, reason) from exc
        log.info("Redis unreachable at startup, serving from the database (%s)", exc)
    return SyncIO(client, cluster=config.cluster)
