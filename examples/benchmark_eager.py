"""Eager training steps (no @jit) on lazygrad and PyTorch, in the same process: where the time of a step goes.

    python examples/benchmark_eager.py                      # all three workloads, 200 steps each
    python examples/benchmark_eager.py --workload poly --steps 500
    python examples/benchmark_eager.py --json
    python examples/benchmark_eager.py --resnet --steps 10 --warmup 3   # ResNet-18: eager against @lazygrad.jit

The workloads, each written once for both libraries (the same names), each step ending in `loss.item()`:
- poly: "Learning PyTorch with examples", the polynomial fit: 2,000 points, four scalar parameters
  a + b x + c x^2 + d x^3, loss = (y_pred - y).pow(2).sum(), backward, a manual update under no_grad;
- mlp: a 784-128-10 MLP on a batch of 64, cross-entropy, SGD with momentum;
- convnet: two 3x3 convolutions with ReLU and 2x2 max pooling, a linear layer, on a batch of 16 8x8 images,
  cross-entropy, SGD with momentum.
A new batch is uploaded from the host each step. The two libraries alternate step by step after warm-up, so that
they see the same machine load; medians are reported. PyTorch runs on one thread (--torch-threads): its OpenMP
threads spin while they wait, which on a shared 2-core machine makes its timings meaningless, and these steps are
far too small to gain from threads. Wall and CPU time (time.process_time, all threads) are both reported: on a
shared machine the CPU time is the steadier comparison.

The split of a lazygrad step: `schedule` (realize finding the plan of a graph seen before, or scheduling a new
one), `launch` (running the plan: allocating outputs, launching, uploads and reads, minus the kernels' own time),
`kernels` (the kernels, timed in a second pass under lazygrad.profile()), and `build` (the rest: building the
graph, autograd, the optimizer's Python).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import time

import numpy as np

import lazygrad
from lazygrad import runtime

WORKLOADS = ("poly", "mlp", "convnet")


def polynomial_fit(lib, nn, F, optim):
    x = lib.linspace(-math.pi, math.pi, 2000)
    y = x.sin()
    a, b, c, d = (lib.tensor(v, requires_grad=True) for v in (0.3, -0.2, 0.1, 0.05))
    learning_rate = 1e-6

    def step():
        y_pred = a + b * x + c * x**2 + d * x**3
        loss = (y_pred - y).pow(2).sum()
        value = loss.item()
        loss.backward()
        with lib.no_grad():
            for p in (a, b, c, d):
                p -= learning_rate * p.grad
                p.grad = None
        return value

    return step


def _classifier(lib, nn, F, optim, model, input_shape, seed: int):
    rng = np.random.default_rng(seed)
    images = rng.standard_normal((8, *input_shape)).astype(np.float32)  # 8 batches, used in turn
    labels = rng.integers(0, 10, (8, input_shape[0])).astype(np.int64)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    count = [0]

    def step():
        i = count[0] % len(images)
        count[0] += 1
        loss = F.cross_entropy(model(lib.tensor(images[i])), lib.tensor(labels[i]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def mlp(lib, nn, F, optim):
    model = nn.Sequential(nn.Linear(784, 128), nn.ReLU(), nn.Linear(128, 10))
    return _classifier(lib, nn, F, optim, model, (64, 784), seed=0)


def convnet(lib, nn, F, optim):
    model = nn.Sequential(
        nn.Conv2d(1, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Linear(16 * 2 * 2, 10),
    )
    return _classifier(lib, nn, F, optim, model, (16, 1, 8, 8), seed=1)


BUILDERS = {"poly": polynomial_fit, "mlp": mlp, "convnet": convnet}


def _libraries(torch):
    import lazygrad.nn.functional as lg_functional
    from lazygrad import nn as lg_nn
    from lazygrad import optim as lg_optim

    libs = {"lazygrad": (lazygrad, lg_nn, lg_functional, lg_optim)}
    if torch is not None:
        import torch.nn.functional as th_functional

        libs["torch"] = (torch, torch.nn, th_functional, torch.optim)
    return libs


def measure(workload: str, steps: int, warmup: int, torch) -> dict:
    libs = _libraries(torch)
    step_fns = {name: BUILDERS[workload](*lib) for name, lib in libs.items()}
    for _ in range(warmup):
        for fn in step_fns.values():
            fn()
    times = {name: [] for name in step_fns}
    cpu_times = {name: [] for name in step_fns}
    split = {"schedule": [], "run": []}
    for _ in range(steps):
        for name, fn in step_fns.items():
            if name == "lazygrad":
                before = dict(runtime.realize_seconds)
            t, cpu = time.perf_counter(), time.process_time()
            fn()
            times[name].append(time.perf_counter() - t)
            cpu_times[name].append(time.process_time() - cpu)
            if name == "lazygrad":
                for part in split:
                    split[part].append(runtime.realize_seconds[part] - before[part])
    kernel_seconds, kernels = [], 0
    for _ in range(max(10, steps // 10)):  # the kernels' own time: timed launches wait for each kernel
        with lazygrad.profile() as p:
            step_fns["lazygrad"]()
        kernel_seconds.append(sum(k.seconds for k in p.launches))
        kernels = p.kernels
    ms = {name: statistics.median(t) * 1e3 for name, t in times.items()}
    cpu_ms = {name: statistics.median(t) * 1e3 for name, t in cpu_times.items()}
    schedule, run = (statistics.median(split[part]) * 1e3 for part in ("schedule", "run"))
    kernel_ms = statistics.median(kernel_seconds) * 1e3
    result = {
        "workload": workload,
        "backend": lazygrad.Device.DEFAULT,
        "steps": steps,
        "lazygrad_ms": ms["lazygrad"],
        "lazygrad_cpu_ms": cpu_ms["lazygrad"],
        "kernels_per_step": kernels,
        "split_ms": {
            "build": ms["lazygrad"] - schedule - run,
            "schedule": schedule,
            "launch": max(run - kernel_ms, 0.0),
            "kernels": kernel_ms,
        },
    }
    if "torch" in ms:
        result["torch_ms"] = ms["torch"]
        result["torch_cpu_ms"] = cpu_ms["torch"]
        result["ratio"] = ms["lazygrad"] / ms["torch"]
        result["cpu_ratio"] = cpu_ms["lazygrad"] / cpu_ms["torch"]
    return result


def resnet18_eager_against_jit(steps: int, warmup: int) -> dict:
    """The ResNet-18 step of examples/benchmark.py (1x3x64x64), eager and under @lazygrad.jit, alternating."""
    import benchmark  # examples/benchmark.py, beside this file

    step_fns = {"eager": benchmark.lazygrad_step_fn(1, 64, jitted=False), "jit": benchmark.lazygrad_step_fn(1, 64)}
    for _ in range(warmup):
        for fn in step_fns.values():
            fn()
    wall, cpu = {name: [] for name in step_fns}, {name: [] for name in step_fns}
    for _ in range(steps):
        for name, fn in step_fns.items():
            t, c = time.perf_counter(), time.process_time()
            fn()
            wall[name].append(time.perf_counter() - t)
            cpu[name].append(time.process_time() - c)
    result = {"workload": "resnet18", "backend": lazygrad.Device.DEFAULT, "steps": steps}
    for name in step_fns:
        result[f"{name}_ms"] = statistics.median(wall[name]) * 1e3
        result[f"{name}_cpu_ms"] = statistics.median(cpu[name]) * 1e3
    result["ratio"] = result["eager_ms"] / result["jit_ms"]
    result["cpu_ratio"] = result["eager_cpu_ms"] / result["jit_cpu_ms"]
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workload", choices=(*WORKLOADS, "all"), default="all")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--torch-threads", type=int, default=1)
    parser.add_argument("--no-torch", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument(
        "--resnet", action="store_true", help="instead: the ResNet-18 step (1x64) eager against @lazygrad.jit"
    )
    args = parser.parse_args()
    if args.resnet:
        r = resnet18_eager_against_jit(args.steps, args.warmup)
        if args.json:
            print(json.dumps(r, indent=2))
            return
        print(f"ResNet-18 training step, 1x3x64x64, lazygrad on {r['backend']}, medians of {args.steps} steps")
        for name in ("eager", "jit"):
            print(f"  {name:<6} wall {r[f'{name}_ms']:8.1f} ms   CPU {r[f'{name}_cpu_ms']:8.1f} ms")
        print(f"  eager / jit: wall {r['ratio']:.2f}, CPU {r['cpu_ratio']:.2f}")
        return
    torch = None
    if not args.no_torch:
        try:
            import torch

            torch.set_num_threads(args.torch_threads)
        except ImportError:
            torch = None
    results = [
        measure(w, args.steps, args.warmup, torch) for w in (WORKLOADS if args.workload == "all" else [args.workload])
    ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    print(f"eager steps (no @jit), lazygrad on {results[0]['backend']}, medians of {args.steps} steps, in ms")
    print("            wall time (ratio)             CPU time (ratio)        lazygrad's wall time, split")
    header = f"{'lazygrad':>8} {'PyTorch':>8} {'':>6}"
    print(f"{'workload':<9} {header}  {header}   build  schedule  launch  kernels")
    for r in results:
        s = r["split_ms"]
        wall = f"{r['lazygrad_ms']:8.3f} " + (
            f"{r['torch_ms']:8.3f} {r['ratio']:6.2f}" if "torch_ms" in r else " " * 15
        )
        cpu = f"{r['lazygrad_cpu_ms']:8.3f} " + (
            f"{r['torch_cpu_ms']:8.3f} {r['cpu_ratio']:6.2f}" if "torch_ms" in r else " " * 15
        )
        print(
            f"{r['workload']:<9} {wall}  {cpu}   {s['build']:5.3f}  {s['schedule']:8.3f}  {s['launch']:6.3f}  "
            f"{s['kernels']:7.3f}  ({r['kernels_per_step']} kernels)"
        )


if __name__ == "__main__":
    main()
