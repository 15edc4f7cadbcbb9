"""torch.utils.data's datasets and loader: Dataset, TensorDataset, Subset, random_split, DataLoader, Generator.

Batches are assembled on the host (numpy) and uploaded once per batch: indexing a device tensor sample by sample
would build a graph per sample. Shuffling draws a permutation on the host from a Generator (numpy's PCG64, not
torch's Mersenne twister: the same seed gives a different order than torch, the same order on every run).
Without a generator, the seed is derived from lazygrad.manual_seed's, so seeded programs shuffle reproducibly.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence

import numpy as np

from lazygrad import random as device_random
from lazygrad.dtype import float64, from_numpy_dtype, int64
from lazygrad.tensor import Tensor

__all__ = ["DataLoader", "Dataset", "Generator", "Subset", "TensorDataset", "default_collate", "random_split"]


class Generator:
    """A host random generator for shuffling and splitting (torch.Generator's seeding methods)."""

    def __init__(self, device: str = "cpu"):
        self._seed = 67280421310721  # torch.Generator's default seed
        self._rng = np.random.default_rng(self._seed)

    def manual_seed(self, seed: int) -> Generator:
        self._seed = int(seed)
        self._rng = np.random.default_rng(self._seed & 0xFFFFFFFFFFFFFFFF)
        return self

    def initial_seed(self) -> int:
        return self._seed

    def permutation(self, n: int) -> list:
        return self._rng.permutation(n).tolist()


_default_draws = itertools.count()


def _generator_or_default(generator: Generator | None) -> Generator:
    # a fresh stream per use, seeded from lazygrad.manual_seed's seed: reproducible when the program seeds
    return (
        generator
        if generator is not None
        else Generator().manual_seed(device_random.initial_seed() * 1_000_003 + next(_default_draws))
    )


class Dataset:
    """A map-style dataset: __getitem__(index) and __len__."""

    def __getitem__(self, index):
        raise NotImplementedError(f"{type(self).__name__} must implement __getitem__")

    def __add__(self, other: Dataset) -> ConcatDataset:
        return ConcatDataset([self, other])


class TensorDataset(Dataset):
    """Samples are the index-th rows of each tensor (all share their first dimension)."""

    def __init__(self, *tensors: Tensor):
        if any(t.shape[0] != tensors[0].shape[0] for t in tensors):
            raise ValueError(f"Size mismatch between tensors: {[tuple(t.shape) for t in tensors]}")
        self.tensors = tensors
        self._host: list | None = None  # the tensors' values, read once when batches are gathered

    def __getitem__(self, index):
        return tuple(t[index] for t in self.tensors)

    def __len__(self) -> int:
        return self.tensors[0].shape[0]

    def batch(self, indices: list) -> tuple:
        """The rows at `indices` of each tensor, gathered on the host and uploaded as one tensor each."""
        if self._host is None:
            self._host = [t.numpy() for t in self.tensors]
        rows = np.asarray(indices, dtype=np.int64)
        return tuple(Tensor(h[rows], dtype=t.dtype, device=t.device) for h, t in zip(self._host, self.tensors))


class Subset(Dataset):
    def __init__(self, dataset: Dataset, indices: Sequence[int]):
        self.dataset, self.indices = dataset, list(indices)

    def __getitem__(self, index):
        if isinstance(index, list):
            return self.dataset[[self.indices[i] for i in index]]
        return self.dataset[self.indices[index]]

    def __len__(self) -> int:
        return len(self.indices)


class ConcatDataset(Dataset):
    def __init__(self, datasets: Sequence[Dataset]):
        self.datasets = list(datasets)
        self.cumulative_sizes = list(itertools.accumulate(len(d) for d in self.datasets))

    def __len__(self) -> int:
        return self.cumulative_sizes[-1] if self.cumulative_sizes else 0

    def __getitem__(self, index: int):
        if index < 0:
            index += len(self)
        which = next(i for i, end in enumerate(self.cumulative_sizes) if index < end)
        start = self.cumulative_sizes[which - 1] if which else 0
        return self.datasets[which][index - start]


def random_split(dataset: Dataset, lengths: Sequence, generator: Generator | None = None) -> list:
    """Disjoint random subsets of the given lengths (or fractions summing to 1, as torch rounds them)."""
    n = len(dataset)
    if math.isclose(sum(lengths), 1) and sum(lengths) <= 1:
        counts = [int(math.floor(n * f)) for f in lengths]
        for i in range(n - sum(counts)):  # the remainder, one each, round-robin (torch's rule)
            counts[i % len(counts)] += 1
        lengths = counts
    if sum(lengths) != n:
        raise ValueError("Sum of input lengths does not equal the length of the input dataset!")
    order = _generator_or_default(generator).permutation(n)
    ends = list(itertools.accumulate(lengths))
    return [Subset(dataset, order[end - length : end]) for length, end in zip(lengths, ends)]


def default_collate(batch: list):
    """Stacks a list of samples as torch's default_collate: tensors and arrays stacked, numbers made tensors
    (int64, float64), tuples and dicts collated field by field, strings left as lists."""
    first = batch[0]
    if isinstance(first, Tensor):
        return Tensor(np.stack([s.numpy() for s in batch]), dtype=first.dtype, device=first.device)
    if isinstance(first, np.ndarray):
        return Tensor(np.stack(batch), dtype=from_numpy_dtype(first.dtype))
    if isinstance(first, bool) or isinstance(first, np.bool_):
        return Tensor(np.array(batch, dtype=np.bool_))
    if isinstance(first, (int, np.integer)):
        return Tensor(np.array(batch, dtype=np.int64), dtype=int64)
    if isinstance(first, (float, np.floating)):
        return Tensor(np.array(batch, dtype=np.float64), dtype=float64)
    if isinstance(first, (str, bytes)):
        return list(batch)
    if isinstance(first, Mapping):
        return {key: default_collate([s[key] for s in batch]) for key in first}
    if isinstance(first, tuple) and hasattr(first, "_fields"):  # a namedtuple keeps its type
        return type(first)(*(default_collate(list(field)) for field in zip(*batch)))
    if isinstance(first, (tuple, list)):
        if any(len(s) != len(first) for s in batch):
            raise RuntimeError("each element in list of batch should be of equal size")
        return [default_collate(list(field)) for field in zip(*batch)]
    raise TypeError(
        f"default_collate: batch must contain tensors, numpy arrays, numbers, dicts or lists; found {type(first)}"
    )


class DataLoader:
    """Batches of a map-style dataset, in order or shuffled, as torch.utils.data.DataLoader.

    num_workers is accepted and the batches are made in this process (the same batches, in the same order)."""

    def __init__(
        self,
        dataset: Dataset,
        batch_size: int | None = 1,
        shuffle: bool = False,
        sampler=None,
        batch_sampler=None,
        num_workers: int = 0,
        collate_fn=None,
        pin_memory: bool = False,
        drop_last: bool = False,
        generator: Generator | None = None,
        **_ignored,
    ):
        if sampler is not None and shuffle:
            raise ValueError("sampler option is mutually exclusive with shuffle")
        self.dataset, self.batch_size, self.shuffle, self.drop_last = dataset, batch_size, shuffle, drop_last
        self.sampler, self.batch_sampler, self.generator = sampler, batch_sampler, generator
        self.collate_fn = collate_fn
        self.num_workers = num_workers

    def _indices(self) -> list:
        if self.sampler is not None:
            return list(self.sampler)
        if self.shuffle:
            return _generator_or_default(self.generator).permutation(len(self.dataset))
        return list(range(len(self.dataset)))

    def _batches(self):
        if self.batch_sampler is not None:
            yield from (list(b) for b in self.batch_sampler)
            return
        indices = self._indices()
        if self.batch_size is None:
            yield from ([i] for i in indices)
            return
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start : start + self.batch_size]
            if len(chunk) < self.batch_size and self.drop_last:
                return
            yield chunk

    def __iter__(self):
        for chunk in self._batches():
            if self.batch_size is None and self.batch_sampler is None:
                yield self.dataset[chunk[0]]
            elif self.collate_fn is None and isinstance(self.dataset, TensorDataset):
                yield self.dataset.batch(chunk)  # the fast path: one host gather and upload per tensor
            else:
                yield (self.collate_fn or default_collate)([self.dataset[i] for i in chunk])

    def __len__(self) -> int:
        if self.batch_sampler is not None:
            return len(self.batch_sampler)
        n = len(self.sampler) if self.sampler is not None else len(self.dataset)
        if self.batch_size is None:
            return n
        return n // self.batch_size if self.drop_last else math.ceil(n / self.batch_size)
