"""What one token of cached generation costs, by the size of the cache: the CPU time of GPT's jitted cached step
(lazygrad.models.gpt, `cached_step`) per position, for caches of several block sizes.

    LAZYGRAD_BACKEND=llvm LAZYGRAD_THREADS=1 python examples/benchmark_gpt_cache.py

For each block size: a model of the benchmark's shape (examples/benchmark_gpt.py: 4 layers, width 256, 4 heads,
vocabulary 96), one warm-up generation (it compiles and captures the step), then `--positions` positions of a
second, each timed with time.process_time around the step and the read of its token; it prints the median over
positions 3 and up, and the median over the last tenth (the cost at the longest prefix measured). With the position
a Variable, a step's attention reads pos+1 slots and writes one; before it, every step read and rewrote all
block_size slots (the script times that version too: it passes the position as it expects it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lazygrad
from lazygrad.models.gpt import GPT, GPTConfig

VOCAB = 96


def per_token_times(block_size: int, positions: int, n_layer: int, n_embd: int, n_head: int) -> list:
    lazygrad.manual_seed(0)
    model = GPT(GPTConfig(block_size, VOCAB, n_layer, n_head, n_embd, dropout=0.0, bias=True)).eval()
    step = model.cached_step(batch=1, temperature=1.0, top_k=None)
    symbolic = hasattr(GPT, "position")  # (the version before the Variable took the position as a tensor)

    def position_arg(p: int):
        return p if symbolic else lazygrad.tensor([p], dtype=lazygrad.int64)

    token = lazygrad.tensor(np.zeros((1, 1), dtype=np.int64))
    for p in range(min(positions, block_size)):  # warm-up: compile, capture, replay
        token = step(token, position_arg(p))
        token.numpy()
    times = []
    for p in range(min(positions, block_size)):
        start = time.process_time()
        token = step(token, position_arg(p))
        token.numpy()
        times.append(time.process_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 128, 512, 2048])
    parser.add_argument("--positions", type=int, default=40, help="positions timed per block size (from 0)")
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    args = parser.parse_args()
    print(f"{lazygrad.Tensor.zeros(1).device}: CPU ms per token of the cached step (process_time)")
    for block_size in args.block_sizes:
        times = per_token_times(block_size, args.positions, args.n_layer, args.n_embd, args.n_head)
        tail = times[-max(1, len(times) // 10) :]
        print(
            f"block_size {block_size:5d}: median over positions 3-{len(times) - 1}: "
            f"{statistics.median(times[3:]) * 1e3:.2f} ms; last tenth: {statistics.median(tail) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
