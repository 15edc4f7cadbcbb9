"""One ResNet-18 training step, following PyTorch's autograd tutorial step for step, with lazygrad.

    python examples/resnet18_step.py --weights none --batch-size 1 --image-size 64 --steps 1

With --viz step.html, the first training step is captured as a page of its kernels and why they fused
(docs/viz.md); with --trace step.json, as a Chrome trace (open it in https://ui.perfetto.dev or chrome://tracing).

Everything is lazy: a phase's time is the time of what it computed. The forward phase computes the prediction (to
show it); backward() only adds the gradient graph, so the optimizer step is where the backward pass and the update
run, fused into one schedule. The first step includes compiling the kernels; later steps reuse them.
"""

from __future__ import annotations

import argparse
import time
from contextlib import ExitStack, contextmanager

import lazygrad
import lazygrad.viz
from lazygrad.models import resnet18
from lazygrad.optim import SGD


@contextmanager
def phase(name: str):
    """Print the wall time, kernels launched and kernels compiled by the code in the with-block."""
    start = time.perf_counter()
    with lazygrad.profile() as profile:
        yield
    elapsed = time.perf_counter() - start
    print(
        f"  {name:<34} {elapsed * 1e3:9.1f} ms  {profile.kernels:4d} kernels  "
        f"{profile.compiled:4d} compiled ({profile.compile_seconds:.2f} s)",
        flush=True,
    )


def load_model(weights: str):
    if weights == "none":
        return resnet18(weights=None)
    if weights == "default":
        try:
            return resnet18(weights="DEFAULT")
        except Exception as error:  # offline and not in the torch hub cache, or an unreadable file
            print(f"pretrained weights unavailable ({type(error).__name__}: {error}); using random initialization")
            return resnet18(weights=None)
    return resnet18(weights=weights)  # a checkpoint path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", default="default", help="none | default (ImageNet, from the torch hub) | PATH")
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=1, help="training steps before predicting again")
    parser.add_argument(
        "--viz", metavar="PAGE.html", help="write the first step's kernels and fusion reasons as a page"
    )
    parser.add_argument("--trace", metavar="TRACE.json", help="write the first step's timeline as a Chrome trace")
    args = parser.parse_args()

    lazygrad.manual_seed(0)
    print(f"backend: {lazygrad.Device.DEFAULT}")
    with phase("load model"):
        model = load_model(args.weights)
    data = lazygrad.rand(args.batch_size, 3, args.image_size, args.image_size)
    labels = lazygrad.rand(args.batch_size, 1000)
    print(f"data {tuple(data.shape)} on {data.device}, labels {tuple(labels.shape)}")

    optim = None
    for step in range(1, args.steps + 1):
        print(f"training step {step}:")
        with ExitStack() as recording:
            if step == 1 and args.viz:
                viz = recording.enter_context(lazygrad.viz.capture(args.viz))
            if step == 1 and args.trace:
                trace = recording.enter_context(lazygrad.profile())
            with phase("forward: prediction = model(data)"):
                prediction = model(data).realize()
            print(f"  prediction shape: {tuple(prediction.shape)}")
            with phase("loss = (prediction - labels).sum()"):
                loss = (prediction - labels).sum()
                loss_value = loss.item()
            print(f"  loss: {loss_value:.4f}")
            with phase("loss.backward() (builds the graph)"):
                loss.backward()
            if optim is None:
                optim = SGD(model.parameters(), lr=1e-2, momentum=0.9)
            with phase("optim.step() (backward + update)"):
                optim.step()
            optim.zero_grad()
        if step == 1 and args.viz:
            print(f"  wrote {args.viz}: {viz.profile.kernels} kernels")
        if step == 1 and args.trace:
            trace.export_chrome_trace(args.trace)
            print(f"  wrote {args.trace}: {len(trace.events)} events")

    print("predict again:")
    with phase("forward: prediction = model(data)"):
        prediction = model(data).realize()
    print(f"  prediction shape: {tuple(prediction.shape)}")
    print(f"  new loss: {(prediction - labels).sum().item():.4f}")


if __name__ == "__main__":
    main()
