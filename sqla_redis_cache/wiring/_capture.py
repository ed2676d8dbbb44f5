"""Change capture: writes made outside the application invalidate the cache too.

``cache.change_capture(engine)`` returns a :class:`ChangeCapture`.  Its ``install`` puts the
triggers of ``_capture_ddl`` on the tables; its listener (``start()`` in a thread of this
process, ``run()`` in the foreground, which is what ``sqla-redis-cache capture run`` does)
``LISTEN``\\ s on their channel and replaces the version tokens of the tables each committed
transaction wrote, through the commit path (``_commit.CommitPath.invalidate``): the same tokens,
the same declared rules, one pipelined round trip per batch.

The loop, on one autocommit psycopg2 connection of its own:

1. ``LISTEN``, read the captured tables from the catalog, **invalidate every captured table**
   (a listener that starts or reconnects cannot know what it missed), then beat: publish the
   captured set and set the liveness key (``storage._capture``).  Only now is it ready.
2. Wait on the socket (``select``) at most until the next beat; drain *every* pending
   notification into one batch (a set of tables: a burst of 10,000 commits on a few tables is
   a few token replacements), invalidate the batch.
3. Every quarter of the liveness timeout: ``SELECT 1`` on the listening connection (it is
   alive), then beat.  A beat is sent only when everything received has been delivered: after
   a failed invalidation the listener deletes the liveness key if it can (it expires
   otherwise) and stops beating until it has invalidated every captured table again, so
   readers bypass meanwhile.

Any error of the PostgreSQL connection retires the liveness key at once (readers bypass), and
the listener reconnects with a growing pause (step 1 again).  ``stop()`` retires the key too.

Readers check the key in their lookup's ``MGET`` (``storage._capture.CaptureGate``); a missing
key is a bypass, so a dead listener costs database queries, never a stale read.  The lag of a
live listener is one notification delivery plus one pipeline (docs/capture.md has the figures).
"""

from __future__ import annotations

import json
import logging
import os
import select
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from sqlalchemy import exc
from sqlalchemy.engine import Engine

from .._errors import ConfigurationError
from ..storage import Storage
from ..storage._capture import Liveness
from . import _capture_ddl as ddl
from ._commit import CommitPath

log = logging.getLogger("sqla_redis_cache")

#: default seconds after which a listener that stopped beating counts as dead
LIVENESS_TIMEOUT = 2.0
#: seconds between two reads of the captured tables from the catalog by a running listener
CATALOG_REFRESH = 5.0
#: pauses before reconnecting: first, growth, cap (seconds)
RECONNECT_FIRST, RECONNECT_CAP = 0.1, 5.0
#: a payload asking the listener to confirm it has delivered everything before it (tests, sync)
SYNC_PREFIX = "!sync "


class Batch:
    """What one drain of notifications asks to invalidate.

    Table level only: every changed table's token is replaced.  This is where row values would
    be collected for fine-grained invalidation (a third element of the payload), with the table
    as the fallback whenever rows are unknown.
    """

    __slots__ = ("everything", "syncs", "tables")

    def __init__(self) -> None:
        self.tables: set[tuple[str, str]] = set()
        self.syncs: list[str] = []
        #: a payload the listener cannot read: every captured table (always correct)
        self.everything = False

    def add(self, payload: str) -> None:
        if payload.startswith(SYNC_PREFIX):
            self.syncs.append(payload[len(SYNC_PREFIX) :])
            return
        try:
            schema, table, *_rows = json.loads(payload)
        except (ValueError, TypeError):
            self.everything = True
            return
        if not isinstance(schema, str) or not isinstance(table, str):
            self.everything = True
            return
        self.tables.add((schema, table))

    def __bool__(self) -> bool:
        return bool(self.tables or self.syncs or self.everything)


class ChangeCapture:
    """Change capture from PostgreSQL for one cache and one database (see the module
    docstring).  Built by ``QueryCache.change_capture(engine)``.

    ``liveness_timeout``: seconds after which the reads of captured tables stop being served
    from the cache when the listener stops beating (a crash); it beats every quarter of it.
    """

    def __init__(
        self,
        storage: Storage,
        commit_path: CommitPath,
        database: Any,
        *,
        liveness_timeout: float = LIVENESS_TIMEOUT,
    ) -> None:
        if (
            isinstance(liveness_timeout, bool)
            or not isinstance(liveness_timeout, int | float)
            or not 0.2 <= liveness_timeout <= 3600
        ):
            raise ConfigurationError("liveness_timeout must be between 0.2 and 3600 seconds")
        url = getattr(getattr(database, "sync_engine", database), "url", database)
        self.engine: Engine = ddl.listener_engine(url)
        import psycopg2  # listener_engine() checked it is installed

        #: what ends one connection of the listener (then it reconnects): the driver's own
        #: errors (the loop uses the DBAPI connection directly), SQLAlchemy's, the socket's
        self._lost: tuple[type[BaseException], ...] = (
            psycopg2.Error,
            exc.DBAPIError,
            OSError,
            _Lost,
        )
        self.storage = storage
        self.commit_path = commit_path
        self.liveness = Liveness(storage.store, storage.keys, liveness_timeout)
        self.interval = liveness_timeout / 4
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: the thread running :meth:`run` in the foreground
        self._runner: int | None = None
        self._syncs: dict[str, threading.Event] = {}
        self._lock = threading.Lock()
        #: the captured tables as the cache names them, and the default schema
        self.tables: set[str] = set()
        self.schema: str | None = None
        #: connections made, batches delivered, notifications received (tests, the CLI's log)
        self.connections = 0
        self.batches = 0
        self.notifications = 0

    # DDL -----------------------------------------------------------------------------------

    def install(self, tables: Iterable[str] | None = None, *, connection: Any = None) -> list[str]:
        """Put the capture trigger on ``tables`` (None: every table of the default schema);
        idempotent.  Returns the captured tables.  ``connection``: run the DDL in that
        connection's transaction (e.g. ``op.get_bind()`` in an alembic migration)."""
        found, schema = ddl.install(
            self.engine, None if tables is None else list(tables), connection
        )
        return self._published(found, schema)

    def uninstall(
        self, tables: Iterable[str] | None = None, *, connection: Any = None
    ) -> list[str]:
        """Remove what :meth:`install` created on ``tables`` (None: everywhere), and the
        function once no trigger uses it.  Returns the tables still captured."""
        found, schema = ddl.uninstall(
            self.engine, None if tables is None else list(tables), connection
        )
        return self._published(found, schema)

    def _published(self, found: list[tuple[str, str]], schema: str) -> list[str]:
        names = ddl.cache_names(found, schema)
        self.liveness.publish(names)
        return sorted(f"{s}.{t}" for s, t in found)

    # the listener --------------------------------------------------------------------------

    def start(self, timeout: float = 30.0) -> None:
        """Run the listener in a daemon thread; returns once it listens (and has invalidated
        every captured table).  Raises :class:`ConfigurationError` if it cannot."""
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            ready = threading.Event()
            failure: list[BaseException] = []
            thread = threading.Thread(
                target=self._serve,
                args=(ready.set, failure),
                name="sqla-redis-cache-capture",
                daemon=True,
            )
            self._thread = thread
            thread.start()
        deadline = time.monotonic() + timeout
        while not ready.wait(0.05) and thread.is_alive() and time.monotonic() < deadline:
            pass
        if not ready.is_set():
            self.stop()
            if failure:
                raise failure[0]
            raise ConfigurationError("change capture: the listener did not start in time")

    def stop(self) -> None:
        """Stop the listener; the reads of captured tables stop being served at once.

        From a signal handler interrupting :meth:`run` it only asks the loop to end (the loop
        retires the liveness key on its way out)."""
        self._stop.set()
        if self._runner == threading.get_ident():
            return
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(10.0)
        self._thread = None
        self.liveness.retire()

    def run(self, on_ready: Callable[[], None] | None = None) -> None:
        """The listener in the foreground, until :meth:`stop` (from a signal handler or another
        thread).  Raises :class:`ConfigurationError` when the first connection fails."""
        self._stop.clear()
        failure: list[BaseException] = []
        self._runner = threading.get_ident()
        try:
            self._serve(on_ready or (lambda: None), failure)
        finally:
            self._runner = None
        if failure:
            raise failure[0]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def alive(self) -> bool:
        """True while some listener of the namespace keeps the liveness key (any process)."""
        return self.liveness.alive()

    def sync(self, timeout: float = 5.0) -> bool:
        """Wait until this process's listener has delivered the invalidations of every write
        committed before the call (a notification sent now comes back after them)."""
        token = os.urandom(8).hex()
        done = self._syncs[token] = threading.Event()
        try:
            with self.engine.connect() as conn:
                conn.exec_driver_sql(
                    "SELECT pg_notify(%(channel)s, %(payload)s)",
                    {"channel": ddl.CHANNEL, "payload": SYNC_PREFIX + token},
                )
                conn.commit()
            return done.wait(timeout)
        finally:
            self._syncs.pop(token, None)

    # the loop --------------------------------------------------------------------------------

    def _serve(self, on_ready: Callable[[], None], failure: list[BaseException]) -> None:
        """Connect, listen, invalidate; reconnect after errors until stopped.  An error before
        the listener was ever ready is the caller's (``failure``): a bad URL, no privilege."""
        pause = RECONNECT_FIRST
        ever_ready = False

        def ready() -> None:
            nonlocal ever_ready
            if not ever_ready:
                ever_ready = True
                on_ready()

        try:
            while not self._stop.is_set():
                try:
                    self._listen(ready)
                    pause = RECONNECT_FIRST
                except self._lost as error:
                    self.liveness.retire()
                    if not ever_ready:
                        failure.append(ConfigurationError(f"change capture: {ddl.one_line(error)}"))
                        return
                    log.warning(
                        "change capture: connection lost (%s), reconnecting", ddl.one_line(error)
                    )
                    self._stop.wait(pause)
                    pause = min(pause * 2, RECONNECT_CAP)
        except BaseException as error:  # a bug: never leave the key claiming we are alive
            self.liveness.retire()
            if not ever_ready:
                failure.append(error)
                return
            raise
        finally:
            if self._stop.is_set():
                self.liveness.retire()

    def _listen(self, ready: Callable[[], None]) -> None:
        raw = self.engine.raw_connection()
        try:
            conn: Any = raw.driver_connection
            conn.autocommit = True
            self.connections += 1
            cursor = conn.cursor()
            cursor.execute(f'LISTEN "{ddl.CHANNEL}"')
            cursor.execute("SELECT current_schema()")
            self.schema = str(cursor.fetchone()[0])
            self._read_catalog(cursor)
            # listening: what is committed from now on comes as notifications.  Redis being
            # down is no error of the caller's: readers bypass until the key is set
            ready_after = not self._invalidate_everything() or not self.liveness.beat(self.tables)
            ready()
            if ready_after:
                raise _Lost("Redis did not take the invalidation of the captured tables")
            self._loop(conn, cursor)
        finally:
            try:
                raw.close()
            except Exception:
                pass

    def _loop(self, conn: Any, cursor: Any) -> None:
        owed = False  # an invalidation failed: beat again only after re-invalidating everything
        next_beat = time.monotonic() + self.interval
        next_catalog = time.monotonic() + CATALOG_REFRESH
        while not self._stop.is_set():
            wait = max(0.0, next_beat - time.monotonic())
            readable, _, _ = select.select([conn], [], [], min(wait, 0.25))
            if readable:
                conn.poll()
            batch = self._drain(conn)
            if batch and not self._deliver(batch):
                owed = self._failed()
            now = time.monotonic()
            if now < next_beat:
                continue
            cursor.execute("SELECT 1")  # the listening connection answers (raises if lost)
            cursor.fetchall()
            if now >= next_catalog:
                self._read_catalog(cursor)
                next_catalog = now + CATALOG_REFRESH
            batch = self._drain(conn)  # arrived during the check
            if batch and not self._deliver(batch):
                owed = self._failed()
            if owed:
                owed = not self._invalidate_everything()
            if not owed:
                self.liveness.beat(self.tables)
            next_beat = now + self.interval

    def _failed(self) -> bool:
        """An invalidation did not reach Redis: withdraw the liveness key now if Redis still
        takes that (otherwise it expires), so no reader trusts a listener that fell behind."""
        self.liveness.retire()
        return True

    def _drain(self, conn: Any) -> Batch:
        batch = Batch()
        notifies = conn.notifies
        received = len(notifies)
        for note in notifies[:received]:
            if note.channel == ddl.CHANNEL:
                batch.add(note.payload)
        del notifies[:received]
        self.notifications += received
        return batch

    def _deliver(self, batch: Batch) -> bool:
        """Invalidate the batch's tables in one round trip; then answer its syncs."""
        ok = True
        if batch.everything:
            ok = self._invalidate_everything()
        elif batch.tables:
            assert self.schema is not None
            ok = self.commit_path.invalidate(ddl.cache_names(batch.tables, self.schema))
        if ok:
            self.batches += 1
            for token in batch.syncs:
                waiter = self._syncs.get(token)
                if waiter is not None:
                    waiter.set()
        return ok

    def _read_catalog(self, cursor: Any) -> None:
        cursor.execute(ddl.CAPTURED_SQL)
        assert self.schema is not None
        self.tables = ddl.cache_names(cursor.fetchall(), self.schema)

    def _invalidate_everything(self) -> bool:
        """Every captured table, as after an outage: one round trip."""
        if not self.tables:
            return True
        return self.commit_path.invalidate(self.tables)

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"<ChangeCapture {self.engine.url.render_as_string()} {state}>"


class _Lost(Exception):
    """The listener cannot go on with this connection (Redis did not take its writes)."""
