"""torch.nn's activation, normalization, container and loss modules that wrap nn.functional: built with the same
arguments, they give torch's values and gradients, names and state_dict keys. The functions themselves are
checked on every backend by tests/test_opinfo.py; these tests check the modules' own work (arguments, defaults,
registration), which does not depend on the backend."""

import numpy as np
import pytest
import torch
from helpers import assert_same, check_grad, rand

import lazygrad
from lazygrad import nn

# (module name, constructor arguments), for torch.nn and lazygrad.nn alike
ACTIVATIONS = [
    ("Tanh", ()), ("Sigmoid", ()), ("LogSigmoid", ()), ("Softsign", ()), ("Tanhshrink", ()), ("SiLU", ()),
    ("Mish", ()), ("ReLU6", ()), ("SELU", ()), ("Hardswish", ()), ("Hardsigmoid", ()), ("LeakyReLU", (0.2,)),
    ("ELU", (0.5,)), ("CELU", (1.5,)), ("Softplus", (2.0, 1.0)), ("Hardtanh", (-0.5, 0.7)), ("Threshold", (0.1, -3.0)),
    ("Hardshrink", (0.3,)), ("Softshrink", (0.3,)), ("GLU", (1,)), ("Softmax", (1,)), ("LogSoftmax", (1,)),
    ("Softmin", (0,)), ("Softmax", ()),
]  # fmt: skip


def make(name, args, library):
    return getattr(torch.nn if library is torch else nn, name)(*args)


@pytest.mark.backend_independent
@pytest.mark.parametrize("name, args", ACTIVATIONS, ids=[f"{n}{a}" for n, a in ACTIVATIONS])
def test_activation_modules_match_torch_forward_and_backward(name, args):
    ours, theirs = make(name, args, lazygrad), make(name, args, torch)
    assert repr(ours) == repr(theirs)
    check_grad(lambda x: (ours if isinstance(x, lazygrad.Tensor) else theirs)(x), rand(3, 4))


LOSSES = [
    ("L1Loss", ()), ("L1Loss", (True, False)), ("SmoothL1Loss", (None, None, "sum", 0.5)), ("HuberLoss", ("none", 0.4)),
    ("BCELoss", ()), ("BCEWithLogitsLoss", ()),
]  # fmt: skip


@pytest.mark.backend_independent
@pytest.mark.parametrize("name, args", LOSSES, ids=[n for n, _ in LOSSES])
def test_loss_modules_match_torch_forward_and_backward(name, args):
    ours, theirs = make(name, args, lazygrad), make(name, args, torch)
    prediction = rand(3, 4, low=0.05, high=0.95) if name == "BCELoss" else rand(3, 4)
    target = rand(3, 4, low=0.0, high=1.0, seed=3)

    def loss(x, t):
        return (ours if isinstance(x, lazygrad.Tensor) else theirs)(x, t)

    check_grad(loss, prediction, target)


@pytest.mark.parametrize("shape", [(6, 3), (4, 3, 5)], ids=["NC", "NCL"])
def test_batchnorm1d_trains_and_evaluates_as_torch(shape):
    ours, theirs = nn.BatchNorm1d(3, momentum=0.3), torch.nn.BatchNorm1d(3, momentum=0.3)
    check_grad(lambda x: (ours if isinstance(x, lazygrad.Tensor) else theirs)(x), rand(*shape))
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        assert_same(getattr(ours, name), getattr(theirs, name), name=name)
    ours.eval(), theirs.eval()
    x = rand(*shape, seed=5)
    assert_same(ours(lazygrad.tensor(x)), theirs(torch.tensor(x)).detach())
    with pytest.raises(ValueError, match="BatchNorm1d expects a 2D or 3D input"):
        ours(lazygrad.ones(2, 3, 4, 4))


@pytest.mark.backend_independent
def test_module_dict_and_parameter_list_register_as_torch():
    def build(library):
        torch.manual_seed(0)
        m = library.nn
        heads = m.ModuleDict({"b": m.Linear(2, 3), "a": m.Linear(3, 1)})
        heads["c"] = m.Tanh()
        scales = m.ParameterList([m.Parameter(library.ones(2)), m.Parameter(library.zeros(3))])
        return heads, scales

    (ours, our_scales), (theirs, their_scales) = build(lazygrad), build(torch)
    assert list(ours) == list(theirs) == ["b", "a", "c"] and "a" in ours and len(ours) == 3
    assert list(ours.state_dict()) == list(theirs.state_dict())
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in theirs.named_parameters()]
    assert list(our_scales.state_dict()) == list(their_scales.state_dict()) and len(our_scales) == 2
    assert [tuple(p.shape) for p in our_scales] == [tuple(p.shape) for p in their_scales]
    del ours["b"], theirs["b"]
    assert list(ours.keys()) == list(theirs.keys())
    np.testing.assert_array_equal(our_scales[1].numpy(), their_scales[1].detach().numpy())
