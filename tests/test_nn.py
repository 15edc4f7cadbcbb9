"""lazygrad.nn against PyTorch: every layer's output and gradients with the same weights, losses, initialization
statistics, and the Module machinery (registration, state_dict key names, load_state_dict errors, modes, repr)."""

import math

import numpy as np
import pytest

import lazygrad
import lazygrad.nn.functional as F
from lazygrad import nn

torch = pytest.importorskip("torch")
torch_nn = torch.nn
TF = torch.nn.functional

RTOL, ATOL = 1e-3, 1e-4


def to_lazygrad(tensor, requires_grad: bool = False) -> lazygrad.Tensor:
    return lazygrad.Tensor(tensor.detach().numpy().copy(), requires_grad=requires_grad)


def assert_close(actual, expected, rtol: float = RTOL, atol: float = ATOL, name: str = "") -> None:
    actual = actual.numpy() if isinstance(actual, lazygrad.Tensor) else np.asarray(actual)
    expected = expected.detach().numpy() if isinstance(expected, torch.Tensor) else np.asarray(expected)
    assert actual.shape == expected.shape, f"{name}: shape {actual.shape} != {expected.shape}"
    np.testing.assert_allclose(actual, expected, rtol=rtol, atol=atol, err_msg=name)


def copy_weights(torch_module, module: nn.Module) -> None:
    module.load_state_dict({name: value.numpy() for name, value in torch_module.state_dict().items()})


def check_layer(torch_layer, layer: nn.Module, input_shape, seed: int = 0) -> None:
    """Same output, and same gradients of the input and of every parameter, as the torch layer with equal weights."""
    torch.manual_seed(seed)
    copy_weights(torch_layer, layer)
    x_torch = torch.randn(*input_shape, requires_grad=True)
    x = to_lazygrad(x_torch, requires_grad=True)
    out_torch, out = torch_layer(x_torch), layer(x)
    assert_close(out, out_torch, name="output")
    # a random projection as the loss: every output element gets its own gradient
    projection = torch.randn(out_torch.shape)
    (out_torch * projection).sum().backward()
    (out * to_lazygrad(projection)).sum().backward()
    assert_close(x.grad, x_torch.grad, name="input grad")
    torch_params = dict(torch_layer.named_parameters())
    params = dict(layer.named_parameters())
    assert list(params) == list(torch_params)
    for name, param in params.items():
        assert_close(param.grad, torch_params[name].grad, name=f"{name} grad")


# ---- layers: forward and backward ----


@pytest.mark.parametrize(
    "args, kwargs, input_shape",
    [
        ((3, 4, 3), {}, (2, 3, 7, 7)),
        ((3, 4, 3), dict(stride=2, padding=1), (2, 3, 7, 7)),
        ((3, 2, 3), dict(dilation=2, padding=2, bias=False), (1, 3, 8, 8)),
        ((4, 6, 3), dict(groups=2, padding=1), (2, 4, 5, 5)),
        ((2, 3, (3, 1)), dict(stride=(1, 2), padding=(1, 0)), (2, 2, 5, 6)),
        ((2, 3, 4), dict(padding="same"), (1, 2, 6, 6)),
        ((2, 3, 3), dict(padding="valid"), (1, 2, 6, 6)),
    ],
    ids=["plain", "stride-padding", "dilation-nobias", "groups", "rectangular", "same", "valid"],
)
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_matches_torch(args, kwargs, input_shape):
    check_layer(torch_nn.Conv2d(*args, **kwargs), nn.Conv2d(*args, **kwargs), input_shape)


@pytest.mark.parametrize("input_shape", [(4, 5), (2, 3, 5)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_matches_torch(input_shape, bias):
    check_layer(torch_nn.Linear(5, 3, bias=bias), nn.Linear(5, 3, bias=bias), input_shape)


@pytest.mark.parametrize(
    "make_layer",
    [
        lambda m: m.MaxPool2d(2),
        lambda m: m.MaxPool2d(3, stride=2, padding=1),
        lambda m: m.MaxPool2d(2, stride=1, dilation=2),
        lambda m: m.AvgPool2d(2),
        lambda m: m.AvgPool2d(3, stride=2, padding=1),
        lambda m: m.AvgPool2d(3, stride=2, padding=1, count_include_pad=False),
        lambda m: m.AvgPool2d(2, divisor_override=3),
        lambda m: m.AdaptiveAvgPool2d(1),
        lambda m: m.AdaptiveAvgPool2d((1, 1)),
        lambda m: m.AdaptiveAvgPool2d((3, 2)),
        lambda m: m.AdaptiveAvgPool2d((4, 3)),
        lambda m: m.AdaptiveAvgPool2d((None, 2)),
        lambda m: m.ReLU(),
        lambda m: m.Flatten(),
        lambda m: m.Flatten(0, 2),
        lambda m: m.Identity(),
    ],
    ids=[
        "maxpool2",
        "maxpool3s2p1",
        "maxpool-dilation",
        "avgpool2",
        "avgpool3s2p1",
        "avgpool-exclude-pad",
        "avgpool-divisor",
        "adaptive1",
        "adaptive(1,1)",
        "adaptive-divisible",
        "adaptive-uneven",
        "adaptive-none",
        "relu",
        "flatten",
        "flatten0-2",
        "identity",
    ],
)
def test_parameterless_layer_matches_torch(make_layer):
    check_layer(make_layer(torch_nn), make_layer(nn), (2, 3, 6, 7))


# ---- both doors: the Tensor method and nn.functional run one implementation ----


def check_both_doors(method, functional, torch_fn, *shapes) -> None:
    """The Tensor method and nn.functional give torch's output and torch's gradient of every input."""
    rng = np.random.default_rng(0)
    arrays = [rng.standard_normal(shape).astype(np.float32) for shape in shapes]
    torch_inputs = [torch.tensor(a, requires_grad=True) for a in arrays]
    expected = torch_fn(*torch_inputs)
    projection = rng.standard_normal(tuple(expected.shape)).astype(np.float32)
    (expected * torch.tensor(projection)).sum().backward()
    for door, fn in (("Tensor method", method), ("nn.functional", functional)):
        inputs = [lazygrad.Tensor(a.copy(), requires_grad=True) for a in arrays]
        out = fn(*inputs)
        assert_close(out, expected, name=f"{door}: output")
        (out * lazygrad.Tensor(projection)).sum().backward()
        for i, (x, tx) in enumerate(zip(inputs, torch_inputs)):
            assert_close(x.grad, tx.grad, name=f"{door}: gradient of input {i}")


@pytest.mark.parametrize(
    "kernel, dilation",
    [((2, 2), 1), ((4, 4), 1), ((2, 3), 1), ((3, 3), 2), ((2, 2), 3), ((4, 3), (1, 2))],
    ids=["2x2", "4x4", "2x3", "3x3-dilation2", "2x2-dilation3", "4x3-dilation1x2"],
)
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_conv2d_same_padding_puts_the_odd_pixel_right_and_bottom_as_torch(kernel, dilation):
    check_both_doors(
        lambda x, w: x.conv2d(w, padding="same", dilation=dilation),
        lambda x, w: F.conv2d(x, w, padding="same", dilation=dilation),
        lambda x, w: TF.conv2d(x, w, padding="same", dilation=dilation),
        (2, 3, 7, 6),
        (4, 3, *kernel),
    )


def test_conv2d_same_padding_refuses_a_stride_as_torch():
    x, w = lazygrad.zeros(1, 1, 5, 5), lazygrad.zeros(1, 1, 2, 2)
    with pytest.raises(RuntimeError, match="strided"):
        x.conv2d(w, stride=2, padding="same")
    with pytest.raises(RuntimeError, match="strided"):
        F.conv2d(x, w, stride=2, padding="same")


@pytest.mark.parametrize(
    "input_hw, output_size",
    [((7, 7), (3, 3)), ((5, 9), (2, 4)), ((6, 7), (4, 3)), ((5, 5), (None, 2)), ((8, 6), 3)],
    ids=["7x7-3x3", "5x9-2x4", "6x7-4x3", "5x5-none2", "8x6-3"],
)
def test_adaptive_avg_pool2d_uneven_windows_match_torch(input_hw, output_size):
    check_both_doors(
        lambda x: x.adaptive_avg_pool2d(output_size),
        lambda x: F.adaptive_avg_pool2d(x, output_size),
        lambda x: TF.adaptive_avg_pool2d(x, output_size),
        (2, 3, *input_hw),
    )


def test_dropout_is_one_implementation_through_both_doors():
    x = lazygrad.tensor(np.array([1.0, -2.0, float("inf"), 4.0] * 64, np.float32))
    lazygrad.manual_seed(5)
    method = x.dropout(0.3).numpy()
    lazygrad.manual_seed(5)
    functional = F.dropout(x, 0.3).numpy()
    np.testing.assert_array_equal(method, functional)
    assert np.isnan(method).any(), "a dropped inf is NaN, as in PyTorch (inf * 0)"


def test_dropout_keeps_or_scales_each_element():
    dropout = nn.Dropout(0.25)
    x = lazygrad.ones(200, 50)
    out = dropout(x).numpy()
    kept = out[out != 0]
    np.testing.assert_allclose(kept, np.full_like(kept, 1 / 0.75), rtol=1e-6)
    assert abs((out == 0).mean() - 0.25) < 0.03
    dropout.eval()
    np.testing.assert_array_equal(dropout(x).numpy(), np.ones((200, 50), np.float32))


def test_dropout_gradient_is_the_mask_scaled():
    x = lazygrad.ones(64, 16, requires_grad=True)
    out = F.dropout(x, 0.5, training=True)
    out.sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), out.numpy())  # x is ones: out is exactly mask / (1 - p)


# ---- BatchNorm ----


def run_batchnorm_steps(kwargs: dict, steps: int, train: bool = True, input_shape=(4, 3, 5, 5)):
    torch_bn, bn = torch_nn.BatchNorm2d(3, **kwargs), nn.BatchNorm2d(3, **kwargs)
    torch.manual_seed(1)
    if torch_bn.weight is not None:  # not the trivial 1/0 initialization, so scale and shift are tested
        torch_nn.init.uniform_(torch_bn.weight, 0.5, 1.5)
    if torch_bn.bias is not None:
        torch_nn.init.uniform_(torch_bn.bias, -0.5, 0.5)
    copy_weights(torch_bn, bn)
    torch_bn.train(train), bn.train(train)
    for step in range(steps):
        x_torch = torch.randn(*input_shape, requires_grad=True) * (step + 1) + step
        x_torch.retain_grad()
        x = to_lazygrad(x_torch, requires_grad=True)
        out_torch, out = torch_bn(x_torch), bn(x)
        assert_close(out, out_torch, name=f"output of step {step}")
        projection = torch.randn(out_torch.shape)
        (out_torch * projection).sum().backward()
        (out * to_lazygrad(projection)).sum().backward()
        assert_close(x.grad, x_torch.grad, name=f"input grad of step {step}")
        for name, param in bn.named_parameters():
            assert_close(param.grad, getattr(torch_bn, name).grad, name=f"{name} grad of step {step}")
        torch_bn.zero_grad()
        bn.zero_grad()
    return torch_bn, bn


def assert_same_state(torch_module, module: nn.Module) -> None:
    torch_state, state = torch_module.state_dict(), module.state_dict()
    assert list(state) == list(torch_state)
    for name, value in state.items():
        assert_close(value, torch_state[name], name=name)


@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(momentum=0.3, eps=1e-3), dict(momentum=None), dict(affine=False), dict(bias=False)],
    ids=["default", "momentum-eps", "cumulative", "no-affine", "no-bias"],
)
def test_batchnorm_training_matches_torch_including_running_stats(kwargs):
    torch_bn, bn = run_batchnorm_steps(kwargs, steps=2)
    assert_same_state(torch_bn, bn)  # running mean, unbiased running var, num_batches_tracked
    assert int(bn.num_batches_tracked.item()) == 2


def test_batchnorm_eval_uses_running_stats():
    torch_bn, bn = run_batchnorm_steps({}, steps=1)
    torch_bn.eval(), bn.eval()
    x_torch = torch.randn(2, 3, 4, 4)
    assert_close(bn(to_lazygrad(x_torch)), torch_bn(x_torch), name="eval output")
    assert_same_state(torch_bn, bn)  # eval mode leaves the running stats alone


def test_batchnorm_without_running_stats_uses_batch_stats_in_eval():
    torch_bn, bn = run_batchnorm_steps(dict(track_running_stats=False), steps=1, train=False)
    assert list(bn.state_dict()) == list(torch_bn.state_dict()) == ["weight", "bias"]


def test_batchnorm_rejects_one_value_per_channel_in_training():
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nn.BatchNorm2d(3)(lazygrad.ones(1, 3, 1, 1))


def test_functional_batch_norm_training_updates_given_running_stats():
    x_torch = torch.randn(3, 2, 4, 4)
    running_torch = [torch.zeros(2), torch.ones(2)]
    running = [lazygrad.zeros(2).contiguous(), lazygrad.ones(2).contiguous()]
    lazygrad.realize(*running)
    out_torch = TF.batch_norm(x_torch, *running_torch, training=True, momentum=0.2)
    out = F.batch_norm(to_lazygrad(x_torch), *running, training=True, momentum=0.2)
    assert_close(out, out_torch)
    for actual, expected in zip(running, running_torch):
        assert_close(actual, expected)


# ---- activations and losses ----


def test_softmax_log_softmax_one_hot():
    x_torch = torch.randn(3, 5)
    x = to_lazygrad(x_torch)
    assert_close(F.softmax(x, 1), TF.softmax(x_torch, 1))
    assert_close(F.log_softmax(x, -1), TF.log_softmax(x_torch, -1))
    assert_close(F.relu(x), TF.relu(x_torch))
    labels = torch.tensor([0, 3, 1, 3])
    one_hot = F.one_hot(to_lazygrad(labels), 5)
    assert one_hot.dtype == lazygrad.int64
    np.testing.assert_array_equal(one_hot.numpy(), TF.one_hot(labels, 5).numpy())
    np.testing.assert_array_equal(F.one_hot(to_lazygrad(labels)).numpy(), TF.one_hot(labels).numpy())


def check_loss(torch_loss_fn, loss_fn, input_torch, *args, **kwargs) -> None:
    """Same loss value and same input gradient; args may be torch tensors (converted) or other values."""
    input_torch = input_torch.detach().requires_grad_(True)
    x = to_lazygrad(input_torch, requires_grad=True)
    converted = [to_lazygrad(a) if isinstance(a, torch.Tensor) else a for a in args]
    converted_kwargs = {k: to_lazygrad(v) if isinstance(v, torch.Tensor) else v for k, v in kwargs.items()}
    expected, actual = torch_loss_fn(input_torch, *args, **kwargs), loss_fn(x, *converted, **converted_kwargs)
    assert_close(actual, expected, name="loss")
    projection = torch.randn(expected.shape)
    (expected * projection).sum().backward()
    (actual * to_lazygrad(projection)).sum().backward()
    assert_close(x.grad, input_torch.grad, name="input grad")


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_mse_loss(reduction):
    torch.manual_seed(0)
    check_loss(TF.mse_loss, F.mse_loss, torch.randn(4, 3), torch.randn(4, 3), reduction=reduction)


CLASS_TARGET_CASES = {
    "plain": {},
    "sum": dict(reduction="sum"),
    "none": dict(reduction="none"),
    "weight": dict(weight=torch.tensor([0.2, 1.0, 2.0, 0.5, 1.5])),
    "ignore": dict(ignore_index=2),
    "weight-ignore-none": dict(weight=torch.tensor([0.2, 1.0, 2.0, 0.5, 1.5]), ignore_index=1, reduction="none"),
}


@pytest.mark.parametrize("kwargs", CLASS_TARGET_CASES.values(), ids=CLASS_TARGET_CASES.keys())
@pytest.mark.parametrize("input_shape", [(6, 5), (2, 5, 3, 2)], ids=["NC", "NCHW"])
def test_nll_loss(kwargs, input_shape):
    torch.manual_seed(0)
    log_probs = torch.randn(*input_shape).log_softmax(1)
    target = torch.randint(0, 5, (input_shape[0], *input_shape[2:]))
    target.view(-1)[:3] = torch.tensor([1, 2, 2])  # make sure the ignored classes occur
    check_loss(TF.nll_loss, F.nll_loss, log_probs, target, **kwargs)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
@pytest.mark.parametrize("kwargs", CLASS_TARGET_CASES.values(), ids=CLASS_TARGET_CASES.keys())
@pytest.mark.parametrize("input_shape", [(6, 5), (2, 5, 3, 2)], ids=["NC", "NCHW"])
def test_cross_entropy_class_targets(kwargs, input_shape, label_smoothing):
    torch.manual_seed(0)
    logits = torch.randn(*input_shape) * 3
    target = torch.randint(0, 5, (input_shape[0], *input_shape[2:]))
    target.view(-1)[:3] = torch.tensor([1, 2, 2])
    check_loss(TF.cross_entropy, F.cross_entropy, logits, target, label_smoothing=label_smoothing, **kwargs)


@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
@pytest.mark.parametrize(
    "kwargs",
    [{}, dict(reduction="sum"), dict(reduction="none"), dict(weight=torch.tensor([0.2, 1.0, 2.0, 0.5]))],
    ids=["mean", "sum", "none", "weight"],
)
def test_cross_entropy_probability_targets(kwargs, label_smoothing):
    torch.manual_seed(0)
    logits, target = torch.randn(5, 4) * 2, torch.rand(5, 4).softmax(1)
    check_loss(TF.cross_entropy, F.cross_entropy, logits, target, label_smoothing=label_smoothing, **kwargs)


def test_cross_entropy_unbatched_input():
    torch.manual_seed(0)
    check_loss(TF.cross_entropy, F.cross_entropy, torch.randn(5), torch.tensor(3))


def test_loss_modules_match_functional():
    torch.manual_seed(0)
    logits, target = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    check_loss(torch_nn.CrossEntropyLoss(label_smoothing=0.1), nn.CrossEntropyLoss(label_smoothing=0.1), logits, target)
    check_loss(torch_nn.NLLLoss(reduction="sum"), nn.NLLLoss(reduction="sum"), logits.log_softmax(1), target)
    check_loss(torch_nn.MSELoss(), nn.MSELoss(), logits, torch.randn(4, 3))


def test_unknown_reduction_is_rejected():
    with pytest.raises(ValueError, match="reduction"):
        F.cross_entropy(lazygrad.zeros(2, 3), lazygrad.tensor([0, 1]), reduction="average")


# ---- initialization (distributions, not values) ----


def sample_stats(tensor: lazygrad.Tensor) -> tuple[float, float, float]:
    values = tensor.numpy().astype(np.float64)
    return values.mean(), values.std(), np.abs(values).max()


def test_fan_computation_matches_torch():
    for shape in [(8, 4), (16, 3, 3, 5), (6, 2, 1, 1)]:
        expected = torch_nn.init._calculate_fan_in_and_fan_out(torch.empty(shape))
        assert nn.init.calculate_fan_in_and_fan_out(lazygrad.empty(*shape)) == expected
    for name, param in [("relu", None), ("leaky_relu", None), ("leaky_relu", 0.2), ("tanh", None), ("conv2d", None)]:
        assert nn.init.calculate_gain(name, param) == pytest.approx(torch_nn.init.calculate_gain(name, param))


def test_kaiming_initializers_have_torch_bounds_and_spread():
    weight = lazygrad.empty(128, 64, 3, 3)
    nn.init.kaiming_normal_(weight, mode="fan_out", nonlinearity="relu")
    mean, std, _ = sample_stats(weight)
    assert abs(mean) < 0.002 and std == pytest.approx(math.sqrt(2 / (128 * 9)), rel=0.02)
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    bound = 1 / math.sqrt(64 * 9)  # gain sqrt(1/3) * sqrt(3) / sqrt(fan_in)
    mean, std, largest = sample_stats(weight)
    assert largest <= bound and largest > 0.99 * bound
    assert std == pytest.approx(bound / math.sqrt(3), rel=0.02)


def test_simple_initializers():
    tensor = lazygrad.empty(100, 100)
    nn.init.uniform_(tensor, -2.0, 3.0)
    values = tensor.numpy()
    assert values.min() >= -2.0 and values.max() <= 3.0 and values.mean() == pytest.approx(0.5, abs=0.05)
    nn.init.normal_(tensor, 1.0, 0.5)
    mean, std, _ = sample_stats(tensor)
    assert mean == pytest.approx(1.0, abs=0.02) and std == pytest.approx(0.5, rel=0.03)
    for fill, expected in [(nn.init.zeros_, 0.0), (nn.init.ones_, 1.0), (lambda t: nn.init.constant_(t, 2.5), 2.5)]:
        fill(tensor)
        np.testing.assert_array_equal(tensor.numpy(), np.full((100, 100), expected, np.float32))


def test_layers_initialize_like_torch():
    conv, linear, bn = nn.Conv2d(32, 64, 3), nn.Linear(256, 300), nn.BatchNorm2d(5)
    for weight, bias, fan_in in [(conv.weight, conv.bias, 32 * 9), (linear.weight, linear.bias, 256)]:
        bound = 1 / math.sqrt(fan_in)
        _, std, largest = sample_stats(weight)
        assert largest <= bound and std == pytest.approx(bound / math.sqrt(3), rel=0.03)
        assert sample_stats(bias)[2] <= bound
    assert_same_state(torch_nn.BatchNorm2d(5), bn)


def test_initializers_do_not_record_gradients():
    weight = nn.Parameter(lazygrad.empty(4, 4))
    nn.init.normal_(weight)
    assert weight.requires_grad and weight.is_leaf


# ---- Module machinery ----


class TorchNet(torch_nn.Module):
    def __init__(self):
        super().__init__()
        self.features = torch_nn.Sequential(
            torch_nn.Conv2d(3, 4, 3, padding=1), torch_nn.BatchNorm2d(4), torch_nn.ReLU(), torch_nn.MaxPool2d(2)
        )
        self.head = torch_nn.Linear(4 * 4 * 4, 5)
        self.register_buffer("scale", torch.ones(1))

    def forward(self, x):
        return self.head(self.features(x).flatten(1)) * self.scale


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.MaxPool2d(2))
        self.head = nn.Linear(4 * 4 * 4, 5)
        self.register_buffer("scale", lazygrad.ones(1))

    def forward(self, x):
        return self.head(self.features(x).flatten(1)) * self.scale


def test_state_dict_keys_and_shapes_match_torch():
    torch_state, state = TorchNet().state_dict(), Net().state_dict()
    assert list(state) == list(torch_state)
    assert {k: tuple(v.shape) for k, v in state.items()} == {k: tuple(v.shape) for k, v in torch_state.items()}
    assert state["features.1.num_batches_tracked"].dtype == lazygrad.int64


def test_named_parameters_buffers_children_modules_match_torch():
    torch_net, net = TorchNet(), Net()
    assert [n for n, _ in net.named_parameters()] == [n for n, _ in torch_net.named_parameters()]
    assert [n for n, _ in net.named_buffers()] == [n for n, _ in torch_net.named_buffers()]
    assert [n for n, _ in net.named_children()] == [n for n, _ in torch_net.named_children()]
    assert [n for n, _ in net.named_modules()] == [n for n, _ in torch_net.named_modules()]
    assert [type(m).__name__ for m in net.modules()][1:] == [type(m).__name__ for m in torch_net.modules()][1:]
    assert len(list(net.parameters())) == 6 and len(list(net.children())) == 2
    assert net.get_submodule("features.1") is net.features[1]


def test_repr_matches_torch():
    assert repr(Net()) == repr(TorchNet()).replace("TorchNet", "Net")
    layers = [
        lambda m: m.Conv2d(2, 4, 3, stride=2, padding=1, dilation=2, groups=2, bias=False),
        lambda m: m.Conv2d(2, 4, 4, padding="same"),
        lambda m: m.AvgPool2d(2),
        lambda m: m.AdaptiveAvgPool2d((1, 1)),
        lambda m: m.Dropout(0.1),
        lambda m: m.Flatten(),
        lambda m: m.Identity(),
        lambda m: m.BatchNorm2d(3, momentum=None, affine=False),
        lambda m: m.BatchNorm2d(3, bias=False),
    ]
    for make in layers:
        assert repr(make(nn)) == repr(make(torch_nn))


def test_same_weight_shared_by_two_modules_is_listed_once():
    first, second = nn.Linear(3, 3), nn.Linear(3, 3)
    second.weight = first.weight
    model = nn.Sequential(first, second)
    assert [name for name, _ in model.named_parameters()] == ["0.weight", "0.bias", "1.bias"]


def test_attribute_registration():
    module = nn.Module()
    module.weight = nn.Parameter(lazygrad.ones(2))
    module.plain = lazygrad.ones(2)  # a plain Tensor attribute is neither parameter nor buffer
    module.register_buffer("stats", lazygrad.zeros(2))
    module.register_buffer("scratch", lazygrad.zeros(2), persistent=False)
    module.child = nn.Linear(2, 2)
    assert list(module.state_dict()) == ["weight", "stats", "child.weight", "child.bias"]
    assert [name for name, _ in module.named_buffers()] == ["stats", "scratch"]
    with pytest.raises(TypeError, match="weight"):
        module.weight = lazygrad.ones(2)
    module.weight = None
    del module.child
    assert list(module.state_dict()) == ["stats"]
    with pytest.raises(AttributeError, match="missing"):
        getattr(module, "missing")  # noqa: B009 (the attribute lookup is the point)


def test_sequential_indexing_length_iteration():
    layers = [nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1)]
    model = nn.Sequential(*layers)
    assert len(model) == 3 and list(model) == layers
    assert model[0] is layers[0] and model[-1] is layers[2]
    tail = model[1:]
    assert isinstance(tail, nn.Sequential) and list(tail) == layers[1:]
    assert [name for name, _ in tail.named_children()] == ["1", "2"]  # slicing keeps the names, as in torch
    with pytest.raises(IndexError):
        model[3]
    x = lazygrad.ones(4, 2)
    np.testing.assert_allclose(model(x).numpy(), layers[2](layers[1](layers[0](x))).numpy(), rtol=1e-6)


def test_train_eval_reach_every_submodule():
    net = Net()
    assert all(m.training for m in net.modules())
    assert net.eval() is net and not any(m.training for m in net.modules())
    net.train()
    assert all(m.training for m in net.modules())


def test_zero_grad_clears_or_zeroes():
    net = Net()
    net(lazygrad.ones(2, 3, 8, 8)).sum().backward()
    assert all(p.grad is not None for p in net.parameters())
    net.zero_grad(set_to_none=False)
    assert all(not p.grad.numpy().any() for p in net.parameters())
    net.zero_grad()
    assert all(p.grad is None for p in net.parameters())


def test_parameter_is_a_detached_leaf_that_requires_grad():
    source = lazygrad.ones(3, requires_grad=True) * 2
    param = nn.Parameter(source)
    assert isinstance(param, lazygrad.Tensor) and param.requires_grad and param.is_leaf
    np.testing.assert_array_equal(param.numpy(), [2, 2, 2])
    assert not nn.Parameter(lazygrad.ones(1), requires_grad=False).requires_grad


def test_to_same_device_keeps_parameters():
    net = Net()
    params = list(net.parameters())
    assert net.to(params[0].device) is net
    assert all(a is b for a, b in zip(net.parameters(), params))


# ---- load_state_dict ----


def test_load_state_dict_loads_in_place():
    torch_net, net = TorchNet(), Net()
    weight = net.head.weight
    copy_weights(torch_net, net)
    assert net.head.weight is weight  # same Parameter object: optimizers built earlier keep working
    assert_same_state(torch_net, net)


def test_load_state_dict_accepts_lazygrad_tensors():
    source, target = Net(), Net()
    target.load_state_dict(source.state_dict())
    for (name, actual), expected in zip(target.state_dict().items(), source.state_dict().values()):
        np.testing.assert_array_equal(actual.numpy(), expected.numpy(), err_msg=name)


def test_load_state_dict_reports_missing_and_unexpected_keys():
    state = {name: value.numpy() for name, value in TorchNet().state_dict().items()}
    del state["head.bias"], state["features.1.running_mean"]
    state["head.extra"] = np.zeros(3, np.float32)
    with pytest.raises(RuntimeError) as error:
        Net().load_state_dict(state)
    message = str(error.value)
    assert "Error(s) in loading state_dict for Net" in message
    assert 'Missing key(s) in state_dict: "features.1.running_mean", "head.bias"' in message
    assert 'Unexpected key(s) in state_dict: "head.extra"' in message


def test_load_state_dict_reports_shape_mismatch():
    state = {name: value.numpy() for name, value in TorchNet().state_dict().items()}
    state["head.weight"] = np.zeros((7, 64), np.float32)
    with pytest.raises(RuntimeError, match=r"size mismatch for head.weight: .*\(7, 64\).*\(5, 64\)"):
        Net().load_state_dict(state)


def test_load_state_dict_non_strict_returns_the_key_lists():
    torch_net, net = TorchNet(), Net()
    state = {name: value.numpy() for name, value in torch_net.state_dict().items()}
    del state["head.bias"]
    state["unknown"] = np.zeros(1, np.float32)
    result = net.load_state_dict(state, strict=False)
    assert result.missing_keys == ["head.bias"] and result.unexpected_keys == ["unknown"]
    assert_close(net.head.weight, torch_net.head.weight)
    with pytest.raises(RuntimeError, match="size mismatch"):  # even non-strict loading refuses wrong shapes
        net.load_state_dict({"head.weight": np.zeros((1, 1), np.float32)}, strict=False)


# ---- a small convnet end to end ----


def build_convnets():
    torch.manual_seed(0)
    torch_net = torch_nn.Sequential(
        torch_nn.Conv2d(3, 6, 3, padding=1),
        torch_nn.BatchNorm2d(6),
        torch_nn.ReLU(),
        torch_nn.MaxPool2d(2),
        torch_nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        torch_nn.BatchNorm2d(8),
        torch_nn.ReLU(),
        torch_nn.AdaptiveAvgPool2d(1),
        torch_nn.Flatten(),
        torch_nn.Linear(8, 5),
    )
    net = nn.Sequential(
        nn.Conv2d(3, 6, 3, padding=1),
        nn.BatchNorm2d(6),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(6, 8, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )
    copy_weights(torch_net, net)
    return torch_net, net


def test_small_convnet_loss_and_every_gradient_match_torch():
    torch_net, net = build_convnets()
    images, labels = torch.randn(4, 3, 8, 8), torch.tensor([0, 4, 2, 2])
    torch_loss = TF.cross_entropy(torch_net(images), labels)
    loss = F.cross_entropy(net(to_lazygrad(images)), to_lazygrad(labels))
    torch_loss.backward()
    loss.backward()
    assert_close(loss, torch_loss, name="loss")
    torch_params = dict(torch_net.named_parameters())
    grads = {name: param.grad for name, param in net.named_parameters()}
    lazygrad.realize(*grads.values())
    for name, grad in grads.items():
        assert_close(grad, torch_params[name].grad, name=f"{name} grad")
    assert_same_state(torch_net, net)  # the running statistics after one training-mode forward


def test_maxpool2d_module_with_ceil_mode_returns_torchs_values_indices_and_gradient():
    x = np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32)
    torch_x = torch.tensor(x, requires_grad=True)
    torch_out, torch_indices = torch.nn.MaxPool2d(2, return_indices=True, ceil_mode=True)(torch_x)
    torch_out.sum().backward()
    lazy_x = lazygrad.Tensor(x, requires_grad=True)
    out, indices = nn.MaxPool2d(2, return_indices=True, ceil_mode=True)(lazy_x)
    out.sum().backward()
    np.testing.assert_allclose(out.numpy(), torch_out.detach().numpy())
    np.testing.assert_array_equal(indices.numpy(), torch_indices.numpy())
    assert indices.dtype == lazygrad.int64
    np.testing.assert_allclose(lazy_x.grad.numpy(), torch_x.grad.numpy())


def test_fold_is_the_adjoint_of_unfold_as_in_torch_forward_and_backward():
    # op_db has no fold entry; (N, C * kh * kw, L) columns of a 2x3 kernel, stride 2, padding 1, dilation (1, 2)
    columns = np.random.default_rng(1).standard_normal((2, 3 * 2 * 3, 4 * 2)).astype(np.float32)
    arguments = dict(output_size=(7, 6), kernel_size=(2, 3), dilation=(1, 2), padding=1, stride=2)
    torch_columns = torch.tensor(columns, requires_grad=True)
    torch_out = torch.nn.functional.fold(torch_columns, **arguments)
    projection = np.random.default_rng(2).standard_normal(tuple(torch_out.shape)).astype(np.float32)
    (torch_out * torch.tensor(projection)).sum().backward()
    lazy_columns = lazygrad.Tensor(columns, requires_grad=True)
    out = F.fold(lazy_columns, **arguments)
    (out * lazygrad.Tensor(projection)).sum().backward()
    np.testing.assert_allclose(out.numpy(), torch_out.detach().numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(lazy_columns.grad.numpy(), torch_columns.grad.numpy(), rtol=1e-5, atol=1e-5)


def test_dropout2d_drops_whole_channels_and_alpha_dropout_keeps_selu_statistics():
    x = lazygrad.Tensor(np.random.default_rng(3).standard_normal((4, 6, 3, 3)).astype(np.float32) + 5.0)
    out = F.dropout2d(x, p=0.5, training=True).numpy()
    kept = out.reshape(24, 9) != 0
    assert np.all(kept.all(1) | ~kept.any(1)), "a channel is dropped whole or kept whole"
    np.testing.assert_allclose(out.reshape(24, 9)[kept.all(1)], 2 * x.numpy().reshape(24, 9)[kept.all(1)], rtol=1e-6)
    # alpha dropout of standard normal values keeps mean 0 and variance 1 (what SELU networks need)
    y = F.alpha_dropout(lazygrad.randn(200_000), p=0.3, training=True).numpy()
    assert abs(y.mean()) < 0.02 and abs(y.var() - 1) < 0.03
    alpha, a = 1.7580993408473766, 1 / ((1.7580993408473766**2 * 0.3 + 1) * 0.7) ** 0.5
    dropped = np.isclose(y, -alpha * a + alpha * a * 0.3, atol=1e-6)
    assert 0.28 < dropped.mean() < 0.32


@pytest.mark.parametrize("cast", ["double", "half", "float"])
def test_module_float_double_half_and_cpu_cast_like_torch(cast):
    ours = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm2d(4))
    theirs = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm2d(4))
    ours.load_state_dict({k: v.detach().numpy() for k, v in theirs.state_dict().items()})
    getattr(ours, cast)().cpu()
    getattr(theirs, cast)().cpu()
    for (name, a), b in zip(ours.state_dict().items(), theirs.state_dict().values()):
        assert a.dtype.name == str(b.dtype).removeprefix("torch."), f"{name}: {a.dtype} vs {b.dtype}"
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    x = np.random.default_rng(0).standard_normal((2, 3)).astype(str(theirs[0].weight.dtype).removeprefix("torch."))
    np.testing.assert_allclose(
        ours[0](lazygrad.tensor(x, dtype=ours[0].weight.dtype, device=ours[0].weight.device)).numpy(),
        theirs[0](torch.tensor(x)).detach().numpy(),
        rtol=1e-3 if cast == "half" else 1e-6,
        atol=1e-3 if cast == "half" else 1e-6,
    )
