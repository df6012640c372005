"""Convolution filters as pictures, and how smooth they are.

CS231n, "Visualizing what ConvNets learn": the first layer's filters of a converged network are smooth,
clean patterns; noisy filters point to an undertrained or under-regularized network.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from lightning_cnnviz.core._images import normalize_per_item, tile_grid, upscale_nearest

__all__ = ["filter_smoothness", "render_filter_grid"]

Normalization = Literal["per_filter", "global"]


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
    in_channels, kh, kw = weight.shape[1:]
    if in_channels not in (1, 3):
        weight = weight.abs().mean(dim=1, keepdim=True)  # kernel magnitude over the input channels

    # RGB: one (3, kh, kw) tile per filter; otherwise one (1, kh, kw) tile per filter
    tiles = weight
    if normalize == "global":
        low, high = weight.min(), weight.max()
        span = (high - low).clamp_min(1e-12)
        tiles = (tiles - low) / span
    else:
        tiles = normalize_per_item(tiles)

    factor = max(1, math.ceil(min_tile_px / max(kh, kw)))
    tiles = upscale_nearest(tiles, factor)
    grid = tile_grid(tiles, padding=padding, pad_value=1.0)
    return grid.expand(3, -1, -1).contiguous() if grid.shape[0] == 1 else grid


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
