"""sqla-redis-cache: a Redis-backed query cache for SQLAlchemy 2.x that is correct by default.

::

    from sqla_redis_cache import QueryCache, cached

    cache = QueryCache.from_url("redis://localhost:6379/0", namespace="myapp")
    cache.attach(SessionLocal)
    session.scalars(select(User).where(User.org_id == 1).options(cached())).all()

See the documentation in ``docs/`` for the guarantees and how they are kept.
"""

from ._cache import QueryCache
from ._config import CacheConfig, RegionConfig
from ._errors import ConfigurationError
from .io import RedisIO
from .storage._stats import CacheStats, GroupStats
from .wiring._capture import ChangeCapture
from .wiring._explain import Explanation
from .wiring._options import cached, uncached

__all__ = [
    "CacheConfig",
    "CacheStats",
    "ChangeCapture",
    "ConfigurationError",
    "Explanation",
    "GroupStats",
    "QueryCache",
    "RedisIO",
    "RegionConfig",
    "cached",
    "uncached",
]
__version__ = "0.1.0"
