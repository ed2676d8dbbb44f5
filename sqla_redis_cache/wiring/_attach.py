"""The SQLAlchemy side of one cache: its hooks, built once, installed on what ``attach()`` gets.

:class:`Wiring` builds each hook with what it uses (no hook receives the whole cache) and
installs them:

- on sessionmakers, Session subclasses and sessions: :class:`~._session.SessionHooks`;
- on every engine met (attached directly, bound to an attached sessionmaker, or met by a
  session at ``after_begin``), once per engine: :class:`~._reads.ReadHooks` (``do_execute``),
  :class:`~._writes.WriteHooks` (``after_cursor_execute``) and
  :class:`~._commit.TransactionHooks` (begin / commit / rollback, pool checkin).  Each event
  has exactly one listener of this cache, so nothing depends on the order of installation.

``attach(target, default=..., tables=...)`` also gives the target a cache policy
(``_policy``), kept in one :class:`~._policy.Policies` both the session and the read hooks
consult; ``explain()`` runs a statement through the same hooks without reaching the database
(``_explain``).

The first ``attach()`` of the process runs :func:`~._compat.check` (the SQLAlchemy internals
the cache reads must be there).  Async targets are turned into their synchronous objects
(``_targets``) and make the storage route Redis I/O to the running event loop.
"""

from __future__ import annotations

import threading
import weakref
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, sessionmaker

from .._config import CacheConfig
from ..storage import Storage
from . import _compat
from ._commit import CommitPath, TransactionHooks
from ._entities import Entities
from ._explain import Explained, ExplainOption, Explanation, reason_text, report
from ._fkgraph import ForeignKeyGraphs
from ._options import CacheDirective
from ._policy import Policies, Policy
from ._reads import ReadHooks
from ._session import SessionHooks
from ._targets import engines_of, is_async_target, is_session_target, sync_target, unscoped
from ._transaction import ConnectionKeys
from ._write_rules import WriteRules
from ._write_through import WriteThrough
from ._writes import WriteHooks


class Wiring:
    """The hooks of one cache, and the engines and targets they are installed on."""

    def __init__(self, config: CacheConfig, storage: Storage) -> None:
        tag = f"{config.namespace}:{id(self):x}"
        #: the execution option carrying a statement's ``CacheDirective`` to ``do_execute``
        self.option_key = f"sqla_redis_cache:{tag}"
        self.conn_keys = keys = ConnectionKeys.for_cache(tag)
        self._storage = storage
        self.config = config
        self.policies = Policies()
        rules = WriteRules(config.invalidates)
        self.entities = Entities(storage, keys)
        self.write_through = WriteThrough(
            self.entities, storage.store, storage.versions, keys, config.lock_timeout
        )
        self.commit_path = CommitPath(
            keys, storage.keys, storage.versions, rules, self.write_through
        )
        self._engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        #: engines attached by themselves: ``cached()`` is read from the statements they run
        self.explicit_engines: weakref.WeakSet[Engine] = weakref.WeakSet()
        self.reads = ReadHooks(
            option_key=self.option_key,
            conn_keys=keys,
            config=config,
            keys=storage.keys,
            reader=storage.reader,
            stats=storage.stats,
            rules=rules,
            explicit_engines=self.explicit_engines,
            policies=self.policies,
        )
        self.writes = WriteHooks(keys, rules, ForeignKeyGraphs(), self.commit_path)
        self.transactions = TransactionHooks(keys, self.commit_path, self.write_through)
        self.sessions = SessionHooks(
            option_key=self.option_key,
            conn_keys=keys,
            entities=self.entities,
            write_through=self.write_through,
            commit_path=self.commit_path,
            engine_met=self.ensure_engine,
            policies=self.policies,
            trust_loaded_values=config.trust_loaded_values,
        )
        #: what ``attach()`` was given (their synchronous objects), in order
        self.attached: list[Any] = []
        self._lock = threading.Lock()

    # attach / detach ------------------------------------------------------------------------------

    def attach(self, target: Any, default: Any = None, tables: Any = None) -> None:
        _compat.check()
        policy = Policy(self.config, default, tables)  # bad policies fail before anything
        target = unscoped(target)
        if is_async_target(target):
            self._storage.async_router()
            target, engines = sync_target(target)
            for engine in engines:
                self.ensure_engine(engine)
        target = getattr(target, "sync_engine", target)
        if isinstance(target, Engine):
            self.ensure_engine(target)
            self.explicit_engines.add(_compat.base_engine(target))  # cached() on any session
        elif is_session_target(target):
            self.sessions.install(target)
            for engine in engines_of(target):
                self.ensure_engine(engine)
        else:
            raise TypeError(
                "attach() takes a sessionmaker, a Session subclass, a Session, a scoped_session "
                f"or an Engine (or their asyncio counterparts), not {type(target).__qualname__}"
            )
        self.policies.set(*_policy_slot(target), policy)
        if target not in self.attached:
            self.attached.append(target)

    def detach(self, target: Any) -> None:
        target = unscoped(target)
        if is_async_target(target):
            target = sync_target(target, create=False)[0]
            if target is None:
                return
        target = getattr(target, "sync_engine", target)
        if isinstance(target, Engine):
            target = _compat.base_engine(target)
            for hooks in (self.reads, self.writes, self.transactions):
                hooks.uninstall(target)
            self._engines.discard(target)
            self.explicit_engines.discard(target)
        else:
            self.sessions.uninstall(target)
        self.policies.set(*_policy_slot(target), None)
        if target in self.attached:
            self.attached.remove(target)

    def close(self) -> None:
        """Detach everything and remove the engine hooks from every engine met."""
        for target in list(self.attached):
            self.detach(target)
        with self._lock:
            for engine in list(self._engines):
                for hooks in (self.reads, self.writes, self.transactions):
                    hooks.uninstall(engine)
            self.transactions.release_pools()
            self._engines = weakref.WeakSet()
            self.explicit_engines.clear()

    def ensure_engine(self, engine: Engine) -> bool:
        """Install the engine hooks if missing; True if they were just installed."""
        engine = _compat.base_engine(engine)
        if engine in self._engines:
            return False
        with self._lock:
            if engine in self._engines:
                return False
            for hooks in (self.reads, self.writes, self.transactions):
                hooks.install(engine)
            self._engines.add(engine)
            return True

    # explain -----------------------------------------------------------------------------------

    def explain(self, statement: Any, session: Any) -> Explanation:
        """What the read path decides for ``statement`` in ``session``, without running it."""
        if is_async_target(session):
            raise TypeError("explain() takes a Session: use `await cache.aexplain(stmt, session)`")
        if not isinstance(session, Session):
            raise TypeError(f"explain() takes a Session, not {type(session).__qualname__}")
        if not getattr(statement, "is_select", False):
            return _refused("not_a_select")
        if not self._wired(statement, session):
            return _refused("not_attached")
        try:
            session.execute(
                statement.options(ExplainOption()),
                execution_options={"skip_user_error_events": True},
            )
        except Explained as found:
            return report(self._storage, found, self._region_ttl)
        raise RuntimeError("explain(): the statement was not intercepted")  # pragma: no cover

    def _wired(self, statement: Any, session: Session) -> bool:
        """True when this cache's hooks will see ``statement`` run in ``session``: the session
        comes from an attached target, or it runs on an engine attached by itself."""
        for target in self.attached:
            if target is session:
                return True
            cls = target.class_ if isinstance(target, sessionmaker) else target
            if isinstance(cls, type) and isinstance(session, cls):
                return True
        try:
            bind = session.get_bind(clause=statement)
        except Exception:  # unbound: nothing would run it
            return False
        engine = getattr(bind, "engine", bind)
        return isinstance(engine, Engine) and _compat.base_engine(engine) in self.explicit_engines

    def _region_ttl(self, directive: CacheDirective) -> tuple[str, float, float | None]:
        config = self.config
        region = config.region(directive.region)
        return (
            directive.region or config.default_region,
            directive.ttl or region.ttl,
            directive.refresh_after or region.refresh_after,
        )

    # the entity API's engine ----------------------------------------------------------------------

    def entity_engine(self, cls: type, bind: Any) -> Engine:
        """The engine of an entity API call: ``bind`` (an Engine or Session), or the one engine
        attached."""
        if isinstance(bind, Session):
            bind = bind.get_bind(cls)
        bind = getattr(bind, "sync_engine", bind)
        engine = getattr(bind, "engine", None)
        if isinstance(engine, Engine):
            return engine
        if bind is None:
            engines = list(self._engines)
            if len(engines) == 1:
                return engines[0]
        raise ValueError(
            "pass bind= (the Engine or Session of the entity): "
            f"{len(self._engines)} engines are attached"
        )


def _policy_slot(target: Any) -> tuple[str, Any]:
    """Where the policy of a (synchronous) attach target is kept: Session classes by class (a
    sessionmaker's own class), Session objects and engines by themselves."""
    if isinstance(target, Engine):
        return "engine", _compat.base_engine(target)
    if isinstance(target, sessionmaker):
        return "class", target.class_
    if isinstance(target, type):
        return "class", target
    return "session", target


def _refused(code: str) -> Explanation:
    return Explanation(cacheable=False, reason=reason_text(code), reason_code=code)
