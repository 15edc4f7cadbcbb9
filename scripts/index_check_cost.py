"""What the index bounds check (lazygrad/tensor_ops/bounds.py) costs on the GPT / cross-entropy idiom: eager
training steps of a small GPT (embedding of (B, T) token ids, cross_entropy on the (B*T,) targets), with the check
and with it patched out, and the time of one check of a realized (B, T) index.

    LAZYGRAD_BACKEND=llvm .venv/bin/python scripts/index_check_cost.py
"""

from __future__ import annotations

import statistics
import time

import numpy as np

import lazygrad
import lazygrad.nn.functional as F
import lazygrad.tensor_ops.arrange as arrange
import lazygrad.tensor_ops.movement as movement
from lazygrad.models.gpt import GPT, GPTConfig
from lazygrad.tensor_ops import bounds

BATCH, LENGTH, VOCAB = 8, 64, 65


def main() -> None:
    model = GPT(GPTConfig(block_size=LENGTH, vocab_size=VOCAB, n_layer=2, n_head=2, n_embd=64))
    opt = lazygrad.optim.AdamW(model.parameters(), lr=1e-3)
    rng = np.random.default_rng(0)
    idx = lazygrad.tensor(rng.integers(0, VOCAB, (BATCH, LENGTH))).realize()
    targets = lazygrad.tensor(rng.integers(0, VOCAB, (BATCH, LENGTH))).realize()

    def step() -> float:
        _, loss = model(idx, targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss.item()

    def median_step(steps: int) -> float:
        times = []
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        return statistics.median(times)

    checked = bounds.check_indices
    for _ in range(3):  # compile
        step()
    rounds: dict[str, list[float]] = {"checked": [], "unchecked": []}
    for _ in range(3):
        for mode in rounds:
            for module in (F, movement, arrange):
                module.check_indices = checked if mode == "checked" else (lambda *args, **kwargs: None)
            rounds[mode].append(median_step(10))
    one, fresh = [], []
    host_targets = rng.integers(0, VOCAB, (BATCH, LENGTH))
    for _ in range(200):
        start = time.perf_counter()
        checked(targets, VOCAB, "cross_entropy", 1, negative=False, ignore=-1)  # a device buffer: read back
        one.append(time.perf_counter() - start)
        not_uploaded = lazygrad.tensor(host_targets)
        start = time.perf_counter()
        checked(not_uploaded, VOCAB, "cross_entropy", 1, negative=False, ignore=-1)  # read from its host array
        fresh.append(time.perf_counter() - start)
    print(f"backend {lazygrad.Device.DEFAULT}: eager GPT step (B={BATCH}, T={LENGTH}, 2 layers, n_embd 64)")
    for mode, times in rounds.items():
        listed = ", ".join(f"{1000 * t:.1f}" for t in times)
        print(f"  {mode}: median {1000 * statistics.median(times):.1f} ms/step (per round of 10: {listed})")
    print(f"  one check of a realized ({BATCH}, {LENGTH}) int64 index: median {1e6 * statistics.median(one):.0f} us")
    fresh_us = 1e6 * statistics.median(fresh)
    print(f"  one check of a not yet uploaded one (lazygrad.tensor(array)): median {fresh_us:.0f} us")


if __name__ == "__main__":
    main()
