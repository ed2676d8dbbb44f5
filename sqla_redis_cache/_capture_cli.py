"""``sqla-redis-cache capture``: change capture from PostgreSQL (``install``, ``uninstall``,
``run``), a command group of the CLI (``cli``) in a module of its own.  The work is done by
:meth:`QueryCache.change_capture <sqla_redis_cache.QueryCache.change_capture>`; this module only
turns options into calls and errors into one line each.
"""

from __future__ import annotations

import sys
from typing import Any

import click

from ._cli_common import F, operator_command
from ._errors import ConfigurationError


@click.group()
def capture() -> None:
    """Change capture from PostgreSQL: outside writes invalidate too (docs/capture.md)."""


def _database_option(fn: F) -> F:
    return click.option(
        "--database-url",
        envvar="DATABASE_URL",
        required=True,
        help="The application's database URL, any PostgreSQL driver (env DATABASE_URL).",
    )(fn)


def _change_capture(cache: Any, database_url: str) -> Any:
    try:
        return cache.change_capture(database_url)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None


@capture.command("install")
@operator_command
@_database_option
@click.option("--table", "tables", multiple=True, help="Table to capture (default: all).")
def capture_install(cache: Any, database_url: str, tables: tuple[str, ...]) -> None:
    """Put the capture triggers on the tables (idempotent)."""
    change = _change_capture(cache, database_url)
    try:
        captured = change.install(tables or None)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"capturing {len(captured)} table(s): {', '.join(captured)}")


@capture.command("uninstall")
@operator_command
@_database_option
@click.option("--table", "tables", multiple=True, help="Table to stop capturing (default all).")
def capture_uninstall(cache: Any, database_url: str, tables: tuple[str, ...]) -> None:
    """Remove the capture triggers (and their function once unused)."""
    change = _change_capture(cache, database_url)
    try:
        left = change.uninstall(tables or None)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"still capturing {len(left)} table(s)" + (f": {', '.join(left)}" if left else ""))


@capture.command("run")
@operator_command
@_database_option
@click.option(
    "--liveness-timeout",
    default=2.0,
    show_default=True,
    help="Seconds after which readers stop trusting a listener that went silent.",
)
def capture_run(cache: Any, database_url: str, liveness_timeout: float) -> None:
    """Run the listener in the foreground until SIGINT / SIGTERM."""
    import signal

    try:
        change = cache.change_capture(database_url, liveness_timeout=liveness_timeout)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: change.stop())

    def ready() -> None:
        click.echo(
            f"listening: namespace {cache.config.namespace}, "
            f"{len(change.tables)} captured table name(s)"
        )
        sys.stdout.flush()

    try:
        change.run(on_ready=ready)
    except ConfigurationError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"stopped after {change.notifications} notification(s)")
