"""Operator actions shared by the CLI and the status API: status report, clearing by kind.

These scan the namespace (``SCAN`` + pipelined ``MEMORY USAGE``), which costs time proportional
to its size: fine for an operator's command, never used on the read or commit path.  Clearing
by table or tag is a token swap (O(1)); clearing queries, entities or a pattern deletes keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ..io._ops import MemoryUsage
from ..storage._keys import escape_glob
from ..storage._store import FAILED

if TYPE_CHECKING:
    from .._cache import QueryCache

#: second key segment -> kind shown by ``status``
KINDS = {
    "q": "queries",
    "e": "entities",
    "k": "generic",
    "r": "regions",
    "t": "tokens",
    "g": "tokens",
    "all": "tokens",
    "stats": "stats",
}
_BATCH = 500


def connection_error(cache: QueryCache) -> str | None:
    """None if Redis answers, else one line saying why (no traceback, no password)."""
    from .._redis_settings import redact as _redact

    try:
        cache._core.store.io.get_many([cache._core.keys.all_key])
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot reach Redis at {_redact(cache.config.url)}: {reason}"
    return None


def _census(cache: QueryCache) -> dict[str, Any]:
    core = cache._core
    io = core.store.io
    prefix = core.keys.prefix
    counts: dict[str, int] = dict.fromkeys(sorted(set(KINDS.values()) | {"locks", "other"}), 0)
    memory = 0
    batch: list[MemoryUsage] = []

    def weigh() -> int:
        return sum(int(r or 0) for r in io.run(batch))

    for name in io.scan(escape_glob(prefix) + "*"):
        rest = name[len(prefix) :]
        if rest.endswith(":lock"):
            counts["locks"] += 1
        else:
            counts[KINDS.get(rest.split(":", 1)[0], "other")] += 1
        batch.append(MemoryUsage(name))
        if len(batch) >= _BATCH:
            memory += weigh()
            batch = []
    if batch:
        memory += weigh()
    return {"entries": counts, "memory_bytes": memory}


def status(cache: QueryCache) -> dict[str, Any]:
    """Everything ``sqla-redis-cache status`` and ``GET /api/cache/status`` show."""
    from .._redis_settings import redact as _redact

    store = cache._core.store
    report: dict[str, Any] = {
        "namespace": cache.config.namespace,
        "redis_url": _redact(cache.config.url),
        "connected": False,
    }
    server = store.call(store.io.server_info)
    census = store.call(_census, cache)
    if server is not FAILED and census is not FAILED:
        report.update(connected=True, server=server, **census)
    report["stats"] = cache.stats().as_dict()
    shared = cache.shared_stats()
    report["shared_stats"] = None if shared is None else shared.as_dict()
    report["warmup"] = cache._warmup.names
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
    core = cache._core
    done: dict[str, int] = {}
    if everything:
        done["all"] = cache.clear()
        return done

    def delete(kind: str) -> int:
        match = escape_glob(f"{core.keys.prefix}{kind}:") + "*"
        n = core.store.call(core.store.io.delete_matching, match)
        return -1 if n is FAILED else int(n)

    if queries:
        done["queries"] = delete("q")
    if entities:
        done["entities"] = delete("e")
    if tables:
        done["tables"] = len(tables) if cache.invalidate_tables(*tables) else -1
    if tags:
        done["tags"] = len(tags) if cache.invalidate_tags(*tags) else -1
    for pattern in patterns:
        done[f"pattern {pattern}"] = cache.delete_pattern(pattern)
    return done
