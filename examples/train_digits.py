"""Train a small convnet on scikit-learn's 8x8 handwritten digits with lazygrad, then report test accuracy.

    python examples/train_digits.py --epochs 8 --optimizer adam
    python examples/train_digits.py --quick     # a short run, for tests
    mpiexec -n 2 python examples/train_digits.py --distributed   # data-parallel on 2 ranks (docs/distributed.md)

The data ships with scikit-learn (1797 images, no download). Training batches all have the same shape (the last
partial batch of an epoch is dropped), so after the first step every kernel comes from the cache.
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

import lazygrad
import lazygrad.nn.functional as F
from lazygrad import nn, optim


def load_data(seed: int):
    digits = load_digits()
    images = digits.images.astype(np.float32)[:, None] / 16.0  # (N, 1, 8, 8), pixel values 0..16
    x_train, x_test, y_train, y_test = train_test_split(
        images, digits.target.astype(np.int64), test_size=0.2, random_state=seed, stratify=digits.target
    )
    mean, std = x_train.mean(), x_train.std()
    return (x_train - mean) / std, (x_test - mean) / std, y_train, y_test


def make_model() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 8x8 -> 4x4
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),  # 4x4 -> 2x2
        nn.Flatten(),
        nn.Linear(32 * 2 * 2, 10),
    )


def progress_bar(epoch: int, epochs: int, done: int, total: int, loss: float, width: int = 30) -> None:
    """Redrawn in place on a terminal; drawn once, when the epoch is done, into a log or a pipe."""
    if not sys.stdout.isatty() and done < total:
        return
    filled = width * done // total
    bar = "#" * filled + "." * (width - filled)
    sys.stdout.write(f"\repoch {epoch}/{epochs} [{bar}] {done}/{total} loss {loss:.4f}")
    sys.stdout.flush()


def accuracy(model: nn.Module, images: np.ndarray, labels: np.ndarray) -> float:
    model.eval()
    with lazygrad.no_grad():
        predictions = model(lazygrad.tensor(images)).argmax(1).numpy()
    model.train()
    return float((predictions == labels).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--optimizer", choices=["adam", "sgd"], default="adam")
    parser.add_argument("--lr", type=float, default=None, help="default: 0.01 for Adam, 0.05 for SGD")
    parser.add_argument("--quick", action="store_true", help="a short run: 2 epochs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--distributed", action="store_true", help="data-parallel on the ranks mpiexec started; --batch-size is global"
    )
    args = parser.parse_args()
    epochs = 2 if args.quick else args.epochs

    rank, world = 0, 1
    if args.distributed:
        import lazygrad.distributed as dist

        dist.init_process_group()
        rank, world = dist.get_rank(), dist.get_world_size()
    lazygrad.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    x_train, x_test, y_train, y_test = load_data(args.seed)
    model = make_model()
    if args.distributed:
        # rank 0's initial parameters everywhere; gradients averaged across ranks after each backward()
        model = nn.parallel.DistributedDataParallel(model)
        sampler = dist.DistributedSampler(len(x_train), shuffle=True, seed=args.seed, drop_last=True)
    if args.optimizer == "adam":
        optimizer = optim.Adam(model.parameters(), lr=args.lr or 1e-2)
    else:
        optimizer = optim.SGD(model.parameters(), lr=args.lr or 0.05, momentum=0.9, weight_decay=1e-4)
    say = print if rank == 0 else (lambda *_, **__: None)
    say(f"backend {lazygrad.Device.DEFAULT}: {len(x_train)} training and {len(x_test)} test images, {epochs} epochs")
    if world > 1:
        say(f"{world} ranks, {args.batch_size // world} images of each batch of {args.batch_size} per rank")

    def train_step(images: lazygrad.Tensor, labels: lazygrad.Tensor) -> lazygrad.Tensor:
        def closure():
            optimizer.zero_grad()
            loss = F.cross_entropy(model(images), labels)
            loss.backward()
            return loss

        return optimizer.step(closure)  # the loss is realized with the update, in one schedule

    local_batch = args.batch_size // world
    batches_per_epoch = len(x_train) // args.batch_size
    for epoch in range(1, epochs + 1):
        start, losses = time.perf_counter(), []
        if args.distributed:
            sampler.set_epoch(epoch)  # a new shuffle each epoch, the same on every rank; this rank's share of it
            order = np.array(list(sampler))
        else:
            order = rng.permutation(len(x_train))
        for batch in range(batches_per_epoch):
            index = order[batch * local_batch : (batch + 1) * local_batch]
            loss = train_step(lazygrad.tensor(x_train[index]), lazygrad.tensor(y_train[index]))
            losses.append(loss.item())  # this rank's loss on its share of the batch
            if rank == 0:
                progress_bar(epoch, epochs, batch + 1, batches_per_epoch, float(np.mean(losses)))
        test_accuracy = accuracy(model, x_test, y_test)  # on every rank: DDP's forward broadcasts the buffers
        say(f"  {time.perf_counter() - start:.1f} s, test accuracy {test_accuracy:.4f}")
    test_accuracy = accuracy(model, x_test, y_test)
    say(f"test accuracy: {test_accuracy:.4f}")


if __name__ == "__main__":
    main()
