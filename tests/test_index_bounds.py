"""Indices outside their dimension raise IndexError naming the op, the dim, its size and the bad index, where torch
raises too (never a silently wrong value); negative indices keep torch's meaning: counted from the end where torch
allows them, an error where it does not. The checks read the index on the host (lazygrad/tensor_ops/bounds.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as TF
from helpers import assert_same

import lazygrad
import lazygrad.nn.functional as F

X = np.arange(12, dtype=np.float32).reshape(3, 4)

# name -> (call(module, x, functional, index), the index's dim, that dim's size); the index is an int64 array
CALLS = {
    "gather": (lambda m, x, f, i: x.gather(1, m.tensor(i).reshape(3, 1)), 1, 4),
    "scatter": (lambda m, x, f, i: x.scatter(1, m.tensor(i).reshape(3, 1), 1.0), 1, 4),
    "scatter_add": (lambda m, x, f, i: x.scatter_add(1, m.tensor(i).reshape(3, 1), m.ones(3, 1)), 1, 4),
    "scatter_reduce": (lambda m, x, f, i: x.scatter_reduce(1, m.tensor(i).reshape(3, 1), m.ones(3, 1), "amax"), 1, 4),
    "index_select": (lambda m, x, f, i: x.index_select(1, m.tensor(i)), 1, 4),
    "index_add": (lambda m, x, f, i: x.index_add(1, m.tensor(i), m.ones(3, 3)), 1, 4),
    "index_copy": (lambda m, x, f, i: x.index_copy(1, m.tensor(i), m.ones(3, 3)), 1, 4),
    "index_fill": (lambda m, x, f, i: x.index_fill(1, m.tensor(i), 0.0), 1, 4),
    "take": (lambda m, x, f, i: x.take(m.tensor(i) * 4), None, 12),
    "take_along_dim": (lambda m, x, f, i: x.take_along_dim(m.tensor(i).reshape(3, 1), 1), 1, 4),
    "embedding": (lambda m, x, f, i: f.embedding(m.tensor(i), x.T), 0, 4),
    "index": (lambda m, x, f, i: x.T[m.tensor(i)], 0, 4),
    "index_list": (lambda m, x, f, i: x.T[i.tolist()], 0, 4),
    "index_two_tensors": (lambda m, x, f, i: x[m.tensor([0, 1, 2]), m.tensor(i)], 1, 4),
    "index_put_": (lambda m, x, f, i: x.T.clone().index_put_((m.tensor(i),), m.tensor(5.0)), 0, 4),
    "setitem": (lambda m, x, f, i: x.T.clone().__setitem__(m.tensor(i), 5.0), 0, 4),
    "cross_entropy": (lambda m, x, f, i: f.cross_entropy(x, m.tensor(i)), 1, 4),
    "nll_loss": (lambda m, x, f, i: f.nll_loss(x, m.tensor(i)), 1, 4),
}
# torch counts these negative indices from the end; the others refuse them
WRAPS_NEGATIVE = {"index_fill", "take", "take_along_dim", "index", "index_list", "index_two_tensors", "index_put_",
                  "setitem"}  # fmt: skip
# torch 2.13's CPU take_along_dim returns whatever lies past the end without an error; lazygrad raises, as gather does
TORCH_READS_PAST_THE_END = {"take_along_dim"}
TOO_BIG = np.array([1, 4, 0])  # 4: one past the end of a dim of size 4 (take: 16 of 12 elements)
NEGATIVE = np.array([-1, 0, 1])


def run(name, module, index):
    call = CALLS[name][0]
    if module is torch:
        return call(torch, torch.tensor(X), TF, index)
    return call(lazygrad, lazygrad.tensor(X), F, index)


@pytest.mark.backend_independent  # the check runs on the host before any kernel
@pytest.mark.parametrize("name", CALLS)
def test_an_index_past_the_end_is_an_index_error_naming_op_dim_size_and_index(name):
    if name not in TORCH_READS_PAST_THE_END:
        with pytest.raises((IndexError, RuntimeError)):
            run(name, torch, TOO_BIG)
    _, dim, size = CALLS[name]
    op = {"index_list": "index", "index_two_tensors": "index", "index_put_": "index", "setitem": "index"}.get(
        name, name
    )
    bad = 16 if name == "take" else 4
    where = f"a tensor of {size} elements" if dim is None else f"dimension {dim} with size {size}"
    with pytest.raises(IndexError, match=rf"{op}\(\): index {bad} is out of bounds for {where}"):
        run(name, lazygrad, TOO_BIG)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name", sorted(set(CALLS) - WRAPS_NEGATIVE))
def test_a_negative_index_is_an_error_where_torch_refuses_it(name):
    with pytest.raises((IndexError, RuntimeError)):
        run(name, torch, NEGATIVE)
    with pytest.raises(IndexError, match="index -1 is out of bounds"):
        run(name, lazygrad, NEGATIVE)


@pytest.mark.parametrize("name", sorted(WRAPS_NEGATIVE - {"setitem"}))
def test_negative_indices_count_from_the_end_as_in_torch(name):
    assert_same(run(name, lazygrad, NEGATIVE), run(name, torch, NEGATIVE))


def test_setitem_with_a_negative_index_writes_from_the_end_as_in_torch():
    ours, theirs = lazygrad.tensor(X.T.copy()), torch.tensor(X.T.copy())
    ours[lazygrad.tensor(NEGATIVE)] = 5.0
    theirs[torch.tensor(NEGATIVE)] = 5.0
    assert_same(ours, theirs)


def test_a_lazy_index_is_computed_then_checked():
    lazy = lazygrad.tensor([[1], [2], [0]]) * 2  # [[2], [4], [0]]: 4 is past the end, known only once computed
    with pytest.raises(IndexError, match="index 4 is out of bounds for dimension 1 with size 4"):
        lazygrad.tensor(X).gather(1, lazy)
    in_range = lazygrad.tensor([[1], [1], [0]]) * 2
    assert_same(lazygrad.tensor(X).gather(1, in_range), torch.tensor(X).gather(1, torch.tensor([[2], [2], [0]])))


def test_cross_entropy_allows_its_ignore_index_outside_the_classes():
    target = np.array([1, -100, 3])
    assert_same(
        F.cross_entropy(lazygrad.tensor(X), lazygrad.tensor(target)),
        TF.cross_entropy(torch.tensor(X), torch.tensor(target)),
    )


def test_an_index_not_uploaded_yet_is_checked_from_its_host_data():
    index = lazygrad.tensor(np.array([[4], [0], [1]]))
    with pytest.raises(IndexError, match="index 4 is out of bounds for dimension 1 with size 4"):
        lazygrad.tensor(X).gather(1, index.reshape(3, 1))
    assert index.lazydata.base.buffer is None  # read from the array it was made of: no upload, no device read
    in_range = lazygrad.tensor(np.array([[3], [0], [1]]))
    assert_same(lazygrad.tensor(X).gather(1, in_range), torch.tensor(X).gather(1, torch.tensor([[3], [0], [1]])))
