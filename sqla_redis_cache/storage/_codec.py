"""Entry encoding: a small authenticated envelope around msgpack (or, with a secret, pickle).

Layout of every value the library stores::

    version(1) flags(1) mac(16) stamps_len(2) stamps created(8, float) payload

``stamps`` are the version tokens of the tables and tags the entry depends on, as they were read
*before* the value was built.  A reader compares them with the current tokens before touching
the payload, so a stale entry costs a byte comparison.  ``mac`` is a keyed BLAKE2b over the
version, flags and everything after it: with ``secret`` set it authenticates the entry, without
it it is a checksum.  A truncated, corrupt, foreign or tampered entry raises
:class:`CorruptEntry` and is treated as a miss.

Payloads are msgpack with a handful of extension types for the values database drivers return
(datetime, Decimal, UUID, ...; driver classes such as asyncpg's UUID subclass, ``ipaddress``
objects and ranges through ``_drivertypes``; datetimes in a named zone keep the zone), which
cannot execute code when decoded.  Pickle is used only for
values msgpack cannot encode, and only when a secret is configured, so nothing is ever unpickled
from Redis unless it was signed with that secret.  Like JSON, msgpack has one sequence type:
tuples inside values come back as lists (result rows are turned back into tuples).

Payloads above ``compress_threshold`` bytes (1 KB by default) are compressed with the
configured compressor: zlib (always available), zstd (``zstandard``) or lz4 (``lz4``), the
optional ones imported only when used.  The compressor's id travels in the flags byte, under
the MAC, so any cache can read any entry whose compressor is installed; one it cannot
decompress is a miss.  docs/reliability.md has the measurements behind the default.
"""

from __future__ import annotations

import datetime
import decimal
import hashlib
import hmac
import pickle
import struct
import time
import uuid
from collections.abc import Callable
from typing import Any
from zoneinfo import ZoneInfo

import msgpack

from .._compression import compressor, compressor_by_id
from ._drivertypes import kind_named, kind_of

VERSION = 1
_F_COMPRESSED = 1
_F_PICKLE = 2
_F_COMPRESSOR = 0b1100  # compressor id << 2
_F_KNOWN = _F_COMPRESSED | _F_PICKLE | _F_COMPRESSOR
_HEADER = struct.Struct("!BB16sH")
_CREATED = struct.Struct("!d")
_UNSIGNED_KEY = b"sqla-redis-cache/unsigned-entry"

_EXT_DATETIME, _EXT_DATE, _EXT_TIME, _EXT_TIMEDELTA = 1, 2, 3, 4
_EXT_DECIMAL, _EXT_UUID, _EXT_ZONED, _EXT_DRIVER, _EXT_MEMORYVIEW = 5, 6, 7, 8, 9


class CorruptEntry(ValueError):
    """An entry that failed verification or decoding."""


class Unencodable(TypeError):
    """A value this codec cannot store."""


class EntryTooLarge(Unencodable):
    """A value whose entry would exceed ``max_entry_bytes``."""


def zoned(iso: str, zone: str | None) -> datetime.datetime:
    """A datetime stored as (ISO string, zone name): the same instant, in that zone again."""
    value = datetime.datetime.fromisoformat(iso)
    return value if zone is None else value.astimezone(ZoneInfo(zone))


def zone_of(value: datetime.datetime) -> str | None:
    """The name of a datetime's ``ZoneInfo`` (None for fixed offsets and naive values)."""
    tzinfo = value.tzinfo
    if type(tzinfo) is ZoneInfo:
        if tzinfo.key is None:  # ZoneInfo.from_file(): no name to rebuild it from
            raise Unencodable("cannot encode a datetime in a ZoneInfo without a key")
        return tzinfo.key
    return None


def _default(obj: Any) -> Any:
    kind = type(obj)
    if kind is datetime.datetime:
        if type(obj.tzinfo) is ZoneInfo:
            return msgpack.ExtType(_EXT_ZONED, _packb([obj.isoformat(), zone_of(obj)]))
        return msgpack.ExtType(_EXT_DATETIME, obj.isoformat().encode())
    if kind is datetime.date:
        return msgpack.ExtType(_EXT_DATE, obj.isoformat().encode())
    if kind is datetime.time:
        return msgpack.ExtType(_EXT_TIME, obj.isoformat().encode())
    if kind is datetime.timedelta:
        return msgpack.ExtType(_EXT_TIMEDELTA, _packb([obj.days, obj.seconds, obj.microseconds]))
    if kind is decimal.Decimal:
        return msgpack.ExtType(_EXT_DECIMAL, str(obj).encode())
    if kind is uuid.UUID:
        return msgpack.ExtType(_EXT_UUID, obj.bytes)
    if kind is memoryview:  # psycopg2's bytea
        return msgpack.ExtType(_EXT_MEMORYVIEW, bytes(obj))
    if kind is bytearray:
        return bytes(obj)
    driver = kind_of(kind)  # a driver's own class (asyncpg's UUID, ranges, ipaddress, ...)
    if driver is not None:
        return msgpack.ExtType(_EXT_DRIVER, _packb([driver.name, driver.encode(obj)]))
    raise Unencodable(f"cannot encode {kind.__qualname__} without pickle")


def _ext_hook(code: int, data: bytes) -> Any:
    if code == _EXT_DATETIME:
        return datetime.datetime.fromisoformat(data.decode())
    if code == _EXT_DATE:
        return datetime.date.fromisoformat(data.decode())
    if code == _EXT_TIME:
        return datetime.time.fromisoformat(data.decode())
    if code == _EXT_TIMEDELTA:
        days, seconds, micros = _unpackb(data)
        return datetime.timedelta(days, seconds, micros)
    if code == _EXT_DECIMAL:
        return decimal.Decimal(data.decode())
    if code == _EXT_UUID:
        return uuid.UUID(bytes=data)
    if code == _EXT_MEMORYVIEW:
        return memoryview(data)
    if code == _EXT_ZONED:
        return zoned(*_unpackb(data))
    if code == _EXT_DRIVER:
        name, state = _unpackb(data)
        return kind_named(name).decode(state)
    raise CorruptEntry(f"unknown extension type {code}")


def _reads_back(load: Callable[[bytes], Any], payload: bytes) -> None:
    try:
        load(payload)
    except Exception as exc:
        raise Unencodable(
            f"it would not read back as stored ({type(exc).__name__}: {exc})"
        ) from exc


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return data


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class EntryCodec:
    """Seals values into entries and opens them again."""

    __slots__ = ("_key", "allow_pickle", "compress_threshold", "compressor", "max_bytes")

    def __init__(
        self,
        secret: bytes | None,
        compress_threshold: int = 1024,
        max_bytes: int = 1 << 24,
        compression: str = "zlib",
    ) -> None:
        self._key = hashlib.blake2b(secret or _UNSIGNED_KEY, digest_size=32).digest()
        self.allow_pickle = secret is not None
        self.compress_threshold = compress_threshold
        self.max_bytes = max_bytes
        self.compressor = compressor(compression)

    def _mac(self, flags: int, body: bytes | memoryview) -> bytes:
        mac = hashlib.blake2b(bytes((VERSION, flags)), key=self._key, digest_size=16)
        mac.update(body)
        return mac.digest()

    def encode_payload(
        self, value: Any, compress: bool | str | None = None, verify: bool = False
    ) -> tuple[int, bytes]:
        """Serialise ``value``; returns (flags, payload).

        ``compress``: None compresses above the threshold with the configured compressor, a
        bool forces it on or off, a compressor name ("zlib", "zstd", "lz4") forces that one.
        ``verify`` decodes the payload again and refuses (or, with a secret, pickles) a value
        that would not read back, such as a dict keyed by tuples.
        """
        flags = 0
        try:
            payload = _packb(value)
            if verify:
                _reads_back(_unpackb, payload)
        except (Unencodable, TypeError, ValueError, OverflowError) as exc:
            if not self.allow_pickle:
                raise Unencodable(str(exc)) from exc
            try:
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as pexc:
                raise Unencodable(f"cannot serialise {type(value).__qualname__}: {pexc}") from pexc
            if verify:
                _reads_back(pickle.loads, payload)
            flags |= _F_PICKLE
        if compress is None:
            compress = len(payload) > self.compress_threshold
        if compress:
            try:
                packer = self.compressor if compress is True else compressor(compress)
            except ImportError as exc:
                raise Unencodable(f"compressor {compress!r} is not installed") from exc
            payload = packer.compress(payload)
            flags |= _F_COMPRESSED | (packer.id << 2)
        return flags, payload

    def seal(
        self,
        stamps: bytes,
        value: Any,
        *,
        compress: bool | str | None = None,
        created: float | None = None,
        verify: bool = False,
    ) -> bytes:
        flags, payload = self.encode_payload(value, compress, verify)
        body = b"".join(
            (
                struct.pack("!H", len(stamps)),
                stamps,
                _CREATED.pack(time.time() if created is None else created),
                payload,
            )
        )
        entry = bytes((VERSION, flags)) + self._mac(flags, body) + body
        if len(entry) > self.max_bytes:
            raise EntryTooLarge(
                f"entry of {len(entry)} bytes exceeds max_entry_bytes={self.max_bytes}"
            )
        return entry

    @staticmethod
    def stamps_of(entry: bytes) -> bytes | None:
        """The stamps of an entry, without verifying it (None if malformed)."""
        if len(entry) < _HEADER.size or entry[0] != VERSION:
            return None
        (length,) = struct.unpack_from("!H", entry, 18)
        return entry[20 : 20 + length]

    @staticmethod
    def mac_of(entry: bytes) -> bytes:
        return entry[2:18]

    def open(self, entry: bytes, stamps: bytes | None) -> tuple[float, Any] | None:
        """(created, value) if valid for ``stamps``; None if stale; CorruptEntry if bad.

        ``stamps=None`` skips the freshness check (the caller validates separately).
        """
        if len(entry) < _HEADER.size + 8 or entry[0] != VERSION:
            raise CorruptEntry("bad header")
        _, flags, mac, length = _HEADER.unpack_from(entry)
        start = _HEADER.size
        if stamps is not None and entry[start : start + length] != stamps:
            return None
        view = memoryview(entry)
        if not hmac.compare_digest(mac, self._mac(flags, view[18:])):
            raise CorruptEntry("MAC mismatch")
        pos = start + length
        if pos + 8 > len(entry):
            raise CorruptEntry("truncated")
        (created,) = _CREATED.unpack_from(entry, pos)
        return created, self.decode_payload(flags, view[pos + 8 :])

    def decode_payload(self, flags: int, payload: bytes | memoryview) -> Any:
        """Inverse of :meth:`encode_payload`; the caller has verified the MAC."""
        if flags & ~_F_KNOWN:
            raise CorruptEntry(f"unknown flags {flags:#x}")
        try:
            if flags & _F_COMPRESSED:
                payload = compressor_by_id((flags & _F_COMPRESSOR) >> 2).decompress(payload)
            if flags & _F_PICKLE:
                if not self.allow_pickle:
                    raise CorruptEntry("pickled entry but no secret configured")
                return pickle.loads(payload)
            return _unpackb(payload)
        except CorruptEntry:
            raise
        except Exception as exc:
            raise CorruptEntry(f"undecodable payload: {exc}") from exc
