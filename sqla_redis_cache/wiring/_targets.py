"""What ``attach()`` may be given, and the engines behind it.

``attach()`` takes a sessionmaker, a Session subclass, a Session, a ``scoped_session`` or an
Engine, or their asyncio counterparts.  A ``scoped_session`` (Flask-SQLAlchemy's ``db.session``
is one) stands for its ``session_factory``, the sessionmaker whose sessions it hands out.

The cache listens on synchronous objects only (SQLAlchemy runs an ``AsyncSession``'s work on
its synchronous session inside a greenlet), so an async target is turned into the synchronous
object whose events serve it: an ``AsyncEngine``'s ``sync_engine``, an ``AsyncSession``'s
``sync_session``, and for an ``async_sessionmaker`` a Session subclass of its own (listening on
the global ``Session`` class would reach every session of the process). The engine hooks are
installed on the engines found here, and on engines met later in ``after_begin``
(``wiring._session``).

The asyncio classes are imported only when an async target is given or asked about
(``sqlalchemy.ext.asyncio`` is not needed by synchronous applications).
"""

from __future__ import annotations

import sys
import threading
import weakref
from typing import TYPE_CHECKING, Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

if TYPE_CHECKING:
    from sqlalchemy.ext.asyncio import async_sessionmaker


def engines_of_binds(*binds: Any) -> list[Engine]:
    """The (sync) engines behind session binds: engines, connections, async engines."""
    engines = []
    for bind in binds:
        engine = getattr(getattr(bind, "sync_engine", bind), "engine", None)
        if isinstance(engine, Engine):
            engines.append(engine)
    return engines


def engines_of(target: Any) -> list[Engine]:
    """The engines a sessionmaker or Session is bound to (none when unbound)."""
    if isinstance(target, sessionmaker):
        return engines_of_binds(target.kw.get("bind"), *(target.kw.get("binds") or {}).values())
    if isinstance(target, Session):
        return engines_of_binds(target.bind)
    return []


def unscoped(target: Any) -> Any:
    """The session factory behind a ``scoped_session`` / ``async_scoped_session``."""
    if isinstance(target, scoped_session):
        return target.session_factory
    extension = sys.modules.get("sqlalchemy.ext.asyncio")
    if extension is not None and isinstance(target, extension.async_scoped_session):
        return target.session_factory
    return target


def is_session_target(target: Any) -> bool:
    return isinstance(target, sessionmaker | Session) or (
        isinstance(target, type) and issubclass(target, Session)
    )


_SCOPED: weakref.WeakKeyDictionary[async_sessionmaker[Any], type[Session]] = (
    weakref.WeakKeyDictionary()
)
_SCOPED_LOCK = threading.Lock()


def is_async_target(target: Any) -> bool:
    """True for an AsyncEngine, AsyncSession or async_sessionmaker (of any subclass)."""
    extension = sys.modules.get("sqlalchemy.ext.asyncio")
    if extension is None:  # never imported: the target cannot be one of its objects
        return False
    kinds = (extension.AsyncEngine, extension.AsyncSession, extension.async_sessionmaker)
    return isinstance(target, kinds)


def _scoped_session_class(maker: async_sessionmaker[Any]) -> type[Session]:
    """A Session subclass of this maker's own, so listeners reach only its sessions.

    ``AsyncSession`` builds its inner session from ``sync_session_class``, by default the global
    ``Session`` class itself; listening there would reach every session of the process.
    """
    with _SCOPED_LOCK:
        scoped = _SCOPED.get(maker)
        if scoped is None:
            base: type[Session] = (
                maker.kw.get("sync_session_class") or maker.class_.sync_session_class
            )
            scoped = type(base.__name__, (base,), {"__module__": base.__module__})
            maker.configure(sync_session_class=scoped)
            _SCOPED[maker] = scoped
        return scoped


def sync_target(target: Any, *, create: bool = True) -> tuple[Any, list[Engine]]:
    """The synchronous object whose events serve an async ``target``, and its engines.

    With ``create=False`` (detach) an async_sessionmaker never attached gives ``(None, [])``.
    """
    from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

    if isinstance(target, AsyncEngine):
        return target.sync_engine, [target.sync_engine]
    if isinstance(target, AsyncSession):
        return target.sync_session, engines_of_binds(target.sync_session.bind)
    maker: async_sessionmaker[Any] = target
    if not create:
        return _SCOPED.get(maker), []
    binds = maker.kw.get("binds") or {}
    return _scoped_session_class(maker), engines_of_binds(maker.kw.get("bind"), *binds.values())
