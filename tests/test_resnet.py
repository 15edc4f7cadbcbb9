"""lazygrad.models.resnet against torchvision's ResNet, rebuilt here in torch (torchvision is not importable):
one training step of the PyTorch autograd tutorial (predict, (pred - labels).sum(), backward, SGD with momentum,
predict again) from the same checkpoint must give the same numbers at every stage."""

import math

import numpy as np
import pytest

import lazygrad
from lazygrad import hub, models, optim

torch = pytest.importorskip("torch")
tnn = torch.nn

RTOL, ATOL = 1e-3, 1e-4


# ---- torchvision's ResNet, written out in torch ----


def conv3x3(in_planes, out_planes, stride=1):
    return tnn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes, out_planes, stride=1):
    return tnn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class TorchBasicBlock(tnn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv3x3(inplanes, planes, stride), tnn.BatchNorm2d(planes)
        self.relu = tnn.ReLU(inplace=True)
        self.conv2, self.bn2 = conv3x3(planes, planes), tnn.BatchNorm2d(planes)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        out = self.bn2(self.conv2(self.relu(self.bn1(self.conv1(x)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchBottleneck(tnn.Module):
    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None):
        super().__init__()
        self.conv1, self.bn1 = conv1x1(inplanes, planes), tnn.BatchNorm2d(planes)
        self.conv2, self.bn2 = conv3x3(planes, planes, stride), tnn.BatchNorm2d(planes)
        self.conv3, self.bn3 = conv1x1(planes, planes * 4), tnn.BatchNorm2d(planes * 4)
        self.relu = tnn.ReLU(inplace=True)
        self.downsample, self.stride = downsample, stride

    def forward(self, x):
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn3(self.conv3(self.relu(self.bn2(self.conv2(out)))))
        return self.relu(out + (x if self.downsample is None else self.downsample(x)))


class TorchResNet(tnn.Module):
    def __init__(self, block, layers, num_classes=1000):
        super().__init__()
        self.inplanes = 64
        self.conv1 = tnn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = tnn.BatchNorm2d(64), tnn.ReLU(inplace=True)
        self.maxpool = tnn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
        self.fc = tnn.Linear(512 * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, tnn.Conv2d):
                tnn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, tnn.BatchNorm2d):
                tnn.init.constant_(m.weight, 1)
                tnn.init.constant_(m.bias, 0)

    def _make_layer(self, block, planes, blocks, stride=1):
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = tnn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), tnn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes) for _ in range(1, blocks)]
        return tnn.Sequential(*layers)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def torch_resnet18(**kwargs):
    return TorchResNet(TorchBasicBlock, [2, 2, 2, 2], **kwargs)


def perturb_batchnorm(model) -> None:
    """Give every BatchNorm non-trivial affine parameters and running stats, as a trained checkpoint has."""
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, tnn.BatchNorm2d):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.2, 0.2)
                module.running_mean.uniform_(-0.1, 0.1)
                module.running_var.uniform_(0.5, 1.5)
                module.num_batches_tracked.fill_(7)


# ---- one tutorial step in both libraries ----


def state_arrays(named_tensors) -> dict[str, np.ndarray]:
    named_tensors = dict(named_tensors)
    if named_tensors and isinstance(next(iter(named_tensors.values())), lazygrad.Tensor):
        lazygrad.realize(*named_tensors.values())  # one schedule, not one per tensor
        return {name: tensor.numpy().copy() for name, tensor in named_tensors.items()}
    return {name: tensor.detach().numpy().copy() for name, tensor in named_tensors.items()}


def tutorial_step(model, data, labels, sgd) -> dict:
    """The PyTorch autograd tutorial's flow, written once for both libraries (same method names)."""
    results = {}
    prediction = model(data)
    results["prediction"] = prediction.detach().numpy().copy()
    loss = (prediction - labels).sum()
    results["loss"] = loss.item()
    loss.backward()
    results["grads"] = state_arrays((name, p.grad) for name, p in model.named_parameters())
    optimizer = sgd(model.parameters(), lr=1e-2, momentum=0.9)
    optimizer.step()
    results["params"] = state_arrays(model.named_parameters())
    results["buffers"] = state_arrays(model.named_buffers())
    results["second_prediction"] = model(data).detach().numpy().copy()
    results["buffers_after_second_prediction"] = state_arrays(model.named_buffers())
    return results


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = torch_resnet18()
    perturb_batchnorm(model)
    path = tmp_path_factory.mktemp("resnet") / "resnet18.pth"
    torch.save(model.state_dict(), path)
    return path


@pytest.fixture(scope="module")
def both_steps(checkpoint):
    torch.manual_seed(1)
    data, labels = torch.rand(1, 3, 64, 64), torch.rand(1, 1000)

    torch_model = torch_resnet18()
    torch_model.load_state_dict(torch.load(checkpoint, weights_only=True))
    expected = tutorial_step(torch_model, data, labels, torch.optim.SGD)

    model = models.resnet18(weights=str(checkpoint))
    actual = tutorial_step(model, lazygrad.tensor(data.numpy()), lazygrad.tensor(labels.numpy()), optim.SGD)
    return actual, expected


def assert_all_close(actual: dict, expected: dict, what: str, atol_of_largest: float = 0.0) -> None:
    """Every tensor within rtol/atol, where atol grows to atol_of_largest x the tensor's largest element if given."""
    assert list(actual) == list(expected)
    failures = []
    for name, value in expected.items():
        atol = max(ATOL, atol_of_largest * float(np.abs(value).max(initial=0)))
        if not np.allclose(actual[name], value, rtol=RTOL, atol=atol):
            worst = np.abs(actual[name] - value).max()
            failures.append(f"{name} (max abs diff {worst:.3g}, max abs value {np.abs(value).max():.3g})")
    assert not failures, f"{what} differ for: " + ", ".join(failures)


def test_prediction(both_steps):
    actual, expected = both_steps
    assert actual["prediction"].shape == (1, 1000)
    np.testing.assert_allclose(actual["prediction"], expected["prediction"], rtol=RTOL, atol=ATOL)


def test_loss(both_steps):
    actual, expected = both_steps
    # the sum of 1000 outputs of size ~1 accumulates their float32 rounding: allow 1000 x atol absolute
    assert actual["loss"] == pytest.approx(expected["loss"], rel=RTOL, abs=1000 * ATOL)


def test_every_parameter_gradient(both_steps):
    actual, expected = both_steps
    assert len(expected["grads"]) == 62
    # Gradients flow back through 20 training-mode BatchNorms (layer4 normalizes over just 4 values per channel), so
    # float32 rounding is amplified: PyTorch's own float32 gradients differ from its float64 ones by up to 1.8e-4 of
    # the tensor's largest element (conv1.weight: 21x over an elementwise rtol 1e-3/atol 1e-4). Hence atol scales
    # with each tensor's magnitude: 1e-3 of its largest element.
    assert_all_close(actual["grads"], expected["grads"], "gradients", atol_of_largest=1e-3)


def test_every_parameter_after_sgd_step(both_steps):
    actual, expected = both_steps
    assert_all_close(actual["params"], expected["params"], "parameters after one SGD step")


def test_batchnorm_running_stats(both_steps):
    actual, expected = both_steps
    assert_all_close(actual["buffers"], expected["buffers"], "buffers after one training forward")
    assert actual["buffers"]["bn1.num_batches_tracked"] == 8
    # the second forward's statistics come from parameters after the SGD step, which carry the gradients'
    # float32 summation-order differences (see test_every_parameter_gradient): PyTorch's own float32 buffers differ
    # from its float64 ones by up to 2.5e-4 of the buffer's largest element (layer4.0.bn1.running_var); measured
    # 6.6e-5 with lazygrad's vectorized reductions and 1.4e-4 with a GPU's scalar ones (LAZYGRAD_OPENCL_PROFILE=gpu),
    # so atol is 3e-4 of each buffer's largest element
    assert_all_close(
        actual["buffers_after_second_prediction"],
        expected["buffers_after_second_prediction"],
        "buffers after two",
        atol_of_largest=3e-4,
    )


def test_second_prediction(both_steps):
    actual, expected = both_steps
    assert actual["second_prediction"].shape == (1, 1000)
    np.testing.assert_allclose(actual["second_prediction"], expected["second_prediction"], rtol=RTOL, atol=ATOL)


# ---- architecture, names, initialization, weights argument ----


def assert_same_keys_and_shapes(model, torch_model) -> None:
    state, torch_state = model.state_dict(), torch_model.state_dict()
    assert list(state) == list(torch_state)
    for name, value in torch_state.items():
        assert tuple(state[name].shape) == tuple(value.shape), name
        assert state[name].dtype.name == str(value.dtype).removeprefix("torch."), name


def test_resnet18_names_shapes_and_dtypes_match_torchvision():
    model = models.resnet18(num_classes=10)
    assert_same_keys_and_shapes(model, torch_resnet18(num_classes=10))
    assert "layer2.0.downsample.0.weight" in model.state_dict()
    assert repr(model.layer1[0]) == repr(TorchBasicBlock(64, 64)).replace("TorchBasicBlock", "BasicBlock")


def test_resnet50_names_shapes_and_dtypes_match_torchvision():
    assert_same_keys_and_shapes(models.resnet50(), TorchResNet(TorchBottleneck, [3, 4, 6, 3]))


def test_random_init_follows_torchvision():
    model = models.resnet18()
    weight = model.layer4[0].conv2.weight.numpy()  # kaiming_normal_, fan_out, relu: std sqrt(2 / (512 * 9))
    assert abs(weight.mean()) < 1e-3 and weight.std() == pytest.approx(math.sqrt(2 / (512 * 9)), rel=0.02)
    np.testing.assert_array_equal(model.bn1.weight.numpy(), np.ones(64, np.float32))
    np.testing.assert_array_equal(model.bn1.bias.numpy(), np.zeros(64, np.float32))
    fc_bound = 1 / math.sqrt(512)
    assert np.abs(model.fc.weight.numpy()).max() <= fc_bound and np.abs(model.fc.bias.numpy()).max() <= fc_bound


def test_default_weights_come_from_the_hub(checkpoint, monkeypatch):
    requested = []

    def fake_download(url, file_name=None, progress=True, **kwargs):
        requested.append((url, file_name))
        return checkpoint

    monkeypatch.setattr(hub, "load_url_to_file", fake_download)
    assert models.ResNet18_Weights.DEFAULT is models.ResNet18_Weights.IMAGENET1K_V1
    for weights in [models.ResNet18_Weights.DEFAULT, "DEFAULT", "IMAGENET1K_V1"]:
        model = models.resnet18(weights=weights, progress=False)
        np.testing.assert_allclose(
            model.fc.bias.numpy(), torch.load(checkpoint, weights_only=True)["fc.bias"].numpy(), rtol=0, atol=0
        )
    assert requested == [hub.RESNET18_IMAGENET1K_V1] * 3


def test_bad_weights_arguments_are_explained(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        models.resnet18(weights=str(tmp_path / "missing.pth"))
    with pytest.raises(ValueError, match="num_classes"):
        models.resnet18(weights="DEFAULT", num_classes=10)
    with pytest.raises(ValueError, match="ResNet18_Weights"):
        models.resnet18(weights=models.ResNet34_Weights.DEFAULT)


def test_checkpoint_with_other_classes_fails_with_a_shape_message(checkpoint):
    with pytest.raises(RuntimeError, match="size mismatch for fc.weight"):
        models.resnet18(weights=str(checkpoint), num_classes=10)
