"""docs/recipes/session-cache.md: its code, run exactly as written against a real Redis."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest

from sqla_redis_cache import QueryCache

from . import _services

RECIPE = Path(__file__).resolve().parent.parent / "docs" / "recipes" / "session-cache.md"


def load_recipe() -> Any:
    blocks = re.findall(r"```python\n(.*?)```", RECIPE.read_text(), re.DOTALL)
    namespace: dict[str, Any] = {"__name__": "session_recipe"}
    exec(compile(blocks[0], str(RECIPE), "exec"), namespace)
    return namespace["SessionStore"]


def test_session_lifecycle(cache: QueryCache, redis_url: str, namespace: str) -> None:
    sessions = load_recipe()(cache, idle_ttl=60)
    other_process = load_recipe()(QueryCache.from_url(redis_url, namespace=namespace))
    assert sessions.is_session_valid(42) is False
    assert sessions.set_session(42, {"email": "a@example.com", "permissions": ["read"]})
    assert other_process.is_session_valid(42)
    assert other_process.get_user_permissions(42) == ["read"]
    first = sessions.get_session(42)["last_activity"]
    assert sessions.touch_session(42)
    assert sessions.get_session(42)["last_activity"] >= first
    assert sessions.set_user_profile(42, {"name": "Ada"})
    assert other_process.get_user_profile(42) == {"name": "Ada"}
    assert sessions.set_session(7, {"permissions": []})
    assert other_process.revoke_user(42)
    assert sessions.get_session(42) is None and sessions.get_user_profile(42) is None
    assert sessions.is_session_valid(7)  # other users untouched
    assert sessions.end_session(7) and not sessions.is_session_valid(7)
    assert sessions.touch_session(7) is False
    other_process.cache.close()


def test_sessions_fail_closed_when_redis_is_down() -> None:
    cache = QueryCache.from_url(f"redis://127.0.0.1:{_services.free_port()}/0")
    sessions = load_recipe()(cache)
    assert sessions.set_session(1, {"permissions": ["admin"]}) is False
    assert sessions.is_session_valid(1) is False
    assert sessions.get_user_permissions(1) == []
    cache.close()


def test_bad_values_are_refused_and_store_nothing(cache: QueryCache) -> None:
    sessions = load_recipe()(cache)
    with pytest.raises(TypeError):
        sessions.set_session(1, {"handle": object()})
    assert sessions.get_session(1) is None
