"""What each rank runs in tests/test_distributed.py: `mpiexec -n N python tests/distributed_ranks.py SCENARIO`.

Each scenario checks its own results against numpy (every rank can compute every rank's data: it is drawn from a
generator seeded by the rank), raises AssertionError when one is wrong (which aborts the job: lazygrad.distributed's
excepthook), and prints "rank R ok" when all of them hold. The backend comes from LAZYGRAD_BACKEND.
"""

from __future__ import annotations

import os
import sys
import time
from datetime import timedelta

import numpy as np

import lazygrad
import lazygrad.distributed as dist
from lazygrad import nn, optim


def data_of(rank: int, shape=(3, 5)) -> np.ndarray:
    return np.random.default_rng(100 + rank).standard_normal(shape).astype(np.float32)


def close(actual, expected, what: str) -> None:
    actual = np.asarray(actual)
    if not np.allclose(actual, expected, rtol=1e-5, atol=1e-6):
        raise AssertionError(f"rank {dist.get_rank()}: {what}: got\n{actual}\nexpected\n{expected}")


def collectives() -> None:
    rank, world = dist.get_rank(), dist.get_world_size()
    everyone = np.stack([data_of(r) for r in range(world)])
    expected = {"sum": everyone.sum(0), "avg": everyone.mean(0), "max": everyone.max(0), "min": everyone.min(0)}
    for name, want in expected.items():
        t = lazygrad.tensor(data_of(rank))
        dist.all_reduce(t, op=getattr(dist.ReduceOp, name.upper()))
        close(t.numpy(), want, f"all_reduce {name}")
    # an integer all_reduce, exact
    t = lazygrad.tensor(np.arange(6, dtype=np.int32) * (rank + 1))
    dist.all_reduce(t)
    assert (t.numpy() == np.arange(6) * sum(range(1, world + 1))).all(), t.numpy()
    # a lazy, non-contiguous input (a transposed expression) is realized and reduced like any other
    t = (lazygrad.tensor(data_of(rank)) * 2).T
    dist.all_reduce(t, op=dist.ReduceOp.SUM)
    close(t.numpy(), (everyone * 2).sum(0).T, "all_reduce of a lazy transposed view")

    src = world - 1
    t = lazygrad.tensor(data_of(rank))
    dist.broadcast(t, src=src)
    close(t.numpy(), data_of(src), "broadcast")

    gathered = [lazygrad.zeros(3, 5) for _ in range(world)]
    dist.all_gather(gathered, lazygrad.tensor(data_of(rank)))
    for r, t in enumerate(gathered):
        close(t.numpy(), data_of(r), f"all_gather[{r}]")

    # input_list[j] on rank r is data_of(10*r + j); output on rank r = sum over ranks s of data_of(10*s + r)
    inputs = [lazygrad.tensor(data_of(10 * rank + j)) for j in range(world)]
    out = lazygrad.empty(3, 5)
    dist.reduce_scatter(out, inputs, op=dist.ReduceOp.SUM)
    close(out.numpy(), sum(data_of(10 * s + rank) for s in range(world)), "reduce_scatter")

    # coalesced: one message for several tensors of different shapes
    shapes = [(2, 3), (7,), (1, 4, 2)]
    mine = [lazygrad.tensor(data_of(rank, s)) for s in shapes]
    for s, t in zip(shapes, dist.all_reduce_coalesced(mine, op=dist.ReduceOp.AVG)):
        close(t.numpy(), np.mean([data_of(r, s) for r in range(world)], 0), f"all_reduce_coalesced {s}")
    dist.barrier()


def mismatch() -> None:
    rank = dist.get_rank()
    shape = (3, 5) if rank == 0 else (4, 5)
    try:
        dist.all_reduce(lazygrad.tensor(data_of(rank, shape)))
        raise AssertionError("all_reduce of different shapes did not raise")
    except dist.DistributedError as e:
        print(f"rank {rank} caught: {e}", flush=True)
    try:  # models that differ: said when wrapped, naming the parameter
        nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(3, 2 + rank)))
        raise AssertionError("DistributedDataParallel of different models did not raise")
    except dist.DistributedError as e:
        print(f"rank {rank} caught: {e}", flush=True)


def raises() -> None:
    if dist.get_rank() == 1:
        raise ValueError("rank 1 fails on purpose")
    dist.all_reduce(lazygrad.tensor(data_of(0)))
    raise AssertionError("all_reduce returned although rank 1 never joined")


def killed() -> None:
    if dist.get_rank() == 1:
        os.kill(os.getpid(), 9)
    dist.all_reduce(lazygrad.tensor(data_of(0)))
    raise AssertionError("all_reduce returned although rank 1 was killed")


def hangs() -> None:
    if dist.get_rank() == 1:
        time.sleep(60)  # never joins; rank 0's timeout must end the job long before this
    dist.all_reduce(lazygrad.tensor(data_of(0)))
    raise AssertionError("all_reduce returned although rank 1 never joined")


def make_convnet(batch_norm: bool = False) -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 4, 3, padding=1),
        *([nn.BatchNorm2d(4)] if batch_norm else []),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(4 * 4 * 4, 3),
    )


def ddp_batches(world: int, local: int = 4) -> list[list[tuple[np.ndarray, np.ndarray]]]:
    """The global batches of each step (tests/test_distributed.py draws the same for its one-process reference);
    step 2 has two micro-batches, to accumulate."""
    rng = np.random.default_rng(7)
    return [
        [
            (rng.standard_normal((local * world, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, local * world))
            for _ in range(2 if step == 2 else 1)
        ]
        for step in range(3)
    ]


def ddp(out_path: str) -> None:
    """Each rank trains a convnet with SyncBatchNorm on its half of each global batch; rank 0 saves the parameters
    after the wrap, and the parameters and BatchNorm running statistics after each step, for the test to compare with
    one process on the whole batch. In step 2 two micro-batches accumulate, the first under no_sync()."""
    rank, world = dist.get_rank(), dist.get_world_size()
    lazygrad.manual_seed(1234 + rank)  # different initial weights on each rank: the wrap must broadcast rank 0's
    model = nn.parallel.DistributedDataParallel(nn.SyncBatchNorm.convert_sync_batchnorm(make_convnet(batch_norm=True)))
    assert isinstance(model.module[1], nn.SyncBatchNorm)
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    saved = {"initial": [p.numpy() for p in model.parameters()]}
    local = 4
    part = slice(rank * local, (rank + 1) * local)
    for step, batches in enumerate(ddp_batches(world, local)):
        for i, (x, y) in enumerate(batches):
            with model.no_sync() if i < len(batches) - 1 else _nothing():
                loss_fn(model(lazygrad.tensor(x[part])), lazygrad.tensor(y[part])).backward()
        opt.step()
        opt.zero_grad()
        params = [p.numpy() for p in model.parameters()]
        mine = np.concatenate([p.ravel() for p in params])
        everyone = np.empty((world, mine.size), np.float32)
        dist._require_group().comm.Allgather(mine, everyone)
        if not (everyone == everyone[0]).all():
            raise AssertionError(f"step {step}: the ranks' parameters differ")
        saved[f"step{step}"] = params
        saved[f"buffers{step}"] = [model.module[1].running_mean.numpy(), model.module[1].running_var.numpy()]
    if rank == 0:
        np.savez(out_path, **{f"{key}_{i}": p for key, ps in saved.items() for i, p in enumerate(ps)})


def resume(mode: str, checkpoint: str, out_path: str) -> None:
    """Two epochs of DDP training with a DistributedSampler, straight through (mode "straight"), or the first epoch
    then a checkpoint that rank 0 saves (model, optimizer, sampler), and a new job that loads it and trains the
    second ("first", then "resume"). Rank 0 saves its per-step losses and final parameters for the test to compare."""
    rank = dist.get_rank()
    lazygrad.manual_seed(99)
    model = nn.parallel.DistributedDataParallel(make_convnet())
    opt = optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(3)
    images, labels = rng.standard_normal((24, 1, 8, 8)).astype(np.float32), rng.integers(0, 3, 24)
    sampler = dist.DistributedSampler(len(images), shuffle=True, seed=11)
    start_epoch, epochs = 0, 2
    if mode == "resume":
        state = lazygrad.load(checkpoint)  # every rank reads it: the same start everywhere
        model.module.load_state_dict({k[len("model.") :]: v for k, v in state.items() if k.startswith("model.")})
        opt.load_state_dict(
            {
                "state": {i: {"momentum_buffer": state[f"optimizer.{i}.momentum_buffer"]} for i in range(4)},
                "param_groups": opt.state_dict()["param_groups"],
            }
        )
        sampler.load_state_dict({name: int(state[f"sampler.{name}"].item()) for name in ("epoch", "seed")})
        start_epoch = sampler.epoch + 1
    elif mode == "first":
        epochs = 1
    losses = []
    for epoch in range(start_epoch, epochs):
        sampler.set_epoch(epoch)
        order = list(sampler)
        for step in range(len(order) // 4):
            index = order[step * 4 : (step + 1) * 4]
            loss = loss_fn(model(lazygrad.tensor(images[index])), lazygrad.tensor(labels[index]))
            loss.backward()
            opt.step()
            opt.zero_grad()
            losses.append(loss.item())
    if mode == "first" and rank == 0:
        saved = {f"model.{k}": v for k, v in model.module.state_dict().items()}
        for i, param_state in opt.state_dict()["state"].items():
            saved[f"optimizer.{i}.momentum_buffer"] = param_state["momentum_buffer"]
        saved.update({f"sampler.{k}": np.array(v) for k, v in sampler.state_dict().items()})
        lazygrad.save(saved, checkpoint)
    if rank == 0:
        params = {f"arr_{i}": p.numpy() for i, p in enumerate(model.parameters())}
        np.savez(out_path, losses=np.array(losses), **params)


def misuse() -> None:
    """What DDP cannot do says so: a parameter left out of the loss, and a capture by lazygrad.jit."""
    model = nn.parallel.DistributedDataParallel(nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 2)))
    opt = optim.SGD(model.parameters(), lr=0.1)
    x = lazygrad.randn(4, 3)
    model.module[0](x).sum().backward()  # the second layer gets no gradient
    try:
        model(x)
        raise AssertionError("a forward after a backward that left parameters out did not raise")
    except RuntimeError as e:
        assert "gave no gradient to parameters 1.weight, 1.bias" in str(e), e
    model.zero_grad()

    @lazygrad.jit
    def step(x):
        loss = model(x).sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
        return loss

    step(x)  # the first call runs normally
    try:
        step(x)  # the second is captured
        raise AssertionError("a jit capture of a DDP step did not raise")
    except RuntimeError as e:
        assert "cannot run inside a lazygrad.jit capture" in str(e), e


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


SCENARIOS = {f.__name__: f for f in (collectives, mismatch, raises, killed, hangs, ddp, misuse, resume)}

if __name__ == "__main__":
    scenario, *arguments = sys.argv[1:]
    timeout = float(os.environ.get("DISTRIBUTED_TEST_TIMEOUT", "60"))
    dist.init_process_group(timeout=timedelta(seconds=timeout))
    SCENARIOS[scenario](*arguments)
    print(f"rank {dist.get_rank()} ok", flush=True)
    dist.destroy_process_group()
