"""``sqla-redis-cache top``: a live view of a namespace's shared statistics, in the terminal.

Every ``interval`` seconds it reads the shared statistics (one ``HGETALL`` of ``<ns>:stats``,
the same read as ``sqla-redis-cache stats``: an operator's tool, never on a request path) and
shows the hit rate (overall and over the last interval), operations per second (lookups, hits,
misses, bypasses, invalidations), and the tables with the most misses and the most
invalidations per second over the last interval, then by their totals.
Figures are those the processes of the namespace have flushed (every ``stats_interval``, 10 s
by default), so they move in steps of that interval.

Rendering uses `rich <https://rich.readthedocs.io>`_ (the ``cli`` extra); the command says
which extra to install when it is missing.  ``render`` builds one frame from two samples, so
the view is tested by driving the command in a pseudo-terminal and reading its screen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .storage._stats import CacheStats, GroupStats

MISSING_RICH = (
    "`sqla-redis-cache top` needs the 'rich' package: pip install 'sqla-redis-cache[cli]'"
)


@dataclass(frozen=True)
class Sample:
    stats: CacheStats
    at: float


def _rate(now: float, before: float, seconds: float) -> float:
    return max(0.0, now - before) / seconds if seconds > 0 else 0.0


def _delta(now: GroupStats, before: GroupStats | None, name: str) -> int:
    return int(getattr(now, name)) - (int(getattr(before, name)) if before is not None else 0)


def render(namespace: str, current: Sample, previous: Sample | None, limit: int) -> Any:
    """One frame: a header of rates and two tables of tables."""
    from rich.console import Group
    from rich.table import Table
    from rich.text import Text

    stats = current.stats
    seconds = current.at - previous.at if previous is not None else 0.0
    before = previous.stats if previous is not None else None

    def per_second(name: str) -> float:
        if before is None:
            return 0.0
        return _rate(getattr(stats, name), getattr(before, name), seconds)

    lookups = per_second("hits") + per_second("misses")
    recent = per_second("hits") / lookups if lookups else None
    header = Text()
    header.append(f"sqla-redis-cache top  namespace {namespace}\n", style="bold")
    header.append(f"hit rate {stats.hit_rate * 100:6.2f}% overall")
    if recent is not None:
        header.append(f", {recent * 100:6.2f}% last {seconds:.1f} s")
    header.append(
        f"\nops/s  lookups {lookups:8.1f}  hits {per_second('hits'):8.1f}  "
        f"misses {per_second('misses'):8.1f}  bypasses {per_second('bypasses'):6.1f}  "
        f"invalidations {per_second('invalidations'):6.1f}"
    )
    header.append(
        f"\ntotals hits {stats.hits}  misses {stats.misses}  bypasses {stats.bypasses}  "
        f"uncacheable {stats.uncacheable}  errors {stats.errors}  "
        f"p50 {stats.latency_p50_ms:g} ms  p99 {stats.latency_p99_ms:g} ms"
    )
    old = before.by_table if before is not None else {}

    def table(title: str, counter: str) -> Table:
        view = Table(title=title, expand=False, title_justify="left")
        columns = ("table", f"{counter}/s", "misses", "hits", "hit rate", "invalidations", "bytes")
        for column in columns:
            view.add_column(column, justify="left" if column == "table" else "right")

        def recent(name: str, figures: GroupStats) -> float:
            moved = _delta(figures, old.get(name), counter)
            return moved / seconds if before is not None and seconds > 0 else 0.0

        ranked = sorted(
            (item for item in stats.by_table.items() if getattr(item[1], counter)),
            key=lambda item: (-recent(*item), -getattr(item[1], counter), item[0]),
        )
        for name, figures in ranked[:limit]:
            view.add_row(
                name,
                f"{recent(name, figures):.1f}" if before is not None else "-",
                str(figures.misses),
                str(figures.hits),
                f"{figures.hit_rate * 100:.1f}%",
                str(figures.invalidations),
                str(figures.bytes),
            )
        return view

    footer = Text("Ctrl-C to quit", style="dim")
    return Group(
        header,
        table("most misses", "misses"),
        table("most invalidations", "invalidations"),
        footer,
    )


def run(
    read: Callable[[], CacheStats | None],
    namespace: str,
    *,
    interval: float,
    iterations: int | None,
    limit: int,
) -> None:
    """Refresh the view until Ctrl-C (or ``iterations`` frames)."""
    from rich.console import Console
    from rich.live import Live
    from rich.text import Text

    console = Console()
    previous: Sample | None = None
    frames = 0
    with Live(Text("reading statistics..."), console=console, auto_refresh=False) as live:
        try:
            while iterations is None or frames < iterations:
                stats = read()
                if stats is None:
                    live.update(Text("Redis unavailable: retrying"), refresh=True)
                else:
                    current = Sample(stats, time.monotonic())
                    live.update(render(namespace, current, previous, limit), refresh=True)
                    previous = current
                frames += 1
                if iterations is None or frames < iterations:
                    time.sleep(interval)
        except KeyboardInterrupt:
            pass
