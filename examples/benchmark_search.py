"""The ResNet-18 step with the heuristics' kernels against the kernel search's, in one process.

    LAZYGRAD_SEARCH=1 python examples/benchmark.py --no-torch --batch-size 8 --image-size 224   # search once
    python examples/benchmark_search.py --batch-size 8 --image-size 224 --steps 12             # then compare

Two jitted steps of examples/benchmark.py: the first compiled as without LAZYGRAD_SEARCH, the second with the
search's winners (read from the disk cache, or searched now if there are none: pass --effort). They run
alternately, so that load from other processes falls on both alike; medians, and the median of the per-pair
ratios, are printed.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import benchmark  # noqa: E402

from lazygrad import config, runtime, search  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--effort", type=int, default=1, help="LAZYGRAD_SEARCH for kernels without a stored winner")
    args = parser.parse_args()

    config.SEARCH = 0
    heuristic = benchmark.lazygrad_step_fn(args.batch_size, args.image_size)
    for _ in range(3):  # compile, capture, replay
        heuristic()
    runtime._kernel_cache = {}  # the searched step compiles kernels of its own (the runtime notices the new cache)
    config.SEARCH = args.effort
    searched = benchmark.lazygrad_step_fn(args.batch_size, args.image_size)
    for _ in range(3):
        searched()
    print(
        f"kernels: {search.stats['reused']} winners read from the disk cache, {search.stats['searched']} searched now "
        f"({search.stats['seconds']:.0f} s), {search.stats['improved']} of those faster than the heuristics"
    )

    times: dict = {"heuristics": [], "search": []}
    steps = {"heuristics": heuristic, "search": searched}
    for i in range(args.steps):
        for name in ("heuristics", "search") if i % 2 else ("search", "heuristics"):  # each goes first half the time
            start = time.perf_counter()
            steps[name]()
            times[name].append(time.perf_counter() - start)
    ours, theirs = statistics.median(times["search"]) * 1e3, statistics.median(times["heuristics"]) * 1e3
    ratios = [s / h for s, h in zip(times["search"], times["heuristics"])]
    print(
        f"{args.batch_size}x3x{args.image_size}x{args.image_size}, {args.steps} steps each, alternating: heuristics "
        f"{theirs:.1f} ms (min {min(times['heuristics']) * 1e3:.1f}), search {ours:.1f} ms "
        f"(min {min(times['search']) * 1e3:.1f}); ratio of medians {ours / theirs:.3f}, median of per-pair ratios "
        f"{statistics.median(ratios):.3f}"
    )


if __name__ == "__main__":
    main()
