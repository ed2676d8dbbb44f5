"""Change capture in Redis: the listener's liveness token and the set of captured tables.

Writes made outside the application (``psql``, a migration, another service) reach the cache
through a *listener* (``wiring._capture``): PostgreSQL triggers notify it of the tables each
committed transaction wrote and it replaces their version tokens, as a commit would.  A
listener that is not running would turn every such write into a stale read until the entry's
TTL, so its liveness is part of every read of a captured table:

- ``<ns>:capture:live`` exists only while a listener of the namespace is alive: each listener
  ``SET``\\ s it with a short ``PX`` (the liveness timeout, 2 s by default) every quarter of
  it, only after its PostgreSQL connection answered and its last batch of invalidations was
  delivered.  Readers never create it.  A crashed listener stops refreshing it; a stopped one
  deletes it.  Several listeners may refresh the same key: any live one keeps it.
- ``<ns>:capture:tables`` names the captured tables (a JSON list), written by ``install`` /
  ``uninstall`` and by every listener with its beats.  It carries a long TTL, not a short one:
  its expiry with the listener would make readers forget that the tables need a listener.

:class:`CaptureGate` is the readers' side.  It keeps the captured set in process and reloads it
about once a second by adding the tables key to a lookup's existing ``MGET``; a lookup that
reads a captured table adds the liveness key to the same ``MGET`` (the process's very first
lookup loads the set on its own, once, before deciding).  No extra round trip: a
missing liveness key makes the lookup a bypass (the query runs against the database and
nothing is stored).  A missing tables key (evicted, never written) keeps what the process knew:
it never un-captures a table by itself; ``uninstall`` writes the shrunken set explicitly.

A listener that (re)starts cannot know what it missed, so it invalidates every captured table
*before* it sets the liveness key (``wiring._capture``); entries filled while no listener was
alive therefore never outlive its return.  The residual window is the key's timeout: a listener
killed without a word is noticed when its key expires (at most the liveness timeout).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Iterable
from typing import Any

from ..io._ops import Set, Unlink
from ._keys import KeyBuilder
from ._store import FAILED, Store

#: seconds between two loads of the captured-table set by one process's readers
TABLES_REFRESH = 1.0
#: the captured-table set outlives any listener by far (see the module docstring)
TABLES_TTL_MS = 30 * 24 * 3600 * 1000
#: seconds between two warnings that reads bypass for want of a listener (one process)
WARN_EVERY = 60.0

log = logging.getLogger("sqla_redis_cache")


def encode_tables(tables: Iterable[str]) -> bytes:
    return json.dumps(sorted(set(tables))).encode()


def decode_tables(value: bytes | None) -> frozenset[str] | None:
    """The captured tables, or None when ``value`` is missing or not a list of names."""
    if value is None:
        return None
    try:
        names = json.loads(value)
    except ValueError:
        return None
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        return None
    return frozenset(names)


def table_names(tables: Iterable[str]) -> list[str]:
    """The captured tables once each: the cache names a table of the default schema both
    ``name`` and ``schema.name``; the first is kept."""
    names = set(tables)
    return sorted(t for t in names if t.partition(".")[2] not in names)


class CaptureGate:
    """What this process's readers know of change capture (see the module docstring)."""

    __slots__ = (
        "generation",
        "live_key",
        "next_load",
        "next_warning",
        "primed",
        "refresh",
        "tables",
        "tables_key",
    )

    def __init__(self, keys: KeyBuilder, refresh: float = TABLES_REFRESH) -> None:
        self.live_key = keys.prefix + "capture:live"
        self.tables_key = keys.prefix + "capture:tables"
        self.refresh = refresh
        #: the captured tables, as the cache names them (``name`` and ``schema.name``)
        self.tables: frozenset[str] = frozenset()
        #: changes with :attr:`tables` (memoised decisions of the read path check it)
        self.generation = 0
        #: the set was loaded once: until then a lookup cannot know what needs a listener
        self.primed = False
        #: ``time.monotonic()`` from which a lookup reloads the set along its ``MGET``
        self.next_load = 0.0
        #: ``time.monotonic()`` from which a bypass for want of a listener is logged again
        self.next_warning = 0.0

    def prime(self, store: Store) -> None:
        """The process's first lookup loads the captured set before deciding anything: one
        round trip, once (afterwards the set rides along lookups)."""
        values = store.get_many([self.tables_key])
        if values is not FAILED:
            self.loaded(values[0])

    def due(self) -> bool:
        """True when the next lookup should reload the captured set with its ``MGET``."""
        return time.monotonic() >= self.next_load

    def loaded(self, value: bytes | None) -> None:
        """The value of the tables key, read along a lookup."""
        self.next_load = time.monotonic() + self.refresh
        self.primed = True
        tables = decode_tables(value)
        if tables is not None and tables != self.tables:
            self.tables = tables
            self.generation += 1

    def get_many(self, store: Store, keys: list[str], live: str | None) -> tuple[Any, bool]:
        """``store.get_many(keys)`` with the liveness key ``live`` (when given) and, when due,
        the tables key in the same ``MGET``: (the values of ``keys`` or FAILED, whether the
        liveness key was there)."""
        load = time.monotonic() >= self.next_load
        if live is None and not load:
            return store.get_many(keys), True
        fetch = list(keys)
        if live is not None:
            fetch.append(live)
        if load:
            fetch.append(self.tables_key)
        values = store.get_many(fetch)
        if values is FAILED:
            return values, False
        if load:
            self.loaded(values.pop())
        alive = live is None or values.pop() is not None
        return values, alive

    def no_listener(self) -> None:
        """A read bypassed because no listener is alive: say so in the log, at
        most every :data:`WARN_EVERY` seconds (installed but never started is a deployment
        mistake that otherwise only shows as a hit rate of zero)."""
        now = time.monotonic()
        if now < self.next_warning:
            return
        self.next_warning = now + WARN_EVERY
        log.warning(
            "reads of tables under change capture (%s) bypass the cache: no listener of this "
            "namespace is alive (run `sqla-redis-cache capture run`, or capture.start())",
            ", ".join(table_names(self.tables)),
        )

    def live_key_for(self, tables: frozenset[str]) -> str | None:
        """The liveness key a read of ``tables`` needs, or None when none is captured."""
        captured = self.tables
        if captured and not captured.isdisjoint(tables):
            return self.live_key
        return None


class Liveness:
    """The listener's side: beats, the published set, retirement."""

    def __init__(self, store: Store, keys: KeyBuilder, timeout: float) -> None:
        gate = CaptureGate(keys)
        self.store = store
        self.live_key = gate.live_key
        self.tables_key = gate.tables_key
        self.ttl_ms = max(1, int(timeout * 1000))

    def beat(self, tables: Iterable[str]) -> bool:
        """The listener is alive and has delivered everything it received: one round trip."""
        replies = self.store.run(
            [
                Set(self.tables_key, encode_tables(tables), TABLES_TTL_MS),
                Set(self.live_key, b"1", self.ttl_ms),
            ]
        )
        return replies is not FAILED

    def publish(self, tables: Iterable[str]) -> bool:
        """Name the captured tables (after ``install`` / ``uninstall``)."""
        replies = self.store.run([Set(self.tables_key, encode_tables(tables), TABLES_TTL_MS)])
        return replies is not FAILED

    def retire(self) -> bool:
        """No listener of this process is alive any more: reads of captured tables bypass."""
        return self.store.run([Unlink(self.live_key)]) is not FAILED

    def alive(self) -> bool:
        """True while some listener of the namespace keeps the liveness key."""
        values = self.store.get_many([self.live_key])
        return values is not FAILED and values[0] is not None
