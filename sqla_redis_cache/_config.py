"""Configuration: TTL profiles, timeouts, secrets, and where they come from.

Everything the cache needs to know is collected in one frozen :class:`CacheConfig`, built either
directly, from a Redis URL (:meth:`CacheConfig.from_url`) or from the ``REDIS_*`` environment
variables (:meth:`CacheConfig.from_env`).  Keeping it immutable means a running cache can never be
half-reconfigured; build a new :class:`~sqla_redis_cache.QueryCache` instead.

TTL profiles (regions) name how long entries live.  The defaults are few and general: how stale
a kind of data may be (``short``, ``long``) or what the library itself caches (``db_query``,
the default of ``cached()``; ``db_aggregate``; ``api_response``, the default of the ASGI
middleware).  An application declares its own next to them (``regions={"reports": 600}``).

Timeouts default to tens of milliseconds on purpose: a cache is an optimisation, and a dead Redis
must cost a request milliseconds, not redis-py's default five seconds.

Every duration is checked where it is given (here, in ``cached()``, ``set()``, ``memoize()``):
a TTL must be a finite number of seconds between 1 ms (Redis expires in whole milliseconds, and
``PX 0`` is an error) and ten years; an infinite or NaN value would otherwise be accepted and
fail later, inside a query or after a value was computed.
"""

from __future__ import annotations

import math
import numbers
import os
import re
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from . import _redis_settings
from ._errors import ConfigurationError

#: The default TTL profiles, in seconds.  ``cached()`` uses ``db_query`` unless told otherwise.
DEFAULT_REGIONS: Mapping[str, float] = {
    "short": 60,  # data that changes often, or may be a minute old
    "api_response": 120,  # HTTP responses (``asgi.CacheMiddleware``)
    "db_query": 300,  # query results (``cached()``)
    "db_aggregate": 900,  # reports: counts, sums, groupings over large tables
    "long": 86400,  # rarely changing data: reference tables, settings, profiles
}

DEFAULT_REGION = "db_query"
_NAMESPACE_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")


#: TTL bounds, seconds: Redis expires in whole milliseconds; beyond ten years is a mistake
MIN_TTL = 0.001
MAX_TTL = 10 * 365 * 86400.0


def seconds(
    name: str,
    value: Any,
    *,
    minimum: float = MIN_TTL,
    maximum: float = MAX_TTL,
    error: type[ValueError] = ValueError,
) -> float:
    """``value`` as a float number of seconds within bounds; TypeError / ``error`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a number of seconds, got {value!r}")
    number = float(value)
    if not (math.isfinite(number) and minimum <= number <= maximum):
        raise error(
            f"{name} must be a finite number of seconds between {minimum:g} and {maximum:g}, "
            f"got {value!r}"
        )
    return number


def clean_names(kind: str, values: Iterable[str] | str | None) -> tuple[str, ...]:
    """``values`` (one name or an iterable of names) as a sorted tuple of distinct non-empty
    strings; TypeError for anything else."""
    if values is None:
        return ()
    if isinstance(values, str):
        values = (values,)
    out = []
    for value in values:
        if not isinstance(value, str) or not value:
            raise TypeError(f"{kind} must be non-empty strings, got {value!r}")
        out.append(value)
    return tuple(sorted(set(out)))


#: the shape of a declared write rule (``invalidates``); ``wiring._write_rules`` applies them
_FIELDS = frozenset({"tables", "tags"})


def _rule_names(table: str, kind: str, values: Any) -> tuple[str, ...]:
    if isinstance(values, str) or not isinstance(values, Iterable):
        raise ConfigurationError(f"invalidates[{table!r}][{kind!r}] must be a list of names")
    out = tuple(values)
    if not all(isinstance(v, str) and v for v in out):
        raise ConfigurationError(f"invalidates[{table!r}][{kind!r}] must be non-empty strings")
    return out


def check_rules(rules: Mapping[str, Mapping[str, Any]]) -> None:
    """Raise ConfigurationError for anything but ``{table: {"tables": [...], "tags": [...]}}``."""
    if not isinstance(rules, Mapping):
        raise ConfigurationError("invalidates must be a mapping of table name to rule")
    for table, rule in rules.items():
        if not isinstance(table, str) or not table:
            raise ConfigurationError(f"invalidates keys must be table names, got {table!r}")
        if not isinstance(rule, Mapping) or not set(rule) <= _FIELDS or not rule:
            raise ConfigurationError(
                f"invalidates[{table!r}] must be a mapping with 'tables' and/or 'tags'"
            )
        for kind in rule:
            _rule_names(table, kind, rule[kind])


@dataclass(frozen=True, slots=True)
class RegionConfig:
    """A TTL profile.

    ``ttl`` is how long an entry lives in Redis.  ``refresh_after``, when set, is a soft TTL:
    past it one caller rebuilds the entry while the others keep getting the aged value.
    """

    ttl: float
    refresh_after: float | None = None

    def __post_init__(self) -> None:
        seconds("region ttl", self.ttl, error=ConfigurationError)
        if self.refresh_after is not None:
            seconds("refresh_after", self.refresh_after, error=ConfigurationError)
            if not self.refresh_after < self.ttl:
                raise ConfigurationError("refresh_after must be between 0 and ttl")


def _default_regions() -> dict[str, RegionConfig]:
    return {name: RegionConfig(ttl) for name, ttl in DEFAULT_REGIONS.items()}


@dataclass(frozen=True, slots=True)
class CacheConfig:
    """Every setting of a :class:`~sqla_redis_cache.QueryCache`."""

    url: str = "redis://localhost:6379/0"
    namespace: str = "sqlacache"
    regions: Mapping[str, RegionConfig] = field(default_factory=_default_regions)
    default_region: str = DEFAULT_REGION
    #: connect and socket timeouts for Redis, seconds
    connect_timeout: float = 0.05
    socket_timeout: float = 0.05
    #: values whose encoding exceeds this many bytes are compressed
    compress_threshold: int = 1024
    #: entries larger than this (after compression) are not stored
    max_entry_bytes: int = 16 * 1024 * 1024
    #: compressor above the threshold: "zlib", or "zstd" / "lz4" when their package is installed
    compression: str = "zlib"
    #: run the registered warm-up callables at start-up: ``QueryCache.warm(startup=True)``
    warmup: bool = False
    #: key for signing entries (HMAC); enables pickle for values msgpack cannot encode
    secret: bytes | None = None
    #: stampede lock: how long a holder may keep it, and how long others wait for it
    lock_timeout: float = 30.0
    lock_wait: float = 10.0
    #: circuit breaker: consecutive failures before opening, and the cool-down
    breaker_threshold: int = 3
    breaker_cooldown: float = 2.0
    #: decoded immutable query results kept in process, keyed by their entry (saves
    #: decoding); 0 disables
    near_cache_size: int = 512
    #: keep the Redis values a hit reads (version tokens, entries) in process, coherent through
    #: Redis client tracking: a repeated hit sends nothing to Redis (docs/concepts.md, "The
    #: near cache").  False validates every read against Redis (one round trip per hit)
    near_cache_tracking: bool = True
    #: bounds of those values in process (least recently used dropped first)
    near_cache_keys: int = 100_000
    near_cache_bytes: int = 64 * 1024 * 1024
    #: memory is only used while every tracking connection answered a heartbeat sent less
    #: than this many seconds ago (heartbeats every quarter of it)
    near_cache_lease: float = 1.0
    #: seconds between flushes of this process's statistics to the shared ``<ns>:stats`` hash
    #: (a background thread started by ``attach()``); 0 keeps statistics local
    stats_interval: float = 10.0
    #: count query hits, misses, bypasses and bytes per table and per region (one local
    #: increment per read, flushed with the other statistics)
    table_stats: bool = True
    #: fine-grained invalidation: a result filtered by equality on a column (``col = :v``,
    #: ``col IN (...)``, ``col IS NULL``) depends on those values, not on the whole table, and
    #: a commit whose rows the ORM knows invalidates only their values (``wiring._values``)
    fine_grained: bool = True
    #: fine-grained invalidation of an UPDATE/DELETE flushed under READ COMMITTED or on SQLite:
    #: False (the default) makes its table's rows unknown, because another transaction may have
    #: changed the row after the Session loaded it; True takes the old values from what the
    #: Session loaded (only safe when no two transactions write one row concurrently, e.g. every
    #: writer locks what it loads; see docs/write-paths.md)
    trust_loaded_values: bool = False
    #: extra keyword arguments for the redis-py client
    redis_options: Mapping[str, Any] = field(default_factory=dict)
    #: what else a write to a table invalidates, e.g.
    #: ``{"emissions": {"tables": ["emission_totals"], "tags": ["analytics", "dashboard"]}}``
    invalidates: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)
    #: entity write-through on commit: True (every mapped class), False, or the class or
    #: table names to write through (the others are only invalidated)
    write_through: bool | Collection[str] = True

    # deployment and connection security (see _redis_settings and docs/deployment.md) -----------
    #: Redis Cluster; startup nodes default to the URL's host
    cluster: bool = False
    #: after losing the connection to Redis, replace the namespace token before serving again:
    #: the server that answers next may be a promoted replica that missed recent invalidations
    invalidate_after_outage: bool = True
    cluster_nodes: tuple[tuple[str, int], ...] = ()
    #: Sentinel: the sentinels' addresses, the monitored master's name, the sentinels' own auth
    sentinel_nodes: tuple[tuple[str, int], ...] = ()
    sentinel_master: str | None = None
    sentinel_username: str | None = None
    sentinel_password: str | None = field(default=None, repr=False)
    #: ACL user and password (override the URL's)
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    #: TLS (also on with rediss://): CA bundle, optional client certificate and key, PEM paths
    tls: bool = False
    tls_ca_certs: str | None = None
    tls_certfile: str | None = None
    tls_keyfile: str | None = None
    #: verify the server's certificate and host name
    tls_verify: bool = True

    def __post_init__(self) -> None:
        if not _NAMESPACE_RE.match(self.namespace):
            raise ConfigurationError(
                f"namespace {self.namespace!r} must be 1-64 characters of letters, digits, '_.-'"
            )
        regions = {  # seconds are accepted for a region
            name: given
            if isinstance(given, RegionConfig)
            else RegionConfig(seconds(f"region {name!r} ttl", given))
            for name, given in self.regions.items()
        }
        object.__setattr__(self, "regions", regions)
        if self.default_region not in self.regions:
            raise ConfigurationError(f"default region {self.default_region!r} is not defined")
        if self.compress_threshold < 0:
            raise ConfigurationError("compress_threshold must be >= 0")
        err = ConfigurationError
        for name in ("connect_timeout", "socket_timeout", "breaker_cooldown"):
            seconds(name, getattr(self, name), minimum=1e-6, maximum=3600, error=err)
        seconds("lock_timeout", self.lock_timeout, error=err)
        seconds("lock_wait", self.lock_wait, minimum=0, error=err)
        seconds("stats_interval", self.stats_interval, minimum=0, error=err)
        seconds("near_cache_lease", self.near_cache_lease, minimum=0.01, maximum=60, error=err)
        for name in ("near_cache_size", "near_cache_keys", "near_cache_bytes"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise ConfigurationError(f"{name} must be an integer >= 0, not {value!r}")
        check_rules(self.invalidates)
        if not isinstance(self.write_through, bool) and (
            isinstance(self.write_through, str)
            or not all(isinstance(n, str) and n for n in self.write_through)
        ):
            raise ConfigurationError("write_through must be a bool or a list of class/table names")
        if self.breaker_threshold < 1:
            raise ConfigurationError("breaker_threshold must be >= 1")
        from ._compression import compressor

        try:
            compressor(self.compression)
        except (ValueError, ImportError) as exc:
            raise ConfigurationError(f"compression={self.compression!r}: {exc}") from None
        _redis_settings.validate(self)

    @property
    def tls_enabled(self) -> bool:
        return self.tls or self.url.lower().startswith(("rediss://", "rediss+"))

    def region(self, name: str | None) -> RegionConfig:
        try:
            return self.regions[name or self.default_region]
        except KeyError:
            raise ConfigurationError(
                f"unknown cache region {name!r}; known: {', '.join(sorted(self.regions))}"
            ) from None

    @property
    def longest_ttl(self) -> float:
        return max(r.ttl for r in self.regions.values())

    def with_regions(self, **ttls: float | RegionConfig) -> CacheConfig:
        """A copy with some TTL profiles replaced or added."""
        regions = dict(self.regions)
        for name, value in ttls.items():
            regions[name] = value if isinstance(value, RegionConfig) else RegionConfig(value)
        return replace(self, regions=regions)

    @classmethod
    def from_url(cls, url: str, **settings: Any) -> CacheConfig:
        """``settings`` are fields; ``redis+sentinel://`` and multi-host cluster URLs are read
        into the deployment fields (see ``_redis_settings.url_settings``)."""
        url, settings = _redis_settings.url_settings(url, settings)
        regions = settings.pop("regions", None)
        config = cls(url=url, **settings)
        if regions:
            config = config.with_regions(**regions)
        return config

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **settings: Any) -> CacheConfig:
        """Read ``REDIS_URL``, else ``REDIS_HOST``/``PORT``/``DB``;
        ``REDIS_USERNAME``/``PASSWORD``, ``REDIS_TLS_*``, ``REDIS_CLUSTER_*``,
        ``REDIS_SENTINEL_*`` (docs/deployment.md); ``SQLA_CACHE_SECRET`` for signing,
        ``SQLA_CACHE_COMPRESSION`` for the compressor, ``CACHE_WARMUP`` for start-up warming."""
        env = os.environ if environ is None else environ
        url = env.get("REDIS_URL") or _redis_settings.url_from_parts(env)
        if "secret" not in settings and env.get("SQLA_CACHE_SECRET"):
            settings["secret"] = env["SQLA_CACHE_SECRET"].encode()
        if "compression" not in settings and env.get("SQLA_CACHE_COMPRESSION"):
            settings["compression"] = env["SQLA_CACHE_COMPRESSION"].strip().lower()
        if "warmup" not in settings and "CACHE_WARMUP" in env:
            settings["warmup"] = _truthy(env["CACHE_WARMUP"])
        return cls.from_url(url, **_redis_settings.env_settings(env, settings))


_truthy = _redis_settings.truthy
_redact = _redis_settings.redact
