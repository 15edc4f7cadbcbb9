"""PyTorch's surface where the OpInfo database (tests/test_opinfo.py) does not reach: calls that once gave wrong
numbers or raised (issue 15), each against torch from the same inputs.
"""

import numpy as np
import pytest
import torch
from helpers import assert_same, check_forward, check_grad, rand

import lazygrad

# ---- cumsum: once returned [14, 12, 9, 5, 0] for [1, 2, 3, 4, 5] ---------------------------------------


def test_cumsum_of_a_vector_is_the_running_sum():
    check_forward(lambda a: a.cumsum(0), np.array([1.0, 2, 3, 4, 5], dtype=np.float32))


@pytest.mark.parametrize("dim", [0, 1, -1])
def test_cumsum_along_each_dim_matches_torch_forward_and_backward(dim):
    check_grad(lambda a: a.cumsum(dim), rand(3, 4))


def test_cumsum_of_integers_is_int64_as_in_torch():
    check_forward(lambda a: a.cumsum(0), np.array([1, 2, 3], dtype=np.int32))


# ---- gather: once returned its input unchanged ------------------------------------------------------------


def test_gather_picks_one_column_per_row_the_nll_idiom():
    index = np.array([[1], [0], [3]])
    check_grad(lambda a, i: a.gather(1, i), rand(3, 4), index)


@pytest.mark.parametrize("dim", [0, 1, 2])
def test_gather_along_each_dim_of_a_3d_tensor(dim):
    index = np.random.default_rng(dim).integers(0, 3, size=(2, 3, 2))
    check_grad(lambda a, i: a.gather(dim, i), rand(3, 3, 3), index)


def test_gather_refuses_a_float_index():
    with pytest.raises(RuntimeError, match="int64"):
        lazygrad.tensor(rand(2, 2)).gather(0, lazygrad.tensor(rand(2, 2)))


# ---- .data: `param.data = t` once changed nothing ---------------------------------------------------------


def test_setting_data_replaces_the_values_and_keeps_requires_grad():
    param = lazygrad.tensor([1.0, 2.0], requires_grad=True)
    param.data = lazygrad.tensor([3.0, 4.0])
    reference = torch.tensor([1.0, 2.0], requires_grad=True)
    reference.data = torch.tensor([3.0, 4.0])
    assert_same(param.detach(), reference.detach())
    assert param.requires_grad and param.is_leaf


def test_in_place_updates_through_data_write_the_parameter_as_manual_sgd_does():
    param, reference = lazygrad.tensor([1.0, 2.0], requires_grad=True), torch.tensor([1.0, 2.0], requires_grad=True)
    for p in (param, reference):
        (p * p).sum().backward()
        p.data -= 0.1 * p.grad  # the "Learning PyTorch with examples" update
        p.data.mul_(2)
        p.grad = None
    assert_same(param.detach(), reference.detach())
    (param * param).sum().backward()
    (reference * reference).sum().backward()
    assert_same(param.grad, reference.grad)


def test_data_is_detached():
    param = lazygrad.tensor([1.0], requires_grad=True)
    assert not param.data.requires_grad


# ---- var/std: a bool first argument is torch's `unbiased`, not a dim ---------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.var(True),
        lambda a: a.var(False),
        lambda a: a.std(False),
        lambda a: a.var(0, True),
        lambda a: a.var(1, False, True),
        lambda a: a.std(1, True, keepdim=True),
        lambda a: a.var(1, correction=0, keepdim=True),
    ],
    ids=["var(True)", "var(False)", "std(False)", "var(0,True)", "var(1,False,True)", "std(1,True)", "correction"],
)
def test_var_and_std_overloads_read_arguments_as_torch_does(call):
    check_forward(call, rand(3, 4), rtol=1e-5)


# ---- reductions with dim on a 0-d tensor: once raised -----------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda a: a.max(0)[0],
        lambda a: a.max(-1, keepdim=True)[1],
        lambda a: a.min(0)[0],
        lambda a: a.argmax(0),
        lambda a: a.argmin(-1),
        lambda a: a.mean(0),
        lambda a: a.sum(0),
        lambda a: a.amax(0),
        lambda a: a.cumsum(0),
        lambda a: a.var(0, correction=0),
    ],
    ids=["max", "max_indices", "min", "argmax", "argmin", "mean", "sum", "amax", "cumsum", "var"],
)
def test_reductions_with_dim_on_a_0d_tensor_match_torch(call):
    check_forward(call, np.array(3.0, dtype=np.float32))


def test_max_with_dim_on_a_0d_tensor_passes_the_gradient():
    check_grad(lambda a: a.max(0)[0], np.array(3.0, dtype=np.float32))


def test_a_0d_tensor_refuses_dim_1():
    with pytest.raises(IndexError, match="Dimension out of range"):
        lazygrad.tensor(3.0).sum(1)


# ---- torch's function forms and the `axis` spelling ---------------------------------------------------------


@pytest.mark.backend_independent
def test_function_forms_are_the_tensor_methods_op_db_checks():
    # one implementation: lazygrad.exp(x) is Tensor.exp, which tests/test_opinfo.py compares with torch.exp
    for name in lazygrad.FUNCTION_FORMS:
        assert getattr(lazygrad, name) is getattr(lazygrad.Tensor, name), name
        assert callable(getattr(torch, name)), f"torch has no function {name}"


@pytest.mark.parametrize(
    "call",
    [
        lambda m, a: m.sum(a, axis=1),
        lambda m, a: m.mean(a, axis=0, keepdim=True),
        lambda m, a: a.max(axis=1)[0],
        lambda m, a: a.argmax(axis=0),
        lambda m, a: m.std(a, axis=1),
        lambda m, a: a.softmax(axis=-1),
        lambda m, a: m.flatten(m.exp(a)),
    ],
    ids=["sum", "mean", "max", "argmax", "std", "softmax", "flatten_exp"],
)
def test_function_forms_and_axis_match_torch(call):
    check_forward(lambda a: call(lazygrad, a), rand(3, 4), torch_fn=lambda a: call(torch, a), rtol=1e-5)


def test_dim_and_axis_together_is_an_error():
    with pytest.raises(TypeError, match="alias"):
        lazygrad.tensor(rand(2, 2)).sum(dim=0, axis=1)


# ---- float64: lazygrad computes it when asked; a float64 numpy array still becomes float32 (docs/usage.md) ----


def test_float64_is_computed_in_double_precision():
    values = np.array([1.0, 1e-12, 2.0])
    out = (lazygrad.tensor(values, dtype=lazygrad.float64) * 3 + 1e-13).exp().sum()
    expected = (torch.tensor(values) * 3 + 1e-13).exp().sum()
    assert out.dtype == lazygrad.float64
    np.testing.assert_allclose(out.item(), expected.item(), rtol=1e-15)


# ---- index tensors mixed with slices, None and ...: torch's advanced-indexing rules -----------------------------


@pytest.mark.parametrize(
    "index",
    [
        (slice(None), [2, 0, -1]),  # adjacent: the index's dims in place of the indexed dim
        ([1, 0], slice(1, None)),
        (Ellipsis, [0, 3]),
        ([2, 1], None),
        ([0, 2], slice(None), [1, 4]),  # separated by a slice: the broadcast dims first
        (1, slice(None), [0, 0, 3]),  # an int is a basic index, as torch's (numpy's rule differs)
        (slice(None), [True, False, True, True]),  # a mask among slices: its nonzeros
    ],
    ids=str,
)
def test_index_tensors_mixed_with_slices_match_torch(index):
    check_grad(lambda x: x[index], rand(3, 4, 5))


def test_assignment_through_index_tensors_mixed_with_slices_matches_torch():
    # (values and gradients of every form: tests/test_ops.py::test_setitem_through_tensor_indices_mixed_with_slices_...)
    x, t = lazygrad.tensor(rand(3, 4)), torch.tensor(rand(3, 4))
    x[lazygrad.tensor([0, 1]), 1:] = 0.0
    t[torch.tensor([0, 1]), 1:] = 0.0
    np.testing.assert_array_equal(x.numpy(), t.numpy())


# ---- in-place forms and the smaller public names (tests/test_public_surface.py points here) -------------------


@pytest.mark.parametrize(
    "name, args",
    [("abs_", ()), ("exp_", ()), ("neg_", ()), ("relu_", ()), ("sqrt_", ()), ("pow_", (2,))],
)
def test_in_place_forms_match_torch_and_keep_the_gradient(name, args):
    # on a non-leaf, as in torch: the in-place result carries the gradient of the out-of-place op
    def call(a):
        b = a * 1
        out = getattr(b, name)(*args)
        assert out is b
        return b

    check_grad(call, rand(2, 3, low=0.5, high=2.0))


def test_function_forms_of_in_place_ops_update_their_argument():
    x, reference = lazygrad.tensor([-1.0, 4.0]), torch.tensor([-1.0, 4.0])
    lazygrad.abs_(x), torch.abs_(reference)
    lazygrad.sqrt_(x), torch.sqrt_(reference)
    lazygrad.exp_(x), torch.exp_(reference)
    lazygrad.neg_(x), torch.neg_(reference)
    lazygrad.relu_(x), torch.relu_(reference)
    assert_same(x, reference)


def test_detach_in_place_makes_a_leaf_without_grad():
    x = lazygrad.tensor([1.0], requires_grad=True) * 2
    reference = torch.tensor([1.0], requires_grad=True) * 2
    lazygrad.detach_(x), reference.detach_()
    assert x.requires_grad == reference.requires_grad and x.is_leaf == reference.is_leaf


def test_new_tensor_takes_the_dtype_and_device_of_its_tensor():
    a = lazygrad.tensor([1, 2], dtype=lazygrad.int32)
    assert_same(a.new_tensor([3.7, 4.2]), torch.tensor([1, 2], dtype=torch.int32).new_tensor([3.7, 4.2]))


def test_module_list_registers_parameters_as_torch():
    ours = lazygrad.nn.ModuleList([lazygrad.nn.Linear(2, 3), lazygrad.nn.Linear(3, 1)])
    theirs = torch.nn.ModuleList([torch.nn.Linear(2, 3), torch.nn.Linear(3, 1)])
    assert list(ours.state_dict()) == list(theirs.state_dict()) and len(ours) == len(theirs)
    assert [tuple(p.shape) for p in ours.parameters()] == [tuple(p.shape) for p in theirs.parameters()]


def test_optimizers_are_optimizer_subclasses_with_torchs_param_groups():
    weight = lazygrad.tensor([1.0, 2.0], requires_grad=True)
    ours = lazygrad.optim.SGD([{"params": [weight], "lr": 0.5}], lr=0.1)
    theirs = torch.optim.SGD([{"params": [torch.tensor([1.0, 2.0], requires_grad=True)], "lr": 0.5}], lr=0.1)
    assert isinstance(ours, lazygrad.optim.Optimizer) and isinstance(theirs, torch.optim.Optimizer)
    assert ours.param_groups[0]["lr"] == theirs.param_groups[0]["lr"] == 0.5


# ---- advanced indexing: masks, several index tensors, assignment through them ------------------------------

INDEXED = np.arange(24, dtype=np.float32).reshape(4, 3, 2)


@pytest.mark.parametrize(
    "index",
    [
        lambda m, a: a > 10,
        lambda m, a: (m.tensor([0, 2]), m.tensor([1, 2])),
        lambda m, a: ([0, -1], [[1], [2]]),
        lambda m, a: (1, m.tensor([0, 2])),
        lambda m, a: a[:, :, 0] > 5,
        lambda m, a: m.tensor([[0, 1], [2, 3]]),
    ],
    ids=["mask", "two_tensors", "broadcast_lists", "int_and_tensor", "leading_mask", "2d_tensor"],
)
def test_advanced_indexing_matches_torch_forward_and_backward(index):
    def call(a):
        module = lazygrad if isinstance(a, lazygrad.Tensor) else torch
        return a[index(module, a.detach())]

    check_grad(call, INDEXED)


@pytest.mark.parametrize(
    "index, value",
    [
        (lambda m, a: m.tensor([0, 2]), 7.0),
        (lambda m, a: a > 20, -1.0),
        (lambda m, a: ([1, 3], [0, 2]), "column"),
    ],
    ids=["rows", "mask", "pairs"],
)
def test_assignment_through_index_tensors_matches_torch(index, value):
    results = []
    for m in (lazygrad, torch):
        a = m.tensor(INDEXED.copy())
        v = m.tensor([5.0, 6.0]).unsqueeze(-1) if value == "column" else value
        a[index(m, a)] = v
        results.append(a)
    assert_same(*results)


def test_index_put_accumulates_repeated_indices_as_torch():
    ours, theirs = lazygrad.tensor(INDEXED.copy()), torch.tensor(INDEXED.copy())
    ours.index_put_((lazygrad.tensor([0, 0, 3]),), lazygrad.tensor(1.0), accumulate=True)
    theirs.index_put_((torch.tensor([0, 0, 3]),), torch.tensor(1.0), accumulate=True)
    assert_same(ours, theirs)


def test_nonzero_and_where_of_a_condition_match_torch():
    a, t = lazygrad.tensor(INDEXED), torch.tensor(INDEXED)
    assert_same(a.nonzero(), t.nonzero())
    assert_same(lazygrad.argwhere(a > 20), torch.argwhere(t > 20))
    assert_same(lazygrad.where(a > 20), torch.where(t > 20))
    assert_same(a.masked_select(a > 3), t.masked_select(t > 3))


def test_tensor_where_takes_the_condition_first_as_torch():
    x, y, cond = rand(2, 3), rand(2, 3, seed=1), rand(2, 3, seed=2) > 0
    ours = lazygrad.tensor(x).where(lazygrad.tensor(cond), lazygrad.tensor(y))
    assert_same(ours, torch.tensor(x).where(torch.tensor(cond), torch.tensor(y)))
    assert_same(lazygrad.tensor(x).where(lazygrad.tensor(cond), 0.5), torch.tensor(x).where(torch.tensor(cond), 0.5))
    with pytest.raises(RuntimeError):
        torch.tensor(cond).where(torch.tensor(x), torch.tensor(y))  # lazygrad's old order: a float condition
    with pytest.raises(TypeError, match="boolean"):
        lazygrad.tensor(cond).where(lazygrad.tensor(x), lazygrad.tensor(y))


@pytest.mark.parametrize("largest", [True, False])
def test_topk_and_sort_with_inf_and_nan_match_torch(largest):
    values = np.array([[1.0, np.inf, -np.inf, 2.0, np.nan, 3.0]], dtype=np.float32)  # no ties: torch orders them freely
    ours, theirs = lazygrad.tensor(values), torch.tensor(values)
    assert_same(ours.topk(3, largest=largest), tuple(theirs.topk(3, largest=largest)))
    assert_same(ours.sort(descending=largest), tuple(theirs.sort(stable=True, descending=largest)))
