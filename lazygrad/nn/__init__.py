"""Neural-network modules with PyTorch's names: `from lazygrad import nn`, then nn.Conv2d, nn.functional, nn.init."""

from lazygrad.nn import functional, init, parallel, utils
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
from lazygrad.nn.transformer import GELU, Embedding, LayerNorm, MultiheadAttention, TransformerEncoderLayer

__all__ = [
    "TransformerEncoderLayer",
    "MultiheadAttention",
    "LayerNorm",
    "GELU",
    "Embedding",
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
    "utils",
]
