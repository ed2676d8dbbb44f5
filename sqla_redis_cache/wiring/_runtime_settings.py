"""Session state a connection acquires at run time, and when it makes reads bypass the cache.

The key identifies a database by its connect-time settings (``_identity``).  A connection can
change what the same SQL returns after connecting: ``SET search_path`` / ``SET SCHEMA``, ``SET
ROLE`` and ``SET SESSION AUTHORIZATION`` (privileges, row-level security), any other setting a
query or a policy may read (``set_config('app.tenant', ...)``, ``TimeZone``), a temporary table
that shadows a real one, SQLite pragmas such as ``case_sensitive_like``, ``ATTACH``.  Such a
connection's reads must neither be served from the shared entries nor fill them.  Rather than
key entries by a state that can be undone behind our back (a rolled-back ``SET`` reverts), the
reads of such a connection bypass the cache until the state is known to be gone:

- transaction-scoped changes (``SET LOCAL``, ``set_config(..., true)``) until the transaction
  ends;
- session-scoped ones until ``DISCARD ALL`` (or ``RESET ALL`` for settings other than the
  role, and ``DISCARD TEMP`` for temporary tables) has been *committed*: a reset inside a
  transaction or savepoint that rolls back is undone, so it is only applied at commit (at once
  under AUTOCOMMIT).  A pooled connection keeps session settings across checkouts, and so does
  this state, which lives in the pool record's ``info``;
- temporary tables only shadow tables of the same name: reads of other tables are served.

Settings known not to change results (timeouts, ``application_name``, planner and memory
settings, ``SET CONSTRAINTS``...) are ignored.  Changes made on the raw DBAPI connection, or
inside functions, are invisible, like raw writes.

Isolation set in SQL is tracked here too, for the snapshot rule of ``_reads``: ``SET
TRANSACTION ISOLATION LEVEL``, ``BEGIN``/``START TRANSACTION ISOLATION LEVEL``, ``SET
transaction_isolation`` raise this transaction's level; ``SET SESSION CHARACTERISTICS AS
TRANSACTION ...`` and ``default_transaction_isolation`` raise the level of every later
transaction on the connection.  A textual ``BEGIN`` on SQLite (the documented recipe for real
transactions with pysqlite) makes reads share one snapshot until the transaction ends.

The entity cache answers ``session.get()`` before any connection is checked out, so it cannot
look at the connection that would have run the query: once any connection of an engine has
changed session state, it stops answering for that engine (``tainted``).
"""

from __future__ import annotations

import re
import weakref
from collections.abc import Iterable
from typing import Any

from ._compat import base_engine

STATE = "sqla_redis_cache.connection_state"


def _names(text: str) -> frozenset[str]:
    return frozenset(text.split())


#: run-time settings that cannot change what a query returns
NEUTRAL_SETTINGS = _names(
    """
    application_name statement_timeout lock_timeout idle_in_transaction_session_timeout
    idle_session_timeout transaction_timeout work_mem maintenance_work_mem temp_buffers
    hash_mem_multiplier client_min_messages log_min_messages log_min_duration_statement
    log_statement synchronous_commit jit random_page_cost seq_page_cost effective_cache_size
    effective_io_concurrency cpu_tuple_cost cpu_index_tuple_cost cpu_operator_cost
    parallel_setup_cost parallel_tuple_cost max_parallel_workers_per_gather
    max_parallel_workers from_collapse_limit join_collapse_limit geqo plan_cache_mode
    default_statistics_target constraint_exclusion client_encoding names constraints
    default_transaction_read_only default_transaction_deferrable transaction_read_only
    transaction_deferrable track_io_timing vacuum_cost_delay lo_compat_privileges
    """
)
_NEUTRAL_PREFIXES = ("enable_", "log_", "jit_", "auto_explain.", "pg_stat_statements.")
#: SQLite pragmas that cannot change what a query returns
NEUTRAL_PRAGMAS = _names(
    """
    foreign_keys journal_mode synchronous busy_timeout cache_size cache_spill temp_store
    mmap_size wal_autocheckpoint wal_checkpoint optimize table_info table_xinfo table_list
    index_list index_info index_xinfo foreign_key_list foreign_key_check integrity_check
    quick_check database_list compile_options page_count page_size max_page_count
    freelist_count user_version application_id schema_version data_version locking_mode
    journal_size_limit auto_vacuum incremental_vacuum analysis_limit threads automatic_index
    query_only defer_foreign_keys recursive_triggers secure_delete shrink_memory
    soft_heap_limit hard_heap_limit function_list module_list pragma_list collation_list
    """
)

_tainted: weakref.WeakSet[Any] = weakref.WeakSet()

#: cheap test first: most statements contain none of these words
_HINT = re.compile(
    r"\b(?:SET|RESET|DISCARD|PRAGMA|ATTACH|DETACH|BEGIN|START|COMMIT|END|ROLLBACK|ABORT"
    r"|PREPARE|TEMP|TEMPORARY)\b|set_config",
    re.IGNORECASE,
)
_LEAD = re.compile(r"(?:\s+|--[^\n]*(?:\n|$)|/\*.*?\*/)*", re.DOTALL)
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_NAME = re.compile(_IDENT + r"(?:\s*\.\s*" + _IDENT + r")*")
_SNAPSHOT_WORDS = re.compile(r"\b(?:REPEATABLE|SERIALIZABLE|SNAPSHOT)\b", re.IGNORECASE)
_TEMP = re.compile(
    r"\bCREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\s+(?:UNLOGGED\s+)?"
    r"(?:RECURSIVE\s+)?(?:TABLE|VIEW|SEQUENCE)\s+(?:IF\s+NOT\s+EXISTS\s+)?(" + _NAME.pattern + ")"
    r"|\bINTO\s+TEMP(?:ORARY)?\s+(?:TABLE\s+)?(" + _NAME.pattern + ")",
    re.IGNORECASE,
)
_SET_CONFIG = re.compile(r"\bset_config\s*\(", re.IGNORECASE)
_TRUE = frozenset({"true", "'true'", "'t'", "'on'", "'yes'", "'1'", "1", "on"})
_FALSE = frozenset({"false", "'false'", "'f'", "'off'", "'no'", "'0'", "0", "off"})


class ConnState:
    """What one DBAPI connection changed at run time (kept in its pool record's ``info``)."""

    __slots__ = ("params", "pending", "roles", "snapshot", "temp", "tx", "tx_snapshot")

    def __init__(self) -> None:
        #: a result-changing setting was changed for the session
        self.params = False
        #: the role or session authorization was changed for the session
        self.roles = False
        #: temporary tables / views (bare names, lower case)
        self.temp: set[str] = set()
        #: a transaction-scoped change is in effect
        self.tx = False
        #: later transactions default to snapshot isolation
        self.snapshot = False
        #: this transaction runs under snapshot isolation
        self.tx_snapshot = False
        #: resets seen in this transaction, applied when it commits: "params", "temp", "all"
        self.pending: set[str] = set()

    @property
    def session_changed(self) -> bool:
        return self.params or self.roles or bool(self.temp)

    def blocks(self, tables: Iterable[str]) -> bool:
        """True when reads of ``tables`` on this connection must bypass the cache."""
        if self.params or self.roles or self.tx:
            return True
        temp = self.temp
        return bool(temp) and any(t.rpartition(".")[2].lower() in temp for t in tables)

    def blocks_any(self) -> bool:
        return self.params or self.roles or self.tx or bool(self.temp)

    # transaction boundaries ------------------------------------------------------------------

    def commit(self) -> None:
        for what in self.pending:
            self._clear(what)
        self.pending.clear()
        self.tx = self.tx_snapshot = False

    def rollback(self) -> None:
        self.pending.clear()
        self.tx = self.tx_snapshot = False

    def _clear(self, what: str) -> None:
        if what in ("params", "all"):
            self.params = False
            self.snapshot = False
        if what in ("temp", "all"):
            self.temp.clear()
        if what == "all":
            self.roles = False

    def reset(self, what: str, autocommit: bool) -> None:
        """A ``RESET``/``DISCARD``: applied at commit (at once under AUTOCOMMIT)."""
        if autocommit:
            self._clear(what)
        else:
            self.pending.add(what)


def state_of(info: dict[str, Any]) -> ConnState | None:
    state: ConnState | None = info.get(STATE)
    return state


def tainted(engine: Any) -> bool:
    """True once a connection of ``engine`` changed its session state (entity cache)."""
    return bool(_tainted) and base_engine(engine) in _tainted


def might_change_state(statement: str) -> bool:
    """For compiled (non-text, non-DDL) statements: only ``set_config()`` can."""
    return "set_config" in statement or "SET_CONFIG" in statement


def observe(
    conn: Any, info: dict[str, Any], statement: str, dialect: str, autocommit: bool
) -> None:
    """Record what ``statement`` (which ran successfully on ``conn``) changed."""
    if not _HINT.search(statement):
        return
    state: ConnState | None = info.get(STATE)
    fresh = state is None
    if state is None:
        state = ConnState()
    for piece in _statements(statement):
        lead = _LEAD.match(piece)
        _statement(state, piece[lead.end() if lead else 0 :], dialect, autocommit)
    for match in _TEMP.finditer(statement):
        name = match.group(1) or match.group(2)
        state.temp.add(_bare(name))
    for match in _SET_CONFIG.finditer(statement):
        _set_config(state, statement, match.end(), autocommit)
    if fresh and (state.blocks_any() or state.snapshot or state.tx_snapshot):
        info[STATE] = state
    if state.session_changed:
        _tainted.add(base_engine(conn.engine))


_TOKEN = re.compile(
    r"'(?:[^']|'')*'?|\"(?:[^\"]|\"\")*\"?|--[^\n]*|/\*.*?(?:\*/|$)|\$(\w*)\$|;", re.S
)


def _statements(sql: str) -> list[str]:
    """``sql`` split at the semicolons that end statements: not inside quotes, comments or
    dollar-quoted bodies (a ``DO`` block's ``END`` is not a ``COMMIT``)."""
    pieces: list[str] = []
    start = pos = 0
    while (match := _TOKEN.search(sql, pos)) is not None:
        token = match.group(0)
        if token == ";":
            pieces.append(sql[start : match.start()])
            start = pos = match.end()
            continue
        pos = match.end()
        if token.startswith("$"):  # skip to the closing tag of a dollar-quoted body
            close = sql.find(token, pos)
            pos = len(sql) if close < 0 else close + len(token)
    pieces.append(sql[start:])
    return pieces


def _bare(name: str) -> str:
    last = re.split(r"\s*\.\s*(?=[^.]*$)", name)[-1]
    if last.startswith('"'):
        return last[1:-1].replace('""', '"').lower()
    return last.lower()


def _words(text: str, n: int) -> list[str]:
    return [w.lower() for w in re.findall(r"[A-Za-z_][A-Za-z0-9_$]*", text[:200])[:n]]


def _statement(state: ConnState, sql: str, dialect: str, autocommit: bool) -> None:
    words = _words(sql, 4)
    if not words:
        return
    first = words[0]
    if first == "set":
        _set(state, sql[3:], autocommit)
    elif first == "reset":
        if words[1:2] == ["all"]:
            state.reset("params", autocommit)
    elif first == "discard":
        if words[1:2] == ["all"]:
            state.reset("all", autocommit)
        elif words[1:2] in (["temp"], ["temporary"]):
            state.reset("temp", autocommit)
    elif first in ("begin", "start"):
        if dialect == "sqlite" or _SNAPSHOT_WORDS.search(sql):
            state.tx_snapshot = True
    elif first in ("commit", "end"):
        state.commit()
    elif first in ("rollback", "abort"):
        if "to" in words[1:3]:  # ROLLBACK [WORK|TRANSACTION] TO [SAVEPOINT] x
            state.pending.clear()
        else:
            state.rollback()
    elif first == "prepare" and words[1:2] == ["transaction"]:
        state.rollback()
    elif first == "pragma":
        match = re.match(r"pragma\s+(?:\w+\s*\.\s*)?(\w+)\s*([=(])?", sql, re.IGNORECASE)
        if match and match.group(2) and match.group(1).lower() not in NEUTRAL_PRAGMAS:
            state.params = True
    elif first in ("attach", "detach"):
        state.params = True


def _set(state: ConnState, rest: str, autocommit: bool) -> None:
    words = _words(rest, 4)
    local = False
    if words and words[0] == "local":
        local, words = True, words[1:]
        rest = rest.lstrip()[len("local") :]
    elif words[:1] == ["session"] and words[1:2] not in (["authorization"], ["characteristics"]):
        words = words[1:]
        rest = rest.lstrip()[len("session") :]
    if not words:
        state.params = True
        return
    head = words[0]
    if head == "transaction":
        if _SNAPSHOT_WORDS.search(rest):
            state.tx_snapshot = True
    elif head == "session" and words[1:2] == ["characteristics"]:
        if _SNAPSHOT_WORDS.search(rest):
            state.snapshot = True
    elif head in ("role", "authorization") or words[:2] == ["session", "authorization"]:
        _mark(state, "roles", local)
    elif head in ("time", "schema", "xml"):
        _mark(state, "params", local)
    else:
        match = _NAME.match(rest.lstrip())
        name = match.group(0) if match else head
        value = rest.lstrip()[len(name) :] if match else rest
        _setting(state, _bare_setting(name), value, local)


def _bare_setting(name: str) -> str:
    return re.sub(r"\s+", "", name).replace('"', "").lower()


def _setting(state: ConnState, name: str, value: str, local: bool) -> None:
    if name in NEUTRAL_SETTINGS or name.startswith(_NEUTRAL_PREFIXES):
        return
    if name == "transaction_isolation":
        if not _known_non_snapshot(value):
            state.tx_snapshot = True
    elif name == "default_transaction_isolation":
        if not _known_non_snapshot(value):
            if local:
                state.tx_snapshot = True
            else:
                state.snapshot = True
    elif name in ("role", "session_authorization"):
        _mark(state, "roles", local)
    else:
        _mark(state, "params", local)


def _known_non_snapshot(value: str) -> bool:
    text = value.lower()
    return ("read committed" in text or "read uncommitted" in text) and not (
        _SNAPSHOT_WORDS.search(value)
    )


def _mark(state: ConnState, what: str, local: bool) -> None:
    if local:
        state.tx = True
    else:
        setattr(state, what, True)


def _set_config(state: ConnState, sql: str, start: int, autocommit: bool) -> None:
    """``set_config(name, value, is_local)``: arguments read up to the closing parenthesis."""
    args: list[str] = []
    depth, pos, begin, n = 0, start, start, len(sql)
    while pos < n:
        ch = sql[pos]
        if ch == "'":
            end = pos + 1
            while end < n and not (sql[end] == "'" and sql[end + 1 : end + 2] != "'"):
                end += 2 if sql[end] == "'" else 1
            pos = end
        elif ch == "(":
            depth += 1
        elif ch == ")":
            if depth == 0:
                break
            depth -= 1
        elif ch == "," and depth == 0:
            args.append(sql[begin:pos].strip())
            begin = pos + 1
        pos += 1
    args.append(sql[begin:pos].strip())
    name = args[0] if args else ""
    local = len(args) > 2 and args[2].lower() in _TRUE
    if not (len(args) > 2 and args[2].lower() in _TRUE | _FALSE):
        local = False  # unknown: assume the longer-lived, session scope
    if len(name) >= 2 and name[0] == name[-1] == "'":
        value = args[1] if len(args) > 1 else ""
        _setting(state, _bare_setting(name[1:-1]), value, local)
    else:
        _mark(state, "params", local)
