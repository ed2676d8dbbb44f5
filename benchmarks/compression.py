"""Which compressor wins for cached query rows of 1 KB to 1 MB?

Builds result sets shaped like real query rows (ids, names, e-mails, decimals, timestamps),
encodes them exactly as the cache does (``_rows.encode_result`` + msgpack), then times each
compressor's compress and decompress and reports the size ratio.  Run it with::

    python benchmarks/compression.py

Figures are medians of repeated runs on this machine; docs/reliability.md quotes them.
"""

from __future__ import annotations

import datetime
import decimal
import random
import statistics
import time
from collections.abc import Callable

import msgpack

from sqla_redis_cache._compression import available_compressors, compressor
from sqla_redis_cache.storage._rows import encode_result

TARGETS = [1_000, 10_000, 100_000, 1_000_000]
WORDS = ["alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota", "kappa"]


def rows(n: int, seed: int = 7) -> list[tuple[object, ...]]:
    rnd = random.Random(seed)
    base = datetime.datetime(2024, 1, 1)
    return [
        (
            i,
            f"{rnd.choice(WORDS)} {rnd.choice(WORDS)}",
            f"user{i}@example{rnd.randint(1, 50)}.com",
            decimal.Decimal(rnd.randint(0, 10**7)) / 100,
            base + datetime.timedelta(seconds=rnd.randint(0, 10**7)),
            rnd.randint(1, 20),
        )
        for i in range(n)
    ]


def payload(target: int) -> bytes:
    description = [(name, None) for name in ("id", "name", "email", "balance", "at", "org")]
    n = 1
    while True:
        data: bytes = msgpack.packb(encode_result((description, rows(n))), use_bin_type=True)
        if len(data) >= target:
            return data
        n = max(n + 1, int(n * target / len(data)))


def median_seconds(fn: Callable[[], object], budget: float = 0.3) -> float:
    samples = []
    deadline = time.perf_counter() + budget
    while len(samples) < 5 or (time.perf_counter() < deadline and len(samples) < 2000):
        started = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - started)
    return statistics.median(samples)


def main() -> None:
    print(f"{'payload':>9} {'codec':>5} {'ratio':>6} {'compress':>11} {'decompress':>11}")
    for target in TARGETS:
        data = payload(target)
        for name in available_compressors():
            c = compressor(name)
            packed = c.compress(data)
            assert c.decompress(packed) == data
            comp = median_seconds(lambda c=c, d=data: c.compress(d))
            decomp = median_seconds(lambda c=c, p=packed: c.decompress(p))
            print(
                f"{len(data):>9} {name:>5} {len(packed) / len(data):>6.3f} "
                f"{comp * 1e6:>9.1f}us {decomp * 1e6:>9.1f}us"
            )


if __name__ == "__main__":
    main()
