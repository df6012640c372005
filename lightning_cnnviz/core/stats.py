"""On-device activation statistics: sparsity, per-channel firing counts, dead filters.

A channel *fires* at a position when its activation there is > 0. A channel is *dead* over a window when
it never fires at any position of any input seen in the window (CS231n: dead ReLUs, all-zero activation
maps, often the mark of a too-high learning rate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = ["ActivationStats"]


@dataclass(frozen=True)
class LayerSummary:
    """Host-side statistics of one layer over one window: per channel, how many (input, position) pairs fired
    (``firing``, float64 holding exact integers), out of ``positions`` pairs seen per channel."""

    firing: Tensor
    positions: int

    @property
    def num_channels(self) -> int:
        return int(self.firing.numel())

    @property
    def firing_rate(self) -> Tensor:
        """Per channel, the fraction of (input, position) pairs with activation > 0."""
        return self.firing / max(self.positions, 1)

    @property
    def sparsity(self) -> float:
        """Fraction of all activation values that were not > 0 (zeros, for a ReLU)."""
        total = self.positions * self.num_channels
        return 1.0 - float(self.firing.sum()) / total if total else float("nan")

    @property
    def dead_mask(self) -> Tensor:
        """Channels that never fired in the window (bool)."""
        return self.firing == 0

    @property
    def dead_channels(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.dead_mask).flatten()]

    @property
    def dead_fraction(self) -> float:
        return float(self.dead_mask.sum()) / max(self.num_channels, 1)


@dataclass(frozen=True)
class ActivationSummary:
    """Statistics of every layer over one window, on the host."""

    layers: dict[str, LayerSummary]
    steps: int


class ActivationStats:
    """Accumulates per-layer, per-channel firing counts on the activations' device, with no host sync.

    ``update`` costs one pass and one reduction over the activation, torch ops on any device. Counts are int64 on
    the device (exact). ``summary`` sums the counts of every process in one
    collective (so all ranks agree on the dead filters) and moves them to the host in one copy.

    Example:
        >>> stats = ActivationStats({"relu1": 3})
        >>> stats.update("relu1", torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[2.0, 3.0]]]]))
        >>> layer = stats.summary().layers["relu1"]
        >>> layer.firing.tolist(), layer.dead_channels, round(layer.sparsity, 3)
        ([1.0, 0.0, 2.0], [1], 0.5)
    """

    def __init__(self, channels: Mapping[str, int], device: torch.device | str | None = None) -> None:
        self.channels = dict(channels)
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._firing: dict[str, Tensor] = {}
        self._positions: dict[str, int] = {}
        self.steps = 0
        self.reset()

    def reset(self) -> None:
        """Start a new window."""
        self._firing = {
            name: torch.zeros(count, dtype=torch.int64, device=self.device) for name, count in self.channels.items()
        }
        self._positions = dict.fromkeys(self.channels, 0)
        self.steps = 0

    def to(self, device: torch.device | str) -> ActivationStats:
        """Move the accumulators (e.g. to the model's device once it is known)."""
        self.device = torch.device(device)
        self._firing = {name: counts.to(self.device) for name, counts in self._firing.items()}
        return self

    def update(self, name: str, activation: Tensor) -> None:
        """Add one batch of a layer's (non-negative) activations, shape (N, C, ...)."""
        values = activation.detach()
        if values.dim() < 2:
            return
        channels = values.shape[1]
        expected = self.channels[name]
        if channels != expected:
            raise ValueError(f"activation {name!r} has {channels} channels, expected {expected}")
        firing = self._firing[name]
        if firing.device != values.device:
            firing = self._firing[name] = firing.to(values.device)
        with torch.no_grad():
            # sign(x) is the firing indicator of a non-negative activation; summed per image and channel over the
            # contiguous positions first (float32 is exact below 2**24 positions), then over the batch in int64.
            # That is twice as fast on CPU as counting ``x > 0`` (a bool tensor and an integer reduction). A map
            # holding a NaN sums to NaN and counts as not firing at all, so a diverged layer shows as dead.
            per_image = torch.sign(values.reshape(values.shape[0], channels, -1)).sum(dim=2).nan_to_num_(nan=0.0)
            firing.add_(per_image.to(torch.int64).sum(dim=0))
        self._positions[name] += values.numel() // channels

    def step(self) -> None:
        """Count one training step in the window."""
        self.steps += 1

    def summary(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> ActivationSummary:
        """The window's statistics on the host in one device-to-host copy, summed over processes by ``reduce_sum``
        (default: one ``torch.distributed.all_reduce`` of all counts when a group of several processes is
        initialised; every process must then call ``summary`` at the same point)."""
        names = list(self.channels)
        device = next(iter(self._firing.values())).device if self._firing else self.device
        totals = torch.tensor([self._positions[n] for n in names] + [self.steps], dtype=torch.int64)
        flat = torch.cat([*(self._firing[n].to(device) for n in names), totals.to(device)])
        if reduce_sum is None and _distributed():
            reduce_sum = _all_reduce_sum
        if reduce_sum is not None:
            flat = reduce_sum(flat)
        host = flat.cpu()
        layers: dict[str, LayerSummary] = {}
        offset = 0
        position_offset = sum(self.channels[n] for n in names)
        for index, name in enumerate(names):
            count = self.channels[name]
            layers[name] = LayerSummary(
                firing=host[offset : offset + count].double(), positions=int(host[position_offset + index])
            )
            offset += count
        return ActivationSummary(layers=layers, steps=int(host[-1]))


def _distributed() -> bool:
    return (
        torch.distributed.is_available()
        and torch.distributed.is_initialized()
        and torch.distributed.get_world_size() > 1
    )


def _all_reduce_sum(tensor: Tensor) -> Tensor:
    torch.distributed.all_reduce(tensor)
    return tensor
