"""Gradients against PyTorch, and the autograd surface: requires_grad, .grad accumulation, retain_grad, detach,
no_grad, is_leaf, lazygrad.grad, gradients of gradients, tie splitting, numerical stability at the edges, and
that backward only builds graph.

`check_grad(fn, *arrays)` runs the same lambda on lazygrad and torch tensors made from the arrays and compares
the outputs and the gradient of every float input (rtol 1e-3, atol 1e-4).
"""

import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import GRAD_ATOL, GRAD_RTOL, assert_same, check_grad, positive, rand

import lazygrad
from lazygrad import Tensor, autograd


def kernels_and_values(*tensors) -> tuple:
    """The sorted names of the kernels that realize `tensors`, and their values: a graph built on nodes directly
    and the tensor ops it stands for must agree on both."""
    with lazygrad.profile() as p:
        lazygrad.realize(*tensors)
    return sorted(k.name for k in p.launches), [t.numpy() for t in tensors]


def lib(t):
    """The module of a tensor's library: lazygrad or torch (for cat, stack, where)."""
    return lazygrad if isinstance(t, Tensor) else torch


def functional(name):
    """fn(x, *args) as x.name(*args) for lazygrad and F.name(x, *args) for torch."""

    def fn(x, *args, **kwargs):
        if isinstance(x, Tensor):
            return getattr(x, name)(*args, **kwargs)
        return getattr(F, name)(x, *args, **kwargs)

    return fn


# ---- gradients of every differentiable op ----------------------------------------------------------

UNARY = {
    "neg": (lambda a: -a, rand),
    "abs": (lambda a: a.abs(), rand),
    "exp": (lambda a: a.exp(), rand),
    "exp2": (lambda a: a.exp2(), rand),
    "log": (lambda a: a.log(), positive),
    "log2": (lambda a: a.log2(), positive),
    "sqrt": (lambda a: a.sqrt(), positive),
    "rsqrt": (lambda a: a.rsqrt(), positive),
    "reciprocal": (lambda a: a.reciprocal(), positive),
    "sin": (lambda a: a.sin(), rand),
    "cos": (lambda a: a.cos(), rand),
    "tan": (lambda a: a.tan(), lambda *s: rand(*s, low=-1.2, high=1.2)),
    "tanh": (lambda a: a.tanh(), rand),
    "sigmoid": (lambda a: a.sigmoid(), rand),
    "relu": (lambda a: a.relu(), rand),
    "leaky_relu": (functional("leaky_relu"), rand),
    "gelu": (functional("gelu"), rand),
    "gelu_tanh": (lambda a: functional("gelu")(a, approximate="tanh"), rand),
    "silu": (functional("silu"), rand),
    "softplus": (functional("softplus"), rand),
    "square": (lambda a: a.square(), rand),
    "sign": (lambda a: a.sign(), rand),
    "floor": (lambda a: a.floor(), rand),
    "clamp": (lambda a: a.clamp(-0.5, 0.7), rand),
    "clamp_min": (lambda a: a.clamp(min=0.1), rand),
    "pow2": (lambda a: a**2, rand),
    "pow3": (lambda a: a**3, rand),
    "pow_half": (lambda a: a**0.5, positive),
    "pow_frac": (lambda a: a**2.7, positive),
    "pow_neg": (lambda a: a**-1.5, positive),
    "pow_neg_int": (lambda a: a**-2, rand),
    "rpow": (lambda a: 2.5**a, rand),
    "scalar_div": (lambda a: 3 / a, positive),
    "float": (lambda a: a.float() * 2, rand),
    "half_roundtrip": (lambda a: a.half().float(), rand),
}


@pytest.mark.parametrize("op", UNARY)
def test_unary_gradients(op):
    fn, make = UNARY[op]
    check_grad(fn, make(3, 4))


BINARY = {
    "add": lambda a, b: a + b,
    "sub": lambda a, b: a - b,
    "mul": lambda a, b: a * b,
    "div": lambda a, b: a / (b.abs() + 0.5),
    "pow": lambda a, b: a.abs() ** b,
    "maximum": lambda a, b: a.maximum(b),
    "minimum": lambda a, b: a.minimum(b),
    "where": lambda a, b: lib(a).where(a > b, a, b * 2),
    "add_alpha": lambda a, b: a.add(b, alpha=-2),
    "lerp": lambda a, b: a.lerp(b, 0.3),
}


@pytest.mark.parametrize("shapes", [((2, 3), (2, 3)), ((2, 3), (3,)), ((4, 1), (1, 5)), ((), (3,))], ids=str)
@pytest.mark.parametrize("op", BINARY)
def test_binary_gradients_with_broadcasting(op, shapes):
    check_grad(BINARY[op], rand(*shapes[0], seed=1), rand(*shapes[1], seed=2))


def test_gradient_through_scalar_operands():
    check_grad(lambda a: (a * 3 - 1) / 2 + 2 - a * a, rand(5))
    check_grad(lambda a: 1 - a, rand(5))


def test_gradient_of_a_reused_input():
    check_grad(lambda a: a * a + a.exp() * a, rand(4))


REDUCTIONS = {
    "sum": lambda a: a.sum(),
    "sum_dim": lambda a: a.sum(1),
    "sum_dims_keepdim": lambda a: a.sum((0, 2), keepdim=True),
    "mean": lambda a: a.mean(-1),
    "mean_all": lambda a: a.mean(),
    "amax": lambda a: a.amax(1),
    "amin": lambda a: a.amin((0, 1)),
    "max_all": lambda a: a.max(),
    "max_dim": lambda a: a.max(1)[0],
    "min_dim": lambda a: a.min(-1, keepdim=True)[0],
    "prod": lambda a: a.prod(1),
    "prod_all": lambda a: a.prod(),
    "var": lambda a: a.var(1),
    "std": lambda a: a.std(-1, keepdim=True),
    "var_unbiased0": lambda a: a.var(0, unbiased=False),
    "softmax": lambda a: a.softmax(1),
    "log_softmax": lambda a: a.log_softmax(-1),
    "logsumexp": lambda a: a.logsumexp(2),
}


@pytest.mark.parametrize("op", REDUCTIONS)
def test_reduction_gradients(op):
    check_grad(REDUCTIONS[op], rand(2, 3, 4, low=0.5, high=1.5) if op.startswith("prod") else rand(2, 3, 4))


MOVEMENT = {
    "reshape": lambda a: a.reshape(6, 4),
    "reshape_minus_one": lambda a: a.reshape(-1) * 2,
    "flatten": lambda a: a.flatten(1),
    "squeeze_unsqueeze": lambda a: a.unsqueeze(1).squeeze(1),
    "permute": lambda a: a.permute(2, 0, 1),
    "transpose": lambda a: a.transpose(0, 1),
    "T": lambda a: a.flatten(1).T,
    "expand": lambda a: a[:, :1].expand(2, 3, 4),
    "flip": lambda a: a.flip((0, 2)),
    "pad": lambda a: functional("pad")(a, (1, 2, 0, 1)),
    "pad_negative": lambda a: functional("pad")(a, (-1, 1, 1, -2)),
    "pad_value": lambda a: functional("pad")(a, (1, 1), value=3.0),
    "index_int": lambda a: a[1],
    "index_slices": lambda a: a[:, 1:, ::2],
    "index_none_ellipsis": lambda a: a[None, ..., 1],
    "index_tensor": lambda a: a[lib(a).tensor([1, 0, 1])],
    "split": lambda a: a.split(2, -1)[1],
    "chunk": lambda a: a.chunk(3, 1)[2],
    "repeat": lambda a: a.repeat(2, 1, 3),
    "cat": lambda a: lib(a).cat([a, a * 2, a[:, :1]], 1),
    "stack": lambda a: lib(a).stack([a, a.exp()], 1),
    "contiguous": lambda a: a.transpose(1, 2).contiguous(),
    "expand_as": lambda a: a[:1].expand_as(a),
}


@pytest.mark.parametrize("op", MOVEMENT)
def test_movement_gradients(op):
    check_grad(MOVEMENT[op], rand(2, 3, 4))


@pytest.mark.parametrize(
    "shapes",
    [
        ((4,), (4,)),
        ((3, 4), (4,)),
        ((4,), (4, 5)),
        ((3, 4), (4, 5)),
        ((2, 3, 4), (4, 5)),
        ((2, 1, 3, 4), (5, 4, 2)),
        ((2, 3, 4), (2, 4, 5)),  # the same batch dims: recorded as one op (tensor_ops.nn._matmul_same_batch)
        ((3, 1), (1, 5)),
    ],
    ids=str,
)
def test_matmul_gradients(shapes):
    check_grad(lambda a, b: a @ b, rand(*shapes[0], seed=1), rand(*shapes[1], seed=2))


def test_matmul_of_one_batch_is_one_recorded_op_with_the_general_paths_kernels(monkeypatch):
    # the same-batch path builds the nodes of the general path (unsqueeze, transpose, broadcasting mul, sum) itself
    # and differentiates them in one rule: the same kernels, values and gradients as the general path
    def run():
        a, b = Tensor(rand(2, 3, 4, seed=1), requires_grad=True), Tensor(rand(2, 4, 5, seed=2), requires_grad=True)
        out = a @ b
        op = out._ctx.op
        out.pow(2).sum().backward()
        return (op, *kernels_and_values(out, a.grad, b.grad))

    op, kernels, values = run()
    monkeypatch.setattr(Tensor, "_matmul_same_batch", lambda self, other: None)
    general_op, general_kernels, general_values = run()
    assert op == "matmul" and general_op != "matmul"
    assert kernels == general_kernels
    for ours, general in zip(values, general_values):
        np.testing.assert_allclose(ours, general, rtol=1e-6, atol=1e-6)


def test_linear_of_a_matrix_makes_the_kernels_of_its_product_with_the_transpose():
    # linear over a matrix records x @ weight.T as one op without a tensor for the transpose: the same kernels,
    # values and gradients as writing the product out
    def run(fn):
        x, w = Tensor(rand(3, 5, seed=1), requires_grad=True), Tensor(rand(4, 5, seed=2), requires_grad=True)
        out = fn(x, w)
        out.pow(2).sum().backward()
        return kernels_and_values(out, x.grad, w.grad)

    kernels, values = run(lambda x, w: x.linear(w))
    written_kernels, written_values = run(lambda x, w: x @ w.T)
    assert kernels == written_kernels
    for ours, written in zip(values, written_values):
        np.testing.assert_array_equal(ours, written)


@pytest.mark.parametrize("op", ["matmul", "linear"])
def test_second_derivative_through_matmul_matches_torch(op):
    if op == "linear":
        data_a, data_b = rand(3, 4, seed=1), rand(2, 4, seed=2)
        ours, theirs = (lambda a, b: a.linear(b)), F.linear
    else:
        data_a, data_b = rand(3, 4, seed=1), rand(4, 2, seed=2)
        ours = theirs = lambda a, b: a @ b
    a, b = Tensor(data_a, requires_grad=True), Tensor(data_b, requires_grad=True)
    ta, tb = torch.tensor(data_a, requires_grad=True), torch.tensor(data_b, requires_grad=True)
    g, h = lazygrad.grad(ours(a, b).pow(2).sum(), [a, b], create_graph=True)
    tg, th = torch.autograd.grad(theirs(ta, tb).pow(2).sum(), [ta, tb], create_graph=True)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    assert_same(h, th, GRAD_RTOL, GRAD_ATOL)
    (g * g + (h * h).sum()).sum().backward()
    (tg * tg + (th * th).sum()).sum().backward()
    assert_same(a.grad, ta.grad, GRAD_RTOL, GRAD_ATOL)
    assert_same(b.grad, tb.grad, GRAD_RTOL, GRAD_ATOL)


def test_matmul_gradients_of_views():
    check_grad(lambda a, b: a.T @ b[:, ::2], rand(4, 3, seed=1), rand(4, 6, seed=2))


@pytest.mark.parametrize("input_shape", [(2, 3, 5), (3, 5)], ids=str)
@pytest.mark.parametrize("bias", [True, False])
def test_linear_gradients(bias, input_shape):
    arrays = [rand(*input_shape, seed=1), rand(4, 5, seed=2)] + ([rand(4, seed=3)] if bias else [])
    check_grad(lambda x, w, *b: x.linear(w, *b) if isinstance(x, Tensor) else F.linear(x, w, *b), *arrays)


CONV_CASES = [
    dict(x=(2, 3, 6, 6), w=(4, 3, 3, 3), bias=True),
    dict(x=(1, 2, 7, 7), w=(3, 2, 3, 3), stride=2, padding=1),
    dict(x=(1, 2, 8, 8), w=(2, 2, 3, 3), dilation=2, padding=2),
    dict(x=(2, 4, 5, 5), w=(4, 2, 3, 3), groups=2, bias=True),
    dict(x=(1, 3, 5, 5), w=(6, 1, 3, 3), groups=3, stride=(1, 2)),
    dict(x=(1, 2, 4, 4), w=(3, 2, 1, 1)),
]


@pytest.mark.parametrize("case", CONV_CASES, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_conv2d_gradients(case):
    case = dict(case)
    x, w = rand(*case.pop("x"), seed=1), rand(*case.pop("w"), seed=2)
    arrays = [x, w] + ([rand(w.shape[0], seed=3)] if case.pop("bias", False) else [])
    check_grad(
        lambda x, w, *b: (
            x.conv2d(w, *(b or [None]), **case) if isinstance(x, Tensor) else F.conv2d(x, w, *(b or [None]), **case)
        ),
        *arrays,
    )


@pytest.mark.parametrize(
    "case",
    [
        dict(kernel_size=2),  # windows that tile the input (autograd._tiles_transpose), its last row uncovered
        dict(kernel_size=(2, 3), padding=1, ceil_mode=True),  # tiles over padding, cut by the crop
        dict(kernel_size=3, stride=2, padding=1),
        dict(kernel_size=(2, 3), stride=1),
    ],
    ids=str,
)
@pytest.mark.parametrize("name", ["max_pool2d", "avg_pool2d", "avg_pool2d_exclude_pad"])
def test_pooling_gradients(name, case):
    kwargs = dict(case)
    if name == "avg_pool2d_exclude_pad":
        name, kwargs["count_include_pad"] = "avg_pool2d", False
    check_grad(
        lambda x: getattr(x, name)(**kwargs) if isinstance(x, Tensor) else getattr(F, name)(x, **kwargs),
        rand(2, 2, 7, 6),
    )


@pytest.mark.parametrize(
    "case",
    [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2), dict(kernel_size=3, stride=1, dilation=2)],
    ids=str,
)
def test_max_pool2d_gradient_with_ties_goes_to_the_first_maximum_as_in_torch(case):
    # after a ReLU whole windows are zero: PyTorch gives each window's gradient to its first maximal
    # element (row-major), not shared among the ties
    x = np.maximum(rand(2, 3, 9, 8, seed=4), 0).round(1)
    x[0, 0, :4, :4] = 0.0
    x[1, 2, 2:6, 3:7] = 0.5
    check_grad(lambda x: x.max_pool2d(**case) if isinstance(x, Tensor) else F.max_pool2d(x, **case), x)


def _col2im_reference(g: np.ndarray, size: int, kernel: int, stride: int, crop: tuple) -> np.ndarray:
    """col2im by its definition, on (outs, outs, kernel, kernel) windows of one (size, size) map: each window
    position sends its value back to x[o * stride + k], then the crop (start, length) per dim."""
    out = np.zeros((size, size), np.float32)
    outs = g.shape[0]
    for oy in range(outs):
        for ox in range(outs):
            for ky in range(kernel):
                for kx in range(kernel):
                    out[oy * stride + ky, ox * stride + kx] += g[oy, ox, ky, kx]
    (y0, ylen), (x0, xlen) = crop
    return out[y0 : y0 + ylen, x0 : x0 + xlen]


def test_col2im_of_two_crops_with_the_same_class_sizes_matches_its_definition():
    """autograd.col2im remembers how it takes each class of positions apart per shape, kernel, stride and crop
    (_class_pieces): two crops whose classes have the same sizes but start elsewhere must each get their own."""
    g = rand(3, 3, 3, 3, seed=11)
    node = Tensor(g)._lazydata
    for crop in (((0, 6), (0, 6)), ((1, 6), (1, 6)), ((0, 6), (0, 6))):  # the last one again, from the cache
        got = Tensor._wrap(autograd.col2im(node, (7, 7), (3, 3), (2, 2), (1, 1), crop)).numpy()
        np.testing.assert_allclose(got, _col2im_reference(g, 7, 3, 2, crop), rtol=1e-6, err_msg=str(crop))


@pytest.mark.parametrize("case", [dict(kernel_size=3, stride=2, padding=1), dict(kernel_size=2)], ids=str)
def test_max_pool2d_gradient_on_nodes_is_the_tensor_ops_gradient(case):
    # without create_graph, max_pool2d's backward builds its nodes directly (tensor_ops.nn._max_pool_spread); with
    # it, the same formula runs as tensor ops: the same kernels and values, ties and NaN included
    data = np.maximum(rand(1, 2, 7, 6, seed=5), 0).round(1)
    data[0, 1, 1, 2] = np.nan

    def gradient(create_graph):
        x = Tensor(data, requires_grad=True)
        weights = Tensor(rand(*x.max_pool2d(**case).shape, seed=6))
        (g,) = lazygrad.grad((x.max_pool2d(**case) * weights).sum(), x, create_graph=create_graph)
        return kernels_and_values(g)

    kernels, (grad,) = gradient(False)
    tensor_kernels, (tensor_grad,) = gradient(True)
    assert kernels == tensor_kernels
    np.testing.assert_array_equal(grad, tensor_grad)


def test_gradient_of_a_small_mlp():
    def mlp(x, w1, b1, w2):
        h = (x @ w1 + b1).relu()
        return (h @ w2).log_softmax(-1)

    check_grad(mlp, rand(4, 5, seed=1), rand(5, 8, seed=2), rand(8, seed=3), rand(8, 3, seed=4))


def test_gradient_through_cross_entropy_composition():
    labels = np.array([0, 2, 1, 2])

    def loss(logits):
        onehot = lib(logits).tensor(np.eye(3, dtype=np.float32)[labels])
        return -(logits.log_softmax(-1) * onehot).sum(-1).mean()

    check_grad(loss, rand(4, 3))


def test_gradient_through_inplace_ops_on_intermediates():
    def fn(a, b):
        c = a * 2
        c.add_(b)
        c.mul_(a)
        c.clamp_(-1.0, 3.0)
        return c

    check_grad(fn, rand(3, 4, seed=1), rand(4, seed=2))


def test_gradient_through_inplace_updates_of_views():
    def fn(a, b):
        c = a * 1
        c[0] = b[0] * 2
        c[1:, ::2].mul_(b[1:, :2])
        c.T[1].add_(b[:, 3])
        return c

    check_grad(fn, rand(3, 4, seed=1), rand(3, 4, seed=2))


def test_gradient_of_a_value_used_before_an_inplace_update():
    def fn(a, b):
        c = a * 2
        d = c * 3  # uses c before the update: its gradient must not see the update
        c.mul_(b)
        return c + d

    check_grad(fn, rand(3, seed=1), rand(3, seed=2))


def test_inplace_on_a_view_of_a_leaf_requiring_grad_is_an_error():
    a = Tensor(rand(3, 4), requires_grad=True)
    with pytest.raises(RuntimeError, match="leaf"):
        a[0].add_(1)


def test_gradient_of_integer_cast_is_zero_path():
    a = Tensor(rand(3), requires_grad=True)
    out = a.int().float() + a
    out.sum().backward()
    assert_same(a.grad, torch.ones(3))


# ---- ties, stability, edges -----------------------------------------------------------------------


def test_amax_splits_gradient_evenly_among_ties():
    data = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    check_grad(lambda a: a.amax(1), data)
    check_grad(lambda a: a.amax(), data)
    check_grad(lambda a: a.max(), data)
    check_grad(lambda a: a.amin(0), data)


def test_maximum_splits_gradient_evenly_on_ties():
    a = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    b = np.array([1.0, 5.0, 3.0], dtype=np.float32)
    check_grad(lambda x, y: x.maximum(y), a, b)
    check_grad(lambda x, y: x.minimum(y), a, b)


def test_max_with_dim_sends_gradient_to_the_returned_index():
    data = np.array([[1.0, 3.0, 3.0], [2.0, 2.0, 2.0]], dtype=np.float32)
    check_grad(lambda a: a.max(1).values, data)
    check_grad(lambda a: a.min(1).values, data)


def test_relu_gradient_at_zero_is_zero():
    check_grad(lambda a: a.relu(), np.array([-1.0, 0.0, 1.0], dtype=np.float32))


def test_relu_builds_the_nodes_of_its_composition():
    # relu builds where(x <= 0, 0, x)'s nodes itself (no tensor per step of the composition): the same kernels,
    # values and gradients as the composition it stands for, NaN and the kink included
    data = np.array([-1.0, 0.0, -0.0, 2.0, np.nan, np.inf, -np.inf], dtype=np.float32)

    def run(fn):
        x = Tensor(data, requires_grad=True)
        out = fn(x)
        (out * Tensor(np.arange(7, dtype=np.float32))).sum().backward()
        return kernels_and_values(out, x.grad)

    kernels, (out, grad) = run(lambda x: x.relu())
    composed_kernels, (composed_out, composed_grad) = run(lambda x: x.le(0)._select(x.zeros_like(), x))
    assert kernels == composed_kernels
    np.testing.assert_array_equal(out, composed_out)
    np.testing.assert_array_equal(grad, composed_grad)
    np.testing.assert_array_equal(grad, [0, 0, 0, 3, 4, 5, 0])  # torch's: 0 at the kink, passed through NaN


def test_abs_and_clamp_gradients_at_the_kinks():
    data = np.array([-1.0, 0.0, 1.0, 0.5], dtype=np.float32)
    check_grad(lambda a: a.abs(), data)
    check_grad(lambda a: a.clamp(0.0, 0.5), data)


@pytest.mark.parametrize("name", ["softmax", "log_softmax", "logsumexp"])
def test_softmax_family_gradients_are_stable_for_large_inputs(name):
    data = np.array([[1e4, 1e4 + 1, 1e4 - 2], [-1e4, -1e4, 0.0], [5e3, -5e3, 1.0]], dtype=np.float32)
    check_grad(lambda a: getattr(a, name)(1), data)


@pytest.mark.parametrize("op", ["sigmoid", "tanh", "softplus", "silu", "gelu", "gelu_tanh", "exp", "log_softmax"])
def test_gradients_saturate_without_nan_for_large_inputs(op):
    fn = UNARY[op][0] if op in UNARY else lambda a: a.log_softmax(0)
    check_grad(
        fn,
        np.array([-1000.0, -100.0, -20.0, -1.0, 0.0, 1.0, 20.0, 100.0], dtype=np.float32)
        if op != "exp"
        else np.array([-1000.0, -100.0, 0.0, 80.0], dtype=np.float32),
    )


ZERO = np.zeros(3, dtype=np.float32)


@pytest.mark.parametrize(
    "name, fn",
    [
        ("square", lambda a: a**2),
        ("cube", lambda a: a**3),
        ("pow_frac_above_one", lambda a: a**2.5),
        ("pow_zero", lambda a: a**0),
        ("sqrt", lambda a: a.sqrt()),
        ("pow_half", lambda a: a**0.5),
        ("reciprocal", lambda a: 1 / a),
        ("log", lambda a: a.log()),
        ("tensor_exponent", lambda a: a ** lib(a).tensor([0.0, 1.0, 2.0])),
        ("tensor_base", lambda a: lib(a).tensor([0.0, 1.0, 2.0]) ** a),
    ],
)
def test_gradients_at_zero_match_torch(name, fn):
    check_grad(fn, ZERO)


def test_division_by_zero_gradients_match_torch():
    check_grad(lambda a, b: a / b, np.array([1.0, -1.0, 2.0], dtype=np.float32), ZERO)


# ---- the autograd surface -------------------------------------------------------------------------


def test_requires_grad_argument_attribute_and_method():
    assert Tensor([1.0], requires_grad=True).requires_grad
    assert not Tensor([1.0]).requires_grad
    assert lazygrad.zeros(2, requires_grad=True).requires_grad
    assert lazygrad.randn(2, requires_grad=True).requires_grad
    t = Tensor([1.0])
    assert t.requires_grad_() is t and t.requires_grad
    t.requires_grad_(False)
    assert not t.requires_grad
    t.requires_grad = True
    assert t.requires_grad


def test_integer_tensors_cannot_require_grad():
    with pytest.raises(RuntimeError, match="floating point"):
        Tensor([1, 2], requires_grad=True)


def test_results_require_grad_when_an_input_does():
    a, b = Tensor([1.0], requires_grad=True), Tensor([2.0])
    assert (a * b).requires_grad and not (b * 2).requires_grad
    assert not (a > b).requires_grad


def test_is_leaf():
    a = Tensor([1.0], requires_grad=True)
    b = Tensor([1.0])
    assert a.is_leaf and b.is_leaf
    assert not (a * 2).is_leaf
    assert (b * 2).is_leaf
    assert (a * 2).detach().is_leaf


def test_grad_is_none_before_backward():
    assert Tensor([1.0], requires_grad=True).grad is None


def test_grad_accumulates_over_two_backward_calls():
    data = rand(3)
    a, ta = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    for x in (a, ta):
        (x * x).sum().backward()
        (x.exp()).sum().backward()
    assert_same(a.grad, ta.grad, GRAD_RTOL, GRAD_ATOL)


def test_grad_can_be_reset_to_none():
    a = Tensor(rand(3), requires_grad=True)
    (a * 2).sum().backward()
    a.grad = None
    (a * 3).sum().backward()
    assert_same(a.grad, torch.full((3,), 3.0))


def test_non_leaf_grad_is_not_kept_without_retain_grad():
    a = Tensor(rand(3), requires_grad=True)
    b = a * 2
    b.sum().backward()
    assert b.grad is None and a.grad is not None


def test_retain_grad_keeps_an_intermediate_gradient():
    data = rand(3)
    a, ta = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    b, tb = a.exp(), ta.exp()
    b.retain_grad()
    tb.retain_grad()
    (b * b).sum().backward()
    (tb * tb).sum().backward()
    assert_same(b.grad, tb.grad, GRAD_RTOL, GRAD_ATOL)
    assert_same(a.grad, ta.grad, GRAD_RTOL, GRAD_ATOL)


def test_detach_stops_the_gradient():
    data = rand(3)
    a = Tensor(data, requires_grad=True)
    d = a.detach()
    assert not d.requires_grad and d.is_leaf
    (a * d).sum().backward()
    assert_same(a.grad, torch.tensor(data))
    np.testing.assert_array_equal(d.numpy(), data)


def test_no_grad_as_context_manager():
    a = Tensor(rand(3), requires_grad=True)
    with lazygrad.no_grad():
        b = a * 2
        assert not lazygrad.is_grad_enabled()
    assert lazygrad.is_grad_enabled()
    assert not b.requires_grad and b.is_leaf


def test_no_grad_as_decorator():
    @lazygrad.no_grad()
    def double(x):
        return x * 2

    a = Tensor(rand(3), requires_grad=True)
    assert not double(a).requires_grad
    assert (a * 2).requires_grad


def test_enable_grad_inside_no_grad():
    a = Tensor(rand(3), requires_grad=True)
    with lazygrad.no_grad():
        with lazygrad.enable_grad():
            assert (a * 2).requires_grad
        assert not (a * 2).requires_grad


def test_no_grad_is_restored_after_an_exception():
    with pytest.raises(ValueError):
        with lazygrad.no_grad():
            raise ValueError("boom")
    assert lazygrad.is_grad_enabled()


def test_backward_with_explicit_gradient():
    data, gdata = rand(2, 3), rand(2, 3, seed=7)
    a, ta = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    (a * a).backward(Tensor(gdata))
    (ta * ta).backward(torch.tensor(gdata))
    assert_same(a.grad, ta.grad, GRAD_RTOL, GRAD_ATOL)


def test_backward_twice_through_the_same_graph_needs_retain_graph():
    a = Tensor(rand(3), requires_grad=True)
    loss = (a * a).sum()
    loss.backward(retain_graph=True)
    loss.backward()
    assert_same(a.grad, torch.tensor(rand(3)) * 4, GRAD_RTOL, GRAD_ATOL)


def test_only_leaves_requiring_grad_get_grad():
    a, b = Tensor(rand(3), requires_grad=True), Tensor(rand(3, seed=2))
    (a * b).sum().backward()
    assert a.grad is not None and b.grad is None


def test_grad_has_the_shape_and_dtype_of_its_tensor():
    a = Tensor(rand(2, 1, 3), requires_grad=True)
    (a.expand(2, 4, 3) * 2).sum().backward()
    assert a.grad.shape == a.shape and a.grad.dtype == a.dtype
    assert not a.grad.requires_grad


# ---- lazygrad.grad and higher order -------------------------------------------------------------


def test_functional_grad_returns_gradients_without_touching_dot_grad():
    data = rand(3)
    a, ta = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    (g,) = lazygrad.grad((a**3).sum(), a)
    (tg,) = torch.autograd.grad((ta**3).sum(), ta)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    assert a.grad is None


def test_functional_grad_of_several_inputs_with_grad_outputs():
    x_data, y_data, g_data = rand(2, 3, seed=1), rand(2, 3, seed=2), rand(2, 3, seed=3)
    x, y = Tensor(x_data, requires_grad=True), Tensor(y_data, requires_grad=True)
    tx, ty = torch.tensor(x_data, requires_grad=True), torch.tensor(y_data, requires_grad=True)
    grads = lazygrad.grad(x * y.sin(), [x, y], grad_outputs=Tensor(g_data))
    tgrads = torch.autograd.grad(tx * ty.sin(), [tx, ty], grad_outputs=torch.tensor(g_data))
    assert_same(list(grads), list(tgrads), GRAD_RTOL, GRAD_ATOL)


def test_functional_grad_of_an_unused_input_is_an_error():
    a, b = Tensor(rand(3), requires_grad=True), Tensor(rand(3), requires_grad=True)
    with pytest.raises(RuntimeError):
        lazygrad.grad((a * 2).sum(), [b])


@pytest.mark.parametrize("name", ["cube", "tanh", "sigmoid", "exp_sin", "log_softmax"])
def test_second_derivative_matches_torch(name):
    fns = {
        "cube": lambda x: x**3,
        "tanh": lambda x: x.tanh(),
        "sigmoid": lambda x: x.sigmoid(),
        "exp_sin": lambda x: x.sin().exp(),
        "log_softmax": lambda x: x.log_softmax(0),
    }
    fn = fns[name]
    data = rand(4)
    x, tx = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    (g,) = lazygrad.grad(fn(x).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad(fn(tx).sum(), tx, create_graph=True)
    assert g.requires_grad
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    (g * g).sum().backward()
    (tg * tg).sum().backward()
    assert_same(x.grad, tx.grad, GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("name", ["erf", "gelu", "gelu_tanh"])
def test_second_derivative_of_erf_and_gelu_matches_torch_at_zero_too(name):
    # erf and GELU have closed-form gradients: differentiating erf's polynomial went through |x|, wrong at 0
    ours, theirs = {
        "erf": (lambda x: x.erf(), torch.erf),
        "gelu": (lambda x: x.gelu(), F.gelu),
        "gelu_tanh": (lambda x: x.gelu("tanh"), lambda x: F.gelu(x, approximate="tanh")),
    }[name]
    data = np.array([-2.5, -1.0, -0.25, 0.0, 0.5, 1.5, 3.0], dtype=np.float32)
    x, tx = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    (g,) = lazygrad.grad(ours(x).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad(theirs(tx).sum(), tx, create_graph=True)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    g.sum().backward()
    tg.sum().backward()
    assert_same(x.grad, tx.grad, GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("stride", [1, 2])
def test_second_derivative_through_conv2d_input_gradient_matches_torch(stride):
    # conv2d's input gradient is col2im (autograd.window_transpose), one composite op whose own gradient is the
    # window view of the padded input: a gradient penalty on it differentiates that composite
    x_data, w_data = rand(1, 2, 5, 5), rand(3, 2, 3, 3)
    x, w = Tensor(x_data, requires_grad=True), Tensor(w_data, requires_grad=True)
    tx, tw = torch.tensor(x_data, requires_grad=True), torch.tensor(w_data, requires_grad=True)
    (g,) = lazygrad.grad(_padded_conv(x, w, stride).pow(2).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad(F.conv2d(tx, tw, stride=stride, padding=1).pow(2).sum(), tx, create_graph=True)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    (g * g).sum().backward()
    (tg * tg).sum().backward()
    assert_same(x.grad, tx.grad, GRAD_RTOL, GRAD_ATOL)
    assert_same(w.grad, tw.grad, GRAD_RTOL, GRAD_ATOL)


def test_second_derivative_through_training_batch_norm_matches_torch():
    # training batch_norm is one composite op with the closed-form gradient; under create_graph its backward makes
    # the batch statistics again from the input, so that the gradient is differentiable in the input and weight
    x_data, w_data, b_data = rand(4, 3, 2, 2), rand(3), rand(3)
    x, w, b = (Tensor(v, requires_grad=True) for v in (x_data, w_data, b_data))
    tx, tw, tb = (torch.tensor(v, requires_grad=True) for v in (x_data, w_data, b_data))
    out = lazygrad.nn.functional.batch_norm(x, None, None, w, b, training=True)
    t_out = F.batch_norm(tx, None, None, tw, tb, training=True)
    (g,) = lazygrad.grad((out * out * out).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((t_out * t_out * t_out).sum(), tx, create_graph=True)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    (g * g).sum().backward()
    (tg * tg).sum().backward()
    assert_same(x.grad, tx.grad, GRAD_RTOL, GRAD_ATOL)
    assert_same(w.grad, tw.grad, GRAD_RTOL, GRAD_ATOL)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_gradient_and_its_derivative_match_torch_with_an_ignored_target(reduction):
    # class-index cross_entropy is one composite op with the closed-form gradient (softmax - one_hot, zero where
    # the target is ignored), and under create_graph that gradient is differentiable in the logits
    data = rand(4, 5)
    labels = np.array([1, -100, 4, 1])
    x, tx = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    loss = lazygrad.nn.functional.cross_entropy(x, Tensor(labels), reduction=reduction)
    t_loss = F.cross_entropy(tx, torch.tensor(labels), reduction=reduction)
    weights = np.arange(1, loss.numel() + 1, dtype=np.float32).reshape(loss.shape)  # tells the elements apart
    (g,) = lazygrad.grad((loss * Tensor(weights)).sum(), x, create_graph=True)
    (tg,) = torch.autograd.grad((t_loss * torch.tensor(weights)).sum(), tx, create_graph=True)
    assert_same(g, tg, GRAD_RTOL, GRAD_ATOL)
    (g * g).sum().backward()
    (tg * tg).sum().backward()
    assert_same(x.grad, tx.grad, GRAD_RTOL, GRAD_ATOL)


def test_mean_cross_entropy_on_nodes_is_its_tensor_ops(monkeypatch):
    # the averaged class cross-entropy of (N, C) logits builds its forward and gradient nodes directly
    # (nn.functional._mean_class_nll_nodes): the same kernels, loss and gradient as its tensor ops
    data, labels = rand(4, 5, seed=3), np.array([1, -100, 4, 1])

    def run():
        x = Tensor(data, requires_grad=True)
        loss = lazygrad.nn.functional.cross_entropy(x, Tensor(labels))
        loss.backward()
        return kernels_and_values(loss, x.grad)

    kernels, (loss, grad) = run()
    monkeypatch.setattr(lazygrad.nn.functional, "_class_nll_on_nodes", lambda *args: False)
    tensor_kernels, (tensor_loss, tensor_grad) = run()
    assert kernels == tensor_kernels
    np.testing.assert_array_equal(loss, tensor_loss)
    np.testing.assert_array_equal(grad, tensor_grad)


def test_log_softmax_without_a_record_is_the_recorded_ones_nodes():
    # log_softmax that records no gradient builds its nodes directly (tensor_ops.reduce.log_softmax_nodes): the
    # same kernels and values as the recorded tensor ops
    data = rand(3, 6, seed=7)

    def run(requires_grad):
        out = Tensor(data, requires_grad=requires_grad).log_softmax(-1)
        return kernels_and_values(out)

    kernels, (values,) = run(False)
    recorded_kernels, (recorded_values,) = run(True)
    assert kernels == recorded_kernels
    np.testing.assert_array_equal(values, recorded_values)


def test_conv2d_on_nodes_is_its_tensor_ops_in_every_layout(monkeypatch):
    # conv2d's forward and (without create_graph) its gradients build their nodes directly (tensor_ops.nn), in each
    # of codegen.layout's layouts: the same kernels, values and gradients as its tensor ops
    from lazygrad.codegen import layout
    from lazygrad.tensor_ops import nn as nn_ops

    full, _ = layout._lanes(Tensor([1.0]).lazydata.device)  # (float32 lanes, and half of them)
    # columns (output rows no half-vector divides), a channel-last weight (strided, output channels a whole
    # vector), windows (output rows whole vectors); input gradients over channels, over pixels and transposed
    cases = [
        ((1, 2, 5, 5), (3, 2, 3, 3), 1, 0),
        ((1, 2, 2 * full, 2 * full), (full, 2, 3, 3), 2, 1),
        ((1, 2, full, full), (3, 2, 3, 3), 1, 1),
        ((1, 2, 2, max(full // 2, 1)), (3, 2, 3, 3), 1, 1),
        # a long weight gradient over input channels that fill the vectors: its input read from a channel-last copy
        ((1, full, 4 * full + full // 2, 4 * full + full // 2), (3, full, 3, 3), 1, 1),
    ]
    chosen, input_channel_last = [], []
    for name in ("conv_layout", "conv_input_grad_layout"):
        choose = getattr(layout, name)
        monkeypatch.setattr(layout, name, lambda *args, choose=choose: chosen.append(choose(*args)) or chosen[-1])
    channel_last = layout.weight_grad_input_channel_last
    monkeypatch.setattr(
        layout,
        "weight_grad_input_channel_last",
        lambda *args: input_channel_last.append(channel_last(*args)) or input_channel_last[-1],
    )

    def run():
        outputs = []
        for x_shape, w_shape, stride, padding in cases:
            x = Tensor(rand(*x_shape, seed=1), requires_grad=True)
            w = Tensor(rand(*w_shape, seed=2), requires_grad=True)
            out = lazygrad.nn.functional.conv2d(x, w, stride=stride, padding=padding)
            (out * Tensor(rand(*out.shape, seed=3))).sum().backward()
            outputs.append(kernels_and_values(out, x.grad, w.grad))
        return outputs

    on_nodes = run()
    layouts = set(chosen)
    monkeypatch.setattr(nn_ops, "_conv_forward_on_nodes", lambda *args: False)
    for (kernels, values), (tensor_kernels, tensor_values) in zip(on_nodes, run()):
        assert kernels == tensor_kernels
        for ours, theirs in zip(values, tensor_values):
            np.testing.assert_array_equal(ours, theirs)
    if layout.vector_width(Tensor([1.0]).lazydata.device) > 1:  # (a device without lanes has one layout)
        assert layouts == set(layout.ConvLayout) | set(layout.InputGradLayout)
        assert any(input_channel_last)


@pytest.mark.parametrize("shape", [(2, 3, 4, 4), (5, 3)], ids=str)
def test_training_batch_norm_on_nodes_is_its_tensor_ops(monkeypatch, shape):
    # training batch_norm builds its forward, running statistics and gradients as nodes directly
    # (nn.functional._batch_norm_nodes): the same kernels, outputs, gradients and running statistics as its tensor ops
    def run():
        x = Tensor(rand(*shape, seed=1), requires_grad=True)
        w, b = Tensor(rand(3, seed=2), requires_grad=True), Tensor(rand(3, seed=3), requires_grad=True)
        mean, var = Tensor(rand(3, seed=4)).realize(), Tensor(rand(3, seed=5) + 3).realize()
        out = lazygrad.nn.functional.batch_norm(x, mean, var, w, b, training=True, momentum=0.2)
        (out * Tensor(rand(*shape, seed=6))).sum().backward()
        return kernels_and_values(out, x.grad, w.grad, b.grad, mean, var)

    kernels, values = run()
    monkeypatch.setattr(lazygrad.nn.functional, "_batch_norm_on_nodes", lambda *args: False)
    tensor_kernels, tensor_values = run()
    assert kernels == tensor_kernels
    for ours, theirs in zip(values, tensor_values):
        np.testing.assert_array_equal(ours, theirs)


def _padded_conv(x, w, stride):
    return lazygrad.nn.functional.conv2d(x, w, stride=stride, padding=1)


def test_backward_with_create_graph_gives_differentiable_grad():
    data = rand(3)
    x, tx = Tensor(data, requires_grad=True), torch.tensor(data, requires_grad=True)
    (x**3).sum().backward(create_graph=True)
    (tx**3).sum().backward(create_graph=True)
    assert x.grad.requires_grad
    (g2,) = lazygrad.grad(x.grad.sum(), x)
    (tg2,) = torch.autograd.grad(tx.grad.sum(), tx)
    assert_same(g2, tg2, GRAD_RTOL, GRAD_ATOL)


def test_hessian_vector_product_of_a_small_mlp():
    arrays = [rand(5, 4, seed=1), rand(4, 6, seed=2), rand(6, 2, seed=3)]
    vectors = [rand(4, 6, seed=4), rand(6, 2, seed=5)]

    def hvp(module, x, w1, w2, v1, v2):
        loss = (((x @ w1).tanh() @ w2) ** 2).mean()
        grads = module.grad(loss, [w1, w2], create_graph=True)
        dot = (grads[0] * v1).sum() + (grads[1] * v2).sum()
        return module.grad(dot, [w1, w2])

    x, w1, w2 = (Tensor(a, requires_grad=i > 0) for i, a in enumerate(arrays))
    tx, tw1, tw2 = (torch.tensor(a, requires_grad=i > 0) for i, a in enumerate(arrays))
    got = hvp(lazygrad, x, w1, w2, *(Tensor(v) for v in vectors))
    want = hvp(torch.autograd, tx, tw1, tw2, *(torch.tensor(v) for v in vectors))
    assert_same(list(got), list(want), GRAD_RTOL, GRAD_ATOL)


# ---- laziness and memory ----------------------------------------------------------------------------


def test_backward_runs_no_kernels():
    x = Tensor(rand(8, 4)).realize()
    w = Tensor(rand(4, 3), requires_grad=True).realize()
    loss = (x @ w).relu().log_softmax(-1).mean()
    with lazygrad.profile() as p:
        loss.backward()
    assert p.kernels == 0 and p.copies == 0
    assert w.grad.shape == (4, 3)


def test_grad_values_are_computed_on_demand():
    w = Tensor(rand(4, 3), requires_grad=True)
    (w * w).sum().backward()
    with lazygrad.profile() as p:
        w.grad.numpy()
    assert p.kernels >= 1


def test_training_steps_keep_the_number_of_live_objects_flat():
    lazygrad.manual_seed(0)
    x = Tensor(rand(8, 4)).realize()
    y = Tensor(rand(8, 2, seed=3)).realize()
    w1 = Tensor(rand(4, 8, seed=1) * 0.3, requires_grad=True).realize()
    w2 = Tensor(rand(8, 2, seed=2) * 0.3, requires_grad=True).realize()

    def step():
        loss = (((x @ w1).relu() @ w2 - y) ** 2).mean()
        loss.backward()
        with lazygrad.no_grad():
            for w in (w1, w2):
                w.assign(w - w.grad * 0.01)
                w.grad = None
        lazygrad.realize(loss, w1, w2)
        return loss.item()

    first = step()
    for _ in range(20):
        step()
    gc.collect()
    baseline = len(gc.get_objects())
    for _ in range(1000):
        last = step()
    gc.collect()
    growth = len(gc.get_objects()) - baseline
    assert growth < 1000, f"{growth} more live objects after 1000 steps"
    assert last < first
