"""Helpers for the reliability tests: caches with custom settings, misbehaving TCP servers,
and the writer/readers consistency run.

Plain functions and classes only; the tests decide what to assert.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import QueryCache, cached

from .models import User


@contextlib.contextmanager
def custom_cache(url: str, namespace: str, **settings: Any) -> Iterator[QueryCache]:
    """A QueryCache with its own settings, cleared (best effort) and closed afterwards.

    The tracked near cache is off unless asked for: fault servers count every connection, and
    the tracking connection's are not what these tests measure (tests/test_near_tracking.py)."""
    settings.setdefault("near_cache_tracking", False)
    qc = QueryCache.from_url(url, namespace=namespace, **settings)
    try:
        yield qc
    finally:
        with contextlib.suppress(Exception):
            qc.clear()
        qc.close()


class FaultServer:
    """A TCP server on 127.0.0.1 that misbehaves like a broken Redis.

    ``mode``:
      - ``"stall"``: accepts connections, reads requests, never answers (a hung server);
      - ``"disconnect"``: reads a request, sends half a reply, then closes the connection
        (a server dying mid-command).
    """

    def __init__(self, mode: str) -> None:
        assert mode in {"stall", "disconnect"}
        self.mode = mode
        self._sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", 0))
        self._sock.listen(128)
        self._sock.settimeout(0.1)
        self.port: int = self._sock.getsockname()[1]
        self.connections = 0
        self.requests = 0
        self._stop = threading.Event()
        self._clients: list[socket.socket] = []
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            self._clients.append(client)
            threading.Thread(target=self._handle, args=(client,), daemon=True).start()

    def _handle(self, client: socket.socket) -> None:
        client.settimeout(0.1)
        while not self._stop.is_set():
            try:
                data = client.recv(65536)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:
                return
            self.requests += 1
            if self.mode == "disconnect":
                with contextlib.suppress(OSError):
                    client.sendall(b"*2\r\n$5\r\nhel")  # half a reply
                    client.close()
                return
            # stall: swallow the request, answer nothing

    def close(self) -> None:
        self._stop.set()
        self._thread.join(2)
        for client in self._clients:
            with contextlib.suppress(OSError):
                client.close()
        self._sock.close()


# ------------------------------------------------------------------ consistency run


@dataclass
class ConsistencyResult:
    reads: int = 0
    stale: list[tuple[int, int]] = field(default_factory=list)  # (floor, seen)
    errors: list[BaseException] = field(default_factory=list)
    commits: int = 0
    hits: int = 0


def set_balance(Session_: sessionmaker[Session], value: int) -> None:
    with Session_() as s:
        s.execute(update(User).where(User.id == 1).values(balance=Decimal(value)))
        s.commit()


def run_consistency(
    Session_: sessionmaker[Session],
    cache: QueryCache,
    *,
    commits: int,
    readers: int = 4,
    between_commits: float = 0.0,
    during: Callable[[int], None] | None = None,
) -> ConsistencyResult:
    """One writer commits 1..commits into user 1's balance; readers run the same cached query.

    A read is stale when it returns a value older than the last commit that had *returned*
    before the read began.  ``during(i)`` runs in the writer after commit ``i`` (fault
    injection).
    """
    set_balance(Session_, 0)
    result = ConsistencyResult()
    committed = 0
    done = threading.Event()
    lock = threading.Lock()
    stmt = select(User.balance).where(User.id == 1).options(cached())
    hits_before = cache.stats().hits

    def reader() -> None:
        nonlocal committed
        try:
            while not done.is_set():
                floor = committed
                with Session_() as s:
                    seen = int(s.scalar(stmt))
                with lock:
                    result.reads += 1
                    if seen < floor:
                        result.stale.append((floor, seen))
        except BaseException as exc:
            result.errors.append(exc)

    def writer() -> None:
        nonlocal committed
        try:
            for i in range(1, commits + 1):
                set_balance(Session_, i)
                committed = i  # commit() has returned: every later read must see >= i
                result.commits = i
                if during is not None:
                    during(i)
                if between_commits:
                    time.sleep(between_commits)
        except BaseException as exc:
            result.errors.append(exc)
        finally:
            done.set()

    threads = [threading.Thread(target=reader) for _ in range(readers)]
    threads.append(threading.Thread(target=writer))
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    result.hits = cache.stats().hits - hits_before
    return result
