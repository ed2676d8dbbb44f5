"""Parameters that the database (or a memoized function) tells apart never share a key.

Parameters are fingerprinted by ``repr`` only for types whose ``repr`` is faithful; an aware
datetime or time is keyed by its UTC offset (and time zone name), because a ``tzinfo`` may
hide both from its ``repr``.  Subclasses of the safe types are refused: their ``repr`` may lie.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta, tzinfo
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import DateTime, Numeric, String, cast, literal, select

from sqla_redis_cache import QueryCache, cached
from sqla_redis_cache.storage._keys import UnkeyableParameter, fingerprint_parameters

from .conftest import Database
from .models import User


class Hidden(tzinfo):
    """A fixed offset whose repr does not show it."""

    def __init__(self, hours: int, name: str = "hidden") -> None:
        self.hours = hours
        self.name = name

    def utcoffset(self, dt: Any) -> timedelta:
        return timedelta(hours=self.hours)

    def dst(self, dt: Any) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: Any) -> str:
        return self.name

    def __repr__(self) -> str:
        return "Hidden()"


class Broken(tzinfo):
    def utcoffset(self, dt: Any) -> timedelta:
        raise RuntimeError("no offset")

    def __repr__(self) -> str:
        return "Broken()"


class LyingInt(int):
    def __repr__(self) -> str:
        return "1"


NOON_UTC = datetime(2024, 1, 1, 12, 30, tzinfo=Hidden(0))
NOON_PLUS_2 = datetime(2024, 1, 1, 12, 30, tzinfo=Hidden(2))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (NOON_UTC, NOON_PLUS_2),
        (time(12, 30, tzinfo=Hidden(0)), time(12, 30, tzinfo=Hidden(2))),
        ([NOON_UTC], [NOON_PLUS_2]),
        ({"at": (NOON_UTC,)}, {"at": (NOON_PLUS_2,)}),
        (NOON_UTC, datetime(2024, 1, 1, 12, 30, tzinfo=Hidden(0, "other"))),  # tzname differs
        (NOON_UTC, datetime(2024, 1, 1, 12, 30)),  # aware vs naive
        (Decimal("1.0"), Decimal("1.00")),
        (Decimal("0"), Decimal("-0")),
        (0.0, -0.0),
        (1, True),
        (1, 1.0),
        ("1", 1),
        (b"1", "1"),
        ((1,), [1]),
        ({"1": 1}, {1: 1}),
        (date(2024, 1, 1), datetime(2024, 1, 1)),
        (datetime(2024, 1, 1, fold=0), datetime(2024, 1, 1, fold=1)),
    ],
)
def test_distinct_values_have_distinct_fingerprints(a: Any, b: Any) -> None:
    assert fingerprint_parameters({"p": a}) != fingerprint_parameters({"p": b})


def test_equal_aware_values_share_a_fingerprint() -> None:
    again = datetime(2024, 1, 1, 12, 30, tzinfo=Hidden(2))
    assert fingerprint_parameters((NOON_PLUS_2,)) == fingerprint_parameters((again,))
    utc = datetime(2024, 1, 1, 12, 30, tzinfo=UTC)
    assert fingerprint_parameters((utc,)) == fingerprint_parameters((utc.replace(),))


@pytest.mark.parametrize(
    "value",
    [
        LyingInt(2),
        datetime(2024, 1, 1, tzinfo=Broken()),
        time(1, tzinfo=Broken()),
        object(),
        {1, 2},
    ],
)
def test_values_without_a_faithful_key_are_refused(value: Any) -> None:
    with pytest.raises(UnkeyableParameter):
        fingerprint_parameters((value,))


def test_aware_datetimes_with_hidden_offsets_do_not_share_results(
    db: Database, cache: QueryCache
) -> None:
    cache.attach(db.Session)

    def stmt(at: datetime) -> Any:
        shown = cast(literal(at, DateTime(timezone=True)), String)
        return select(shown).select_from(User).where(User.id == 1)

    def truth(at: datetime) -> Any:
        with db.Session() as s:
            return s.execute(stmt(at)).scalar_one()

    for at in (NOON_UTC, NOON_PLUS_2, NOON_UTC, NOON_PLUS_2):
        with db.Session() as s:
            assert s.execute(stmt(at).options(cached())).scalar_one() == truth(at)
    if db.name == "postgresql":  # the driver sends the offset: two different instants
        assert truth(NOON_UTC) != truth(NOON_PLUS_2)


def test_numeric_scale_is_kept_apart(db: Database, cache: QueryCache) -> None:
    cache.attach(db.Session)

    def shown(value: Decimal, *options: Any) -> str:
        stmt = select(cast(literal(value, Numeric()), String)).select_from(User)
        with db.Session() as s:
            return str(s.execute(stmt.where(User.id == 1).options(*options)).scalar_one())

    for value in (Decimal("1.0"), Decimal("1.00"), Decimal("1.0"), Decimal("1.00")):
        assert shown(value, cached()) == shown(value)
    if db.name == "postgresql":
        assert shown(Decimal("1.0")) != shown(Decimal("1.00"))


def test_memoize_keys_aware_arguments_by_offset(cache: QueryCache) -> None:
    calls: list[datetime] = []

    @cache.memoize(ttl=60)
    def offset_hours(at: datetime) -> float:
        calls.append(at)
        offset = at.utcoffset()
        assert offset is not None
        return offset.total_seconds() / 3600

    assert offset_hours(NOON_UTC) == 0
    assert offset_hours(NOON_PLUS_2) == 2
    assert offset_hours(NOON_PLUS_2) == 2
    assert len(calls) == 2
