"""GPT training step and cached generation: lazygrad against PyTorch eager, in the same run, on the same model.

    python examples/benchmark_gpt.py                       # 4 layers, width 256, 4 heads, context 128, batch 16
    python examples/benchmark_gpt.py --n-layer 2 --steps 5 # smaller and shorter

Training step: forward, cross-entropy, backward, clip_grad_norm_(1.0), AdamW (nanoGPT's two param groups), on a
character vocabulary (96), from one state dict. lazygrad's step is jitted (after two calls it replays its kernels);
PyTorch's is eager. Each is timed per step (the loss read to the host ends a step), the two alternating step by
step; the median of --steps steps after --warmup is printed, with the kernels lazygrad launches per step.

Generation: batch 1, a 1-token prompt, --tokens new tokens sampled with a key/value cache (lazygrad: the jitted
fixed-size cache of lazygrad.models.gpt; PyTorch: examples/torch_gpt.py, a cache grown by concatenation), timed
after one warm-up generation, as tokens per second.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import lazygrad
from lazygrad.models.gpt import GPT, GPTConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from torch_gpt import TorchGPT  # noqa: E402

VOCAB = 96


def time_interleaved(steps: dict, batches: dict, warmup: int, count: int, clock=time.perf_counter):
    """Per-step seconds of each framework, their steps alternating, so that load from other processes (a shared
    machine) falls on both alike. `clock`: wall time, or time.process_time (CPU seconds of all this process's
    threads), which other processes on a shared machine disturb far less."""
    times = {name: [] for name in steps}
    for i in range(warmup + count):
        for name, step in steps.items():
            t0 = clock()
            step(*batches[name][i])
            if i >= warmup:
                times[name].append(clock() - t0)
    return times


def print_kernel_times(step, batch, count: int, repeats: int = 3, least: bool = False) -> None:
    """The `count` kernels that cost the step most, grouped by name (one compiled program, e.g. the same product in
    every layer): launches per step, median milliseconds per step over `repeats` timed steps, share of the step.
    `least`: each launch's least time over the steps instead, summed per name (on a shared machine, a view of the
    work that other processes disturb far less than a median)."""
    per_step, launches = [], []
    for _ in range(repeats):
        with lazygrad.profile() as p:
            step(*batch).item()
        launches.append(p.launches)
        totals: dict[str, list] = {}
        for launch in p.launches:
            entry = totals.setdefault(launch.name, [0, 0.0, 0.0])
            entry[0] += 1
            entry[1] += launch.seconds
            entry[2] += launch.flops
        per_step.append(totals)
    names = per_step[0].keys()
    median_ms = {name: statistics.median(t[name][1] for t in per_step) * 1e3 for name in names}
    if least:  # the replayed step launches the same kernels in the same order every time
        median_ms = dict.fromkeys(names, 0.0)
        for i, launch in enumerate(launches[0]):
            median_ms[launch.name] += min(step_launches[i].seconds for step_launches in launches) * 1e3
    total = sum(median_ms.values())
    print(f"{'kernel':<40} {'launches':>8} {'ms/step':>9} {'share':>6} {'GFLOP/s':>8}")
    for name in sorted(names, key=lambda n: -median_ms[n])[:count]:
        launches, _, flops = per_step[0][name]
        gflops = flops / (median_ms[name] / 1e3) / 1e9 if median_ms[name] else 0.0
        print(f"{name:<40} {launches:>8} {median_ms[name]:9.2f} {median_ms[name] / total:6.1%} {gflops:8.1f}")
    how = "each launch's least time" if least else "median per kernel"
    print(f"{sum(t[0] for t in per_step[0].values())} kernels, {total:.1f} ms summed ({how})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-layer", type=int, default=4)
    parser.add_argument("--n-embd", type=int, default=256)
    parser.add_argument("--n-head", type=int, default=4)
    parser.add_argument("--block-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument(
        "--profile", type=int, default=0, help="print the N kernels (grouped by name) that cost a lazygrad step most"
    )
    parser.add_argument("--profile-steps", type=int, default=3, help="steps --profile times (default 3)")
    parser.add_argument(
        "--profile-least",
        action="store_true",
        help="--profile sums each launch's least time over the steps instead of taking medians (a shared machine)",
    )
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps in CPU seconds of the process (time.process_time), not wall time: on a shared machine, with "
        "LAZYGRAD_THREADS=1 and --torch-threads 1, the work each step does, little disturbed by other processes",
    )
    args = parser.parse_args()
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"backend: {lazygrad.Device.DEFAULT}, torch threads: {torch.get_num_threads()}")
    print(
        f"config: {args.n_layer} layers, width {args.n_embd}, {args.n_head} heads, context {args.block_size}, "
        f"batch {args.batch_size}, vocabulary {VOCAB}"
    )

    torch.manual_seed(0)
    reference = TorchGPT(args.block_size, VOCAB, args.n_layer, args.n_head, args.n_embd)
    model = GPT(GPTConfig(args.block_size, VOCAB, args.n_layer, args.n_head, args.n_embd, dropout=0.0, bias=True))
    model.load_state_dict({k: v.detach().numpy() for k, v in reference.state_dict().items()})

    rng = np.random.default_rng(0)
    count = args.warmup + args.steps
    data = [rng.integers(0, VOCAB, (2, args.batch_size, args.block_size)) for _ in range(count)]

    torch_opt = reference.configure_optimizers(0.1, 1e-3, (0.9, 0.95))

    def torch_step(x, y):
        _, loss = reference(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(reference.parameters(), 1.0)
        torch_opt.step()
        torch_opt.zero_grad(set_to_none=True)
        return loss.item()

    opt = model.configure_optimizers(0.1, 1e-3, (0.9, 0.95))

    @lazygrad.jit
    def jitted_step(x, y):
        _, loss = model(x, y)
        loss.backward()
        lazygrad.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad()
        return loss

    kernels = []

    def lazygrad_step(x, y):
        with lazygrad.profile(timed=False) as p:
            loss = jitted_step(x, y).item()
        kernels.append(p.kernels)
        return loss

    ours_batches = [(lazygrad.tensor(d[0]), lazygrad.tensor(d[1])) for d in data]
    torch_batches = [(torch.tensor(d[0]), torch.tensor(d[1])) for d in data]
    t0 = time.perf_counter()
    lazygrad_step(*ours_batches[0])
    print(f"lazygrad first step (compiles): {time.perf_counter() - t0:.1f} s")
    times = time_interleaved(
        {"lazygrad": lazygrad_step, "torch": torch_step},
        {"lazygrad": ours_batches, "torch": torch_batches},
        args.warmup,
        args.steps,
        time.process_time if args.cpu_time else time.perf_counter,
    )
    ours, theirs = times["lazygrad"], times["torch"]
    if args.profile:
        print_kernel_times(jitted_step, ours_batches[-1], args.profile, args.profile_steps, args.profile_least)
    ours_ms, theirs_ms = statistics.median(ours) * 1e3, statistics.median(theirs) * 1e3
    unit = "CPU ms" if args.cpu_time else "ms"
    print(f"training step, median of {args.steps}: lazygrad {ours_ms:.1f} {unit}, PyTorch eager {theirs_ms:.1f} {unit}")
    print(f"ratio lazygrad / PyTorch: {ours_ms / theirs_ms:.2f}; lazygrad kernels per step: {kernels[-1]}")

    model.eval()
    reference.eval()
    prompt = np.zeros((1, 1), dtype=np.int64)
    rates = {}
    for name, generate in (
        ("lazygrad", lambda: model.generate(lazygrad.tensor(prompt), args.tokens, top_k=20)),
        ("PyTorch", lambda: reference.generate(torch.tensor(prompt), args.tokens, top_k=20)),
    ):
        generate()  # warm-up: lazygrad compiles and captures its step here
        clock = time.process_time if args.cpu_time else time.perf_counter
        t0 = clock()
        generate()
        rates[name] = args.tokens / (clock() - t0)
    print(
        f"cached generation, batch 1, {args.tokens} tokens: lazygrad {rates['lazygrad']:.0f} tokens/{unit[:-2]}s, "
        f"PyTorch {rates['PyTorch']:.0f} tokens/{unit[:-2]}s"
    )


if __name__ == "__main__":
    main()
