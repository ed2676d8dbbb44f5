"""Randomized differential test: every cached read must equal what the database returns.

A Hypothesis ``RuleBasedStateMachine`` (``tests/_differential/``) mixes writes through every
path — ORM flushes (add, change, delete, move a user to another tenant, set an expired
attribute, SQL-expression values, many-to-many, joined inheritance, ``ON DELETE CASCADE``
via ``passive_deletes``), ORM bulk ``update()``/``delete()`` with each ``synchronize_session``,
ORM bulk insert and upserts, Core DML in a Session, on ``engine.begin()`` and under AUTOCOMMIT,
``text()`` and ``exec_driver_sql``, ``INSERT ... SELECT``, data-modifying CTEs, a trigger the
cache only knows by a declared ``invalidates`` rule — committed or rolled back, inside
savepoints rolled back or released, with autoflush on and off, in up to two open transactions
(one may stay open while others commit; READ COMMITTED, REPEATABLE READ or SERIALIZABLE;
SQLite in WAL mode) — with cached reads
of every shape (equality / ``IN`` / ``IS NULL`` / range / ``OR`` filters, the equality
shapes fine-grained: depending on values, not tables, ``wiring/_values.py``; joins, subqueries,
CTEs, unions, aggregates, ``EXISTS``, polymorphic loads, ``selectinload``, ``joinedload``,
lazy loads, ``session.get`` from the entity cache, legacy ``Query``).  Three caches on one
namespace, each with its tracked near cache live (its own tracking connection and memory): A
and B in this process, each with its own engine and sessionmaker, write and read; C runs in
another process and serves reads over a pipe (``_differential/remote.py``).  Each read is
compared with the same read on an unattached engine; inside an open transaction, with that
transaction's own view.  The database is the model.

Runs and budgets
    ``test_differential_postgresql`` (2,000+ steps) and ``test_differential_sqlite`` (1,000+)
    run in every suite run.  ``SQLA_CACHE_DIFF_STEPS=20000 pytest -s tests/test_differential.py``
    makes the same tests a soak run (20,000 steps on PostgreSQL, half that on SQLite).

Replaying a failure
    Every run prints ``differential seed: N``; a failure also shows it in its message,
    followed by the numbered steps of the (shrunk) failing run.  ``SQLA_CACHE_DIFF_SEED=N``
    replays the same run (same tests, same code, same gates).  Hypothesis also prints
    ``@reproduce_failure('<version>', b'<blob>')``; ``SQLA_CACHE_DIFF_BLOB=<blob>`` replays
    exactly that shrunk case.

Without the near cache
    ``SQLA_CACHE_DIFF_TRACKING=0`` builds every side with ``near_cache_tracking=False`` (every
    hit validated against Redis): replaying a failing seed with it tells a near-cache fault
    from another.

Known faults
    ``tests/_differential/common.py:KNOWN_FAULTS`` lists faults being fixed elsewhere; the
    rules that would hit one are not generated while its name is listed.  Remove the name
    once its fix merged, or try a fix with ``SQLA_CACHE_DIFF_UNGATE=name[,name]`` (``all``).

Adding a rule
    A write path: a function ``run(target, params) -> str`` plus a parameter drawer, appended
    to ``writes.PATHS`` with its kind (``orm`` unit of work / ``session`` ORM bulk DML /
    ``core`` statement, which the machine runs in a Session, on ``engine.begin()``, under
    AUTOCOMMIT and in open Core transactions), the tables it may write and the dialects.
    A read shape: ``run(session, params, opts, x) -> plain values`` appended to
    ``reads.SHAPES``; apply ``opts`` to the statement (that is where ``cached()`` goes).
    New machinery (a change-capture feed, fine-grained invalidation settings) goes in
    ``env.build_side`` (how a side's cache is built) or as a new ``@rule``.
"""

from __future__ import annotations

import math
import os
import random
from collections.abc import Iterator

import hypothesis
import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis.stateful import run_state_machine_as_test

from tests._differential.common import gated_faults
from tests._differential.machine import DifferentialMachine, Env

pytestmark = [
    # a flush deleting a row another write removed first: SQLAlchemy warns, the app goes on
    pytest.mark.filterwarnings("ignore:DELETE statement on table:sqlalchemy.exc.SAWarning"),
]

STEPS_PER_RUN = 50
PHASES = [Phase.explicit, Phase.reuse, Phase.generate, Phase.shrink]


def run_machine(env: Env, steps: int) -> dict[str, int]:
    """Run the machine for at least ``steps`` steps (in batches); return its counters."""
    seed = int(os.environ.get("SQLA_CACHE_DIFF_SEED") or random.randrange(2**32))
    blob = os.environ.get("SQLA_CACHE_DIFF_BLOB")
    machine = type(f"Differential_{env.dialect}", (DifferentialMachine,), {"env": env})
    machine.totals = totals = {"steps": 0}
    print(f"\ngated known faults: {sorted(gated_faults())}")
    while totals["steps"] < steps:
        print(f"differential seed: {seed} ({env.dialect}; replay: SQLA_CACHE_DIFF_SEED={seed})")
        runs = hypothesis.seed(seed)(machine)
        if blob:
            runs = hypothesis.reproduce_failure(hypothesis.__version__, blob.encode())(runs)
        config = settings(
            # some runs end early (Hypothesis bounds the data one run draws): another batch
            # with the next seed makes up for them
            max_examples=math.ceil((steps - totals["steps"]) / STEPS_PER_RUN),
            stateful_step_count=STEPS_PER_RUN,
            deadline=None,
            database=None,
            print_blob=True,
            phases=PHASES if os.environ.get("SQLA_CACHE_DIFF_SHRINK") != "0" else PHASES[:-1],
            suppress_health_check=list(HealthCheck),
        )
        try:
            run_state_machine_as_test(runs, settings=config)
        except (AssertionError, ExceptionGroup) as exc:
            raise AssertionError(f"differential seed {seed}: see below") from exc
        seed = (seed + 1) % 2**32
    reads = sum(v for k, v in totals.items() if k.startswith("read_"))
    main = {k: v for k, v in totals.items() if ":" not in k}
    print(f"differential {env.dialect}: {main}; hit rate {totals.get('read_hit', 0) / reads:.2f}")
    coverage = sorted((k, v) for k, v in totals.items() if ":" in k)
    print("coverage: " + ", ".join(f"{k.split(':')[1]}={v}" for k, v in coverage))
    return dict(totals)


@pytest.fixture(scope="module")
def pg_env(postgres_url: str, redis_url: str) -> Iterator[Env]:
    env = Env(postgres_url, redis_url)
    yield env
    env.dispose()


@pytest.fixture(scope="module")
def sqlite_env(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Env]:
    path = tmp_path_factory.mktemp("differential") / "differential.db"
    env = Env(f"sqlite:///{path}", redis_url)
    yield env
    env.dispose()


def _check(totals: dict[str, int], steps: int) -> None:
    assert totals["steps"] >= steps, totals
    assert totals.get("read_hit", 0) > totals["steps"] // 10, "the run barely used the cache"


def _steps(default: int) -> int:
    """CI runs ``default`` steps; ``SQLA_CACHE_DIFF_STEPS`` scales a soak run (PostgreSQL gets
    that many, SQLite half)."""
    return int(os.environ.get("SQLA_CACHE_DIFF_STEPS") or default)


def test_differential_postgresql(pg_env: Env) -> None:
    steps = _steps(2000)
    _check(run_machine(pg_env, steps), steps)


def test_differential_sqlite(sqlite_env: Env) -> None:
    steps = _steps(2000) // 2
    _check(run_machine(sqlite_env, steps), steps)
