"""Speed of the paired bootstrap of `hashbench compare` (10,000 resamples): vectorised chunks vs a loop.

    python benchmarks/bench_stats.py

Prints one row per number of test queries: the time of ``stats.paired_bootstrap`` (index matrices drawn
in 4 MB chunks of int32) and of a one-resample-at-a-time numpy loop over the same draws, and checks that both
give the same interval.
"""

from __future__ import annotations

import time

import numpy as np

from hashbench.platform.stats import paired_bootstrap


def loop(a, b, resamples=10_000, seed=0):
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.array([d[rng.integers(0, d.size, size=d.size, dtype=np.int32)].mean() for _ in range(resamples)])
    return np.quantile(means, [0.025, 0.975])


def main() -> None:
    print(f"{'queries':>8} {'vectorised s':>13} {'loop s':>8} {'same CI':>8}")
    for n in (156, 624, 4299, 20000):
        rng = np.random.default_rng(n)
        a, b = rng.random(n), rng.random(n)
        t = time.perf_counter()
        res = paired_bootstrap(a, b)
        tv = time.perf_counter() - t
        t = time.perf_counter()
        ref = loop(a, b)
        tl = time.perf_counter() - t
        same = np.allclose([res["ci_low"], res["ci_high"]], ref, atol=1e-12)
        print(f"{n:>8} {tv:>13.3f} {tl:>8.3f} {str(same):>8}")


if __name__ == "__main__":
    main()
