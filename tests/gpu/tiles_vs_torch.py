"""Matrix products at the ResNet-18 step's sizes: each local-memory tile of lazygrad/codegen/tiling.py, the
heuristics' choice and the plain kernel (no local tile), against torch.matmul on cuda (float32, and TF32 as
PyTorch's convolutions use by default). Checks every result against torch's float32 product.

    LAZYGRAD_BACKEND=opencl python3 tests/gpu/tiles_vs_torch.py
"""

from __future__ import annotations

import dataclasses
import statistics
import sys
import time

import numpy as np
import torch

from lazygrad import Tensor, backends, runtime
from lazygrad.codegen import tiling
from lazygrad.codegen.lowering import KernelOptions

# (m, k, n): layer 4's 3x3 conv at batch 32 (as columns), layer 1's, a weight gradient, a square product
SHAPES = [(1568, 4608, 512), (100352, 576, 64), (4608, 6272, 512), (4096, 4096, 4096)]
RUNS = 5


def timed(fn) -> float:
    fn()  # compile, warm up
    times = []
    for _ in range(RUNS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    shapes = [(100, 70, 90), (256, 128, 64)] if "--small" in sys.argv else SHAPES  # --small: a quick try on a CPU
    device = "opencl"
    backend = backends.get(device)
    print(f"lazygrad on {backend.device_name}; capabilities {backend.capabilities}")
    cuda = torch.cuda.is_available()
    failures = 0
    for m, k, n in shapes:
        rng = np.random.default_rng(m + k + n)
        a = rng.standard_normal((m, k), dtype=np.float32)
        b = rng.standard_normal((k, n), dtype=np.float32)
        flops = 2 * m * n * k
        ta, tb = Tensor(a, device=device), Tensor(b, device=device)
        ta.realize(), tb.realize()
        want = None
        line = [f"{m}x{k}x{n}:"]
        if cuda:
            ca, cb = torch.tensor(a, device="cuda"), torch.tensor(b, device="cuda")
            for tf32 in (False, True):
                torch.backends.cuda.matmul.allow_tf32 = tf32

                def product(ca=ca, cb=cb):
                    out = ca @ cb
                    torch.cuda.synchronize()
                    return out

                seconds = timed(product)
                line.append(f"torch {'tf32' if tf32 else 'fp32'} {flops / seconds / 1e12:.1f} TFLOP/s")
            torch.backends.cuda.matmul.allow_tf32 = False
            want = (ca @ cb).cpu().numpy()
        else:
            want = a @ b
        choices = {"heuristics": None, "no local tile": KernelOptions()}
        choices.update(
            {
                "x".join(map(str, dataclasses.astuple(t)[:3])): KernelOptions(local_tile=dataclasses.astuple(t))
                for t in tiling.TILES
            }
        )
        for label, options in choices.items():
            if options is None:
                context = runtime.forced_options(lambda name, nest: None)
            else:
                context = runtime.forced_options(
                    lambda name, nest, o=options: o if nest.n_output < len(nest.shape) else None
                )
            with context:
                result = {}

                def product(ta=ta, tb=tb, result=result):
                    out = (ta @ tb).realize()
                    backend.synchronize()
                    result["out"] = out

                try:
                    seconds = timed(product)
                except backends.CompileError as e:
                    line.append(f"{label}: {str(e).splitlines()[0][:80]}")
                    continue
                got = result["out"].numpy()
            error = float(np.abs(got - want).max() / (np.abs(want).max() + 1e-30))
            ok = error < 1e-4
            failures += not ok
            line.append(
                f"{label} {flops / seconds / 1e12:.2f} TFLOP/s{'' if ok else f' WRONG (rel. error {error:.1e})'}"
            )
        print("  " + "\n    ".join(line), flush=True)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
