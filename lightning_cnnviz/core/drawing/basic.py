"""The drawing toolkit every picture is made with: grey to RGB, nearest-neighbour upscaling to a minimum size,
per-image normalisation, grids of tiles, and captions."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["annotate", "captioned_grid", "line_mask", "normalize_per_item", "tile_grid", "to_rgb", "upscale"]


def to_rgb(images: Tensor) -> Tensor:
    """(N, 3, H, W) for display: a grey channel repeated three times, channels beyond the third dropped.

    Example:
        >>> to_rgb(torch.zeros(2, 1, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def upscale(images: Tensor, min_px: int) -> Tensor:
    """Repeat each pixel by the smallest integer factor that makes the longer side at least ``min_px`` (no
    smoothing, so single weights stay visible); unchanged when it already is.

    Example:
        >>> upscale(torch.zeros(1, 3, 5, 7), 48).shape  # factor 7: 7 x 7 = 49 >= 48
        torch.Size([1, 3, 35, 49])
    """
    factor = max(1, -(-min_px // max(images.shape[-2], images.shape[-1], 1)))
    if factor == 1:
        return images
    return images.repeat_interleave(factor, dim=-2).repeat_interleave(factor, dim=-1)


def line_mask(values: Tensor, height: int, width: int) -> Tensor:
    """Where line plots of ``values`` (..., n) in [0, 1] (1 at the top) pass in a ``height`` x ``width`` tile:
    (..., height, width) booleans, the samples spread over the width and joined by vertical runs.

    Example:
        >>> line_mask(torch.tensor([[0.0, 1.0]]), 5, 4)[0].int().tolist()  # rising from the bottom to the top
        [[0, 0, 0, 0], [0, 0, 1, 1], [1, 1, 1, 0], [1, 0, 0, 0], [0, 0, 0, 0]]
    """
    taps = values.shape[-1]
    where = torch.linspace(0, taps - 1, width, device=values.device)
    left = where.floor().long().clamp_max(max(taps - 2, 0))
    fraction = (where - left).clamp(0, 1)
    right = (left + 1).clamp_max(taps - 1)
    sampled = values[..., left] * (1 - fraction) + values[..., right] * fraction  # (..., width)
    ys = (1 - sampled.float()) * (height - 3) + 1
    low = torch.minimum(ys, torch.cat([ys[..., 1:], ys[..., -1:]], dim=-1)).round()
    high = torch.maximum(ys, torch.cat([ys[..., 1:], ys[..., -1:]], dim=-1)).round()
    rows = torch.arange(height, device=values.device, dtype=ys.dtype)[:, None]
    return (rows >= low[..., None, :]) & (rows <= high[..., None, :])


def normalize_per_item(values: Tensor, eps: float = 1e-12) -> Tensor:
    """Scale each item (dimension 0) to [0, 1] by its own min and max; constant items become 0.5.

    Example:
        >>> normalize_per_item(torch.tensor([[1.0, 3.0], [2.0, 2.0]])).tolist()
        [[0.0, 1.0], [0.5, 0.5]]
    """
    flat = values.reshape(values.shape[0], -1)
    low = flat.amin(dim=1, keepdim=True)
    high = flat.amax(dim=1, keepdim=True)
    span = high - low
    scaled = torch.where(span > eps, (flat - low) / span.clamp_min(eps), torch.full_like(flat, 0.5))
    return scaled.reshape(values.shape)


def tile_grid(tiles: Tensor, ncol: int | None = None, *, padding: int = 1, pad_value: float = 1.0) -> Tensor:
    """Lay out ``tiles`` (N, C, h, w) row by row into one image (C, H, W) with ``padding`` px between tiles.

    ``ncol`` defaults to ``ceil(sqrt(N))``. Unused cells are filled with ``pad_value``.

    Example:
        >>> tile_grid(torch.zeros(5, 3, 4, 4)).shape  # 3 x 2 cells of 4 px, 1 px apart
        torch.Size([3, 11, 16])
    """
    if tiles.dim() != 4:
        raise ValueError(f"tile_grid expects tiles of shape (N, C, h, w), got {tuple(tiles.shape)}")
    count, channels, height, width = tiles.shape
    ncol = max(1, min(ncol or math.ceil(math.sqrt(max(count, 1))), max(count, 1)))
    nrow = max(1, math.ceil(count / ncol))
    cell_h, cell_w = height + padding, width + padding
    grid = tiles.new_full((channels, nrow * cell_h + padding, ncol * cell_w + padding), pad_value)
    if count == 0:
        return grid
    filled = tiles.new_full((nrow * ncol, channels, height, width), pad_value)
    filled[:count] = tiles
    cells = torch.nn.functional.pad(filled, (padding, 0, padding, 0), value=pad_value)
    body = (
        cells.reshape(nrow, ncol, channels, cell_h, cell_w)
        .permute(2, 0, 3, 1, 4)
        .reshape(channels, nrow * cell_h, ncol * cell_w)
    )
    grid[:, : nrow * cell_h, : ncol * cell_w] = body
    return grid


def annotate(image: Tensor, labels: Sequence[tuple[int, int, str]]) -> Tensor:
    """Write each ``(x, y, text)`` label on ``image`` (3, H, W) in [0, 1]: white text on a black box whose
    top-left corner is at ``(x, y)``. Returns a new CPU image; the input is unchanged.

    Example:
        >>> annotate(torch.ones(3, 20, 40), [(0, 0, "ch 1")])[:, 3, 0].tolist()  # the black box behind the text
        [0.0, 0.0, 0.0]
    """
    import numpy as np
    from PIL import Image, ImageDraw

    array = (image.detach().float().clamp(0, 1) * 255).round().byte().permute(1, 2, 0).cpu().numpy()
    canvas = Image.fromarray(np.ascontiguousarray(array))
    draw = ImageDraw.Draw(canvas)
    for x, y, text in labels:
        box = draw.textbbox((x + 1, y + 1), text)
        draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), fill=(0, 0, 0))
        draw.text((x + 1, y + 1), text, fill=(255, 255, 255))
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255


def captioned_grid(
    tiles: Tensor, captions: Sequence[str], *, min_px: int = 64, padding: int = 2, columns: int | None = None
) -> Tensor:
    """A grid of ``tiles`` (N, 3, h, w) in [0, 1], ``columns`` to a row (about square by default), each upscaled to
    at least ``min_px`` with its caption written in a white band above it. (3, H, W).

    Example:
        >>> captioned_grid(torch.zeros(2, 3, 8, 8), ["ch 0", "ch 5"]).shape
        torch.Size([3, 80, 134])
    """
    tiles = F.pad(upscale(tiles, min_px), (0, 0, 12, 0), value=1.0)
    grid = tile_grid(tiles, columns, padding=padding)
    per_row = max(1, round((grid.shape[-1] - padding) / (tiles.shape[-1] + padding)))
    notes = [
        (padding + (i % per_row) * (tiles.shape[-1] + padding), padding + (i // per_row) * (tiles.shape[-2] + padding),
         text)
        for i, text in enumerate(captions)
    ]  # fmt: skip
    return annotate(grid, notes)
