"""Time from a commit in one process to the first read of the new value in another.

``sqla-redis-cache bench`` runs :func:`measure`: it starts ``python -m benchmarks.commit_watch
DB REDIS NS TRACKING`` which spins on one cached primary-key read and prints the
``time.monotonic()`` (system-wide on Linux) at which it first sees each new value; this process
commits the new values.  Reported: the median time from ``commit()`` returning to that first
miss (negative when the other process saw it before the commit call returned here).
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select, update
from sqlalchemy.orm import sessionmaker

from sqla_redis_cache import QueryCache, cached

ROOT = Path(__file__).resolve().parent.parent


def _watch(database_url: str, redis_url: str, namespace: str, tracking: bool) -> None:
    from .bench import BenchItem

    engine = create_engine(database_url)
    factory = sessionmaker(engine)
    cache = QueryCache.from_url(
        redis_url, namespace=namespace, stats_interval=0, near_cache_tracking=tracking
    )
    cache.attach(factory)
    stmt = select(BenchItem.name).where(BenchItem.id == 7).options(cached())
    with factory() as s:
        last = s.execute(stmt).scalar_one()
    print("ready", flush=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        with factory() as s:
            name = s.execute(stmt).scalar_one()
        if name != last:
            print(f"{time.monotonic()!r} {name}", flush=True)
            last = name
            if name.endswith("-done"):
                break
    cache.close()


def measure(database_url: str, redis_url: str, tracking: bool, commits: int = 30) -> dict[str, Any]:
    from .bench import BenchItem

    namespace = "sqla_cache_bench_watch"
    engine = create_engine(database_url)
    factory = sessionmaker(engine)
    cache = QueryCache.from_url(
        redis_url, namespace=namespace, stats_interval=0, near_cache_tracking=tracking
    )
    cache.attach(factory)
    watcher = subprocess.Popen(
        [sys.executable, "-m", "benchmarks.commit_watch", database_url, redis_url, namespace,
         "1" if tracking else "0"],
        cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert watcher.stdout is not None
    assert watcher.stdout.readline().strip() == "ready"
    delays = []
    for i in range(commits + 1):
        name = f"watch-{i}-{time.time_ns()}" + ("-done" if i == commits else "")
        with factory() as s:
            s.execute(update(BenchItem).where(BenchItem.id == 7).values(name=name))
            s.commit()
        returned = time.monotonic()
        seen_at, seen = watcher.stdout.readline().split()
        assert seen == name, (seen, name)
        delays.append(float(seen_at) - returned)
        time.sleep(0.02)
    watcher.wait(timeout=30)
    cache.clear()
    cache.close()
    engine.dispose()
    return {
        "commit_to_first_miss_ms_median": round(statistics.median(delays) * 1000, 3),
        "commit_to_first_miss_ms_max": round(max(delays) * 1000, 3),
        "commits": commits,
    }


if __name__ == "__main__":
    _watch(sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1")
