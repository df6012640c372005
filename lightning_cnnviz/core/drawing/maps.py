"""One image's activation maps as a picture: per image, the image beside a grid of its channel maps, each tile framed
in the health colours and labelled with its channel."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from lightning_cnnviz.core.drawing.basic import annotate, line_mask, upscale
from lightning_cnnviz.core.drawing.render import DEAD_RGB

__all__ = ["MapLayout", "framed", "line_tiles", "render_activation_maps"]

FRAME_PX, LABEL_PX, GAP_PX, CAPTION_PX, LEGEND_PX = 2, 12, 3, 14, 22
#: Frame colours by mark: 0 healthy (light grey), 1 dormant (amber), 2 dead (red, as in the dead map).
FRAME_RGB = ((0.82, 0.82, 0.82), (0.95, 0.62, 0.05), DEAD_RGB)


def framed(tiles: Tensor, marks: Sequence[int]) -> Tensor:
    """``tiles`` (C, 3, h, w) inside a ``FRAME_PX`` frame of their mark's colour (:data:`FRAME_RGB`).

    Example:
        >>> framed(torch.zeros(2, 3, 4, 4), [0, 2])[1, :, 0, 0].tolist()  # a dead channel's frame is red
        [0.8500000238418579, 0.10000000149011612, 0.10000000149011612]
    """
    colours = torch.tensor([FRAME_RGB[m] for m in marks], dtype=tiles.dtype, device=tiles.device)
    out = colours[:, :, None, None].expand(-1, -1, tiles.shape[-2] + 2 * FRAME_PX, tiles.shape[-1] + 2 * FRAME_PX)
    out = out.clone()
    out[:, :, FRAME_PX:-FRAME_PX, FRAME_PX:-FRAME_PX] = tiles
    return out


def line_tiles(values: Tensor, height: int = 32, width: int | None = None) -> Tensor:
    """1-D responses ``values`` (..., L) in [0, 1] as line plots (..., 3, height, width): black on white, 0 at the
    bottom and 1 at the top, a grey line at 0.

    Example:
        >>> line_tiles(torch.rand(2, 5, 20)).shape
        torch.Size([2, 5, 3, 32, 40])
    """
    width = width or max(height, 2 * values.shape[-1])
    drawn = line_mask(values, height, width)  # (..., height, width)
    tiles = torch.ones((*values.shape[:-1], 3, height, width), device=values.device)
    tiles[..., height - 2, :] = 0.75  # zero
    return torch.where(drawn.unsqueeze(-3), 0.0, tiles)


@dataclass(frozen=True)
class MapLayout:
    """Where :func:`render_activation_maps` puts things: per image a row (a caption band, the image, a grid of
    ``columns`` framed tiles each under a label band), rows one under another, a legend at the bottom."""

    images: int
    channels: int
    tile: tuple[int, int]
    image: tuple[int, int]
    columns: int

    @classmethod
    def of(cls, images: Sequence[int], tiles: Sequence[int], columns: int = 8) -> MapLayout:
        """The layout of images of shape ``images`` (N, 3, H, W) beside tiles of shape ``tiles`` (N, C, 3, h, w):
        the image enlarged by whole pixels to about the grid's height (at most 4 times)."""
        count, shown, height, width = tiles[0], tiles[1], tiles[-2], tiles[-1]
        columns = max(1, min(columns, shown))
        grid_height = math.ceil(shown / columns) * (LABEL_PX + height + 2 * FRAME_PX + GAP_PX)
        side = max(images[-2:])
        factor = max(1, -(-min(grid_height - GAP_PX, 4 * side) // side))
        return cls(count, shown, (height, width), (images[-2] * factor, images[-1] * factor), columns)

    @property
    def cell(self) -> tuple[int, int]:
        """A framed, labelled tile with its gap: (height, width)."""
        return (LABEL_PX + self.tile[0] + 2 * FRAME_PX + GAP_PX, self.tile[1] + 2 * FRAME_PX + GAP_PX)

    @property
    def grid(self) -> tuple[int, int]:
        rows = math.ceil(self.channels / self.columns)
        return rows * self.cell[0], self.columns * self.cell[1]

    @property
    def row_height(self) -> int:
        return CAPTION_PX + max(self.grid[0], self.image[0] + GAP_PX)

    @property
    def size(self) -> tuple[int, int]:
        return self.images * self.row_height + LEGEND_PX, max(self.image[1] + 2 * GAP_PX + self.grid[1], 300)

    def origin(self, image: int, channel: int) -> tuple[int, int]:
        """Top-left pixel (y, x) of the ``channel``-th tile (inside its frame) of the ``image``-th row."""
        y = image * self.row_height + CAPTION_PX + (channel // self.columns) * self.cell[0] + LABEL_PX + FRAME_PX
        x = self.image[1] + 2 * GAP_PX + (channel % self.columns) * self.cell[1] + FRAME_PX
        return y, x


def render_activation_maps(
    images: Tensor,
    tiles: Tensor,
    marks: Sequence[int],
    channels: Sequence[int],
    captions: Sequence[str],
    *,
    columns: int = 8,
) -> Tensor:
    """Per image a row: its caption, the image (``images`` (N, 3, H, W) in [0, 1], enlarged to about the grid's
    height) and its channel maps ``tiles`` (N, C, 3, h, w) in [0, 1], ``columns`` to a line, each framed in its
    mark's colour (``marks``: 0 healthy, 1 dormant, 2 dead) under its channel number; a legend below. (3, H, W).

    Example:
        >>> render_activation_maps(torch.rand(2, 3, 8, 8), torch.rand(2, 4, 3, 8, 8), [0, 0, 2, 1], [0, 1, 2, 3],
        ...                        ["image 0", "image 1"]).shape
        torch.Size([3, 104, 300])
    """
    layout = MapLayout.of(images.shape, tiles.shape, columns)
    count, shown = tiles.shape[:2]
    pictures = upscale(images.float(), max(layout.image))
    canvas = torch.ones(3, *layout.size)
    notes: list[tuple[int, int, str]] = []
    boxes = framed(tiles.flatten(0, 1).float().cpu(), list(marks) * count).unflatten(0, (count, shown))
    for i in range(count):
        top = i * layout.row_height
        notes.append((GAP_PX, top, captions[i]))
        canvas[:, top + CAPTION_PX : top + CAPTION_PX + pictures.shape[-2], GAP_PX : GAP_PX + pictures.shape[-1]] = (
            pictures[i].cpu()
        )
        for c in range(shown):
            y, x = layout.origin(i, c)
            canvas[:, y - FRAME_PX : y + tiles.shape[-2] + FRAME_PX, x - FRAME_PX : x + tiles.shape[-1] + FRAME_PX] = (
                boxes[i, c]
            )
            notes.append((x - FRAME_PX - 1, y - FRAME_PX - LABEL_PX, str(channels[c])))
    legend = layout.size[0] - LEGEND_PX + 4
    canvas[:, legend : legend + 10, GAP_PX : GAP_PX + 60] = torch.linspace(0, 1, 60).view(1, 1, 60)
    for index, left in ((1, 150), (2, 215)):
        canvas[:, legend : legend + 10, left : left + 10] = torch.tensor(FRAME_RGB[index]).view(3, 1, 1)
    notes += [(GAP_PX + 62, legend - 1, "0 .. row's white"), (161, legend - 1, "dormant"), (226, legend - 1, "dead")]
    return annotate(canvas, notes)
