"""Change capture: the lag of an outside write, and what the triggers cost the writer.

Run from a source checkout with ``sqla-redis-cache bench --workload capture``.

- **lag**: an outside ``UPDATE`` commits on a connection no cache knows (psycopg2, autocommit);
  from the moment its ``COMMIT`` returns, the application reads the row through the cache in a
  loop until the new value comes back.  The time to that first fresh read is one sample.  Idle:
  nothing else happens; loaded: another thread commits 200 outside writes per second to a second
  captured table meanwhile.  The listener runs in this process (``capture.start()``), its
  notifications arriving over loopback.  Medians and 99th percentiles of the samples.
- **trigger cost**: autocommit single-row ``UPDATE``\\ s on two identical tables, one with the
  capture trigger and one without, interleaved block by block in one process; the report gives
  the median time per ``UPDATE`` of each and their difference, first with no listener, then with
  the listener running in this process (each notification then wakes its thread, which
  competes with the writer for the same cores: an upper bound).
"""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psycopg2
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

from sqla_redis_cache import QueryCache, cached

metadata = MetaData()
lagged = Table(
    "bench_capture_lag", metadata, Column("id", Integer, primary_key=True), Column("v", String)
)
load = Table(
    "bench_capture_load", metadata, Column("id", Integer, primary_key=True), Column("v", String)
)
with_trigger = Table(
    "bench_capture_on", metadata, Column("id", Integer, primary_key=True), Column("v", Integer)
)
without_trigger = Table(
    "bench_capture_off", metadata, Column("id", Integer, primary_key=True), Column("v", Integer)
)


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _figures(samples: list[float]) -> dict[str, float]:
    ms = [s * 1000 for s in samples]
    return {
        "samples": len(ms),
        "p50_ms": round(statistics.median(ms), 2),
        "p99_ms": round(_percentile(ms, 0.99), 2),
        "max_ms": round(max(ms), 2),
    }


def run(
    database_url: str, redis_url: str, samples: int = 200, updates: int = 2000
) -> dict[str, Any]:
    engine = create_engine(database_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    with engine.begin() as conn:
        for table in (lagged, load):
            conn.execute(table.insert(), [{"id": 1, "v": "0"}])
        for table in (with_trigger, without_trigger):
            conn.execute(table.insert(), [{"id": 1, "v": 0}])
    cache = QueryCache.from_url(redis_url, namespace="bench-capture", stats_interval=0)
    cache.clear()
    cache.attach(engine)
    capture = cache.change_capture(engine)
    capture.install([lagged.name, load.name, with_trigger.name])
    dsn = make_url(database_url).set(drivername="postgresql").render_as_string(False)
    writer = psycopg2.connect(dsn)
    writer.autocommit = True
    query = select(lagged.c.v).where(lagged.c.id == 1).options(cached())

    def read() -> str:
        with Session(engine) as session:
            return str(session.execute(query).scalar_one())

    def lag(n: int, pause: float) -> list[float]:
        cursor = writer.cursor()
        out = []
        for i in range(n):
            value = f"{time.perf_counter_ns()}-{i}"
            read()  # cached: the entry exists before the write
            cursor.execute("UPDATE bench_capture_lag SET v = %s WHERE id = 1", (value,))
            committed = time.perf_counter()
            while read() != value:
                pass
            out.append(time.perf_counter() - committed)
            time.sleep(pause)
        return out

    report: dict[str, Any] = {"workload": "capture"}
    report["trigger_cost_no_listener"] = _trigger_cost(writer, updates)
    capture.start()
    try:
        lag(20, 0.005)  # warm-up
        report["lag_idle"] = _figures(lag(samples, 0.02))
        report["lag_at_200_commits_per_s"] = _loaded_lag(dsn, lambda: lag(samples, 0.02))
        # every notification now wakes the listener thread of this process (2 round trips)
        report["trigger_cost_listener_in_process"] = _trigger_cost(writer, updates)
        report["listener"] = {
            "notifications": capture.notifications,
            "batches": capture.batches,
        }
    finally:
        capture.stop()
        capture.uninstall()
        writer.close()
        cache.clear()
        cache.close()
        metadata.drop_all(engine)
        engine.dispose()
    return report


def _trigger_cost(writer: Any, updates: int, block: int = 100) -> dict[str, float]:
    cursor = writer.cursor()
    times: dict[str, list[float]] = {"with": [], "without": []}
    for _ in range(max(1, updates // block)):
        for name, table in (("with", with_trigger), ("without", without_trigger)):
            started = time.perf_counter()
            for _ in range(block):
                cursor.execute(f"UPDATE {table.name} SET v = v + 1 WHERE id = 1")
            times[name].append((time.perf_counter() - started) / block)
    on = statistics.median(times["with"]) * 1e6
    off = statistics.median(times["without"]) * 1e6
    return {
        "update_us_with_trigger": round(on, 1),
        "update_us_without": round(off, 1),
        "cost_us_per_update": round(on - off, 1),
    }


def _loaded_lag(dsn: str, measure: Any) -> dict[str, Any]:
    """``measure()`` while another connection commits 200 outside writes per second."""
    stop = threading.Event()
    commits = [0]

    def background() -> None:
        conn = psycopg2.connect(dsn)
        conn.autocommit = True
        cursor = conn.cursor()
        next_at = time.perf_counter()
        while not stop.is_set():
            cursor.execute("UPDATE bench_capture_load SET v = v || 'x' WHERE id = 1")
            commits[0] += 1
            next_at += 1 / 200
            time.sleep(max(0.0, next_at - time.perf_counter()))
        conn.close()

    thread = threading.Thread(target=background, daemon=True)
    started = time.perf_counter()
    thread.start()
    try:
        loaded = measure()
    finally:
        stop.set()
        thread.join()
    rate = commits[0] / (time.perf_counter() - started)
    return {**_figures(loaded), "commits_per_s": round(rate)}
