"""Utilities with torch.utils' names: lazygrad.utils.data (Dataset, TensorDataset, DataLoader, random_split)."""

from lazygrad.utils import data

__all__ = ["data"]
