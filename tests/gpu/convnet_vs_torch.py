"""A small convnet, forward and backward, on lazygrad's current backend and on PyTorch (cuda when present).

Same weights and inputs on both; compares the logits, the loss and every gradient, then times one training step
(forward + backward) of each. Exits 1 on a mismatch.

    LAZYGRAD_BACKEND=opencl python3 tests/gpu/convnet_vs_torch.py
"""

from __future__ import annotations

import sys
import time

import numpy as np
import torch

import lazygrad
from lazygrad.nn import functional as F

BATCH, CLASSES = 16, 10
RTOL, ATOL = 2e-3, 2e-4


def make_inputs(seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)

    def weights(*shape):
        fan_in = int(np.prod(shape[1:]))
        return (rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32)

    return {
        "image": rng.standard_normal((BATCH, 3, 32, 32)).astype(np.float32),
        "conv1": weights(16, 3, 3, 3),
        "bias1": np.zeros(16, np.float32) + 0.01,
        "conv2": weights(32, 16, 3, 3),
        "fc": weights(CLASSES, 32 * 8 * 8),
        "labels": rng.integers(0, CLASSES, BATCH),
    }


def forward(lib, fn, t: dict):
    """The network, written once for both libraries (`lib` gives relu/pooling/cross_entropy, `fn` is F)."""
    x = fn.conv2d(t["image"], t["conv1"], t["bias1"], padding=1).relu()
    x = fn.max_pool2d(x, 2)
    x = fn.conv2d(x, t["conv2"], padding=1, stride=1).relu()
    x = fn.avg_pool2d(x, 2)
    logits = fn.linear(x.reshape(BATCH, -1), t["fc"])
    return logits, fn.cross_entropy(logits, t["labels"])


def run_lazygrad(arrays: dict):
    t = {k: lazygrad.Tensor(v, requires_grad=(k != "labels" and k != "image")) for k, v in arrays.items()}
    logits, loss = forward(lazygrad, F, t)
    loss.backward()
    grads = {k: t[k].grad.numpy() for k in ("conv1", "bias1", "conv2", "fc")}
    return logits.numpy(), loss.numpy(), grads


def run_torch(arrays: dict, device: str):
    t = {k: torch.tensor(v, device=device, requires_grad=(k not in ("labels", "image"))) for k, v in arrays.items()}
    logits, loss = forward(torch, torch.nn.functional, t)
    loss.backward()
    grads = {k: t[k].grad.cpu().numpy() for k in ("conv1", "bias1", "conv2", "fc")}
    return logits.detach().cpu().numpy(), loss.detach().cpu().numpy(), grads


def median_seconds(step, repeats: int = 5) -> float:
    step()  # compile / warm up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def main() -> int:
    torch.backends.cuda.matmul.allow_tf32 = False  # compare against full float32 arithmetic
    torch.backends.cudnn.allow_tf32 = False
    device = "cuda" if torch.cuda.is_available() else "cpu"
    arrays = make_inputs()
    print(f"lazygrad on {lazygrad.Device.DEFAULT}; torch on {device}")
    ours, theirs = run_lazygrad(arrays), run_torch(arrays, device)
    failures = []
    pairs = [("logits", ours[0], theirs[0]), ("loss", ours[1], theirs[1])]
    pairs += [(f"grad {k}", ours[2][k], theirs[2][k]) for k in ours[2]]
    for name, a, b in pairs:
        error = float(np.max(np.abs(a - b) / (ATOL + RTOL * np.abs(b))))
        print(f"  {name:<12} max |diff| {float(np.max(np.abs(a - b))):.3e}  (tolerance ratio {error:.3f})")
        if not np.allclose(a, b, rtol=RTOL, atol=ATOL):
            failures.append(name)

    def torch_step():
        run_torch(arrays, device)
        if device == "cuda":
            torch.cuda.synchronize()

    print(
        f"step time: lazygrad {median_seconds(lambda: run_lazygrad(arrays)) * 1e3:.1f} ms, "
        f"torch {median_seconds(torch_step) * 1e3:.1f} ms (both include host transfers)"
    )
    print("MISMATCH: " + ", ".join(failures) if failures else "convnet forward+backward matches torch")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
