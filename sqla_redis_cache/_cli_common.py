"""What the CLI's commands share: loading the application's cache, connecting, JSON output.

Its own module so that command groups can live in modules of their own (``_capture_cli``)
without importing the command-line entry point (``cli``).
"""

from __future__ import annotations

import functools
import importlib
import json
from collections.abc import Callable
from typing import Any, TypeVar

import click

from ._errors import ConfigurationError

F = TypeVar("F", bound=Callable[..., Any])


def load_app(spec: str) -> Any:
    from ._cache import QueryCache

    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise click.ClickException(f"--app must look like 'package.module:attribute', not {spec!r}")
    try:
        target: Any = importlib.import_module(module_name)
        for part in attribute.split("."):
            target = getattr(target, part)
    except (ImportError, AttributeError) as exc:
        raise click.ClickException(f"cannot load --app {spec}: {exc}") from None
    if not isinstance(target, QueryCache):
        raise click.ClickException(f"--app {spec} is a {type(target).__name__}, not a QueryCache")
    return target


def connect(app: str | None, redis_url: str | None, namespace: str) -> Any:
    from ._cache import QueryCache
    from ._operator import connection_error

    try:
        if app:
            cache = load_app(app)
        elif redis_url:
            cache = QueryCache.from_url(redis_url, namespace=namespace, stats_interval=0)
        else:
            cache = QueryCache.from_env(namespace=namespace, stats_interval=0)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    problem = connection_error(cache)
    if problem:
        raise click.ClickException(problem)
    return cache


def operator_command(fn: F) -> F:
    """Adds the connection options; passes a connected ``cache`` to the command."""

    @click.option("--app", envvar="SQLA_CACHE_APP", help="The app's QueryCache, 'module:attr'.")
    @click.option("--redis-url", envvar="REDIS_URL", help="Redis URL (env REDIS_URL).")
    @click.option(
        "--namespace",
        envvar="SQLA_CACHE_NAMESPACE",
        default="sqlacache",
        show_default=True,
        help="Key namespace (env SQLA_CACHE_NAMESPACE).",
    )
    @functools.wraps(fn)
    def command(app: str | None, redis_url: str | None, namespace: str, **kw: Any) -> Any:
        cache = connect(app, redis_url, namespace)
        try:
            return fn(cache, **kw)
        finally:
            if not app:
                cache.close()

    return command  # type: ignore[return-value]


def emit_json(data: Any) -> None:
    click.echo(json.dumps(data, indent=2, sort_keys=True, default=str))
