"""Benchmark one ResNet-18 training step on lazygrad and on PyTorch, in the same process.

    python examples/benchmark.py                          # 1x3x64x64 on the default backend
    python examples/benchmark.py --batch-size 8 --image-size 224 --steps 5
    python examples/benchmark.py --first-step             # cold and warm-cache first steps, in new processes
    python examples/benchmark.py --json
    python examples/benchmark.py --no-jit --no-torch      # lazygrad's step without @lazygrad.jit
    LAZYGRAD_THREADS=1 python examples/benchmark.py --torch-threads 1 --cpu-time   # one thread each, CPU time

A step is the PyTorch autograd tutorial's: forward, loss = (prediction - labels).sum(), backward,
SGD(lr=1e-2, momentum=0.9).step(). lazygrad runs it under @lazygrad.jit (eagerly with --no-jit); PyTorch runs
eagerly. The two alternate step by step, after warm-up steps, so that both see the same machine load. Medians are
reported.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import lazygrad
from lazygrad.models import resnet18
from lazygrad.optim import SGD


def lazygrad_step_fn(batch: int, size: int, jitted: bool = True):
    model = resnet18()
    optimizer = SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def step(data, labels):
        loss = (model(data) - labels).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss

    if jitted:
        step = lazygrad.jit(step)

    def run():
        data, labels = lazygrad.rand(batch, 3, size, size).realize(), lazygrad.rand(batch, 1000).realize()
        return step(data, labels).item()

    return run


def torch_step_fn(batch: int, size: int, torch, device: str = "cpu"):
    from torch import nn

    model = _torch_resnet18(nn).to(device)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-2, momentum=0.9)

    def run():
        # loss.item() waits for the device, so a CUDA step is timed whole
        data = torch.rand(batch, 3, size, size, device=device)
        labels = torch.rand(batch, 1000, device=device)
        loss = (model(data) - labels).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        return loss.item()

    return run


def _torch_resnet18(nn):
    """torchvision's ResNet-18, written out (torchvision is not a dependency)."""

    class Block(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(out)) + identity)

    layers = [nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [Block(cin, cout, stride), Block(cout, cout, 1)]
        cin = cout
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(512, 1000)]
    return nn.Sequential(*layers)


def resnet18_step_flops(batch: int, size: int) -> float:
    """Multiply-adds of the convolutions and the linear layer, x2 for FLOPs, x3 for forward + two backward."""
    macs, s, cin = 0, size, 3
    s = (s + 2 * 3 - 7) // 2 + 1
    macs += 64 * 3 * 49 * s * s
    s = (s + 2 - 3) // 2 + 1
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        for block in range(2):
            st = stride if block == 0 else 1
            s_out = (s + 2 - 3) // st + 1
            macs += cout * cin * 9 * s_out * s_out + cout * cout * 9 * s_out * s_out
            if st != 1 or cin != cout:
                macs += cout * cin * s_out * s_out
            s, cin = s_out, cout
    macs += 512 * 1000
    return 2.0 * 3 * macs * batch


def measure(args) -> dict:
    result = {"backend": lazygrad.Device.DEFAULT, "batch": args.batch_size, "image": args.image_size}
    try:
        import torch

        torch.set_num_threads(args.torch_threads or os.cpu_count() or 1)
    except ImportError:
        torch = None
    if args.no_torch:
        torch = None
    t0 = time.perf_counter()
    lg_step = lazygrad_step_fn(args.batch_size, args.image_size, jitted=not args.no_jit)
    with lazygrad.profile(timed=False) as first:
        lg_step()
    result["first_step_s"] = time.perf_counter() - t0
    result["compiled"] = first.compiled
    result["compile_s"] = first.compile_seconds
    lg_step()  # the JIT captures this one
    with lazygrad.profile(timed=False) as p:
        lg_step()
    result["kernels_per_step"] = p.kernels
    if args.profile:
        with lazygrad.profile() as timed:
            lg_step()
        print("\n".join(str(timed).splitlines()[: args.profile + 1]))
        print(str(timed).splitlines()[-1])
    th_step = torch_step_fn(args.batch_size, args.image_size, torch, args.torch_device) if torch else None
    result["torch_device"] = args.torch_device
    result["clock"] = "cpu" if args.cpu_time else "wall"
    for _ in range(args.warmup):
        lg_step()
        if th_step:
            th_step()
    lg_times, th_times = [], []
    clock = time.process_time if args.cpu_time else time.perf_counter
    for _ in range(args.steps):
        t = clock()
        lg_step()
        lg_times.append(clock() - t)
        if th_step:
            t = clock()
            th_step()
            th_times.append(clock() - t)
    flops = resnet18_step_flops(args.batch_size, args.image_size)
    result["lazygrad_ms"] = _summary(lg_times)
    result["lazygrad_gflops"] = flops / statistics.median(lg_times) / 1e9
    if th_times:
        result["torch_ms"] = _summary(th_times)
        result["ratio"] = statistics.median(lg_times) / statistics.median(th_times)
    return result


def _summary(times: list) -> dict:
    ms = [t * 1e3 for t in times]
    return {"median": statistics.median(ms), "min": min(ms), "max": max(ms), "n": len(ms)}


def first_steps(args) -> dict:
    """The first step of a new process, with an empty kernel cache and then with the cache it left.
    Start-up (imports, building the model) is reported apart from the step itself."""
    out = {}
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, LAZYGRAD_CACHE_DIR=cache)
        code = (
            "import time; t0 = time.perf_counter(); import sys; sys.path.insert(0, 'examples');"
            "import benchmark as b, lazygrad;"
            f"step = b.lazygrad_step_fn({args.batch_size}, {args.image_size}); t1 = time.perf_counter(); step();"
            "print(t1 - t0, time.perf_counter() - t1)"
        )
        here = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        for name in ("cold", "warm"):
            run = subprocess.run([sys.executable, "-c", code], env=env, cwd=here, capture_output=True, text=True)
            if run.returncode != 0:
                raise RuntimeError(run.stderr)
            startup, step = map(float, run.stdout.strip().splitlines()[-1].split())
            out[f"{name}_startup_s"], out[f"{name}_first_step_s"] = startup, step
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--first-step", action="store_true", help="also time first steps in new processes")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-torch", action="store_true", help="time lazygrad alone (PyTorch's idle threads spin)")
    parser.add_argument("--torch-device", default="cpu", help="where PyTorch runs (cpu, or cuda on a GPU machine)")
    parser.add_argument("--profile", type=int, default=0, metavar="N", help="print the N slowest kernels of a step")
    parser.add_argument("--no-jit", action="store_true", help="run lazygrad's step eagerly, without @lazygrad.jit")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch.set_num_threads (default: all cores)")
    parser.add_argument(
        "--cpu-time",
        action="store_true",
        help="time steps in CPU seconds of the process (time.process_time) instead of wall time: with "
        "LAZYGRAD_THREADS=1 and --torch-threads 1, the work each step does, little disturbed by other processes",
    )
    args = parser.parse_args()
    result = measure(args)
    if args.first_step:
        result.update(first_steps(args))
    if args.json:
        print(json.dumps(result, indent=2))
        return
    lg_ms = result["lazygrad_ms"]
    unit = "ms CPU" if args.cpu_time else "ms"
    print(
        f"ResNet-18 training step, {args.batch_size}x3x{args.image_size}x{args.image_size}, "
        f"lazygrad on {result['backend']}"
    )
    print(
        f"  lazygrad ({'eager' if args.no_jit else 'jit'})  median {lg_ms['median']:8.1f} {unit}  "
        f"(min {lg_ms['min']:.1f}, max {lg_ms['max']:.1f}, "
        f"n={lg_ms['n']})  {result['lazygrad_gflops']:.1f} GFLOP/s"
    )
    if "torch_ms" in result:
        th = result["torch_ms"]
        print(
            f"  PyTorch (eager, {result['torch_device']}) median {th['median']:8.1f} {unit}  "
            f"(min {th['min']:.1f}, max {th['max']:.1f})"
        )
        print(f"  ratio lazygrad/PyTorch: {result['ratio']:.2f}")
    print(
        f"  first step {result['first_step_s']:.2f} s ({result['compiled']} kernels compiled in "
        f"{result['compile_s']:.2f} s); {result['kernels_per_step']} kernels per step"
    )
    if args.first_step:
        print(
            f"  new process, empty kernel cache: first step {result['cold_first_step_s']:.2f} s (after "
            f"{result['cold_startup_s']:.2f} s of imports and model building); warm cache: first step "
            f"{result['warm_first_step_s']:.2f} s (after {result['warm_startup_s']:.2f} s)"
        )


if __name__ == "__main__":
    main()
