"""dogpile.cache backend and regions over the cache's fail-open store.

Each TTL profile is also available as a plain :class:`dogpile.cache.region.CacheRegion`
(``QueryCache.region(name)``), for code that already uses dogpile's decorators.  The backend is
registered as the ``sqla_redis_cache`` entry point (no import-time registration) and stores
under ``ns:r:<region>:``.  It brings the same guarantees as the rest of the library: values are
sealed by the entry codec (never unpickled unless signed with the secret), Redis errors are
misses, multi-key reads never cross hash slots, and its mutex is a Redis lock with a timeout.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from dogpile.cache.api import NO_VALUE, BytesBackend, CantDeserializeException
from dogpile.cache.region import CacheRegion, make_region

from ..io._ops import Set, Unlink
from ..storage import Storage
from ..storage._codec import CorruptEntry, Unencodable
from ..storage._store import FAILED


class RedisBackend(BytesBackend):  # type: ignore[misc]
    """``arguments``: ``storage`` (the cache's storage layer), ``prefix`` and ``ttl``."""

    def __init__(self, arguments: Mapping[str, Any]) -> None:
        self.storage: Storage = arguments["storage"]
        self.prefix: str = arguments["prefix"]
        self.ttl_ms = int(arguments["ttl"] * 1000)

    def _k(self, key: str) -> str:
        return self.prefix + key

    def get_serialized(self, key: str) -> Any:
        return self.get_serialized_multi([key])[0]

    def get_serialized_multi(self, keys: Iterable[str]) -> list[Any]:
        keys = list(keys)
        values = self.storage.store.get_many([self._k(k) for k in keys])
        if values is FAILED:
            return [NO_VALUE] * len(keys)
        return [self._open(v) for v in values]

    def _open(self, sealed: bytes | None) -> Any:
        """dogpile's own framing (JSON metadata + payload) travels sealed as well."""
        if sealed is None:
            return NO_VALUE
        try:
            opened = self.storage.codec.open(sealed, None)
        except CorruptEntry:
            self.storage.stats.corrupt += 1
            return NO_VALUE
        return NO_VALUE if opened is None or not isinstance(opened[1], bytes) else opened[1]

    def set_serialized(self, key: str, value: bytes) -> None:
        self.set_serialized_multi({key: value})

    def set_serialized_multi(self, mapping: Mapping[str, bytes]) -> None:
        codec = self.storage.codec
        self.storage.store.run(
            [Set(self._k(k), codec.seal(b"", v), self.ttl_ms) for k, v in mapping.items()]
        )

    def delete(self, key: str) -> None:
        self.delete_multi([key])

    def delete_multi(self, keys: Iterable[str]) -> None:
        self.storage.store.run([Unlink(self._k(k)) for k in keys])

    def get_mutex(self, key: str) -> Any:
        return self.storage.store.lock(self._k(key) + ":lock")


def make_dogpile_region(storage: Storage, name: str) -> CacheRegion:
    region_config = storage.config.region(name)
    codec = storage.codec

    def serialize(value: Any) -> bytes:
        try:
            flags, payload = codec.encode_payload(value, compress=False, verify=True)
        except Unencodable as exc:
            raise TypeError(f"cannot cache {type(value).__qualname__}: {exc}") from exc
        return bytes((flags,)) + payload

    def deserialize(data: bytes) -> Any:
        try:
            return codec.decode_payload(data[0], memoryview(data)[1:])
        except CorruptEntry as exc:
            raise CantDeserializeException() from exc

    region = make_region(name=name, serializer=serialize, deserializer=deserialize)
    return region.configure(
        "sqla_redis_cache",
        expiration_time=region_config.refresh_after or region_config.ttl,
        arguments={
            "storage": storage,
            "prefix": f"{storage.keys.prefix}r:{name}:",
            "ttl": region_config.ttl,
        },
    )
