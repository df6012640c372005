"""Rendering of activation statistics as images."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

from lightning_cnnviz.core.drawing.basic import annotate, normalize_per_item, tile_grid, to_rgb, upscale
from lightning_cnnviz.core.model.modules import class_name

__all__ = ["render_saliency", "render_top_patches"]

DEAD_RGB = (0.85, 0.1, 0.1)


def dead_filter_map(
    firing_rates: Tensor,
    *,
    cell_px: int = 4,
    window_px: int = 8,
    max_height_px: int = 1024,
    gap_px: int = 6,
    min_width_px: int = 256,
    marked: str = "never fired",
    legend: bool = True,
) -> Tensor:
    """Channels x windows picture of a layer's history: rows are channels, columns are windows (oldest left).

    A live cell is gray, brighter the more often the channel fired (``sqrt`` of the firing rate, so rare
    firing is still visible); a dead cell (rate exactly 0) is red. Non-finite rates are drawn blue.

    ``firing_rates`` (channels, windows) in [0, 1] -> (3, H, W) in [0, 1], the cells from the top-left corner: each
    channel ``cell_px`` tall, each window at least ``window_px`` wide and wider while the map is narrower than
    ``min_width_px`` (a map of few windows is not a thin line). A wide layer is folded: channels beyond
    ``max_height_px / cell_px`` continue in another block to the right (``gap_px`` of white between blocks). With
    ``legend``, a band below says what the grey scale and the colours mean (``marked``: what red is).

    Example:
        >>> picture = dead_filter_map(torch.tensor([[0.5, 0.0]]), cell_px=1, window_px=1)  # windows 128 px wide
        >>> tuple(picture.shape), [round(v, 2) for v in picture[:, 0, 200].tolist()]
        ((3, 31, 256), [0.85, 0.1, 0.1])
    """
    if firing_rates.dim() != 2:
        raise ValueError(f"firing_rates must be (channels, windows), got {tuple(firing_rates.shape)}")
    rates = firing_rates.float()
    finite = torch.isfinite(rates)
    gray = rates.nan_to_num(0.0).clamp(0, 1).sqrt().mul(0.8).add(0.2)
    image = gray.unsqueeze(0).repeat(3, 1, 1)
    dead = finite & (rates == 0)
    for channel, value in enumerate(DEAD_RGB):
        image[channel][dead] = value
    image[:, ~finite] = torch.tensor(_NONFINITE_RGB).view(3, 1).to(image)
    rows = max(1, max_height_px // cell_px)
    blocks = -(-rates.shape[0] // rows)
    columns = blocks * rates.shape[1]
    window_px = max(window_px, -(-(min_width_px - (blocks - 1) * gap_px) // max(columns, 1)))
    image = image.repeat_interleave(cell_px, dim=1).repeat_interleave(window_px, dim=2)
    if blocks > 1:
        parts = list(image.split(rows * cell_px, dim=1))
        parts[-1] = torch.nn.functional.pad(parts[-1], (0, 0, 0, rows * cell_px - parts[-1].shape[1]), value=1.0)
        gap = image.new_ones(3, rows * cell_px, gap_px)
        image = torch.cat([part for block in parts for part in (block, gap)][:-1], dim=2)
    return _with_legend(image, marked) if legend else image


_NONFINITE_RGB = (0.1, 0.3, 0.9)


def _with_legend(image: Tensor, marked: str) -> Tensor:
    """``image`` above a 30 px band: a grey ramp (fired never .. always, on the map's square-root scale), a red
    swatch (``marked``) and a blue one (not finite), each named."""
    from lightning_cnnviz.core.drawing.basic import annotate

    band = image.new_ones(3, 30, max(image.shape[-1], 256))
    band[:, 4:14, 4:84] = torch.linspace(0.2, 1.0, 80).view(1, 1, 80)  # the map's grey: 0.2 + 0.8 sqrt(rate)
    band[:, 4:14, 124:134] = torch.tensor(DEAD_RGB).view(3, 1, 1)
    band[:, 4:14, 208:218] = torch.tensor(_NONFINITE_RGB).view(3, 1, 1)
    band = annotate(band, [(2, 15, "fired 0..100%, sqrt"), (135, 3, marked[:12]), (219, 3, "NaN")])
    top = torch.nn.functional.pad(image, (0, band.shape[-1] - image.shape[-1]), value=1.0)
    return torch.cat([top, band.to(top)], dim=1)


def distribution_map(counts: Tensor, *, window_px: int = 4, bin_px: int = 2) -> Tensor:
    """Value distribution of a layer over training (fastai's "colorful dimension"): columns are windows (oldest
    left), rows are value bins (largest values at the top), brightness is log(1 + count) scaled per column, in
    the inferno colormap. A collapse shows as one bright row at zero, an explosion as mass moving to the edges.

    ``counts`` (windows, bins) -> (3, bins * bin_px, windows * window_px) in [0, 1].

    Example:
        >>> distribution_map(torch.tensor([[0.0, 5.0, 1.0]]), window_px=1, bin_px=1).shape
        torch.Size([3, 3, 1])
    """
    if counts.dim() != 2:
        raise ValueError(f"counts must be (windows, bins), got {tuple(counts.shape)}")
    logged = torch.log1p(counts.float().clamp_min(0))
    scaled = logged / logged.amax(dim=1, keepdim=True).clamp_min(1e-12)
    image = colormap(scaled.T.flip(0))
    return image.repeat_interleave(bin_px, dim=1).repeat_interleave(window_px, dim=2)


# Control points of matplotlib's "inferno" (perceptually uniform, monotonic luminance), linearly interpolated.
_INFERNO = (
    (0.001462, 0.000466, 0.013866),
    (0.087411, 0.044556, 0.224813),
    (0.258234, 0.038571, 0.406485),
    (0.416331, 0.090203, 0.432943),
    (0.578304, 0.148039, 0.404411),
    (0.735683, 0.215906, 0.330245),
    (0.865006, 0.316822, 0.226055),
    (0.954506, 0.468744, 0.099874),
    (0.987622, 0.645320, 0.039886),
    (0.964394, 0.843848, 0.273391),
    (0.988362, 0.998364, 0.644924),
)


def colormap(values: Tensor) -> Tensor:
    """Map values in [0, 1] (any shape S) to RGB (3, *S) with the inferno colormap."""
    table = torch.tensor(_INFERNO, dtype=torch.float32, device=values.device)  # (K, 3)
    position = values.float().clamp(0, 1) * (len(_INFERNO) - 1)
    low = position.floor().long().clamp(max=len(_INFERNO) - 2)
    frac = (position - low).unsqueeze(-1)
    rgb = table[low] * (1 - frac) + table[low + 1] * frac
    return rgb.movedim(-1, 0)


def display_rgb(images: Tensor) -> Tensor:
    """(N, C, H, W) -> (N, 3, H, W) in [0, 1], each image stretched to its own min/max, gray as RGB."""
    return to_rgb(normalize_per_item(images.float()))


def signed_display(maps: Tensor) -> Tensor:
    """Signed maps (N, C, H, W) -> (N, 3, H, W) in [0, 1]: ``0.5 + map / (2 max |map|)`` per item, so zero is
    mid-gray and the sign survives (Zeiler & Fergus show their projections this way)."""
    scale = maps.float().abs().flatten(1).amax(1).clamp_min(torch.finfo(torch.float32).tiny).view(-1, 1, 1, 1)
    return to_rgb(0.5 + maps.float() / (2 * scale))


# Colours of mask classes: class 0 (background) black, then matplotlib's tab10.
MASK_PALETTE = torch.tensor([
    [0, 0, 0], [31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189], [140, 86, 75],
    [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207],
]) / 255.0  # fmt: skip


def mask_rgb(masks: Tensor, size: Sequence[int] | None = None) -> Tensor:
    """Class masks (N, h, w) as colours (N, 3, H, W): class 0 black, classes 1.. in tab10's colours (cycling),
    resized (nearest) to ``size``.

    Example:
        >>> (mask_rgb(torch.tensor([[[0, 1]]]))[0, :, 0] * 255).round().T.tolist()  # black, then tab10's blue
        [[0.0, 0.0, 0.0], [31.0, 119.0, 180.0]]
    """
    index = torch.where(masks > 0, (masks - 1) % (len(MASK_PALETTE) - 1) + 1, torch.zeros_like(masks))
    colours = MASK_PALETTE.to(masks.device)[index.long()].permute(0, 3, 1, 2)
    return colours if size is None else torch.nn.functional.interpolate(colours, size=tuple(size), mode="nearest")


def render_saliency(
    images: Tensor,
    maps: Tensor,
    *,
    signed: bool = True,
    masks: Tensor | None = None,
    min_px: int = 64,
    alpha: float = 0.55,
) -> Tensor:
    """Rows of [image | map | overlay] for N images, as one (3, H, W) image in [0, 1]; with ``masks`` (N, h, w)
    of classes, rows of [image | mask | map | overlay] (:func:`mask_rgb`).

    Maps are (N, C, H, W). ``signed`` maps are drawn as ``0.5 + map / (2 max |map|)`` beside ``|map|`` summed over
    channels on the colormap; the others (C = 1, a heat map such as Grad-CAM's) are divided by each image's largest
    value (negative values shown as 0), drawn with the inferno colormap and blended over a gray copy of the image
    (weight ``alpha``). Panels are upscaled to at least ``min_px``.

    Example:
        >>> render_saliency(images, torch.rand(2, 1, 8, 8), signed=False).shape
        torch.Size([3, 132, 196])
    """
    count = images.shape[0]
    shown = display_rgb(images)
    if not signed:
        heat = maps[:, 0].float().clamp_min(0)
        heat = heat / heat.flatten(1).amax(1).clamp_min(torch.finfo(heat.dtype).tiny).view(-1, 1, 1)  # any scale
        middle = colormap(heat).movedim(0, 1)
        gray = to_rgb(shown.mean(dim=1, keepdim=True))
        right = (1 - alpha) * gray + alpha * middle
    else:
        middle = signed_display(maps)
        magnitude = maps.float().abs().sum(dim=1)
        largest = magnitude.flatten(1).amax(1).clamp_min(torch.finfo(magnitude.dtype).tiny)
        magnitude = magnitude / largest.view(-1, 1, 1)
        right = colormap(magnitude).movedim(0, 1)
    drawn = [shown, middle, right]
    if masks is not None:
        drawn.insert(1, mask_rgb(masks.to(images.device), shown.shape[-2:]))
    panels = [upscale(panel, min_px) for panel in drawn]
    gap = torch.ones(count, 3, panels[0].shape[-2], 2, device=images.device)
    rows = torch.cat([part for panel in panels for part in (gap, panel)][1:], dim=-1)  # (N, 3, h, 3w + 4)
    spacer = torch.ones(count, 3, 2, rows.shape[-1], device=images.device)
    return torch.cat([rows, spacer], dim=-2).permute(1, 0, 2, 3).reshape(3, -1, rows.shape[-1])


def render_top_patches(
    panels: Mapping[str, Tensor], valid: Tensor, channels: Sequence[int], *, min_tile_px: int = 24, labels: bool = True
) -> Tensor:
    """Zeiler & Fergus Fig. 2 for one layer: per channel, a grid of each panel's ``k`` tiles side by side.

    ``panels``: name -> (C, k, 3, h, w) tiles in [0, 1] (e.g. ``{"deconvnet": ..., "patches": ...}``), drawn left
    to right; tile ``[c, j]`` belongs to channel ``c``'s ``j``-th strongest activation. A panel of one tile per
    channel (C, 1, 3, h', w') is drawn as large as the others' grids (a feature-vis row's synthesised image).
    ``valid`` (C, k): filled slots (others white). Tiles are upscaled to at least ``min_tile_px``; with
    ``labels`` blocks are captioned ``ch <index>`` and with the panel names. Returns (3, H, W) in [0, 1], about
    as many block rows as columns.

    Example:
        >>> render_top_patches({"patches": torch.rand(2, 4, 3, 5, 5)}, torch.ones(2, 4, dtype=torch.bool), [0, 7]).shape
        torch.Size([3, 77, 124])
    """
    names = list(panels)
    first = next((panels[n] for n in names if panels[n].shape[1] > 1), panels[names[0]])
    count, k = first.shape[:2]
    per_row = math.ceil(math.sqrt(k))
    grids: list[list[Tensor]] = []
    for name in names:
        if panels[name].shape[1] == 1 and k > 1:
            continue  # a single image per channel: drawn as large as the others' grids, below
        tiles = panels[name].float().masked_fill(~valid.to(first.device)[:, :, None, None, None], 1.0)
        tiles = upscale(tiles.flatten(0, 1), min_tile_px).unflatten(0, (count, k))
        grids.append([tile_grid(tiles[c], per_row, padding=1, pad_value=1.0) for c in range(count)])
    side = grids[0][0].shape[-2] if grids else 0
    for index, name in enumerate(names):
        if panels[name].shape[1] == 1 and k > 1:
            large = torch.nn.functional.interpolate(panels[name][:, 0].float(), size=(side, side), mode="nearest")
            grids.insert(index, list(large.clamp(0, 1).unbind(0)))
    caption_px = 12 if labels else 0
    gap = 4
    blocks = []
    for c in range(count):
        parts = [grids[p][c] for p in range(len(names))]
        height = parts[0].shape[-2]
        spacer = parts[0].new_ones(3, height, gap)
        row = torch.cat([t for part in parts for t in (part, spacer)][:-1], dim=-1)
        blocks.append(torch.nn.functional.pad(row, (0, 0, caption_px, 0), value=1.0))
    block_h, block_w = blocks[0].shape[-2:]
    ncol = max(1, min(count, round(math.sqrt(count * block_h / block_w)) or 1))
    image = tile_grid(torch.stack(blocks), ncol, padding=6, pad_value=1.0)
    if not labels:
        return image
    grid_w = grids[0][0].shape[-1] + gap
    notes = []
    for c, channel in enumerate(channels):
        top = 6 + (c // ncol) * (block_h + 6)
        left = 6 + (c % ncol) * (block_w + 6)
        notes.append((left, top - 1, f"ch {channel}"))
        notes.extend((left + p * grid_w + grid_w // 2, top - 1, name) for p, name in enumerate(names) if c < ncol)
    return annotate(image, notes)


def render_evolution(
    thumbnails: Tensor,
    column_labels: Sequence[str],
    channels: Sequence[int],
    *,
    min_tile_px: int = 32,
    row_labels: Sequence[str] | None = None,
) -> Tensor:
    """Zeiler & Fergus Fig. 4: rows are channels, columns are logged epochs (oldest left), labelled.

    Args:
        thumbnails: (C, T, 3, h, w) in [0, 1]: channel ``c``'s strongest projection at logged point ``t``.
        column_labels: T captions (e.g. ``"ep 3"``).
        channels: C channel indices for the row captions (``"ch 5"``), unless ``row_labels`` gives them.
    """
    columns = thumbnails.shape[1]
    tiles = upscale(thumbnails.float().flatten(0, 1), min_tile_px)
    grid = tile_grid(tiles, columns, padding=2, pad_value=1.0)
    rows = list(row_labels) if row_labels is not None else [f"ch {channel}" for channel in channels]
    left_px, top_px = 40 if row_labels is None else max([40, *(6 * len(row) + 6 for row in rows)]), 14
    image = torch.nn.functional.pad(grid, (left_px, 0, top_px, 0), value=1.0)
    tile_h, tile_w = tiles.shape[-2:]
    notes = [(left_px + 2 + t * (tile_w + 2), 0, text) for t, text in enumerate(column_labels)]
    notes += [(0, top_px + 2 + c * (tile_h + 2), row) for c, row in enumerate(rows)]
    return annotate(image, notes)


def render_scatter(
    embedding: Tensor,
    labels: Tensor | None = None,
    class_names: Sequence[str] | None = None,
    *,
    title: str = "",
    size_px: int = 640,
) -> Tensor:
    """A class-coloured scatter of a 2-D map with a legend, drawn by matplotlib (Agg, no global state).

    Returns (3, size_px, size_px) in [0, 1]. Without ``labels`` every point is drawn in one colour; floating
    ``labels`` are values, drawn on a colour bar (viridis); class -1 is "none".
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    points = embedding.detach().float().cpu().numpy()
    figure = Figure(figsize=(size_px / 100, size_px / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    axes = figure.add_subplot(1, 1, 1)
    if labels is None:
        axes.scatter(points[:, 0], points[:, 1], s=4, c="tab:blue", linewidths=0)
    elif labels.is_floating_point():
        drawn = axes.scatter(points[:, 0], points[:, 1], s=4, c=labels.detach().cpu().numpy(), cmap="viridis",
                             linewidths=0)  # fmt: skip
        figure.colorbar(drawn, ax=axes, fraction=0.046, pad=0.02)
    else:
        values = labels.detach().cpu().numpy()
        classes = sorted(set(values.tolist()))
        import matplotlib

        palette = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        for index, label in enumerate(classes):
            chosen = values == label
            name = "none" if label < 0 else class_name(label, class_names)
            axes.scatter(
                points[chosen, 0], points[chosen, 1], s=4, color=palette(index % palette.N), label=name, linewidths=0
            )
        axes.legend(loc="best", fontsize=7, markerscale=3, frameon=True)
    axes.set_xticks([])
    axes.set_yticks([])
    if title:
        axes.set_title(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[:, :, :3].copy()).permute(2, 0, 1).float() / 255


def grid_assignment(embedding: Tensor, rows: int, columns: int) -> Tensor:
    """Snap a 2-D map to a ``rows`` x ``columns`` grid: the point shown in each cell, (rows * columns,), -1 for
    an empty cell. Minimises the total squared distance between the cells and their points (the map scaled to
    the grid), each point used at most once (scipy's ``linear_sum_assignment``)."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    points = embedding.detach().double().cpu().numpy()
    low, high = points.min(axis=0), points.max(axis=0)
    unit = (points - low) / np.maximum(high - low, 1e-12)  # (N, 2) in [0, 1]
    ys, xs = np.meshgrid((np.arange(rows) + 0.5) / rows, (np.arange(columns) + 0.5) / columns, indexing="ij")
    cells = np.stack([xs.ravel(), 1 - ys.ravel()], axis=1)  # row 0 at the top, as the scatter's y axis
    cost = ((cells[:, None, :] - unit[None, :, :]) ** 2).sum(axis=2)  # (cells, N)
    cell_index, point_index = linear_sum_assignment(cost)
    chosen = torch.full((rows * columns,), -1, dtype=torch.long)
    chosen[torch.from_numpy(cell_index)] = torch.from_numpy(point_index).long()
    return chosen


def render_thumbnail_grid(embedding: Tensor, images: Tensor, *, cells: int = 32, cell_px: int = 32) -> Tensor:
    """Karpathy's "t-SNE of CNN codes" picture: images placed on a ``cells`` x ``cells`` grid by their map
    positions (:func:`grid_assignment`), each shown at ``cell_px`` (per-image min-max colours). (3, H, W)."""
    count = images.shape[0]
    cells = max(1, min(cells, int(math.sqrt(count))))
    chosen = grid_assignment(embedding, cells, cells)
    shown = display_rgb(images.detach().cpu())
    tiles = torch.ones(cells * cells, 3, cell_px, cell_px)
    filled = chosen >= 0
    picked = shown[chosen[filled]]
    tiles[filled] = torch.nn.functional.interpolate(
        picked, size=(cell_px, cell_px), mode="area" if picked.shape[-1] > cell_px else "nearest"
    )
    return tile_grid(tiles, cells, padding=1, pad_value=1.0)
