"""Stampede protection: concurrent misses on one key run the database query once.

Threads share one process's cache; processes share only Redis (the distributed lock).  Lock
holders that die or outlive the lock timeout must not block or break anybody else.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from sqlalchemy import func, select

from sqla_redis_cache import QueryCache, cached

from ._faults import custom_cache
from .conftest import Database
from .models import User

CALLERS = 12


def slow_stmt(seconds: float) -> Any:
    return (
        select(User.name, func.pg_sleep(seconds).label("slept"))
        .where(User.id == 1)
        .options(cached())
    )


def test_concurrent_thread_misses_run_the_query_once(pg: Database, cache: QueryCache) -> None:
    cache.attach(pg.Session)
    stmt = slow_stmt(0.5)
    barrier = threading.Barrier(CALLERS)
    results: list[str] = []
    errors: list[BaseException] = []

    def caller() -> None:
        try:
            with pg.Session() as s:
                barrier.wait()
                results.append(s.execute(stmt).one().name)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(CALLERS)]
    started = time.perf_counter()
    with pg.counter.expect(1):
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
    elapsed = time.perf_counter() - started
    assert errors == []
    assert results == ["user1"] * CALLERS
    stats = cache.stats()
    assert (stats.misses, stats.hits) == (1, CALLERS - 1)
    assert elapsed < 0.5 + 2.0  # the waiters got the builder's result, not a queue of sleeps


_WORKER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from sqlalchemy import create_engine, func, select
    from sqlalchemy.orm import sessionmaker
    from sqla_redis_cache import QueryCache, cached
    from tests.models import User

    redis_url, db_url, namespace, sync_dir = sys.argv[1:5]
    engine = create_engine(db_url)
    Session = sessionmaker(engine)
    cache = QueryCache.from_url(redis_url, namespace=namespace)
    cache.attach(Session)
    stmt = (
        select(User.name, func.nextval("stampede_seq").label("n"), func.pg_sleep(0.5))
        .where(User.id == 1)
        .options(cached())
    )
    with Session() as s:
        s.connection()  # connect before the start signal
        Path(sync_dir, f"ready-{time.monotonic_ns()}").touch()
        while not Path(sync_dir, "go").exists():
            time.sleep(0.002)
        row = s.execute(stmt).one()
    st = cache.stats()
    print(row.name, row.n, st.hits, st.misses, st.errors, flush=True)
    cache.close()
    engine.dispose()
    """
)


@pytest.mark.slow
def test_concurrent_process_misses_run_the_query_once(
    pg: Database, redis_url: str, namespace: str, tmp_path: Path
) -> None:
    """Separate processes: a sequence bumped by the query counts real executions."""
    with pg.engine.begin() as conn:
        conn.exec_driver_sql("DROP SEQUENCE IF EXISTS stampede_seq")
        conn.exec_driver_sql("CREATE SEQUENCE stampede_seq")
    root = Path(__file__).resolve().parent.parent
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, redis_url, pg.url, namespace, str(tmp_path)],
            cwd=root,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(CALLERS)
    ]
    try:
        deadline = time.monotonic() + 60
        while len(list(tmp_path.glob("ready-*"))) < CALLERS:
            assert time.monotonic() < deadline, "workers did not start"
            assert all(p.poll() is None for p in procs), [p.communicate() for p in procs]
            time.sleep(0.02)
        (tmp_path / "go").touch()
        outputs = [p.communicate(timeout=60) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
        with custom_cache(redis_url, namespace):
            pass  # clears the namespace
    assert all(p.returncode == 0 for p in procs), [err for _, err in outputs]
    rows = [out.split() for out, _ in outputs]
    assert {(name, n) for name, n, *_ in rows} == {("user1", "1")}  # everyone got execution #1
    with pg.engine.connect() as conn:
        executions = conn.exec_driver_sql("SELECT last_value FROM stampede_seq").scalar()
    assert executions == 1
    misses = sum(int(r[3]) for r in rows)
    hits = sum(int(r[2]) for r in rows)
    errors = sum(int(r[4]) for r in rows)
    assert (misses, hits, errors) == (1, CALLERS - 1, 0)


_HOLDER = textwrap.dedent(
    """
    import sys, time
    from sqla_redis_cache import QueryCache

    redis_url, namespace = sys.argv[1:3]
    cache = QueryCache.from_url(redis_url, namespace=namespace, lock_timeout=1.0)
    print("building", flush=True)
    cache.get_or_set("report", lambda: time.sleep(60) or "never")
    """
)


@pytest.mark.slow
def test_dead_lock_holder_blocks_others_at_most_the_lock_timeout(
    redis_url: str, namespace: str
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, redis_url, namespace],
        stdout=subprocess.PIPE,
        text=True,
    )
    client = redis.Redis.from_url(redis_url)
    lock_key = f"{namespace}:k:report:lock"
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "building"
        deadline = time.monotonic() + 10
        while not client.exists(lock_key):
            assert time.monotonic() < deadline, "the holder never took the lock"
            time.sleep(0.01)
        os.kill(holder.pid, signal.SIGKILL)  # dies holding the lock
        holder.wait(5)
        assert client.exists(lock_key)
        with custom_cache(redis_url, namespace, lock_timeout=1.0, lock_wait=20.0) as qc:
            started = time.perf_counter()
            assert qc.get_or_set("report", lambda: "built") == "built"
            waited = time.perf_counter() - started
    finally:
        if holder.poll() is None:
            holder.kill()
        client.close()
    assert waited < 1.0 + 0.5  # bounded by lock_timeout, not lock_wait


def test_creator_outliving_the_lock_timeout_does_not_raise(
    pg: Database, redis_url: str, namespace: str
) -> None:
    with custom_cache(redis_url, namespace, lock_timeout=0.2) as qc:
        qc.attach(pg.Session)
        stmt = slow_stmt(0.5)
        with pg.counter.expect(1), pg.Session() as s:
            assert s.execute(stmt).one().name == "user1"  # lock expired while building
        with pg.counter.expect(0), pg.Session() as s:
            assert s.execute(stmt).one().name == "user1"  # and the result was stored
        assert qc.stats().errors == 0


def test_waiters_give_up_after_lock_wait_and_query_themselves(
    pg: Database, redis_url: str, namespace: str
) -> None:
    with custom_cache(redis_url, namespace, lock_wait=0.2) as qc:
        qc.attach(pg.Session)
        stmt = slow_stmt(1.0)
        elapsed: list[float] = []

        def caller(delay: float) -> None:
            time.sleep(delay)
            started = time.perf_counter()
            with pg.Session() as s:
                assert s.execute(stmt).one().name == "user1"
            elapsed.append(time.perf_counter() - started)

        threads = [threading.Thread(target=caller, args=(d,)) for d in (0.0, 0.3)]
        with pg.counter.expect(2):
            for t in threads:
                t.start()
            for t in threads:
                t.join(10)
        # the late caller waited ~0.2 s for the lock, then ran the query itself (~1 s),
        # instead of waiting for the holder's full second and reading its entry
        assert len(elapsed) == 2
