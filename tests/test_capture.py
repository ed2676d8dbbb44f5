"""Change capture from PostgreSQL: writes made outside the application invalidate too.

Real PostgreSQL and Redis.  The application's engine is attached to the cache; the "outside"
is an unattached engine, ``psql``, or a raw psycopg2 connection.  A dead listener (never
started, stopped, SIGKILLed) must turn reads of captured tables into bypasses, never stale hits.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg2
import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, create_engine, select, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.orm import Session, sessionmaker

from sqla_redis_cache import ChangeCapture, ConfigurationError, QueryCache, cached
from sqla_redis_cache.wiring import _capture_ddl as ddl

from ._deployments import STEADY_TIMEOUTS

metadata = MetaData()
item = Table(
    "cap_item",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("v", String(50)),
)
other = Table(
    "cap_other",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("v", String(50)),
)
#: never captured: reads of it never need a listener
plain = Table(
    "cap_plain",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("v", String(50)),
)


@pytest.fixture(scope="module")
def outside(postgres_url: str) -> Iterator[Engine]:
    """An engine no cache is attached to: the outside world."""
    engine = create_engine(postgres_url)
    metadata.drop_all(engine)
    metadata.create_all(engine)
    yield engine
    with engine.begin() as conn:  # whatever a failed test left behind
        conn.exec_driver_sql(f"DROP FUNCTION IF EXISTS {ddl.FUNCTION}() CASCADE")
    metadata.drop_all(engine)
    engine.dispose()


def _reset(outside: Engine) -> None:
    with outside.begin() as conn:
        for table in (item, other, plain):
            conn.execute(table.delete())
            conn.execute(table.insert(), [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}])


class App:
    """The application: an attached engine, a cache, and its change capture."""

    def __init__(self, cache: QueryCache, engine: Engine, capture: ChangeCapture) -> None:
        self.cache = cache
        self.engine = engine
        self.capture = capture

    def read(self, table: Table = item, row: int = 1) -> str | None:
        with Session(self.engine) as session:
            return session.execute(
                select(table.c.v).where(table.c.id == row).options(cached())
            ).scalar()


def write(outside: Engine, value: str, table: Table = item, row: int = 1) -> None:
    with outside.begin() as conn:
        conn.execute(table.update().where(table.c.id == row).values(v=value))


def seen_within(read: Callable[[], Any], expected: Any, seconds: float = 2.0) -> float:
    """Seconds until ``read()`` returns ``expected``; fails after ``seconds``."""
    started = time.perf_counter()
    while True:
        got = read()
        elapsed = time.perf_counter() - started
        if got == expected:
            return elapsed
        assert elapsed < seconds, f"still {got!r} after {seconds} s, expected {expected!r}"
        time.sleep(0.002)


@pytest.fixture
def app(postgres_url: str, redis_url: str, namespace: str, outside: Engine) -> Iterator[App]:
    _reset(outside)
    engine = create_engine(postgres_url)
    cache = QueryCache.from_url(redis_url, namespace=namespace, **STEADY_TIMEOUTS)
    cache.attach(engine)
    capture = cache.change_capture(engine)
    capture.install(["cap_item", "cap_other"])
    yield App(cache, engine, capture)
    capture.stop()
    capture.uninstall()
    cache.clear()
    cache.close()
    engine.dispose()


def _entity_sessions(app: App) -> tuple[sessionmaker[Session], Any]:
    """Sessions of the application's engine, attached (``session.get(cached())`` goes through
    the entity cache), and a class mapped to ``cap_item``."""
    from sqlalchemy.orm import DeclarativeBase

    class Base(DeclarativeBase):
        pass

    class Item(Base):
        __table__ = item

    factory = sessionmaker(app.engine)
    app.cache.attach(factory)
    return factory, Item


def test_outside_write_is_seen(app: App, outside: Engine) -> None:
    app.capture.start()
    assert app.read() == "a"
    assert app.read() == "a"
    assert app.cache.stats().hits == 1
    write(outside, "b")
    seen_within(app.read, "b")
    assert app.read() == "b"  # and cached again
    assert app.cache.stats().hits >= 2


def test_psql_write_is_seen(app: App, postgres_url: str) -> None:
    app.capture.start()
    assert app.read() == "a"
    assert app.read() == "a"
    dsn = make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    subprocess.run(
        ["psql", dsn, "-v", "ON_ERROR_STOP=1", "-c", "UPDATE cap_item SET v = 'psql' WHERE id = 1"],
        check=True,
        capture_output=True,
    )
    seen_within(app.read, "psql")


def test_truncate_insert_delete_are_seen(app: App, outside: Engine) -> None:
    app.capture.start()
    count = select(text("count(*)")).select_from(item).options(cached())

    def n() -> int:
        with Session(app.engine) as session:
            return int(session.execute(count).scalar_one())

    assert n() == n() == 2
    with outside.begin() as conn:
        conn.execute(item.insert().values(id=3, v="c"))
    seen_within(n, 3)
    with outside.begin() as conn:
        conn.execute(item.delete().where(item.c.id == 3))
    seen_within(n, 2)
    with outside.begin() as conn:
        conn.exec_driver_sql("TRUNCATE cap_item")
    seen_within(n, 0)


def test_no_listener_means_bypass_not_stale(app: App, outside: Engine) -> None:
    """Installed but never started: reads of captured tables never come from the cache."""
    assert app.read() == "a"
    assert app.read() == "a"
    stats = app.cache.stats()
    assert stats.hits == 0 and stats.bypasses == 2
    # a table nobody captures is cached as before
    assert app.read(plain) == "a"
    assert app.read(plain) == "a"
    assert app.cache.stats().hits == 1


def test_no_listener_is_logged_and_explained(app: App, caplog: pytest.LogCaptureFixture) -> None:
    """Installed but not started is a deployment mistake: it must not show only as a hit rate
    of zero."""
    factory, Item = _entity_sessions(app)
    stmt = select(item.c.v).where(item.c.id == 1).options(cached())
    with caplog.at_level(logging.WARNING, logger="sqla_redis_cache"):
        for _ in range(3):
            assert app.read() == "a"
        app.cache._storage.capture.next_warning = 0.0  # the entity cache says it too
        for _ in range(3):
            with factory() as session:
                assert session.get(Item, 1, options=[cached()]) is not None
    said = [r.getMessage() for r in caplog.records if "no listener" in r.getMessage()]
    assert len(said) == 2, said  # once per process and minute, not per read
    assert "cap_item" in said[0] and "capture run" in said[0]
    with Session(app.engine) as session:
        report = app.cache.explain(stmt, session)
        assert (report.cacheable, report.reason_code) == (False, "no_capture_listener")
        assert "no listener" in str(report)
        assert app.cache.explain(select(plain.c.v).options(cached()), session).cacheable
    app.capture.start()
    with Session(app.engine) as session:
        assert app.cache.explain(stmt, session).cacheable


def test_stopped_listener_next_read_is_fresh(app: App, outside: Engine) -> None:
    app.capture.start()
    assert app.read() == "a"
    assert app.read() == "a"
    assert app.cache.stats().hits == 1
    app.capture.stop()
    assert not app.capture.alive()
    write(outside, "after-stop")  # nobody listens: no invalidation
    assert app.read() == "after-stop"
    assert app.cache.stats().hits == 1


def test_restart_invalidates_every_captured_table_first(app: App, outside: Engine) -> None:
    app.capture.start()
    assert app.read() == "a" and app.read() == "a"
    assert app.read(other) == "a" and app.read(other) == "a"
    app.capture.stop()
    write(outside, "missed")  # while no listener runs
    write(outside, "missed", other)
    app.capture.start()  # cannot know what it missed: everything captured misses
    assert app.read() == "missed"
    assert app.read(other) == "missed"


def test_entity_get_bypasses_without_listener(app: App, outside: Engine) -> None:
    factory, Item = _entity_sessions(app)  # session.get(cached()) through the entity cache

    def get() -> str:
        with factory() as session:
            obj = session.get(Item, 1, options=[cached()])
            assert obj is not None
            return str(obj.v)

    app.capture.start()
    assert get() == "a" and get() == "a"
    assert app.cache.stats().hits == 1
    assert _redis(app).keys(f"{app.cache.config.namespace}:e:*")  # an entity entry
    app.capture.stop()
    write(outside, "entity")
    assert get() == "entity"
    app.capture.start()
    write(outside, "entity2")
    seen_within(get, "entity2")


def _cli(*args: str) -> list[str]:
    return [str(Path(sys.executable).parent / "sqla-redis-cache"), *args]


def _listener_process(postgres_url: str, redis_url: str, namespace: str) -> subprocess.Popen[str]:
    """``sqla-redis-cache capture run`` in a process of its own."""
    command = _cli("capture", "run", "--database-url", postgres_url, "--redis-url", redis_url)
    return subprocess.Popen(
        [*command, "--namespace", namespace],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_sigkilled_listener_process_reads_fresh_after_2s(
    app: App, outside: Engine, postgres_url: str, redis_url: str, namespace: str
) -> None:
    process = _listener_process(postgres_url, redis_url, namespace)
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("listening"), line + process.stderr.read()  # type: ignore[union-attr]
        assert app.capture.alive()
        write(outside, "via-cli")
        seen_within(app.read, "via-cli")
        assert app.read() == "via-cli"
        process.send_signal(signal.SIGKILL)
        process.wait(5)
        write(outside, "after-kill")
        time.sleep(2.05)
        assert app.read() == "after-kill"
        assert not app.capture.alive()
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(5)


def test_cli_run_stops_on_sigterm_and_retires(
    app: App, postgres_url: str, redis_url: str, namespace: str
) -> None:
    process = _listener_process(postgres_url, redis_url, namespace)
    assert process.stdout is not None
    assert process.stdout.readline().startswith("listening")
    assert app.capture.alive()
    process.send_signal(signal.SIGTERM)
    assert process.wait(10) == 0
    assert not app.capture.alive()


def test_burst_of_outside_commits_loses_none(app: App, postgres_url: str) -> None:
    """10,000 outside commits in a few seconds: every one delivered, in bounded batches."""
    tables = (item, other)
    app.capture.start()
    for table in tables:
        assert app.read(table) == "a" and app.read(table) == "a"
    conn = psycopg2.connect(
        make_url(postgres_url).set(drivername="postgresql").render_as_string(False)
    )
    conn.autocommit = True
    before = app.capture.notifications
    try:
        cursor = conn.cursor()
        for i in range(10_000):
            cursor.execute(f"UPDATE {tables[i % 2].name} SET v = %s WHERE id = 1", (f"v{i}",))
    finally:
        conn.close()
    assert app.capture.sync(10.0)
    assert app.capture.notifications - before >= 10_000
    # batched: far fewer pipelines than notifications
    assert app.capture.batches < 10_000
    assert app.read(item) == "v9998"
    assert app.read(other) == "v9999"


def test_payload_limit_one_statement_writing_300_tables(app: App, outside: Engine) -> None:
    """A function writing 300 tables with 63-byte names in one statement: 300 small
    notifications, every table invalidated."""
    names = [f"cap_{i:03d}_" + "x" * 55 for i in range(300)]
    assert all(len(n) == 63 for n in names)
    with outside.begin() as conn:
        for name in names:
            conn.exec_driver_sql(f'CREATE TABLE "{name}" (id int)')
        body = "\n".join(f'INSERT INTO "{n}" VALUES (1);' for n in names)
        conn.exec_driver_sql(
            "CREATE FUNCTION cap_write_all() RETURNS void LANGUAGE plpgsql AS $$BEGIN\n"
            f"{body}\nEND$$"
        )
    try:
        app.capture.install(names)
        app.capture.start()
        keys = [f"{app.cache.config.namespace}:t:{n}" for n in names]
        redis = _redis(app)
        before = redis.mget(keys)
        with outside.begin() as conn:
            conn.exec_driver_sql("SELECT cap_write_all()")
        assert app.capture.sync(10.0)
        after = redis.mget(keys)
        assert all(a is not None and a != b for a, b in zip(after, before, strict=True))
    finally:
        app.capture.stop()
        app.capture.uninstall(names)
        with outside.begin() as conn:
            conn.exec_driver_sql("DROP FUNCTION cap_write_all()")
            for name in names:
                conn.exec_driver_sql(f'DROP TABLE "{name}"')


def _redis(app: App) -> Any:
    import redis

    return redis.Redis.from_url(app.cache.config.url)


def test_uninstall_leaves_nothing(app: App, outside: Engine) -> None:
    app.capture.install()  # every table of the schema, idempotent
    app.capture.install()
    with outside.connect() as conn:
        assert len(ddl.captured(conn)) >= 3
    assert app.capture.uninstall() == []
    with outside.connect() as conn:
        triggers = conn.exec_driver_sql(
            f"SELECT count(*) FROM pg_trigger WHERE tgname = '{ddl.TRIGGER}'"
        ).scalar()
        functions = conn.exec_driver_sql(
            f"SELECT count(*) FROM pg_proc WHERE proname = '{ddl.FUNCTION}'"
        ).scalar()
    assert triggers == 0 and functions == 0
    # nothing captured any more: cached as before, without a listener
    assert app.read() == "a" and app.read() == "a"
    assert app.cache.stats().hits >= 1


def test_install_only_touches_the_tables_given_and_quotes(app: App, outside: Engine) -> None:
    odd = 'cap "odd" Name'
    with outside.begin() as conn:
        conn.exec_driver_sql('CREATE TABLE "cap ""odd"" Name" (id int)')
    try:
        assert app.capture.install([odd]) == sorted(
            ["public.cap_item", "public.cap_other", f"public.{odd}"]
        )
        with outside.connect() as conn:
            assert ("public", "cap_plain") not in ddl.captured(conn)
        app.capture.uninstall([odd])
        with outside.connect() as conn:
            assert ("public", odd) not in ddl.captured(conn)
            assert ("public", "cap_item") in ddl.captured(conn)
    finally:
        with outside.begin() as conn:
            conn.exec_driver_sql('DROP TABLE "cap ""odd"" Name"')


def test_clear_errors(app: App, postgres_url: str, outside: Engine) -> None:
    with pytest.raises(ConfigurationError, match="needs PostgreSQL"):
        app.cache.change_capture("sqlite:///nothing.db")
    with pytest.raises(ConfigurationError, match="bad database URL"):
        app.cache.change_capture("not a url")
    for bad in (0, "2", True, float("nan")):
        with pytest.raises(ConfigurationError, match="liveness_timeout"):
            app.cache.change_capture(postgres_url, liveness_timeout=bad)
    with pytest.raises(ConfigurationError, match="no table"):
        app.capture.install(["cap_missing"])
    with outside.begin() as conn:
        conn.exec_driver_sql("DROP ROLE IF EXISTS cap_nobody")
        conn.exec_driver_sql("CREATE ROLE cap_nobody LOGIN")
    try:
        url = make_url(postgres_url).set(username="cap_nobody")
        weak = app.cache.change_capture(url.render_as_string(False))
        with pytest.raises(ConfigurationError) as raised:
            weak.install(["cap_item"])
        message = str(raised.value)
        assert "\n" not in message and "change capture install" in message
        assert "owner" in message or "permission" in message
    finally:
        with outside.begin() as conn:
            conn.exec_driver_sql("DROP ROLE cap_nobody")


def test_cli_errors_are_one_line(redis_url: str) -> None:
    done = subprocess.run(
        _cli("capture", "install", "--database-url", "sqlite:///x.db", "--redis-url", redis_url),
        check=False,
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    assert done.stderr.strip().count("\n") == 0 and "needs PostgreSQL" in done.stderr


def test_several_listeners_one_stops(app: App, outside: Engine, redis_url: str) -> None:
    """Two application instances, each with a listener: any live one keeps capture alive."""
    second = QueryCache.from_url(redis_url, namespace=app.cache.config.namespace, **STEADY_TIMEOUTS)
    capture2 = second.change_capture(app.engine)
    try:
        app.capture.start()
        capture2.start()
        assert app.read() == "a" and app.read() == "a"
        capture2.stop()  # its key is gone: the other one restores it within a beat
        time.sleep(1.0)
        assert app.capture.alive()
        write(outside, "two")
        seen_within(app.read, "two")
    finally:
        capture2.stop()
        second.close()


def test_async_session_application(
    postgres_url: str, redis_url: str, namespace: str, outside: Engine
) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    _reset(outside)
    async_url = make_url(postgres_url).set(drivername="postgresql+asyncpg")
    cache = QueryCache.from_url(redis_url, namespace=namespace, **STEADY_TIMEOUTS)

    async def main() -> None:
        engine = create_async_engine(async_url)
        cache.attach(engine)
        capture = cache.change_capture(engine)  # the asyncpg URL, listened to with psycopg2
        capture.install(["cap_item"])
        capture.start()
        try:

            async def read() -> str | None:
                async with AsyncSession(engine) as session:
                    result = await session.execute(
                        select(item.c.v).where(item.c.id == 1).options(cached())
                    )
                    return result.scalar()

            assert await read() == "a" and await read() == "a"
            assert cache.stats().hits == 1
            write(outside, "async")
            deadline = time.monotonic() + 2
            while await read() != "async":
                assert time.monotonic() < deadline
                await asyncio.sleep(0.005)
            capture.stop()
            write(outside, "async-stopped")
            assert await read() == "async-stopped"
        finally:
            capture.stop()
            capture.uninstall()
            await engine.dispose()

    try:
        asyncio.run(main())
    finally:
        cache.clear()
        cache.close()


@pytest.mark.cluster
def test_redis_cluster(cluster: Any, postgres_url: str, namespace: str, outside: Engine) -> None:
    _reset(outside)
    url = f"redis://127.0.0.1:{cluster.ports[0]}/0"
    cache = QueryCache.from_url(url, namespace=namespace, cluster=True, **STEADY_TIMEOUTS)
    engine = create_engine(postgres_url)
    cache.attach(engine)
    capture = cache.change_capture(engine)
    capture.install(["cap_item"])
    app = App(cache, engine, capture)
    try:
        assert app.read() == "a" and app.read() == "a"
        assert cache.stats().hits == 0  # no listener: bypass
        capture.start()
        assert app.read() == "a" and app.read() == "a"
        assert cache.stats().hits == 1
        write(outside, "cluster")
        seen_within(app.read, "cluster")
        capture.stop()
        write(outside, "cluster-stopped")
        assert app.read() == "cluster-stopped"
    finally:
        capture.stop()
        capture.uninstall()
        cache.clear()
        cache.close()
        engine.dispose()


def test_closing_the_cache_stops_its_listeners(
    postgres_url: str, redis_url: str, namespace: str, outside: Engine
) -> None:
    cache = QueryCache.from_url(redis_url, namespace=namespace, **STEADY_TIMEOUTS)
    capture = cache.change_capture(postgres_url)
    capture.install(["cap_item"])
    try:
        capture.start()
        assert capture.running and capture.alive()
        cache.close()
        assert not capture.running
        probe = QueryCache.from_url(redis_url, namespace=namespace, **STEADY_TIMEOUTS)
        assert not probe.change_capture(postgres_url).alive()
        probe.close()
    finally:
        capture.uninstall()


def test_a_failed_invalidation_withdraws_liveness_until_everything_is_invalidated(
    app: App, outside: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The listener's Redis invalidation fails (a fake for this edge: Redis keeps answering
    everything else): readers stop trusting it at once, and it beats again only after it has
    invalidated every captured table."""
    app.capture.start()
    assert app.read() == "a" and app.read() == "a"
    assert app.read(other) == "a" and app.read(other) == "a"
    path = app.capture.commit_path
    real = path.invalidate
    monkeypatch.setattr(path, "invalidate", lambda *a, **kw: False)
    write(outside, "lost")
    deadline = time.monotonic() + 1.0  # withdrawn at once, not left to expire (>= 1.5 s)
    while app.capture.alive():
        assert time.monotonic() < deadline, "the listener kept claiming it was alive"
        time.sleep(0.01)
    assert app.read() == "lost"  # bypass: the entry is never served
    write(outside, "lost", other)  # nobody delivers this one either
    calls: list[set[str]] = []

    def recording(tables: Any = (), tags: Any = ()) -> bool:
        calls.append(set(tables))
        return real(tables, tags)

    monkeypatch.setattr(path, "invalidate", recording)
    deadline = time.monotonic() + 2
    while not app.capture.alive():
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert any({"cap_item", "cap_other"} <= c for c in calls)  # everything captured, first
    assert app.read(other) == "lost"


def test_lost_postgresql_connection_reconnects_and_invalidates(app: App, outside: Engine) -> None:
    """The listener's backend is terminated: it withdraws its liveness, reconnects, and
    invalidates every captured table before it beats again (writes meanwhile are not lost)."""
    app.capture.start()
    assert app.read() == "a" and app.read() == "a"
    assert app.capture.connections == 1
    with outside.begin() as conn:
        killed = conn.exec_driver_sql(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            " WHERE application_name = %(name)s AND pid <> pg_backend_pid()",
            {"name": ddl.APPLICATION_NAME},
        ).all()
    assert killed
    write(outside, "while-reconnecting")
    seen_within(app.read, "while-reconnecting")
    deadline = time.monotonic() + 5
    while app.capture.connections < 2 or not app.capture.alive():
        assert time.monotonic() < deadline, "the listener did not come back"
        time.sleep(0.01)
    write(outside, "after-reconnect")
    seen_within(app.read, "after-reconnect")


class _Proxy:
    """A TCP proxy to Redis that can be cut (connections reset, new ones refused) and restored."""

    def __init__(self, port: int) -> None:
        import socket
        import threading

        self.target = ("127.0.0.1", port)
        self.up = True
        self.pairs: list[Any] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        import socket
        import threading

        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            if not self.up:
                client.close()
                continue
            upstream = socket.create_connection(self.target)
            self.pairs.append((client, upstream))
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(a: Any, b: Any) -> None:
        try:
            while data := a.recv(65536):
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        import socket

        self.up = False
        for pair in self.pairs:
            for s in pair:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.pairs = []

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_listener_losing_redis_means_bypass_then_full_invalidation(
    app: App, outside: Engine, redis_url: str, postgres_url: str
) -> None:
    """Only the listener loses Redis: its key expires, readers bypass; when Redis is back it
    invalidates every captured table before beating again."""
    url = make_url(redis_url)
    proxy = _Proxy(url.port or 6379)
    listener_cache = QueryCache.from_url(
        url.set(port=proxy.port).render_as_string(False),
        namespace=app.cache.config.namespace,
        connect_timeout=0.2,
        socket_timeout=0.2,
        breaker_cooldown=0.2,
    )
    capture = listener_cache.change_capture(postgres_url)
    try:
        capture.start()
        assert app.read() == "a" and app.read() == "a"
        assert app.read(other) == "a" and app.read(other) == "a"
        hits = app.cache.stats().hits
        proxy.cut()
        write(outside, "outage")  # the listener cannot deliver this
        write(outside, "outage", other)
        time.sleep(2.05)  # the liveness key has expired
        assert not app.capture.alive()
        assert app.read() == "outage" and app.read(other) == "outage"
        assert app.cache.stats().hits == hits
        proxy.up = True
        deadline = time.monotonic() + 10
        while not app.capture.alive():
            assert time.monotonic() < deadline, "the listener did not come back"
            time.sleep(0.02)
        assert app.read() == "outage" and app.read(other) == "outage"
        write(outside, "back")
        seen_within(app.read, "back")
    finally:
        capture.stop()
        listener_cache.close()
        proxy.close()


def test_status_shows_capture(app: App, redis_url: str) -> None:
    import json

    def status() -> Any:
        done = subprocess.run(
            _cli("status", "--redis-url", redis_url, "--namespace", app.cache.config.namespace),
            check=True,
            capture_output=True,
            text=True,
        )
        return done.stdout

    def report() -> Any:
        done = subprocess.run(
            _cli(
                "status",
                "--json",
                "--redis-url",
                redis_url,
                "--namespace",
                app.cache.config.namespace,
            ),
            check=True,
            capture_output=True,
            text=True,
        )
        return json.loads(done.stdout)["capture"]

    assert report() == {
        "listener_alive": False,
        "tables": ["cap_item", "cap_other", "public.cap_item", "public.cap_other"],
    }
    assert "listener NOT ALIVE" in status()
    app.capture.start()
    assert report()["listener_alive"] is True
    assert "4 table name(s), listener alive" in status()


def test_prometheus_exports_the_listener_liveness(app: App) -> None:
    from prometheus_client import CollectorRegistry

    from sqla_redis_cache.prometheus import CacheCollector

    registry = CollectorRegistry()
    registry.register(CacheCollector(app.cache))
    registry.register(CacheCollector(app.cache, shared=True))

    def value(name: str, scope: str = "shared") -> float | None:
        labels = {"namespace": app.cache.config.namespace, "scope": scope}
        return registry.get_sample_value(f"sqla_redis_cache_{name}", labels)

    assert value("capture_listener_alive") == 0  # installed, never started
    assert value("capture_tables") == 2
    assert value("capture_listener_alive", "process") is None  # a Redis read: shared only
    app.capture.start()
    assert value("capture_listener_alive") == 1
    app.capture.stop()
    assert value("capture_listener_alive") == 0
