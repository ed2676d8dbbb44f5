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
(datetime, Decimal, UUID, ...), which cannot execute code when decoded.  Pickle is used only for
values msgpack cannot encode, and only when a secret is configured, so nothing is ever unpickled
from Redis unless it was signed with that secret.  Like JSON, msgpack has one sequence type:
tuples inside values come back as lists (result rows are turned back into tuples).  Payloads
above ``compress_threshold`` bytes are zlib-compressed (the seed guide's 1 KB rule).
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
import zlib
from typing import Any

import msgpack

VERSION = 1
_F_COMPRESSED = 1
_F_PICKLE = 2
_HEADER = struct.Struct("!BB16sH")
_CREATED = struct.Struct("!d")
_UNSIGNED_KEY = b"sqla-redis-cache/unsigned-entry"

_EXT_DATETIME, _EXT_DATE, _EXT_TIME, _EXT_TIMEDELTA = 1, 2, 3, 4
_EXT_DECIMAL, _EXT_UUID = 5, 6


class CorruptEntry(ValueError):
    """An entry that failed verification or decoding."""


class Unencodable(TypeError):
    """A value this codec cannot store."""


def _default(obj: Any) -> Any:
    kind = type(obj)
    if kind is datetime.datetime:
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
    if kind is memoryview or kind is bytearray:
        return bytes(obj)
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
    raise CorruptEntry(f"unknown extension type {code}")


def _packb(value: Any) -> bytes:
    data: bytes = msgpack.packb(value, default=_default, use_bin_type=True)
    return data


def _unpackb(data: bytes | memoryview) -> Any:
    return msgpack.unpackb(data, ext_hook=_ext_hook, raw=False, strict_map_key=False)


class EntryCodec:
    """Seals values into entries and opens them again."""

    __slots__ = ("_key", "allow_pickle", "compress_threshold", "max_bytes")

    def __init__(
        self, secret: bytes | None, compress_threshold: int = 1024, max_bytes: int = 1 << 24
    ) -> None:
        self._key = hashlib.blake2b(secret or _UNSIGNED_KEY, digest_size=32).digest()
        self.allow_pickle = secret is not None
        self.compress_threshold = compress_threshold
        self.max_bytes = max_bytes

    def _mac(self, flags: int, body: bytes | memoryview) -> bytes:
        mac = hashlib.blake2b(bytes((VERSION, flags)), key=self._key, digest_size=16)
        mac.update(body)
        return mac.digest()

    def encode_payload(self, value: Any, compress: bool | None = None) -> tuple[int, bytes]:
        """Serialise ``value``; returns (flags, payload)."""
        flags = 0
        try:
            payload = _packb(value)
        except (Unencodable, TypeError, ValueError, OverflowError) as exc:
            if not self.allow_pickle:
                raise Unencodable(str(exc)) from exc
            try:
                payload = pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)
            except Exception as pexc:
                raise Unencodable(f"cannot serialise {type(value).__qualname__}: {pexc}") from pexc
            flags |= _F_PICKLE
        if compress is None:
            compress = len(payload) > self.compress_threshold
        if compress:
            payload = zlib.compress(payload, 1)
            flags |= _F_COMPRESSED
        return flags, payload

    def seal(
        self,
        stamps: bytes,
        value: Any,
        *,
        compress: bool | None = None,
        created: float | None = None,
    ) -> bytes:
        flags, payload = self.encode_payload(value, compress)
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
            raise Unencodable(f"entry of {len(entry)} bytes exceeds max_entry_bytes")
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
        try:
            if flags & _F_COMPRESSED:
                payload = zlib.decompress(payload)
            if flags & _F_PICKLE:
                if not self.allow_pickle:
                    raise CorruptEntry("pickled entry but no secret configured")
                return pickle.loads(payload)
            return _unpackb(payload)
        except CorruptEntry:
            raise
        except Exception as exc:
            raise CorruptEntry(f"undecodable payload: {exc}") from exc
