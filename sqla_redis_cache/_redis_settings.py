"""Where Redis is and how to reach it: deployment settings from URLs and the environment.

A cache talks to one of three deployments: a single server (``redis://``, ``rediss://``,
``unix://``), a Redis Cluster (``cluster=True``, with startup nodes), or a master watched by
Sentinel (``redis+sentinel://`` or sentinel settings).  Any of them may use TLS and an ACL user.
This module turns URLs and the ``REDIS_*`` environment variables into those settings and
rejects combinations that cannot work with **one** clear :class:`ConfigurationError` when the
configuration is built, rather than a confusing failure on the first query (or, worse, a cache
that silently fails open forever).

Credentials are kept out of error messages.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from ._errors import ConfigurationError

Node = tuple[str, int]

_URL_RE = re.compile(r"^(redis|rediss|unix|redis\+sentinel|rediss\+sentinel)://", re.IGNORECASE)
_SENTINEL_SCHEMES = ("redis+sentinel", "rediss+sentinel")


def _error(message: str) -> Exception:
    return ConfigurationError(message)


def redact(url: str) -> str:
    return re.sub(r"//([^:@/]*):[^@/]*@", r"//\1:***@", url)


def truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def parse_nodes(text: str, what: str, default_port: int = 6379) -> tuple[Node, ...]:
    """``"h1:p1,h2:p2"`` (or ``[::1]:p``) -> ``(("h1", p1), ("h2", p2))``."""
    nodes: list[Node] = []
    for raw in text.split(","):
        item = raw.strip()
        if not item:
            continue
        match = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?|([^:\[\]]+)(?::(\d+))?", item)
        if match is None:
            raise _error(f"{what}: cannot read node {item!r}; expected host:port")
        host = match.group(1) or match.group(3)
        port = match.group(2) or match.group(4)
        number = int(port) if port else default_port
        if not 0 < number < 65536:
            raise _error(f"{what}: port of {item!r} is out of range")
        nodes.append((host, number))
    if not nodes:
        raise _error(f"{what}: no nodes given")
    return tuple(nodes)


def url_settings(url: str, settings: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """Check ``url``'s scheme; read Sentinel and multi-host cluster URLs into settings.

    ``redis+sentinel://[user:password@]h1:p1,h2:p2/<master>[/<db>]`` names the sentinels and the
    monitored master; its credentials are the master's.  ``redis://h1:p1,h2:p2`` with
    ``cluster=True`` lists cluster startup nodes.
    """
    match = _URL_RE.match(url)
    if match is None:
        raise _error(
            f"unsupported Redis URL {redact(url)!r}: expected redis://, rediss://, unix:// "
            "or redis+sentinel://"
        )
    scheme = match.group(1).lower()
    out = dict(settings)
    if scheme == "unix":
        return url, out
    parts = urlsplit(url)
    netloc = parts.netloc.rpartition("@")[2]
    if scheme in _SENTINEL_SCHEMES:
        if out.get("cluster"):
            raise _error("a redis+sentinel:// URL cannot be used with cluster=True")
        path = [p for p in parts.path.split("/") if p]
        if not path or len(path) > 2 or (len(path) == 2 and not path[1].isdigit()):
            raise _error(
                f"sentinel URL {redact(url)!r} must end in /<master name>[/<db>], "
                "e.g. redis+sentinel://s1:26379,s2:26379/mymaster/0"
            )
        out.setdefault("sentinel_nodes", parse_nodes(netloc, "sentinel URL", 26379))
        out.setdefault("sentinel_master", unquote(path[0]))
        if scheme == "rediss+sentinel":
            out.setdefault("tls", True)
        return url, out
    if "," in netloc:
        if not out.get("cluster"):
            raise _error(
                f"URL {redact(url)!r} lists several hosts: pass cluster=True for Redis Cluster, "
                "or use redis+sentinel:// for Sentinel"
            )
        out.setdefault("cluster_nodes", parse_nodes(netloc, "cluster URL"))
    return url, out


def env_settings(env: Mapping[str, str], settings: Mapping[str, Any]) -> dict[str, Any]:
    """Deployment settings from the ``REDIS_*`` variables (explicit ``settings`` win)."""
    out = dict(settings)

    def put(name: str, value: Any) -> None:
        out.setdefault(name, value)

    if truthy(env.get("REDIS_CLUSTER_ENABLED")):
        put("cluster", True)
        if env.get("REDIS_CLUSTER_NODES", "").strip():
            put("cluster_nodes", parse_nodes(env["REDIS_CLUSTER_NODES"], "REDIS_CLUSTER_NODES"))
    # REDIS_CLUSTER_NODES without REDIS_CLUSTER_ENABLED=true is ignored (a configuration may
    # keep the nodes listed while the cluster is switched off)
    if env.get("REDIS_SENTINEL_NODES", "").strip():
        put("sentinel_nodes", parse_nodes(env["REDIS_SENTINEL_NODES"], "REDIS_SENTINEL_NODES"))
        put("sentinel_master", env.get("REDIS_SENTINEL_MASTER") or None)
    elif env.get("REDIS_SENTINEL_MASTER"):
        raise _error("REDIS_SENTINEL_MASTER is set but REDIS_SENTINEL_NODES is not")
    if env.get("REDIS_SENTINEL_PASSWORD"):
        put("sentinel_password", env["REDIS_SENTINEL_PASSWORD"])
        if env.get("REDIS_SENTINEL_USERNAME"):
            put("sentinel_username", env["REDIS_SENTINEL_USERNAME"])
    if env.get("REDIS_USERNAME"):
        put("username", env["REDIS_USERNAME"])
    if env.get("REDIS_PASSWORD"):
        put("password", env["REDIS_PASSWORD"])
    if truthy(env.get("REDIS_TLS_ENABLED")):
        put("tls", True)
    for var, name in (
        ("REDIS_TLS_CA_CERTS", "tls_ca_certs"),
        ("REDIS_TLS_CERTFILE", "tls_certfile"),
        ("REDIS_TLS_KEYFILE", "tls_keyfile"),
    ):
        if env.get(var):
            put(name, env[var])
    if env.get("REDIS_TLS_VERIFY", "").strip():
        put("tls_verify", truthy(env["REDIS_TLS_VERIFY"]))
    return out


def url_from_parts(env: Mapping[str, str]) -> str:
    """``REDIS_HOST``/``PORT``/``DB`` as a URL (credentials travel as settings, not in it)."""
    scheme = "rediss" if truthy(env.get("REDIS_TLS_ENABLED")) else "redis"
    host = env.get("REDIS_HOST", "localhost")
    port = env.get("REDIS_PORT", "6379")
    db = env.get("REDIS_DB", "0")
    if not port.isdigit() or not db.isdigit():
        raise _error("REDIS_PORT and REDIS_DB must be integers")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"{scheme}://{host}:{port}/{db}"


def url_db(url: str) -> int:
    parts = urlsplit(url)
    if parts.scheme.lower() == "unix":
        query = dict(p.split("=", 1) for p in parts.query.split("&") if "=" in p)
        text = query.get("db", "0")
    else:
        path = [p for p in parts.path.split("/") if p]
        if parts.scheme.lower() in _SENTINEL_SCHEMES:
            path = path[1:]
        text = path[0] if path else "0"
    if not text.isdigit():
        raise _error(f"database number {text!r} in the Redis URL is not an integer")
    return int(text)


class DeploymentSettings(Protocol):
    """The settings :func:`validate` checks (``CacheConfig``'s deployment fields)."""

    @property
    def url(self) -> str: ...
    @property
    def cluster(self) -> bool: ...
    @property
    def cluster_nodes(self) -> tuple[Node, ...]: ...
    @property
    def sentinel_nodes(self) -> tuple[Node, ...]: ...
    @property
    def sentinel_master(self) -> str | None: ...
    @property
    def sentinel_username(self) -> str | None: ...
    @property
    def sentinel_password(self) -> str | None: ...
    @property
    def username(self) -> str | None: ...
    @property
    def password(self) -> str | None: ...
    @property
    def tls(self) -> bool: ...
    @property
    def tls_enabled(self) -> bool: ...
    @property
    def tls_ca_certs(self) -> str | None: ...
    @property
    def tls_certfile(self) -> str | None: ...
    @property
    def tls_keyfile(self) -> str | None: ...


def validate(config: DeploymentSettings) -> None:
    """Reject deployment settings that cannot work together."""
    url = config.url
    if not _URL_RE.match(url):
        raise _error(f"unsupported Redis URL {redact(url)!r}")
    scheme = url.split("://", 1)[0].lower()
    sentinel = bool(config.sentinel_nodes)
    if config.cluster and sentinel:
        raise _error("choose Redis Cluster or Sentinel, not both (cluster=True, sentinel nodes)")
    if sentinel and not config.sentinel_master:
        raise _error("Sentinel needs the master's name (sentinel_master / REDIS_SENTINEL_MASTER)")
    if config.sentinel_master and not sentinel:
        raise _error("sentinel_master is set but no sentinel nodes are (sentinel_nodes)")
    if scheme in _SENTINEL_SCHEMES and not sentinel:
        raise _error("a redis+sentinel:// URL must be parsed by from_url()")
    if config.cluster_nodes and not config.cluster:
        raise _error("cluster_nodes is set but cluster is not: pass cluster=True")
    if scheme == "unix" and (config.cluster or sentinel):
        raise _error("Redis Cluster and Sentinel need TCP addresses, not a unix:// socket")
    if scheme == "unix" and config.tls:
        raise _error("TLS is not available over a unix:// socket")
    db = url_db(url)
    if config.cluster and db != 0:
        raise _error(f"Redis Cluster only has database 0, the URL selects database {db}")
    if config.username and not config.password:
        raise _error("an ACL username needs a password (password / REDIS_PASSWORD)")
    if config.sentinel_username and not config.sentinel_password:
        raise _error("sentinel_username needs sentinel_password")
    tls_files = {
        "tls_ca_certs": config.tls_ca_certs,
        "tls_certfile": config.tls_certfile,
        "tls_keyfile": config.tls_keyfile,
    }
    given = {name: path for name, path in tls_files.items() if path}
    if given and not config.tls_enabled:
        raise _error(
            f"{', '.join(sorted(given))} given but TLS is off: use rediss:// or tls=True "
            "(REDIS_TLS_ENABLED=true)"
        )
    if config.tls_keyfile and not config.tls_certfile:
        raise _error("tls_keyfile needs tls_certfile (the client certificate)")
    for name, path in given.items():
        if not os.path.isfile(path):
            raise _error(f"{name}: no such file {path!r}")
