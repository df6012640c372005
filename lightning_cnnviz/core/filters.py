"""Convolution filters as pictures, and how smooth they are.

CS231n, "Visualizing what ConvNets learn": the first layer's filters of a converged network are smooth,
clean patterns; noisy filters point to an undertrained or under-regularized network.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_positive_int
from lightning_cnnviz.core.drawing import normalize_per_item, tile_grid, to_rgb, upscale
from lightning_cnnviz.core.model import first_conv, resolve_modules
from lightning_cnnviz.core.probe import Probe
from lightning_cnnviz.core.protocol import Guard, Moment, Ranks, Snapshot

__all__ = ["FilterPanel", "filter_smoothness", "render_filter_grid"]

Normalization = Literal["per_filter", "global"]
WHO = "FilterMonitor"


def _check_weight(weight: Tensor) -> None:
    if weight.dim() != 4:
        raise ValueError(
            f"expected a Conv2d weight of shape (out_channels, in_channels, kh, kw), got {tuple(weight.shape)}"
        )


def render_filter_grid(
    weight: Tensor,
    *,
    normalize: Normalization = "per_filter",
    min_tile_px: int = 48,
    max_filters: int | None = 64,
    padding: int = 1,
) -> Tensor:
    """Draw a conv layer's filters as one image of shape (3, H, W) with values in [0, 1].

    * 3 input channels: each filter is one RGB tile (the layer reads colour images, so the filter is a
      colour pattern), laid out in a square-ish grid.
    * 1 input channel: each filter is one grayscale tile, square-ish grid.
    * otherwise (a deeper layer): each filter is one grayscale tile of its kernel magnitude, the mean |weight|
      over its input channels (where in its window the filter looks, whatever the channel), square-ish grid: one
      tile per filter, so a 64-filter layer stays a legible 8 x 8 grid instead of a column of 64 x C tiles.

    Normalisation maps weights to [0, 1]: ``"per_filter"`` uses each filter's own min and max (over all
    its input channels for an RGB tile, over the tile for grayscale), which shows every filter's pattern;
    ``"global"`` uses the whole layer's min and max, which shows how strong filters are against each other.
    Tiles are upscaled by an integer factor (nearest neighbour) until they are at least ``min_tile_px``
    pixels wide, so a 3x3 kernel stays readable. Padding between tiles is white.

    Example:
        >>> render_filter_grid(torch.randn(16, 3, 5, 5)).shape
        torch.Size([3, 205, 205])
    """
    _check_weight(weight)
    if normalize not in ("per_filter", "global"):
        raise ValueError(f"normalize must be 'per_filter' or 'global', got {normalize!r}")
    weight = weight.detach().float()
    if max_filters is not None:
        weight = weight[:max_filters]
    if weight.shape[1] not in (1, 3):
        weight = weight.abs().mean(dim=1, keepdim=True)  # kernel magnitude over the input channels

    # RGB: one (3, kh, kw) tile per filter; otherwise one (1, kh, kw) tile per filter
    tiles = weight
    if normalize == "global":
        low, high = weight.min(), weight.max()
        span = (high - low).clamp_min(1e-12)
        tiles = (tiles - low) / span
    else:
        tiles = normalize_per_item(tiles)

    tiles = upscale(tiles, min_tile_px)
    grid = tile_grid(tiles, padding=padding, pad_value=1.0)
    return to_rgb(grid[None])[0].contiguous()


def filter_smoothness(weight: Tensor) -> Tensor:
    """Lag-1 spatial autocorrelation of the filters: near 1 for smooth, near 0 for noise, -1 for checkers.

    For each (output, input) kernel slice ``w`` of size kh x kw with mean-centred values, the score is
    ``1 - D / (2 V)`` where ``D`` is the mean squared difference between horizontally and vertically
    neighbouring weights and ``V`` the variance of the slice. White noise gives ``D = 2V`` (score 0); a
    linear ramp over a 5x5 kernel gives ``1 - 0.5 / (2 * 2) = 0.875``. The layer score is the mean over
    slices with non-zero variance; returns NaN when no slice qualifies (1x1 kernels, all-constant slices).

    Example:
        >>> ramp = torch.arange(5.0).repeat_interleave(5).reshape(1, 1, 5, 5)
        >>> round(filter_smoothness(ramp).item(), 4)
        0.875
    """
    _check_weight(weight)
    w = weight.detach().double()
    out_channels, in_channels, kh, kw = w.shape
    if kh * kw < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    slices = w.reshape(out_channels * in_channels, kh, kw)
    centred = slices - slices.mean(dim=(1, 2), keepdim=True)
    variance = centred.pow(2).mean(dim=(1, 2))
    horizontal = (slices[:, :, 1:] - slices[:, :, :-1]).pow(2).sum(dim=(1, 2))
    vertical = (slices[:, 1:, :] - slices[:, :-1, :]).pow(2).sum(dim=(1, 2))
    pairs = kh * (kw - 1) + kw * (kh - 1)
    mean_sq_diff = (horizontal + vertical) / pairs
    valid = variance > 1e-12 * slices.abs().amax(dim=(1, 2)).pow(2).clamp_min(1e-30)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    scores = 1.0 - mean_sq_diff[valid] / (2.0 * variance[valid])
    return scores.mean()


class FilterPanel:
    """FilterMonitor's logic, Trainer-free: conv layers' filters as an image grid (:func:`render_filter_grid`)
    and their smoothness (:func:`filter_smoothness`), ``cnnviz/filters/<layer>`` and
    ``cnnviz/filters/smoothness/<layer>``.

    Args:
        layers: ``nn.Conv2d`` module names; ``None`` means the first ``nn.Conv2d``.
        normalize: ``"per_filter"`` (each filter stretched to its own range) or ``"global"`` (one for the layer).
        max_filters: draw at most this many output filters per layer.
        min_tile_px: upscale kernels (nearest neighbour) until a tile is at least this many pixels wide.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU())
        >>> shot = FilterPanel().snapshot(net, None, Moment(epoch=0, step=0))
        >>> tuple(shot.images["cnnviz/filters/0"].shape), sorted(shot.scalars)
        ((3, 154, 154), ['cnnviz/filters/smoothness/0'])
    """

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        normalize: Normalization = "per_filter",
        max_filters: int = 64,
        min_tile_px: int = 48,
    ) -> None:
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"{WHO}: `layers` must be a list of layer names or None, got {layers!r}.")
        self.layers = list(layers) if layers is not None else None
        self.normalize: Normalization = check_choice(WHO, "normalize", normalize, ("per_filter", "global"))
        self.max_filters = check_positive_int(WHO, "max_filters", max_filters)
        self.min_tile_px = check_positive_int(WHO, "min_tile_px", min_tile_px)

    def convs(self, model: nn.Module) -> dict[str, nn.Conv2d]:
        """The watched layers of ``model`` (ValueError naming the valid ones for a wrong name)."""
        if self.layers is None:
            name, conv = first_conv(model)
            return {name: conv}
        found = resolve_modules(model, self.layers, what=f"{WHO} `layers`", kinds=(nn.Conv2d,))
        return {name: module for name, module in found.items() if isinstance(module, nn.Conv2d)}

    def snapshot(
        self,
        model: nn.Module,
        probe: Probe | None,
        moment: Moment,
        *,
        guard: Guard | None = None,
        ranks: Ranks | None = None,
    ) -> Snapshot:
        """Every watched layer's filter grid and smoothness (from the weights alone: no probe, no forward)."""
        guard, shot = guard or Guard(WHO), Snapshot()
        scores: dict[str, Tensor] = {}
        draw = functools.partial(render_filter_grid, normalize=self.normalize, max_filters=self.max_filters,
                                 min_tile_px=self.min_tile_px)  # fmt: skip
        for name, conv in self.convs(model).items():
            weight = conv.weight.detach()
            grid = guard.run(f"filter image of {name!r}", draw, weight)
            if grid is not None:
                shot.images[f"cnnviz/filters/{name}"] = grid
            score = guard.run(f"smoothness of {name!r}", filter_smoothness, weight)
            if score is not None:
                scores[name] = score
        if scores:
            values = torch.stack(list(scores.values())).cpu().tolist()  # one host copy for all layers
            shot.scalars.update(
                {f"cnnviz/filters/smoothness/{n}": v for n, v in zip(scores, values) if v == v}  # NaN: no 2-D slice
            )
        return shot
