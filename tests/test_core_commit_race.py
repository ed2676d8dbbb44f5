"""A slow COMMIT on a Core connection never lets an older result be cached or served after it.

The commit is held in flight deterministically, without timing: a DEFERRABLE INITIALLY
DEFERRED constraint trigger runs at COMMIT and waits for a PostgreSQL advisory lock the test
holds.  The test waits until PostgreSQL shows the trigger waiting, does what it wants while the
commit is in flight (another session commits the same table, a reader fills the cache), then
releases the lock and checks what cached reads return once ``commit()`` has returned, with the
committing connection still open (its publish at checkin has not happened yet).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, String, Table, select, text, update
from sqlalchemy.engine import Connection

from sqla_redis_cache import QueryCache, cached

from .conftest import Database

META = MetaData()
RACE = Table("race_item", META, Column("id", Integer, primary_key=True), Column("name", String(40)))
NAMES = select(RACE.c.name).order_by(RACE.c.id).options(cached())

#: a row renamed to 'held:<n>' makes its transaction's COMMIT wait for advisory lock n
SETUP = [
    "DROP TABLE IF EXISTS race_item",
    "CREATE TABLE race_item (id integer PRIMARY KEY, name varchar(40))",
    "INSERT INTO race_item VALUES (1, 'a'), (2, 'b'), (3, 'c')",
    """CREATE OR REPLACE FUNCTION race_item_hold() RETURNS trigger LANGUAGE plpgsql AS $$
       BEGIN PERFORM pg_advisory_xact_lock(split_part(NEW.name, ':', 2)::int); RETURN NULL; END
       $$""",
    """CREATE CONSTRAINT TRIGGER race_item_hold AFTER UPDATE ON race_item
       DEFERRABLE INITIALLY DEFERRED FOR EACH ROW WHEN (left(NEW.name, 5) = 'held:')
       EXECUTE FUNCTION race_item_hold()""",
]


@pytest.fixture
def race(pg: Database) -> Iterator[Database]:
    with pg.engine.begin() as conn:
        for sql in SETUP:
            conn.exec_driver_sql(sql)
    yield pg
    with pg.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE race_item")


def names(db: Database) -> list[str]:
    with db.Session() as s:
        return list(s.scalars(NAMES))


class Held:
    """Advisory locks held by the test on a connection of its own."""

    def __init__(self, db: Database) -> None:
        self.db = db
        self.conn = db.engine.connect().execution_options(isolation_level="AUTOCOMMIT")

    def hold(self, n: int) -> None:
        self.conn.execute(text("SELECT pg_advisory_lock(:n)"), {"n": n})

    def release(self, n: int) -> None:
        self.conn.execute(text("SELECT pg_advisory_unlock(:n)"), {"n": n})

    def wait_until_waiting(self, n: int) -> None:
        """Poll until a COMMIT is blocked on lock ``n`` (no assumption about how long)."""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            waiting = self.conn.execute(
                text(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted "
                    "AND objid = :n AND database = "
                    "(SELECT oid FROM pg_database WHERE datname = current_database())"
                ),
                {"n": n},
            ).scalar_one()
            if waiting:
                return
            time.sleep(0.01)
        raise AssertionError(f"no COMMIT ever waited for advisory lock {n}")

    def close(self) -> None:
        self.conn.execute(text("SELECT pg_advisory_unlock_all()"))
        self.conn.close()


class SlowCommit:
    """A Core connection (outside any Session) whose COMMIT waits for advisory lock ``n``.

    ``commit_returned`` is set once ``conn.commit()`` has returned; the connection stays open
    (not yet checked in) until ``finish()``.
    """

    def __init__(self, db: Database, row: int, n: int, use: Callable[[Connection], None]) -> None:
        self.commit_returned = threading.Event()
        self._close = threading.Event()
        self.errors: list[BaseException] = []

        def run() -> None:
            try:
                with db.engine.connect() as conn:
                    conn.execute(update(RACE).where(RACE.c.id == row).values(name=f"held:{n}"))
                    use(conn)
                    self.commit_returned.set()
                    self._close.wait(30)
            except BaseException as exc:  # pragma: no cover - reported by finish()
                self.errors.append(exc)
                self.commit_returned.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()

    def finish(self) -> None:
        self._close.set()
        self.thread.join(30)
        assert not self.errors, self.errors


def commit(conn: Connection) -> Any:
    return conn.commit()


def session_commit(db: Database, row: int, name: str) -> None:
    with db.Session.begin() as s:
        s.execute(update(RACE).where(RACE.c.id == row).values(name=name))


def test_session_commit_during_a_slow_core_commit(
    race: Database, patient_cache: QueryCache
) -> None:
    """The other session's token replacement must not end the in-flight commit's protection."""
    db, cache = race, patient_cache
    cache.attach(db.engine)
    cache.attach(db.Session)
    held = Held(db)
    try:
        assert names(db) == ["a", "b", "c"]  # cached
        held.hold(1)
        core = SlowCommit(db, row=1, n=1, use=commit)
        held.wait_until_waiting(1)  # the Core COMMIT is in flight
        session_commit(db, row=2, name="b2")  # another session commits the same table
        assert names(db) == ["a", "b2", "c"]  # a reader during the in-flight commit
        held.release(1)
        assert core.commit_returned.wait(20)
        # conn.commit() has returned, the connection is still open: never the old row
        assert names(db) == ["held:1", "b2", "c"]
        assert names(db) == ["held:1", "b2", "c"]
        core.finish()
        assert names(db) == ["held:1", "b2", "c"]
        with db.counter.expect(0):  # cached again once published
            assert names(db) == ["held:1", "b2", "c"]
    finally:
        held.close()


def test_two_slow_core_commits_and_a_session_commit_interleaved(
    race: Database, patient_cache: QueryCache
) -> None:
    """C1 and C2 in flight, a session commit, C2 finishes and publishes first: C1 is still in
    flight, so nothing read now may be cached; once C1's commit returns its row is seen."""
    db, cache = race, patient_cache
    cache.attach(db.engine)
    cache.attach(db.Session)
    held = Held(db)
    try:
        assert names(db) == ["a", "b", "c"]
        held.hold(1)
        held.hold(2)
        c1 = SlowCommit(db, row=1, n=1, use=commit)
        held.wait_until_waiting(1)
        c2 = SlowCommit(db, row=2, n=2, use=commit)
        held.wait_until_waiting(2)
        session_commit(db, row=3, name="c3")
        assert names(db) == ["a", "b", "c3"]
        held.release(2)
        assert c2.commit_returned.wait(20)
        c2.finish()  # checked in: C2 publishes while C1 is still in flight
        assert names(db) == ["a", "held:2", "c3"]  # must not be stored: C1 is in flight
        assert names(db) == ["a", "held:2", "c3"]
        held.release(1)
        assert c1.commit_returned.wait(20)
        assert names(db) == ["held:1", "held:2", "c3"]  # C1's connection still open
        c1.finish()
        assert names(db) == ["held:1", "held:2", "c3"]
        with db.counter.expect(0):
            assert names(db) == ["held:1", "held:2", "c3"]
    finally:
        held.close()


def test_engine_begin_block_with_a_slow_commit(race: Database, patient_cache: QueryCache) -> None:
    """``with engine.begin()``: the block's end is both the commit and the publish."""
    db, cache = race, patient_cache
    cache.attach(db.engine)
    cache.attach(db.Session)
    held = Held(db)
    done = threading.Event()
    try:
        assert names(db) == ["a", "b", "c"]
        held.hold(1)

        def write() -> None:
            with db.engine.begin() as conn:
                conn.execute(update(RACE).where(RACE.c.id == 1).values(name="held:1"))
            done.set()

        thread = threading.Thread(target=write, daemon=True)
        thread.start()
        held.wait_until_waiting(1)
        session_commit(db, row=2, name="b2")
        assert names(db) == ["a", "b2", "c"]
        held.release(1)
        assert done.wait(20)
        thread.join(20)
        assert names(db) == ["held:1", "b2", "c"]
        with db.counter.expect(0):
            assert names(db) == ["held:1", "b2", "c"]
    finally:
        held.close()


@pytest.mark.parametrize("where", ["redis", "in-process"])
def test_token_replacement_script(where: str, redis_url: str, namespace: str) -> None:
    """The single-key script and its in-process twin: commit ids in, out, kept, expired."""
    import redis

    from sqla_redis_cache.io import Get, ReplaceToken
    from sqla_redis_cache.io._memory import MemoryIO
    from sqla_redis_cache.io._scripts import PENDING
    from sqla_redis_cache.io._sync import SyncIO
    from sqla_redis_cache.storage._versions import new_token

    client = redis.Redis.from_url(redis_url)
    io = SyncIO(client) if where == "redis" else MemoryIO()
    key = f"{namespace}:t:x"

    def replace(*ops: str, commit_ms: int = 30_000) -> tuple[bytes, set[str]]:
        token = new_token()
        add = frozenset(op[1:] for op in ops if op.startswith("+"))
        end = frozenset(op[1:] for op in ops if op.startswith("-"))
        value = io.run([ReplaceToken(key, token, 60_000, commit_ms, add, end), Get(key)])[1]
        assert value is not None
        if not value.startswith(PENDING):
            assert value == token
            return value, set()
        assert value.startswith(PENDING + token + b";")
        return value, {part.split(b"@")[0].decode() for part in value.split(b";")[1:]}

    try:
        assert replace()[1] == set()  # ordinary
        assert replace("+c1")[1] == {"c1"}
        assert replace("+c2")[1] == {"c1", "c2"}
        first, ids = replace()  # a plain replacement keeps the commits in flight
        assert ids == {"c1", "c2"}
        assert replace()[0] != first  # with a new random part
        assert replace("-c2")[1] == {"c1"}
        assert replace("-c1")[1] == set()  # the last one ends: ordinary again
        assert replace("+c3", "-c3")[1] == set()  # ended before its retry was sent
        assert replace("-c9")[1] == set()  # ending an unknown commit is a plain replacement
        assert replace("+c4", commit_ms=100)[1] == {"c4"}
        time.sleep(0.2)
        assert replace()[1] == set()  # its claim expired (and the key with it)
        replace("+c6", commit_ms=5_000)
        assert replace("+c7", commit_ms=100)[1] == {"c6", "c7"}
        time.sleep(0.2)
        assert replace()[1] == {"c6"}  # c7's claim expired, c6's still stands
        assert replace("+c8", commit_ms=2_000)[1] == {"c6", "c8"}
        assert replace("-c6")[1] == {"c8"}
        if where == "redis":
            assert 0 < client.pttl(key) <= 2_000  # a pending token lives as long as its claims
            replace("+c5", commit_ms=5_000)
            replace()
            assert 2_000 < client.pttl(key) <= 5_000
    finally:
        client.delete(key)
        client.close()
