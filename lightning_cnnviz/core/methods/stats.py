"""On-device activation statistics: sparsity, firing counts, dead and dormant channels, non-finite values.

For every activation kind:

* a channel is *dormant* over a window (Sokar et al. 2023, "The Dormant Neuron Phenomenon", ReDo) when its mean
  |activation| over every position of every input of the window, divided by the mean of that quantity over the
  layer's channels, is at or below a threshold (0.1 by default);
* a channel whose values held a NaN or an infinity in the window is *non-finite*: the network diverged.

For the ReLU family also: a channel *fires* at a position when its activation there is > 0, and is *dead* over a
window when it never fires at any position of any input seen in the window (CS231n: dead ReLUs, all-zero
activation maps, often the mark of a too-high learning rate).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_cnnviz.core.protocol import Ranks

__all__ = ["ActivationStats", "ChannelHealth"]

# The value distribution is binned on asinh(value): linear near 0, logarithmic beyond 1, so a collapse to zero
# and an explosion to thousands both show. Values past the range land in the edge bins (NaN in the top one).
DISTRIBUTION_BINS = 64
DISTRIBUTION_RANGE = 8.0  # asinh(8) ~ 1490
DISTRIBUTION_SAMPLE = 65536  # values binned per batch, at most (about): a picture, not an exact count


@dataclass(frozen=True)
class LayerSpec:
    """What the statistics need to know about a layer: its channel count, whether it is of the ReLU family (then
    firing and dead channels are counted), which dimension holds the channels, and whether they are the units of
    a fully connected layer rather than conv filters."""

    channels: int
    relu: bool = True
    channel_dim: int = 1
    units: bool = False


@dataclass(frozen=True)
class LayerSummary:
    """Host-side statistics of one layer over one window.

    Attributes:
        firing: per channel, how many (input, position) pairs were > 0 (float64 holding exact integers); None
            outside the ReLU family.
        magnitude: per channel, the sum of |activation| over the window's finite maps (float64).
        positions: (input, position) pairs seen per channel.
        nonfinite: channels whose values held a NaN or an infinity somewhere in the window.
        distribution: counts of the values of one batch of the window (evenly strided down to about 65,536
            values) in :data:`DISTRIBUTION_BINS` bins of asinh(value) over [-8, 8], or None when none was binned.
        relu, units: as in :class:`LayerSpec`.
    """

    firing: Tensor | None
    magnitude: Tensor
    positions: int
    nonfinite: int
    distribution: Tensor | None = None
    relu: bool = True
    units: bool = False

    @property
    def num_channels(self) -> int:
        return int(self.magnitude.numel())

    @property
    def firing_rate(self) -> Tensor:
        """Per channel, the fraction of (input, position) pairs with activation > 0 (ReLU family), else the mean
        |activation| scaled by the layer's largest."""
        if self.firing is not None:
            return self.firing / max(self.positions, 1)
        mean = self.magnitude / max(self.positions, 1)
        return mean / mean.max().clamp_min(1e-30)

    @property
    def sparsity(self) -> float:
        """Fraction of all activation values that were not > 0 (zeros, for a ReLU); NaN outside the ReLU family."""
        total = self.positions * self.num_channels
        if self.firing is None or not total:
            return float("nan")
        return 1.0 - float(self.firing.sum()) / total

    @property
    def dead_mask(self) -> Tensor:
        """Channels that never fired in the window (bool); none outside the ReLU family, or when the layer was not
        seen at all in the window (a step whose forward did not run it)."""
        if self.firing is None or self.positions == 0:
            return torch.zeros(self.num_channels, dtype=torch.bool)
        return self.firing == 0

    @property
    def dead_channels(self) -> list[int]:
        return [int(i) for i in torch.nonzero(self.dead_mask).flatten()]

    @property
    def dead_fraction(self) -> float:
        return float(self.dead_mask.sum()) / max(self.num_channels, 1)

    def dormant_score(self) -> Tensor:
        """Per channel, mean |activation| divided by the layer's mean of it (ReDo's score); 0 for a silent layer."""
        mean = self.magnitude / max(self.positions, 1)
        layer_mean = mean.mean()
        return mean / layer_mean if float(layer_mean) > 0 else torch.zeros_like(mean)

    def dormant_channels(self, threshold: float = 0.1) -> list[int]:
        if self.positions == 0:
            return []
        return [int(i) for i in torch.nonzero(self.dormant_score() <= threshold).flatten()]


@dataclass(frozen=True)
class ChannelHealth:
    """One layer's dead channels (ReLU family: never > 0) and dormant channels (mean |activation| at most a
    fraction of the layer's mean), and where that was seen (``"the training window ending at step 300"``): what
    the pictures of single channels frame.

    Example:
        >>> ChannelHealth(dead=(3,), dormant=(3, 5), seen="the probe").marks(6)
        [0, 0, 0, 2, 0, 1]
    """

    dead: tuple[int, ...]
    dormant: tuple[int, ...]
    seen: str

    def marks(self, channels: int) -> list[int]:
        """Per channel: 2 dead, 1 dormant (and not dead), 0 neither."""
        found = [0] * channels
        for index in self.dormant:
            if 0 <= index < channels:
                found[index] = 1
        for index in self.dead:
            if 0 <= index < channels:
                found[index] = 2
        return found


@dataclass(frozen=True)
class ActivationSummary:
    """Statistics of every layer over one window, on the host."""

    layers: dict[str, LayerSummary]
    steps: int


class ActivationStats:
    """Accumulates per-layer, per-channel statistics on the activations' device, with no host sync.

    ``update`` reduces the activation once for its magnitude (and, for the ReLU family, once more for its firing
    count); ``distribution=True`` also bins the batch's values. Counts are int64-exact in float64 on
    the device. ``summary`` sums the accumulators of every process in one collective (so all ranks agree on the
    dead filters) and moves them to the host in one copy.

    ``layers`` maps a name to its channel count (a ReLU-family layer with channels at dimension 1) or to a
    :class:`LayerSpec`.

    Example:
        >>> stats = ActivationStats({"relu1": 3})
        >>> stats.update("relu1", torch.tensor([[[[0.0, 1.0]], [[0.0, 0.0]], [[2.0, 3.0]]]]))
        >>> layer = stats.summary().layers["relu1"]
        >>> layer.firing.tolist(), layer.dead_channels, round(layer.sparsity, 3), layer.dormant_channels()
        ([1.0, 0.0, 2.0], [1], 0.5, [1])
    """

    def __init__(self, layers: Mapping[str, int | LayerSpec], device: torch.device | str | None = None) -> None:
        self.specs = {name: spec if isinstance(spec, LayerSpec) else LayerSpec(spec) for name, spec in layers.items()}
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self._sums: dict[str, Tensor] = {}
        self._positions: dict[str, int] = {}
        self.steps = 0
        self.reset()

    def _width(self, spec: LayerSpec) -> int:
        """Accumulator length: [firing (ReLU family)] + magnitude + distribution."""
        return spec.channels * (2 if spec.relu else 1) + DISTRIBUTION_BINS

    def _dtype(self) -> torch.dtype:
        return torch.float32 if self.device.type == "mps" else torch.float64

    def reset(self) -> None:
        """Start a new window."""
        self._sums = {
            name: torch.zeros(self._width(spec), dtype=self._dtype(), device=self.device)
            for name, spec in self.specs.items()
        }
        self._positions = dict.fromkeys(self.specs, 0)
        self._binned = dict.fromkeys(self.specs, False)
        self.steps = 0

    def to(self, device: torch.device | str) -> ActivationStats:
        """Move the accumulators (e.g. to the model's device once it is known)."""
        self.device = torch.device(device)
        self._sums = {name: sums.to(self.device, self._dtype()) for name, sums in self._sums.items()}
        return self

    def update(self, name: str, activation: Tensor, *, distribution: bool = False) -> None:
        """Add one batch of a layer's activations, shape (N, C, ...) (or (N, ..., C) for ``channel_dim=-1``).

        ``distribution``: also bin this batch's values, when no batch of the window was binned yet.
        """
        values = activation.detach()
        if values.dim() < 2 or values.numel() == 0:  # an empty batch adds nothing
            return
        spec = self.specs[name]
        channels = values.shape[spec.channel_dim]
        if channels != spec.channels:
            raise ValueError(f"activation {name!r} has {channels} channels, expected {spec.channels}")
        sums = self._sums[name]
        if sums.device != values.device:
            self.to(values.device)
            sums = self._sums[name]
        with torch.no_grad():
            if spec.channel_dim == 1:
                maps, axis = values.reshape(values.shape[0], channels, -1), 2
            else:
                maps, axis = values.reshape(values.shape[0], -1, channels), 1
            # Per image and channel over the contiguous positions first (float32 is exact for counts below 2**24
            # positions, and keeps half-precision counts exact), then over the batch in float64: |x| (x itself for
            # the ReLU family, whose firing indicator sign(x) is summed too: twice as fast on CPU as counting
            # ``x > 0``). NaN and infinities propagate into the window's sums; ``summary`` reports those channels.
            wide = torch.float64 if maps.dtype == torch.float64 else torch.float32
            magnitude = sums[channels : 2 * channels] if spec.relu else sums[:channels]
            magnitude.add_((maps if spec.relu else maps.abs()).sum(axis, dtype=wide).sum(0, dtype=sums.dtype))
            if spec.relu:
                sums[:channels].add_(torch.sign(maps).sum(axis, dtype=wide).sum(0, dtype=sums.dtype))
            if distribution and not self._binned[name]:
                self._binned[name] = True
                flat = values.reshape(-1)
                flat = flat[:: max(1, flat.numel() // DISTRIBUTION_SAMPLE) | 1]  # evenly strided, an odd step
                binned = torch.asinh(flat.float().nan_to_num(nan=float("inf")))
                binned = binned.clamp(-DISTRIBUTION_RANGE, DISTRIBUTION_RANGE)
                sums[-DISTRIBUTION_BINS:].add_(
                    torch.histc(binned, DISTRIBUTION_BINS, -DISTRIBUTION_RANGE, DISTRIBUTION_RANGE)
                )
        self._positions[name] += values.numel() // channels

    def step(self) -> None:
        """Count one training step in the window."""
        self.steps += 1

    def summary(self, reduce_sum: Callable[[Tensor], Tensor] | None = None) -> ActivationSummary:
        """The window's statistics on the host in one device-to-host copy, summed over processes by ``reduce_sum``
        (default: :meth:`Ranks.sum <lightning_cnnviz.core.Ranks.sum>`, one ``all_reduce`` of all accumulators when a
        ``torch.distributed`` group of several processes is initialised; every process must then call ``summary``
        at the same point)."""
        names = list(self.specs)
        device = next(iter(self._sums.values())).device if self._sums else self.device
        totals = [self._positions[n] for n in names] + [int(self._binned[n]) for n in names] + [self.steps]
        flat = torch.cat(
            [*(self._sums[n].to(device) for n in names), torch.tensor(totals, dtype=self._dtype(), device=device)]
        )
        flat = (reduce_sum or Ranks.current(device).sum)(flat)
        host = flat.cpu().double()
        layers: dict[str, LayerSummary] = {}
        offset = sum(self._width(self.specs[n]) for n in names)
        tail = host[offset:]
        offset = 0
        for index, name in enumerate(names):
            spec = self.specs[name]
            part = host[offset : offset + self._width(spec)]
            offset += self._width(spec)
            moments = part[:-DISTRIBUTION_BINS].view(-1, spec.channels)  # ([firing,] magnitude) x channels
            finite = torch.isfinite(moments).all(dim=0)
            moments = torch.where(finite, moments, 0.0)  # a non-finite channel fired nowhere and weighs nothing
            layers[name] = LayerSummary(
                firing=moments[0].clone() if spec.relu else None,
                magnitude=moments[-1].clone(),
                positions=int(tail[index]),
                nonfinite=int((~finite).sum()),
                distribution=part[-DISTRIBUTION_BINS:].clone() if tail[len(names) + index] > 0 else None,
                relu=spec.relu,
                units=spec.units,
            )
        return ActivationSummary(layers=layers, steps=int(tail[-1]))

