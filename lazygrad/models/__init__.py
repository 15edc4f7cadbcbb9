"""Model zoo: torchvision's ResNets and a nanoGPT-style GPT, with their parameter names."""

from lazygrad.models.gpt import GPT, GPTConfig
from lazygrad.models.resnet import (
    BasicBlock,
    Bottleneck,
    ResNet,
    ResNet18_Weights,
    ResNet34_Weights,
    ResNet50_Weights,
    resnet18,
    resnet34,
    resnet50,
)

__all__ = [
    "GPT",
    "GPTConfig",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ResNet18_Weights",
    "ResNet34_Weights",
    "ResNet50_Weights",
    "resnet18",
    "resnet34",
    "resnet50",
]
