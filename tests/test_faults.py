"""Redis faults: eviction, restarts, refused connections, hung servers, mid-command disconnects.

Every test here runs against its own throwaway ``redis-server`` or fake TCP server (never the
shared one): no stale reads, no exception reaching the application, and the cache comes back
by itself.  The breaker benchmark prints what a query pays while Redis is down.
"""

from __future__ import annotations

import os
import statistics
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import cached

from ._faults import FaultServer, custom_cache, run_consistency
from ._services import free_port, start_redis_server, stop
from .conftest import Database
from .models import User

pytestmark = pytest.mark.slow


@pytest.fixture
def sessions(pg: Database) -> sessionmaker[Session]:
    return sessionmaker(pg.engine)


def _report(capsys: pytest.CaptureFixture[str], text: str) -> None:
    with capsys.disabled():
        print(f"\n[{text}]")


# ------------------------------------------------------------------ memory pressure


@pytest.mark.parametrize("policy", ["allkeys-lru", "volatile-lru"])
def test_consistency_under_eviction(
    pg: Database,
    sessions: sessionmaker[Session],
    namespace: str,
    policy: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    # one sample per eviction: LRU becomes nearly random, so hot token keys get evicted too
    server = start_redis_server(
        port, "--maxmemory", "3mb", "--maxmemory-policy", policy, "--maxmemory-samples", "1"
    )
    url = f"redis://127.0.0.1:{port}/0"
    admin = redis.Redis.from_url(url)
    done = threading.Event()
    try:
        with custom_cache(url, namespace) as qc:
            qc.attach(sessions)

            def fill() -> None:
                i = 0
                while not done.is_set():
                    qc.set(f"junk:{i}", os.urandom(16_384), ttl=600, compress=False)
                    i += 1

            filler = threading.Thread(target=fill, daemon=True)
            filler.start()
            deadline = time.monotonic() + 20
            while not admin.info("stats")["evicted_keys"]:
                assert time.monotonic() < deadline, "redis never evicted"
                time.sleep(0.05)
            result = run_consistency(sessions, qc, commits=120, readers=4, between_commits=0.005)
            done.set()
            filler.join(5)
            evicted = admin.info("stats")["evicted_keys"]
            _report(
                capsys,
                f"eviction {policy}: {result.reads} reads, {result.commits} commits, "
                f"{result.hits} hits, {evicted} keys evicted, {len(result.stale)} stale",
            )
            assert result.errors == []
            assert result.stale == []
            assert result.reads > 100
            assert evicted > 0
    finally:
        done.set()
        admin.close()
        stop(server)


# ------------------------------------------------------------------ restart


def test_consistency_across_a_redis_restart(
    pg: Database,
    sessions: sessionmaker[Session],
    namespace: str,
    capsys: pytest.CaptureFixture[str],
) -> None:
    port = free_port()
    url = f"redis://127.0.0.1:{port}/0"
    servers = [start_redis_server(port)]
    hits_at_restart: list[int] = []
    try:
        with custom_cache(url, namespace, breaker_cooldown=0.1) as qc:
            qc.attach(sessions)

            def fault(i: int) -> None:
                if i == 40:  # killed: no shutdown, no save
                    servers[0].kill()
                    servers[0].wait(5)
                    stop(servers[0])
                elif i == 80:  # back, empty
                    servers[0] = start_redis_server(port)
                    hits_at_restart.append(qc.stats().hits)

            result = run_consistency(
                sessions, qc, commits=140, readers=4, between_commits=0.01, during=fault
            )
            hits_after = qc.stats().hits - hits_at_restart[0]
            _report(
                capsys,
                f"restart: {result.reads} reads, {result.commits} commits, "
                f"{hits_after} hits after the restart, {qc.stats().errors} Redis errors "
                f"absorbed, {len(result.stale)} stale",
            )
            assert result.errors == []
            assert result.stale == []
            assert hits_after > 0  # it filled again by itself
            stmt = select(User.name).where(User.id == 2).options(cached())
            with sessions() as s:
                s.scalar(stmt)
            with pg.counter.expect(0), sessions() as s:
                assert s.scalar(stmt) == "user2"
    finally:
        stop(servers[0])


# ------------------------------------------------------------------ circuit breaker


@pytest.fixture(params=["refused", "stall", "disconnect"])
def dead_redis(request: pytest.FixtureRequest) -> Iterator[tuple[str, int, Any]]:
    """(kind, port, fault server or None): a Redis URL that fails in the given way."""
    if request.param == "refused":
        port = free_port()
        yield request.param, port, None
        return
    server = FaultServer(request.param)
    try:
        yield request.param, server.port, server
    finally:
        server.close()


def test_breaker_down_redis_is_not_called_and_recovers(
    pg: Database,
    sessions: sessionmaker[Session],
    namespace: str,
    dead_redis: tuple[str, int, Any],
    capsys: pytest.CaptureFixture[str],
) -> None:
    kind, port, fault = dead_redis
    timeout = 0.5
    url = f"redis://127.0.0.1:{port}/0"
    cached_stmt = select(User).where(User.id == 1).options(cached())
    plain_stmt = select(User).where(User.id == 1)
    with custom_cache(
        url,
        namespace,
        socket_timeout=timeout,
        connect_timeout=timeout,
        breaker_threshold=3,
        breaker_cooldown=0.2,
    ) as qc:
        qc.attach(sessions)

        def run(stmt: Any) -> float:
            started = time.perf_counter()
            with sessions() as s:
                assert s.scalars(stmt).one().name == "user1"
            return time.perf_counter() - started

        for _ in range(3):  # discovering the outage: these may pay the timeout
            run(cached_stmt)
        assert qc.stats().errors == 3
        assert qc._storage.store.breaker.is_open
        down: list[float] = []
        plain: list[float] = []
        started = time.monotonic()
        while time.monotonic() - started < 1.5:  # several cool-downs, so probes happen
            down.append(run(cached_stmt))
            plain.append(run(plain_stmt))
        overhead_ms = (statistics.mean(down) - statistics.mean(plain)) * 1000
        median_ms = (statistics.median(down) - statistics.median(plain)) * 1000
        worst_ms = max(down) * 1000
        _report(
            capsys,
            f"breaker {kind}: {len(down)} queries while down, mean overhead "
            f"{overhead_ms:.3f} ms, median {median_ms:.3f} ms, slowest {worst_ms:.1f} ms "
            f"(timeout {timeout * 1000:.0f} ms), errors {qc.stats().errors}",
        )
        # counts, not timings (the figures above are for reading): while the breaker is open no
        # request calls Redis (a call to the dead server would be one more error; the probes run
        # in the background and count nothing), and every cached read goes to the database
        stats = qc.stats()
        assert stats.errors == 3
        assert stats.bypasses == 3 + len(down)
        assert stats.hits == 0

        # Redis comes back on the same port: the cache recovers without a restart
        if fault is not None:
            fault.close()
        server = start_redis_server(port)
        try:
            deadline = time.monotonic() + 10
            while qc.stats().hits == 0:
                assert time.monotonic() < deadline, "the cache never recovered"
                run(cached_stmt)
                time.sleep(0.02)
            with pg.counter.expect(0):
                run(cached_stmt)
        finally:
            stop(server)


def test_open_breaker_sends_nothing_and_probes_in_the_background(namespace: str) -> None:
    server = FaultServer("disconnect")  # counts the requests that reach it
    try:
        with custom_cache(server.url, namespace, breaker_threshold=2, breaker_cooldown=0.3) as qc:
            store = qc._storage.store
            assert qc.get("a") is None and qc.get("b") is None
            opened = time.monotonic()
            assert store.breaker.is_open
            sent = server.requests
            assert sent >= 2
            for _ in range(100):
                assert qc.get("a") is None
            qc.set("c", 1)
            assert server.requests == sent  # nothing reached Redis while open
            time.sleep(max(0.0, opened + 0.45 - time.monotonic()))
            assert server.requests == sent + 1  # one probe after the cool-down, no caller
            time.sleep(max(0.0, opened + 1.05 - time.monotonic()))
            assert sent + 2 <= server.requests <= sent + 4  # one per cool-down
            assert store.breaker.is_open
        probes = server.requests
        time.sleep(0.4)
        assert server.requests == probes  # close() stopped the probing
    finally:
        server.close()


def test_query_cache_ping_bypasses_the_breaker(namespace: str) -> None:
    port = free_port()
    with custom_cache(f"redis://127.0.0.1:{port}/0", namespace, breaker_threshold=1) as qc:
        assert qc.get("x") is None
        assert qc._storage.store.breaker.is_open
        assert qc.ping() is False
        server = start_redis_server(port)
        try:
            assert qc.ping() is True
        finally:
            stop(server)
