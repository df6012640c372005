"""Figures of several panels: the rows of Zeiler & Fergus's occlusion figure, and line plots of curves (their
invariance curves) drawn by matplotlib."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from lightning_cnnviz.core.drawing.basic import annotate, normalize_per_item, tile_grid
from lightning_cnnviz.core.drawing.render import colormap, display_rgb
from lightning_cnnviz.core.model.modules import class_name

__all__ = ["OcclusionRow", "class_colours", "render_curves", "render_occlusion_rows"]

HEADER_PX = 14
LEGEND_ENTRIES = 6


def class_colours(classes: Tensor) -> Tensor:
    """RGB (3, *S) of class indices (any shape S): matplotlib's tab20, cycling; -1 is black.

    Example:
        >>> (class_colours(torch.tensor([0, -1])) * 255).round().T.tolist()[1]
        [0.0, 0.0, 0.0]
    """
    import matplotlib

    palette = matplotlib.colormaps["tab20"]
    table = torch.tensor([palette(i)[:3] for i in range(palette.N)], dtype=torch.float32)
    table = torch.cat([table[0::2], table[1::2]])  # the ten strong colours first, then their light partners
    colours = table[classes.clamp_min(0) % len(table)].movedim(-1, 0)
    return torch.where(classes >= 0, colours, torch.zeros_like(colours))


@dataclass(frozen=True)
class OcclusionRow:
    """One image's row of the occlusion figure (on the host): the ``image`` (C, H, W); ``b`` the strongest map's
    total on the grid of square positions (gh, gw); the ``projection`` (C, H, W) of its strongest activation with
    its receptive-field ``box`` (top, left, bottom, right), or None; ``d`` the class probability and ``e`` the top
    class on the grid (None where they do not apply); the ``channel`` shown, the unoccluded total ``clean_b`` and
    probability ``clean_d``; a ``caption`` (what the label holds and what was predicted)."""

    image: Tensor
    b: Tensor
    projection: Tensor
    d: Tensor | None
    e: Tensor | None
    channel: int
    clean_b: float
    clean_d: float
    box: tuple[int, int, int, int] | None
    caption: str


def _on_image(grid: Tensor, size: Sequence[int]) -> Tensor:
    """A (3, gh, gw) panel read on the grid of square positions, stretched (nearest) over an image of ``size``."""
    return F.interpolate(grid[None].float(), size=tuple(size), mode="nearest")[0]


def _framed(tile: Tensor, box: tuple[int, int, int, int] | None, factor: int) -> Tensor:
    """``tile`` with the input ``box`` (inclusive, clipped to the tile) outlined in green."""
    if box is None:
        return tile
    tile = tile.clone()
    height, width = tile.shape[-2:]
    top, left = max(0, box[0] * factor), max(0, box[1] * factor)
    bottom, right = min(height - 1, (box[2] + 1) * factor - 1), min(width - 1, (box[3] + 1) * factor - 1)
    green = torch.tensor([0.0, 1.0, 0.0])[:, None]
    tile[:, top, left : right + 1] = tile[:, bottom, left : right + 1] = green
    tile[:, top : bottom + 1, left] = tile[:, top : bottom + 1, right] = green
    return tile


def _legend(classes: Tensor, size: Sequence[int], names: Sequence[str] | None) -> tuple[Tensor, list[tuple[int, str]]]:
    """A tile of colour swatches for the most frequent classes of ``classes`` and the (y, name) of each."""
    tile = torch.ones(3, *size)
    values, counts = torch.unique(classes.flatten(), return_counts=True)
    order = counts.argsort(descending=True)[:LEGEND_ENTRIES]
    entries = []
    for line, index in enumerate(order.tolist()):
        y = 2 + line * 14
        if y + 12 > size[0]:
            break
        tile[:, y : y + 10, 2:12] = class_colours(values[index].view(1, 1))[:, 0, 0][:, None, None]
        entries.append((y - 1, class_name(int(values[index]), names)))
    return tile, entries


def render_occlusion_rows(
    rows: Sequence[OcclusionRow],
    *,
    layer: str,
    said: str,
    class_names: Sequence[str] | None = None,
    min_px: int = 128,
) -> Tensor:
    """Zeiler & Fergus's occlusion figure (Fig. 7): one row per image of [image | (b) | (c)] and, where the rows
    have them, [(d) | (e) | legend]; every panel the image's size, enlarged by a whole factor to at least
    ``min_px``. (b) is scaled per image, (d) from 0 to 1 (inferno), (e) in tab20 colours. (3, H, W) in [0, 1].

    Example:
        >>> row = OcclusionRow(torch.rand(1, 8, 8), torch.rand(3, 3), torch.rand(1, 8, 8), torch.rand(3, 3),
        ...                    torch.zeros(3, 3, dtype=torch.long), 2, 1.0, 0.5, (0, 0, 3, 3), "true 0")
        >>> render_occlusion_rows([row], layer="conv", said="p(true class)").shape
        torch.Size([3, 146, 782])
    """
    height, width = rows[0].image.shape[-2:]
    factor = max(1, -(-min_px // max(height, width)))
    size = (height * factor, width * factor)
    classes = any(row.e is not None for row in rows)
    tiles: list[tuple[Tensor, str]] = []
    notes: list[tuple[list[tuple[int, str]], int]] = []
    columns = 6 if classes else 3
    for row in rows:
        image = F.interpolate(display_rgb(row.image[None]), size=size, mode="nearest")[0]
        b = _on_image(colormap(normalize_per_item(row.b[None])[0]), size)
        projection = _framed(F.interpolate(display_rgb(row.projection[None]), size=size, mode="nearest")[0],
                             row.box, factor)  # fmt: skip
        panel = [image, b, projection]
        low, high = float(row.b.min()), float(row.b.max())
        texts = [row.caption, f"ch {row.channel} {low:.3g}..{high:.3g}", f"clean {row.clean_b:.3g}"]
        if classes:
            if row.d is not None and row.e is not None:
                legend, entries = _legend(row.e, size, class_names)
                panel += [_on_image(colormap(row.d), size), _on_image(class_colours(row.e), size), legend]
                texts += [f"{float(row.d.min()):.2f}..{float(row.d.max()):.2f} (clean {row.clean_d:.2f})", "", ""]
                notes += [(entries, len(tiles) + 5)]
            else:
                panel += [torch.ones(3, *size)] * 3
                texts += ["", "", ""]
        tiles += [(tile, text) for tile, text in zip(panel, texts)]
    grid = tile_grid(torch.stack([tile for tile, _ in tiles]), columns, padding=2)
    grid = F.pad(grid, (0, 0, HEADER_PX, 0), value=1.0)
    step_x, step_y = size[1] + 2, size[0] + 2
    titles = [f"image ({layer})", "(b) strongest map", "(c) its top activation", f"(d) {said}", "(e) top class",
              "legend"][:columns]  # fmt: skip
    labels = [(2 + c * step_x, 0, title) for c, title in enumerate(titles)]
    for index, (_, text) in enumerate(tiles):
        if text:
            labels.append((2 + (index % columns) * step_x, HEADER_PX + 2 + (index // columns) * step_y, text))
    for entries, index in notes:
        x, y = 2 + (index % columns) * step_x, HEADER_PX + 2 + (index // columns) * step_y
        labels += [(x + 14, y + top, name) for top, name in entries]
    return annotate(grid, labels)


def render_curves(
    x: Tensor,
    panels: Sequence[tuple[str, Tensor]],
    *,
    xlabel: str,
    names: Sequence[str],
    title: str = "",
    references: Sequence[tuple[float, str] | None] = (),
    panel_px: int = 300,
) -> Tensor:
    """Line plots side by side, one per ``(title, values)`` panel, values (lines, len(x)) one line per ``names``
    entry (the same colour in every panel), with a panel's ``references[i]`` (value, label) as a dashed grey line;
    drawn by matplotlib (Agg, no global state). (3, H, W) in [0, 1].

    Example:
        >>> render_curves(torch.arange(3.0), [("a", torch.rand(2, 3))], xlabel="x", names=["one", "two"]).shape
        torch.Size([3, 300, 300])
    """
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(panel_px * len(panels) / 100, panel_px / 100), dpi=100)
    canvas = FigureCanvasAgg(figure)
    xs = x.detach().float().cpu().numpy()
    for index, (name, values) in enumerate(panels):
        axes = figure.add_subplot(1, len(panels), index + 1)
        for line, label in zip(values.detach().float().cpu().numpy(), names):
            axes.plot(xs, line, linewidth=1.2, label=label)
        reference = references[index] if index < len(references) else None
        if reference is not None and np.isfinite(reference[0]):
            axes.axhline(reference[0], color="grey", linestyle="--", linewidth=1.0)
            axes.annotate(reference[1], (xs[0], reference[0]), textcoords="offset points", xytext=(2, 3), fontsize=6,
                          color="grey")  # fmt: skip
        axes.set_title(name, fontsize=8)
        axes.set_xlabel(xlabel, fontsize=8)
        axes.tick_params(labelsize=7)
        axes.grid(alpha=0.3)
        if index == 0 and len(names) > 1:
            axes.legend(fontsize=6, loc="best")
    if title:
        figure.suptitle(title, fontsize=9)
    figure.tight_layout()
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    return torch.from_numpy(rgba[:, :, :3].copy()).permute(2, 0, 1).float() / 255
