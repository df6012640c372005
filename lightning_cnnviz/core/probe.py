"""Choosing probe images: the fixed sets of images that the monitors draw on."""

from __future__ import annotations

from torch import Tensor

__all__ = ["select_balanced"]


def select_balanced(labels: Tensor, count: int) -> list[int]:
    """Indices of ``count`` items, round-robin over the classes in label order (first of each class, then the
    second, ...), so every class is represented as evenly as the data allows. Deterministic.

    Example:
        >>> import torch
        >>> select_balanced(torch.tensor([1, 1, 0, 2, 0]), 4)
        [2, 0, 3, 4]
    """
    by_class: dict[int, list[int]] = {}
    for index, label in enumerate(labels.tolist()):
        by_class.setdefault(int(label), []).append(index)
    chosen: list[int] = []
    depth = 0
    while len(chosen) < count and any(depth < len(v) for v in by_class.values()):
        for label in sorted(by_class):
            if depth < len(by_class[label]) and len(chosen) < count:
                chosen.append(by_class[label][depth])
        depth += 1
    return chosen
