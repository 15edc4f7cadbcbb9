"""Data-parallel scaling of a ResNet-18 training step: one process, then DistributedDataParallel on 1 and 2 ranks.

    python examples/distributed_benchmark.py                        # 8x3x224x224 per rank, 1 thread per rank
    python examples/distributed_benchmark.py --batch-size 2 --image-size 64 --steps 3

Each rank trains on its own batch of --batch-size images (weak scaling: 2 ranks do twice the work of one), with
LAZYGRAD_THREADS=1, so that N ranks use N cores. A step is forward, loss = (prediction - labels).sum(), backward,
SGD(lr=1e-2, momentum=0.9).step(), without @lazygrad.jit (DistributedDataParallel averages gradients through MPI,
which a replay would skip). The scaling efficiency is the one-process step time divided by the 2-rank step time
(1.0: two ranks process twice the images in the same time). Medians over --steps steps after --warmup steps.

Ranks are started with the mpiexec beside this interpreter (pip install 'lazygrad[distributed]'), or on PATH.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path


def worker(args) -> None:
    """One rank (or the lone process): time the steps, print one JSON line from rank 0."""
    import lazygrad
    import lazygrad.distributed as dist
    from lazygrad.models import resnet18
    from lazygrad.nn.parallel import DistributedDataParallel
    from lazygrad.optim import SGD

    rank, world = 0, 1
    if args.ddp:
        dist.init_process_group()
        rank, world = dist.get_rank(), dist.get_world_size()
    lazygrad.manual_seed(rank)
    model = resnet18()
    if args.ddp:
        model = DistributedDataParallel(model)
    optimizer = SGD(model.parameters(), lr=1e-2, momentum=0.9)
    data = lazygrad.rand(args.batch_size, 3, args.image_size, args.image_size).realize()
    labels = lazygrad.rand(args.batch_size, 1000).realize()
    times = []
    for step in range(args.warmup + args.steps):
        if args.ddp:
            dist.barrier()  # every rank starts the step together: the time is the slowest rank's
        start = time.perf_counter()
        loss = (model(data) - labels).sum()
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        loss.item()
        if args.ddp:
            dist.barrier()
        if step >= args.warmup:
            times.append(time.perf_counter() - start)
    result = {"world": world, "ddp": args.ddp, "median_s": statistics.median(times), "times": times}
    if args.ddp:
        # the exchange alone: what averaging gradients costs (pack on the device, to the host, MPI, upload), on
        # realized tensors shaped like the gradients, in DDP's buckets
        buckets = [[lazygrad.zeros_like(p).contiguous().realize() for p in bucket] for bucket in model._buckets]
        exchange = []
        for _ in range(3):
            dist.barrier()
            start = time.perf_counter()
            averaged = dist.all_reduce_buckets(buckets, dist.ReduceOp.AVG)
            lazygrad.realize(*[t for bucket in averaged for t in bucket])
            exchange.append(time.perf_counter() - start)
        result["exchange_s"] = statistics.median(exchange)
        result["exchange_mb"] = sum(p.numel() * p.dtype.itemsize for p in model.parameters()) / 2**20
    if rank == 0:
        print(json.dumps(result))
    if args.ddp:
        dist.destroy_process_group()


def run(ranks: int | None, args) -> dict:
    """Start one measurement (ranks=None: one plain process, no DDP) and return rank 0's JSON line."""
    command = [
        sys.executable,
        __file__,
        "--worker",
        f"--batch-size={args.batch_size}",
        f"--image-size={args.image_size}",
        f"--steps={args.steps}",
        f"--warmup={args.warmup}",
    ]
    if ranks is not None:
        beside = Path(sys.executable).with_name("mpiexec")
        launcher = str(beside) if beside.exists() else shutil.which("mpiexec")
        if launcher is None:
            sys.exit("no mpiexec: pip install 'lazygrad[distributed]'")
        command = [launcher, "-n", str(ranks), *command, "--ddp"]
    env = {**os.environ, "LAZYGRAD_THREADS": "1", "OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1"}
    done = subprocess.run(command, stdin=subprocess.DEVNULL, capture_output=True, text=True, env=env)
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stdout}{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch-size", type=int, default=8, help="images per rank")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--warmup", type=int, default=2, help="steps not timed (the first compiles the kernels)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--ddp", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return

    import lazygrad

    shape = f"{args.batch_size}x3x{args.image_size}x{args.image_size}"
    print(f"ResNet-18 training step, {shape} per rank, 1 thread per rank, backend {lazygrad.Device.DEFAULT}")
    single = run(None, args)
    print(f"  1 process, no DDP     {single['median_s'] * 1e3:9.1f} ms")
    results = {}
    for ranks in (1, 2):
        results[ranks] = run(ranks, args)
        per_image = results[ranks]["median_s"] / (ranks * args.batch_size)
        print(f"  DDP on {ranks} rank{'s' if ranks > 1 else ' '}        {results[ranks]['median_s'] * 1e3:9.1f} ms"
              f"   ({per_image * 1e3:.1f} ms per image; of the step, averaging {results[ranks]['exchange_mb']:.0f} MB"
              f" of gradients alone takes {results[ranks]['exchange_s'] * 1e3:.0f} ms)")  # fmt: skip
    print(f"scaling efficiency on 2 ranks: {single['median_s'] / results[2]['median_s']:.2f} against one process, "
          f"{results[1]['median_s'] / results[2]['median_s']:.2f} against DDP on 1 rank (1.00 is perfect)")  # fmt: skip


if __name__ == "__main__":
    main()
