"""Side C of the differential machine: a cache in a process of its own, serving reads.

``python -m tests._differential.remote DB_URL REDIS_URL``; requests on stdin, replies on
stdout, each a pickled tuple after its 4-byte length: ``("use", namespace)`` builds the side on
that namespace (closing the previous one; None only closes), ``("read", shape, params)`` runs
the read shape with ``cached()`` in a fresh session and answers ``(plain values, outcome)``.
"""

from __future__ import annotations

import pickle
import struct
import sys
import traceback
from typing import Any

from sqla_redis_cache import cached

from .common import plain
from .env import Side, build_side
from .reads import SHAPES, Extract

_BY_NAME = {s.name: s for s in SHAPES}


def _read(side: Side, shape: str, params: dict[str, Any]) -> tuple[Any, str]:
    before = side.cache.stats()
    with side.sessions() as s:
        got = plain(_BY_NAME[shape].run(s, params, (cached(),), Extract()))
    after = side.cache.stats()
    outcome = "hit" if after.hits > before.hits else "miss"
    if after.hits == before.hits and after.misses == before.misses:
        outcome = "bypass"
    if after.near.get("hits", 0) > before.near.get("hits", 0):
        outcome = "hit from memory"
    return got, outcome


def main() -> None:
    url, redis_url = sys.argv[1:3]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    side: Side | None = None
    while True:
        head = stdin.read(4)
        if len(head) < 4:
            break
        (size,) = struct.unpack(">I", head)
        request = pickle.loads(stdin.read(size))
        try:
            if request[0] == "use":
                if side is not None:
                    side.cache.close()
                    side.engine.dispose()
                    side = None
                if request[1] is not None:
                    side = build_side(url, redis_url, "C", request[1])
                reply: Any = ("ok", None)
            else:
                assert side is not None
                reply = ("ok", _read(side, request[1], request[2]))
        except Exception:
            reply = ("error", traceback.format_exc())
        data = pickle.dumps(reply)
        stdout.write(struct.pack(">I", len(data)) + data)
        stdout.flush()
    if side is not None:
        side.cache.close()


if __name__ == "__main__":
    main()
