"""Convolution filters as pictures, and how smooth they are.

CS231n, "Visualizing what ConvNets learn": the first layer's filters of a converged network are smooth,
clean patterns; noisy filters point to an undertrained or under-regularized network.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cnnviz.core.drawing.basic import line_mask, normalize_per_item, tile_grid, to_rgb, upscale

__all__ = ["filter_smoothness", "render_filter_grid", "render_filter_slices"]

Normalization = Literal["per_filter", "global"]


LINE_COLOURS = torch.tensor([[0.85, 0.1, 0.1], [0.1, 0.55, 0.1], [0.1, 0.2, 0.9]])  # input channels 0, 1, 2


def _check_weight(weight: Tensor) -> None:
    if weight.dim() not in (3, 4, 5):
        raise ValueError(
            "expected a Conv1d, Conv2d or Conv3d weight of shape (out_channels, in_channels, *kernel), got "
            f"{tuple(weight.shape)}"
        )


def _shown(weight: Tensor, normalize: Normalization) -> Tensor:
    """The weights as drawn, in [0, 1]: 1 or 3 input channels kept, else the kernel magnitude (mean |weight| over
    the input channels); stretched per filter or over the layer."""
    if weight.shape[1] not in (1, 3):
        weight = weight.abs().mean(dim=1, keepdim=True)
    if normalize == "global":
        return (weight - weight.min()) / (weight.max() - weight.min()).clamp_min(1e-12)
    return normalize_per_item(weight)


def render_profiles(weight: Tensor, *, normalize: Normalization = "per_filter", min_tile_px: int = 48) -> Tensor:
    """Conv1d filters (O, I, k) as small line plots (O, 3, h, w) in [0, 1]: one line per input channel (red, green,
    blue for three; black for one), or the kernel magnitude for more, over a grey zero line when zero is in range.

    Example:
        >>> render_profiles(torch.randn(4, 1, 9)).shape
        torch.Size([4, 3, 48, 54])
    """
    shown = _shown(weight.detach().float(), normalize)  # (O, L, k)
    count, lines, taps = shown.shape
    height, width = min_tile_px, max(min_tile_px, 6 * taps)
    drawn = line_mask(shown, height, width)  # (O, L, height, width)
    rows = torch.arange(height, device=shown.device, dtype=torch.float32)[:, None]
    tiles = torch.ones(count, 3, height, width, device=shown.device)
    tiles[:, :, [0, -1], :], tiles[:, :, :, [0, -1]] = 0.8, 0.8  # a frame
    if weight.shape[1] in (1, 3):  # the weights themselves are drawn: a zero line where zero is in range
        raw = weight.detach().float().flatten(1)
        low = raw.amin().expand(count) if normalize == "global" else raw.amin(dim=1)
        high = raw.amax().expand(count) if normalize == "global" else raw.amax(dim=1)
        zero = -low / (high - low).clamp_min(1e-12)
        zero_row = ((1 - zero) * (height - 3) + 1).round()
        axis = (rows == zero_row[:, None, None]) & ((zero > 0) & (zero < 1))[:, None, None]  # (O, height, 1)
        tiles[:, :, :, 1:-1] = torch.where(axis[:, None], 0.75, tiles[:, :, :, 1:-1])
    colours = LINE_COLOURS.to(shown.device) if lines == 3 else torch.zeros(1, 3, device=shown.device)
    for index in range(lines):
        tiles = torch.where(drawn[:, index, None], colours[index][None, :, None, None], tiles)
    return tiles


def render_slices(weight: Tensor, *, normalize: Normalization = "per_filter", min_tile_px: int = 48) -> Tensor:
    """Conv3d filters (O, I, t, kh, kw) as tiles (O, 3, h, w) in [0, 1]: each filter's ``t`` temporal slices side
    by side (RGB for three input channels, else grey), stretched together so the slices compare.

    Example:
        >>> render_slices(torch.randn(2, 3, 3, 5, 5)).shape
        torch.Size([2, 3, 52, 156])
    """
    shown = _shown(weight.detach().float(), normalize)  # (O, L, t, kh, kw)
    count, depth = shown.shape[0], shown.shape[2]
    slices = upscale(shown.transpose(1, 2).flatten(0, 1), min_tile_px)  # (O * t, L, h, w)
    slices = F.pad(slices, (1, 1, 1, 1), value=1.0).unflatten(0, (count, depth))
    return to_rgb(torch.cat(list(slices.unbind(1)), dim=-1))


def render_filter_slices(
    weight: Tensor,
    *,
    normalize: Normalization = "per_filter",
    max_filters: int = 16,
    max_inputs: int = 32,
    min_tile_px: int = 16,
) -> Tensor:
    """A deeper Conv2d layer's filters with their input slices (CS231n's figure of a second layer's weights): one row
    per filter, one grayscale tile per input channel, so the noise or smoothness of each slice shows. The first
    ``max_filters`` filters and ``max_inputs`` input channels; ``"per_filter"`` stretches each filter over all its
    slices (the slices of a filter compare), ``"global"`` over the layer. (3, H, W) in [0, 1], white padding.

    Example:
        >>> render_filter_slices(torch.randn(4, 8, 3, 3)).shape
        torch.Size([3, 77, 153])
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a Conv2d weight (out_channels, in_channels, kh, kw), got {tuple(weight.shape)}")
    shown = weight.detach().float()[:max_filters, :max_inputs]
    if normalize == "global":
        shown = (shown - shown.min()) / (shown.max() - shown.min()).clamp_min(1e-12)
    else:
        shown = normalize_per_item(shown)
    count, inputs = shown.shape[:2]
    tiles = upscale(shown.reshape(count * inputs, 1, *shown.shape[2:]), min_tile_px)
    return to_rgb(tile_grid(tiles, inputs, padding=1, pad_value=1.0)[None])[0].contiguous()


def render_filter_grid(
    weight: Tensor,
    *,
    normalize: Normalization = "per_filter",
    min_tile_px: int = 48,
    max_filters: int | None = 64,
    padding: int = 1,
) -> Tensor:
    """Draw a conv layer's filters as one image of shape (3, H, W) with values in [0, 1]: a Conv2d's as below, a
    Conv1d's as line plots (:func:`render_profiles`), a Conv3d's as temporal slices (:func:`render_slices`).

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
    if weight.dim() != 4:  # Conv1d: line plots; Conv3d: temporal slices side by side
        draw = render_profiles if weight.dim() == 3 else render_slices
        tiles = draw(weight, normalize=normalize, min_tile_px=min_tile_px)
        columns = max(1, round(math.sqrt(len(tiles) * tiles.shape[-2] / tiles.shape[-1])))
        return tile_grid(tiles, columns, padding=4 * padding, pad_value=1.0).contiguous()
    tiles = _shown(weight, normalize)  # RGB: one (3, kh, kw) tile per filter; otherwise one (1, kh, kw) tile
    tiles = upscale(tiles, min_tile_px)
    grid = tile_grid(tiles, padding=padding, pad_value=1.0)
    return to_rgb(grid[None])[0].contiguous()


def filter_smoothness(weight: Tensor) -> Tensor:
    """Lag-1 autocorrelation of the filters along their kernel axes: near 1 for smooth, near 0 for noise, -1 for
    checkers.

    For each (output, input) kernel slice ``w`` (k taps of a Conv1d, kh x kw of a Conv2d, t x kh x kw of a Conv3d)
    with mean-centred values, the score is ``1 - D / (2 V)`` where ``D`` is the mean squared difference between
    neighbouring weights along every axis and ``V`` the variance of the slice. White noise gives ``D = 2V`` (score
    0); a linear ramp over a 5x5 kernel gives ``1 - 0.5 / (2 * 2) = 0.875``. The layer score is the mean over
    slices with non-zero variance; returns NaN when no slice qualifies (1-tap kernels, all-constant slices).

    Example:
        >>> ramp = torch.arange(5.0).repeat_interleave(5).reshape(1, 1, 5, 5)
        >>> round(filter_smoothness(ramp).item(), 4)
        0.875
    """
    _check_weight(weight)
    w = weight.detach().double()
    kernel = tuple(w.shape[2:])
    if math.prod(kernel) < 2:
        return torch.tensor(float("nan"), dtype=torch.float64)
    slices = w.flatten(0, 1)  # (O * I, *kernel)
    axes = tuple(range(1, slices.dim()))
    centred = slices - slices.mean(dim=axes, keepdim=True)
    variance = centred.pow(2).mean(dim=axes)
    squared = torch.zeros_like(variance)
    pairs: int = 0
    for axis, size in enumerate(kernel, start=1):
        if size > 1:
            squared += slices.diff(dim=axis).pow(2).sum(dim=axes)
            pairs += (size - 1) * math.prod(kernel) // size
    mean_sq_diff = squared / pairs
    valid = variance > 1e-12 * slices.abs().amax(dim=axes).pow(2).clamp_min(1e-30)
    if not bool(valid.any()):
        return torch.tensor(float("nan"), dtype=torch.float64)
    scores = 1.0 - mean_sq_diff[valid] / (2.0 * variance[valid])
    return scores.mean()
