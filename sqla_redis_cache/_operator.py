"""Operator actions shared by the CLI and the status API: the status report, clearing by kind.

Each composes the cache's public methods (statistics, invalidation, ``clear``) with the
storage-level operator helpers of ``features._admin`` (census, deleting by kind).
"""

from __future__ import annotations

from typing import Any

from ._cache import QueryCache, internals
from ._redis_settings import redact
from .features import _admin
from .storage._stats import GroupStats


def connection_error(cache: QueryCache) -> str | None:
    """None if Redis answers, else one line saying why (no traceback, no password)."""
    return _admin.connection_error(internals(cache).storage)


def status(cache: QueryCache) -> dict[str, Any]:
    """Everything ``sqla-redis-cache status`` and ``GET /api/cache/status`` show."""
    parts = internals(cache)
    report: dict[str, Any] = {
        "namespace": cache.config.namespace,
        "redis_url": redact(cache.config.url),
        "connected": False,
    }
    found = _admin.server_and_census(parts.storage)
    if found is not None:
        report.update(connected=True, **found)
    report["stats"] = cache.stats().as_dict()
    shared = cache.shared_stats()
    report["shared_stats"] = None if shared is None else shared.as_dict()
    report["warmup"] = parts.warmup.names
    report["capture"] = _admin.capture_state(parts.storage)
    return report


def clear(
    cache: QueryCache,
    *,
    everything: bool = False,
    queries: bool = False,
    entities: bool = False,
    tables: tuple[str, ...] = (),
    tags: tuple[str, ...] = (),
    patterns: tuple[str, ...] = (),
) -> dict[str, int]:
    """Clear what was asked; ``{what: keys deleted or tokens replaced}``, -1 when Redis failed."""
    storage = internals(cache).storage
    done: dict[str, int] = {}
    if everything:
        done["all"] = cache.clear()
        return done
    if queries:
        done["queries"] = _admin.delete_kind(storage, "q")
    if entities:
        done["entities"] = _admin.delete_kind(storage, "e")
    if tables:
        done["tables"] = len(tables) if cache.invalidate_tables(*tables) else -1
    if tags:
        done["tags"] = len(tags) if cache.invalidate_tags(*tags) else -1
    for pattern in patterns:
        done[f"pattern {pattern}"] = cache.delete_pattern(pattern)
    return done


def breakdown_lines(namespace: str, by: str, groups: dict[str, GroupStats]) -> list[str]:
    """``sqla-redis-cache stats --by table|region``: one line per table or region, most
    lookups first."""
    lines = [f"namespace {namespace} (all processes), by {by}:"]
    if not groups:
        return [*lines, "  nothing counted yet"]
    width = max(len(by), *(len(name) for name in groups))
    columns = ("lookups", "hit rate", "hits", "misses", "bypasses", "invalidations", "bytes")
    lines.append(f"  {by:<{width}}  " + "  ".join(f"{c:>13}" for c in columns))
    for name, g in sorted(groups.items(), key=lambda item: (-item[1].lookups, item[0])):
        rate = f"{g.hit_rate * 100:.1f}%"
        values = (g.lookups, rate, g.hits, g.misses, g.bypasses, g.invalidations, g.bytes)
        lines.append(f"  {name:<{width}}  " + "  ".join(f"{v!s:>13}" for v in values))
    return lines
