"""Neural-network modules with PyTorch's names: `from lazygrad import nn`, then nn.Conv2d, nn.functional, nn.init."""

from lazygrad.nn import functional, init, parallel
from lazygrad.nn.layers import (
    AdaptiveAvgPool2d,
    AvgPool2d,
    BatchNorm2d,
    Conv2d,
    CrossEntropyLoss,
    Dropout,
    Flatten,
    Identity,
    Linear,
    MaxPool2d,
    ModuleList,
    MSELoss,
    NLLLoss,
    ReLU,
    Sequential,
)
from lazygrad.nn.module import Module, Parameter
from lazygrad.nn.parallel import SyncBatchNorm

__all__ = [
    "AdaptiveAvgPool2d",
    "AvgPool2d",
    "BatchNorm2d",
    "Conv2d",
    "CrossEntropyLoss",
    "Dropout",
    "Flatten",
    "Identity",
    "Linear",
    "MSELoss",
    "MaxPool2d",
    "Module",
    "ModuleList",
    "NLLLoss",
    "Parameter",
    "ReLU",
    "Sequential",
    "SyncBatchNorm",
    "functional",
    "init",
    "parallel",
]
