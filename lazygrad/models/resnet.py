"""ResNet-18/34/50 with torchvision's exact architecture, parameter names and initialization, so torchvision
checkpoints load unchanged."""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from typing import Any

import lazygrad
from lazygrad import nn
from lazygrad.tensor import Tensor


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nn.Conv2d:
    return nn.Conv2d(
        in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups, bias=False, dilation=dilation
    )


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        if groups != 1 or base_width != 64 or dilation > 1:
            raise ValueError("BasicBlock supports only groups=1, base_width=64 and dilation=1")
        self.conv1 = conv3x3(inplanes, planes, stride)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = conv3x3(planes, planes)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet V1.5: the stride sits on the 3x3 convolution."""

    expansion = 4

    def __init__(self, inplanes, planes, stride=1, downsample=None, groups=1, base_width=64, dilation=1):
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: Tensor) -> Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu(out + identity)


class ResNet(nn.Module):
    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        layers: list[int],
        num_classes: int = 1000,
        zero_init_residual: bool = False,
        groups: int = 1,
        width_per_group: int = 64,
    ):
        super().__init__()
        self.inplanes, self.dilation = 64, 1
        self.groups, self.base_width = groups, width_per_group
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, 64, layers[0])
        self.layer2 = self._make_layer(block, 128, layers[1], stride=2)
        self.layer3 = self._make_layer(block, 256, layers[2], stride=2)
        self.layer4 = self._make_layer(block, 512, layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)
        if zero_init_residual:  # each residual branch starts as identity
            for module in self.modules():
                if isinstance(module, Bottleneck):
                    nn.init.zeros_(module.bn3.weight)
                elif isinstance(module, BasicBlock):
                    nn.init.zeros_(module.bn2.weight)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(
                conv1x1(self.inplanes, planes * block.expansion, stride), nn.BatchNorm2d(planes * block.expansion)
            )
        layers = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self.dilation)]
        self.inplanes = planes * block.expansion
        for _ in range(1, blocks):
            layers.append(block(self.inplanes, planes, groups=self.groups, base_width=self.base_width))
        return nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


# ---- pretrained weights ----


@dataclass(frozen=True)
class WeightsInfo:
    hub_name: str  # the lazygrad.hub constant holding (url, file_name)
    num_classes: int = 1000


class ResNet18_Weights(Enum):
    IMAGENET1K_V1 = WeightsInfo("RESNET18_IMAGENET1K_V1")
    DEFAULT = IMAGENET1K_V1


class ResNet34_Weights(Enum):
    IMAGENET1K_V1 = WeightsInfo("RESNET34_IMAGENET1K_V1")
    DEFAULT = IMAGENET1K_V1


class ResNet50_Weights(Enum):
    # torchvision's DEFAULT is IMAGENET1K_V2; lazygrad.hub knows only the V1 file so far
    IMAGENET1K_V1 = WeightsInfo("RESNET50_IMAGENET1K_V1")
    DEFAULT = IMAGENET1K_V1


def _unwrap_checkpoint(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """Training scripts often save {"state_dict": ...} or {"model": ...}; take the weights out of such a wrapper."""
    for key in ("state_dict", "model"):
        if isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def _resolve_state_dict(weights: Any, weights_enum: type[Enum], progress: bool) -> dict[str, Any]:
    """weights: an enum member, its name ("DEFAULT", "IMAGENET1K_V1"), a checkpoint path, or a state dict."""
    if isinstance(weights, dict):
        return weights
    if isinstance(weights, str) and weights in weights_enum.__members__:
        weights = weights_enum[weights]
    if isinstance(weights, Enum):
        if not isinstance(weights, weights_enum):
            raise ValueError(f"expected {weights_enum.__name__} weights, got {weights}")
        from lazygrad import hub, serialization

        url, file_name = getattr(hub, weights.value.hub_name)
        return serialization.load(hub.load_url_to_file(url, file_name, progress=progress))
    if isinstance(weights, (str, os.PathLike)):
        from lazygrad import serialization

        if not os.path.exists(weights):
            names = ", ".join(weights_enum.__members__)
            raise FileNotFoundError(f"no checkpoint file {str(weights)!r} (weights may also be None or one of {names})")
        return _unwrap_checkpoint(serialization.load(weights))
    raise TypeError(f"weights must be None, a {weights_enum.__name__}, a name, a path or a state dict; got {weights!r}")


def _resnet(block, layers: list[int], weights, weights_enum: type[Enum], progress: bool, **kwargs) -> ResNet:
    if isinstance(weights, str) and weights in weights_enum.__members__:
        weights = weights_enum[weights]
    if isinstance(weights, weights_enum) and kwargs["num_classes"] != weights.value.num_classes:
        raise ValueError(f"{weights} has {weights.value.num_classes} classes, got num_classes={kwargs['num_classes']}")
    state_dict = None if weights is None else _resolve_state_dict(weights, weights_enum, progress)
    model = ResNet(block, layers, **kwargs)
    if state_dict is not None:
        model.load_state_dict(state_dict)
    else:
        # realize the random initialization once, instead of recomputing it inside every later schedule
        lazygrad.realize(*model.parameters(), *model.buffers())
    return model


def resnet18(weights=None, num_classes: int = 1000, progress: bool = True, **kwargs) -> ResNet:
    """weights: None (random init), ResNet18_Weights.DEFAULT or its name, a checkpoint path, or a state dict."""
    return _resnet(BasicBlock, [2, 2, 2, 2], weights, ResNet18_Weights, progress, num_classes=num_classes, **kwargs)


def resnet34(weights=None, num_classes: int = 1000, progress: bool = True, **kwargs) -> ResNet:
    return _resnet(BasicBlock, [3, 4, 6, 3], weights, ResNet34_Weights, progress, num_classes=num_classes, **kwargs)


def resnet50(weights=None, num_classes: int = 1000, progress: bool = True, **kwargs) -> ResNet:
    return _resnet(Bottleneck, [3, 4, 6, 3], weights, ResNet50_Weights, progress, num_classes=num_classes, **kwargs)
