"""Operator actions over the storage: reachability, the namespace's census, deleting by kind.

These scan the namespace (``SCAN`` + pipelined ``MEMORY USAGE``), which costs time proportional
to its size: fine for an operator's command, never used on the read or commit path.  The CLI and
the status API compose them with the facade's invalidation (``_operator``): clearing by table or
tag is a token swap (O(1)); clearing queries, entities or a pattern deletes keys.
"""

from __future__ import annotations

from typing import Any

from .._redis_settings import redact
from ..io._ops import MemoryUsage
from ..storage import Storage
from ..storage._capture import decode_tables
from ..storage._keys import escape_glob
from ..storage._store import FAILED

#: second key segment -> kind shown by ``status``
KINDS = {
    "q": "queries",
    "e": "entities",
    "k": "generic",
    "r": "regions",
    "t": "tokens",
    "g": "tokens",
    "u": "tokens",  # unknown rows (fine-grained invalidation)
    "v": "tokens",  # values (fine-grained invalidation)
    "all": "tokens",
    "capture": "tokens",  # change capture's liveness key and captured tables
    "stats": "stats",
}
_BATCH = 500


def connection_error(storage: Storage) -> str | None:
    """None if Redis answers (the circuit breaker is bypassed), else one line saying why (no
    traceback, no password)."""
    try:
        storage.store.io.get_many([storage.keys.all_key])
    except Exception as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return f"cannot reach Redis at {redact(storage.config.url)}: {reason}"
    return None


def server_and_census(storage: Storage) -> dict[str, Any] | None:
    """``{"server": ..., "entries": ..., "memory_bytes": ...}``; None if Redis failed."""
    store = storage.store
    server = store.call(store.io.server_info)
    found = store.call(census, storage)
    if server is FAILED or found is FAILED:
        return None
    return {"server": server, **found}


def capture_state(storage: Storage) -> dict[str, Any] | None:
    """Change capture of the namespace: ``{"listener_alive": ..., "tables": [...]}`` (the
    captured tables as the cache names them); None if Redis failed."""
    gate = storage.capture
    values = storage.store.get_many([gate.live_key, gate.tables_key])
    if values is FAILED:
        return None
    return {
        "listener_alive": values[0] is not None,
        "tables": sorted(decode_tables(values[1]) or ()),
    }


def census(storage: Storage) -> dict[str, Any]:
    """Keys of the namespace per kind, and the memory they use (scans the namespace)."""
    io = storage.store.io
    prefix = storage.keys.prefix
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


def delete_kind(storage: Storage, kind: str) -> int:
    """Delete every key of one kind (``q``: query results, ``e``: entities); how many, -1 when
    Redis failed."""
    match = escape_glob(f"{storage.keys.prefix}{kind}:") + "*"
    deleted = storage.store.delete_matching(match)
    return -1 if deleted is FAILED else int(deleted)
