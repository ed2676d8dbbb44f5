"""Compressors for entries: zlib (always available), zstd and lz4 (optional packages).

A leaf module at the bottom of the package: the configuration checks the configured name when
it is built (``CacheConfig(compression=...)``), ``cached(compress=...)`` checks a per-statement
override, and the entry codec (``storage._codec``) compresses with them.  The optional packages
are imported only when their compressor is first used.  Each compressor has an id that travels
in an entry's flags byte, so any cache can read any entry whose compressor is installed.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Callable
from typing import NamedTuple


class Compressor(NamedTuple):
    id: int
    name: str
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes | memoryview], bytes]


def _zlib() -> Compressor:
    return Compressor(0, "zlib", lambda b: zlib.compress(b, 1), zlib.decompress)


def _zstd() -> Compressor:
    import zstandard  # optional: the ``zstd`` extra

    # contexts are costly to create (~15 us) and not thread-safe: one pair per thread
    local = threading.local()

    def compress(data: bytes) -> bytes:
        ctx = getattr(local, "c", None)
        if ctx is None:
            ctx = local.c = zstandard.ZstdCompressor(level=3)
        out: bytes = ctx.compress(data)
        return out

    def decompress(data: bytes | memoryview) -> bytes:
        ctx = getattr(local, "d", None)
        if ctx is None:
            ctx = local.d = zstandard.ZstdDecompressor()
        out: bytes = ctx.decompress(data)
        return out

    return Compressor(1, "zstd", compress, decompress)


def _lz4() -> Compressor:
    import lz4.frame  # optional: the ``lz4`` extra

    return Compressor(2, "lz4", lz4.frame.compress, lz4.frame.decompress)


_FACTORIES: dict[str, Callable[[], Compressor]] = {"zlib": _zlib, "zstd": _zstd, "lz4": _lz4}
_IDS = {0: "zlib", 1: "zstd", 2: "lz4"}
COMPRESSORS = tuple(_FACTORIES)
_LOADED: dict[str, Compressor] = {}


def compressor(name: str) -> Compressor:
    """The compressor called ``name``; ImportError if its package is missing."""
    found = _LOADED.get(name)
    if found is None:
        try:
            factory = _FACTORIES[name]
        except KeyError:
            raise ValueError(
                f"unknown compressor {name!r}; choose one of {', '.join(_FACTORIES)}"
            ) from None
        found = _LOADED[name] = factory()
    return found


def compressor_by_id(ident: int) -> Compressor:
    """The compressor whose id an entry's flags carry; KeyError for an unknown id."""
    return compressor(_IDS[ident])


def available_compressors() -> list[str]:
    """Names of the compressors whose packages are installed."""
    names = []
    for name in _FACTORIES:
        try:
            compressor(name)
        except ImportError:
            continue
        names.append(name)
    return names
