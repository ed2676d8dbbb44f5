"""``sqla-redis-cache explain``: load the application, evaluate the statement, explain it.

The application's :class:`~sqla_redis_cache.QueryCache` is named with ``--app`` (it must be
the one the application attaches, at import, so that its policies are there); the statement
is a Python expression read from a file or stdin and evaluated against the ``--models``
modules (default: the ``--app`` module) by ``_expression``.  The session comes from
``--session module:attribute`` (a sessionmaker, ``scoped_session``, ``async_sessionmaker``,
Session class or Engine), else from what the cache was attached to when that is a single
sessionmaker or engine.  The explanation never runs the statement against the database.
"""

from __future__ import annotations

import asyncio
import importlib
import types
from collections.abc import Sequence
from typing import Any

from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session, scoped_session, sessionmaker

from ._cache import QueryCache, internals
from ._expression import evaluate, namespace
from .wiring._explain import Explanation


class ExplainError(ValueError):
    """Something the user can fix: a bad module, statement or session."""


def load(spec: str) -> Any:
    """``module`` or ``module:attribute.path``."""
    module_name, _, attribute = spec.partition(":")
    try:
        target: Any = importlib.import_module(module_name)
        for part in filter(None, attribute.split(".")):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise ExplainError(f"cannot load {spec}: {exc}") from None
    return target


def _session_factory(cache: QueryCache, spec: str | None) -> Any:
    if spec:
        return load(spec)
    candidates = [t for t in internals(cache).targets if isinstance(t, sessionmaker | Engine)]
    if len(candidates) != 1:
        raise ExplainError(
            "pass --session module:attribute (the sessionmaker, scoped_session or engine the "
            f"statement runs through): the cache is attached to {len(candidates)} "
            "sessionmakers or engines"
        )
    return candidates[0]


def _explain(cache: QueryCache, statement: Any, factory: Any) -> Explanation:
    from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker

    if isinstance(factory, async_sessionmaker | AsyncEngine):
        maker = factory if isinstance(factory, async_sessionmaker) else async_sessionmaker(factory)

        async def run() -> Explanation:
            async with maker() as session:
                return await cache.aexplain(statement, session)

        return asyncio.run(run())
    if isinstance(factory, Engine):
        factory = sessionmaker(factory)
    if isinstance(factory, scoped_session):
        factory = factory.session_factory
    if not (
        isinstance(factory, sessionmaker)
        or (isinstance(factory, type) and issubclass(factory, Session))
    ):
        raise ExplainError(f"--session is a {type(factory).__name__}, not a session factory")
    with factory() as session:
        return cache.explain(statement, session)


def explain_source(
    cache: QueryCache,
    source: str,
    *,
    models: Sequence[types.ModuleType],
    session: str | None = None,
    unsafe: bool = False,
) -> Explanation:
    """Evaluate ``source`` against ``models`` and explain it with ``cache``."""
    statement = evaluate(source, namespace(models), unsafe=unsafe)
    if not hasattr(statement, "options"):
        raise ExplainError(
            f"the expression gives a {type(statement).__name__}, not a statement such as "
            "select(...)"
        )
    return _explain(cache, statement, _session_factory(cache, session))
