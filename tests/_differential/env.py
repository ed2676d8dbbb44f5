"""The machine's surroundings: the database under test, the two cache sides, open transactions.

Two ``QueryCache`` instances share one namespace, each with its own engine and sessionmaker
(both attached): side A and side B stand for two processes, each with its own tracked near
cache (its own tracking connection and memory: they share nothing but Redis).  The reference
engine has no cache attached; it reads what the database holds.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.orm.exc import ObjectDeletedError, StaleDataError

from sqla_redis_cache import QueryCache

from .schema import RULES, DBase, create_schema, sqlite_foreign_keys
from .writes import Target

_LOCKED = ("lock", "could not serialize", "deadlock")


class Divergence(AssertionError):
    """A cached read returned something the database does not hold."""


def expected_failure(exc: BaseException) -> bool:
    """Database outcomes a real application meets and rolls back (not cache faults)."""
    if isinstance(exc, IntegrityError | StaleDataError | ObjectDeletedError):
        return True
    return isinstance(exc, OperationalError) and any(w in str(exc).lower() for w in _LOCKED)


def short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:100]}"


def _lock_timeout(url: str, ms: int) -> dict[str, Any]:
    return {"options": f"-c lock_timeout={ms}"} if url.startswith("postgresql") else {}


class Env:
    """One database: the reference engine (no cache) and how to build attached sides."""

    def __init__(self, url: str, redis_url: str) -> None:
        self.url = url
        self.redis_url = redis_url
        # never wait for long: a lock the machine itself holds would hang the run
        self.ref = create_engine(url, connect_args=_lock_timeout(url, 5000))
        sqlite_foreign_keys(self.ref)
        create_schema(self.ref)
        self.dialect = self.ref.dialect.name
        if self.dialect == "sqlite":
            # WAL, as most deployments run it: a transaction left open for reading does not
            # block other writers (the rollback journal would lock them out until it ends)
            with self.ref.connect() as conn:
                conn.exec_driver_sql("PRAGMA journal_mode=WAL")
        self.ref_sessions = sessionmaker(self.ref)
        self._remote: RemoteSide | None = None
        #: PostgreSQL: the schema's tables carry the change-capture triggers for the whole
        #: session; each run starts a listener on side A (``machine``), for the outside writes
        self.captured: list[str] = []
        if self.dialect == "postgresql":
            self.captured = [t.name for t in DBase.metadata.sorted_tables]
            self._capture().install(self.captured)

    def _capture(self) -> Any:
        """Change capture's DDL needs no Redis of its own: an in-process cache publishes."""
        return QueryCache.in_memory(stats_interval=0).change_capture(self.url)

    def side(self, label: str, namespace: str) -> Side:
        """A cache with its own engine and sessionmaker, both attached (one "process")."""
        return build_side(self.url, self.redis_url, label, namespace)

    def remote(self, namespace: str) -> RemoteSide:
        """Side C: a cache in another process (``remote.py``) on ``namespace``, reading only."""
        if self._remote is None:
            self._remote = RemoteSide(self.url, self.redis_url)
        self._remote.use(namespace)
        return self._remote

    def dispose(self) -> None:
        if self._remote is not None:
            self._remote.stop()
        if self.captured:
            self._capture().uninstall(self.captured)
        self.ref.dispose()


def build_side(url: str, redis_url: str, label: str, namespace: str) -> Side:
    """A cache with its own engine and sessionmaker, both attached (one "process").

    Later features (change capture, fine-grained invalidation switches) are configured here,
    for every side.  The tracked near cache is on (the default): each side has its own
    tracking connection and memory, so a read on one side after a commit on another is served
    from memory only if Redis's invalidation message reached it; it is live before use."""
    # SQLA_CACHE_DIFF_TRACKING=0 runs without it (telling a near-cache fault from another)
    tracking = os.environ.get("SQLA_CACHE_DIFF_TRACKING", "1") != "0"
    # a lock held by the other open transaction fails fast instead of waiting
    engine = create_engine(url, connect_args=_lock_timeout(url, 300))
    sqlite_foreign_keys(engine)
    cache = QueryCache.from_url(
        redis_url,
        namespace=namespace,
        invalidates=RULES,
        stats_interval=0,
        connect_timeout=2,  # a loaded machine must not make Redis fail open here
        socket_timeout=2,
        near_cache_tracking=tracking,
    )
    sessions = sessionmaker(engine)
    cache.attach(engine)
    cache.attach(sessions)
    near = cache._storage.near
    if near is None:
        assert not tracking
        return Side(label, cache, engine, sessions)
    near.start()
    deadline = time.monotonic() + 10
    while not near.live and time.monotonic() < deadline:
        time.sleep(0.005)
    assert near.live, "the tracking connection did not come up"
    return Side(label, cache, engine, sessions)


class RemoteSide:
    """Side C, in another process (``python -m tests._differential.remote``): the machine's
    reads go to it over a pipe (pickled requests, length-prefixed) and come back as plain
    values with the outcome (hit, miss, bypass).  It never writes; its cache shares nothing
    with this process but Redis."""

    label = "C"

    def __init__(self, url: str, redis_url: str) -> None:
        import subprocess
        import sys
        from pathlib import Path

        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests._differential.remote", url, redis_url],
            cwd=Path(__file__).resolve().parents[2],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
        )

    def call(self, *request: Any) -> Any:
        import pickle
        import struct

        assert self.proc.stdin is not None and self.proc.stdout is not None
        data = pickle.dumps(request)
        self.proc.stdin.write(struct.pack(">I", len(data)) + data)
        self.proc.stdin.flush()
        head = self.proc.stdout.read(4)
        if len(head) < 4:
            raise RuntimeError(f"side C exited with {self.proc.wait()}")
        (size,) = struct.unpack(">I", head)
        kind, value = pickle.loads(self.proc.stdout.read(size))
        if kind == "error":
            raise RuntimeError(f"side C failed: {value}")
        return value

    def use(self, namespace: str) -> None:
        self.call("use", namespace)

    def read(self, shape: str, params: dict[str, Any]) -> tuple[Any, str]:
        got, outcome = self.call("read", shape, params)
        return got, outcome

    def close(self) -> None:
        self.call("use", None)

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=30)

    def __repr__(self) -> str:
        return "side C (another process)"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))


@dataclass
class Side:
    label: str
    cache: QueryCache
    engine: Engine
    sessions: sessionmaker[Session]

    def __repr__(self) -> str:
        return f"side {self.label}"

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))

    def close(self) -> None:
        self.cache.clear()
        self.cache.close()
        self.engine.dispose()


@dataclass
class Frame:
    """A savepoint of an open transaction."""

    handle: Any
    entity_flushed: set[str] = field(default_factory=set)


@dataclass
class OpenTx:
    """A transaction left open across steps: a Session or a Core connection of one side."""

    n: int
    side: Side
    session: Session | None = None
    conn: Connection | None = None
    autoflush: bool = True
    isolation: str = ""
    frames: list[Frame] = field(default_factory=list)
    wrote: bool = False
    idle: bool = False  # a Core connection left open after commit()
    #: snapshot isolation: False until the transaction certainly ran a statement; the cached
    #: reads it served before are checked against its snapshot once it is taken
    pinned: bool = True
    unpinned: list[tuple[Any, dict[str, Any], Any, int]] = field(default_factory=list)
    # for the known-fault gates only:
    entity_flushed: set[str] = field(default_factory=set)
    db_written: set[str] = field(default_factory=set)
    committed_by_others: set[str] = field(default_factory=set)
    #: tables the transaction's ORM unit of work wrote (gate "fine_grained_lost_update")
    orm_written: set[str] = field(default_factory=set)

    def __repr__(self) -> str:
        return str(self)

    def _repr_pretty_(self, printer: Any, cycle: bool) -> None:  # Hypothesis' printer
        printer.text(repr(self))

    def __str__(self) -> str:
        if self.session is None:
            return f"tx{self.n}[{self.side.label} core connection]"
        flags = f"autoflush={self.autoflush}" + (f", {self.isolation}" if self.isolation else "")
        return f"tx{self.n}[{self.side.label} session, {flags}]"

    def target(self, dialect: str) -> Target:
        return Target(dialect, self.session, self.conn)

    def close(self) -> None:
        if self.session is not None:
            self.session.close()
        if self.conn is not None:
            self.conn.close()
