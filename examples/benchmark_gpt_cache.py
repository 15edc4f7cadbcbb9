"""What one token of cached generation costs, by the size of the cache: the CPU time of GPT's jitted cached step
(lazygrad.models.gpt, `cached_step`) per position, for caches of several block sizes.

    LAZYGRAD_BACKEND=llvm LAZYGRAD_THREADS=1 python examples/benchmark_gpt_cache.py

For each block size: a model of the benchmark's shape (examples/benchmark_gpt.py: 4 layers, width 256, 4 heads,
vocabulary 96) steps through every position of its context once, each step timed with time.process_time around the
step and the read of its token (the first steps compile and capture it). It prints the median over positions 3-39
(the short prefixes of a generation), over the last 40 positions (the longest prefixes) and the mean over positions
3 to the end (what a token costs on average over a generation that fills the context). With the position a
Variable, a step's attention reads pos+1 slots and writes one; before it, every step read and rewrote all
block_size slots (the script times that version too: it passes the position as that version expects it).
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

import lazygrad
from lazygrad.models.gpt import GPT, GPTConfig

VOCAB = 96


def per_token_times(block_size: int, n_layer: int, n_embd: int, n_head: int) -> list:
    lazygrad.manual_seed(0)
    model = GPT(GPTConfig(block_size, VOCAB, n_layer, n_head, n_embd, dropout=0.0, bias=True)).eval()
    step = model.cached_step(batch=1, temperature=1.0, top_k=None)
    symbolic = hasattr(GPT, "position")  # (the version before the Variable took the position as a tensor)

    def position_arg(p: int):
        return p if symbolic else lazygrad.tensor([p], dtype=lazygrad.int64)

    token = lazygrad.tensor(np.zeros((1, 1), dtype=np.int64))
    times = []
    for p in range(block_size):
        start = time.process_time()
        token = step(token, position_arg(p))
        token.numpy()
        times.append(time.process_time() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--block-sizes", type=int, nargs="+", default=[16, 128, 512, 2048])
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    args = parser.parse_args()
    print(f"{lazygrad.Tensor.zeros(1).device}: CPU ms per token of the cached step (process_time)")
    for block_size in args.block_sizes:
        times = per_token_times(block_size, args.n_layer, args.n_embd, args.n_head)
        print(
            f"block_size {block_size:5d}: median over positions 3-{min(39, block_size - 1)}: "
            f"{statistics.median(times[3:40]) * 1e3:.2f} ms; over the last 40: "
            f"{statistics.median(times[-40:]) * 1e3:.2f} ms; mean over 3-{block_size - 1}: "
            f"{statistics.mean(times[3:]) * 1e3:.2f} ms"
        )


if __name__ == "__main__":
    main()
