"""The activation atlas's tensor work (Carter, Armstrong, Schubert, Johnson and Olah 2019, "Activation Atlas"):
spatial activation vectors of a layer sampled evenly over images and positions, a 2-D layout of them binned into a
grid, and each cell's average vector.

The layout itself is our t-SNE (:func:`~lightning_cnnviz.core.tsne`), and each cell's image is rendered with the
direction objective (:func:`~lightning_cnnviz.core.methods.objectives.direction`); the monitor
(:class:`~lightning_cnnviz.core.ActivationAtlas`) puts them together.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.model.modules import evaluating, run_to

__all__ = ["Cells", "bin_layout", "sample_positions", "spatial_vectors"]


def sample_positions(images: int, height: int, width: int, count: int, seed: int = 0) -> Tensor:
    """``count`` (image, y, x) positions (count, 3), spread evenly over the images (each gets ``count // images``
    or one more, the first images the extra ones) and, within an image, drawn without replacement from its
    ``height * width`` positions by ``seed``: the same positions for the same arguments. All positions when
    ``count`` reaches them.

    Example:
        >>> sample_positions(2, 2, 2, 3).tolist()  # 2 positions of image 0, 1 of image 1
        [[0, 1, 0], [0, 1, 1], [1, 0, 0]]
    """
    if images < 1 or height < 1 or width < 1 or count < 1:
        raise ValueError(f"sample_positions: images, height, width and count must be >= 1, got {images}, {height}, "
                         f"{width}, {count}.")  # fmt: skip
    positions = height * width
    generator = torch.Generator().manual_seed(int(seed))
    each = torch.full((images,), min(count, images * positions) // images, dtype=torch.long)
    each[: min(count, images * positions) % images] += 1
    order = torch.argsort(torch.rand(images, positions, generator=generator), dim=1)  # a permutation per image
    taken = torch.arange(positions)[None] < each[:, None]  # (images, positions): the first `each` of each order
    image = torch.arange(images)[:, None].expand(images, positions)[taken]
    flat = order[taken]
    return torch.stack([image, flat // width, flat % width], dim=1)


def spatial_vectors(
    model: nn.Module, inputs: Tensor, layer: str, count: int, seed: int = 0, max_batch: int = 256
) -> tuple[Tensor, Tensor]:
    """``count`` activation vectors (M, C) of ``layer`` (a 2-D feature map) over ``inputs``, at positions sampled
    by :func:`sample_positions`, and those positions (M, 3) as (image, y, x): one eval forward per chunk of
    ``max_batch`` images, stopped after the layer, without gradients."""
    found: list[Tensor] = []
    maps: list[Tensor] = []
    positions: Tensor | None = None
    with torch.no_grad(), evaluating(model):
        for start in range(0, len(inputs), max_batch):
            maps.clear()
            run_to(model, inputs[start : start + max_batch], [layer], lambda name, out: maps.append(out))
            if not maps or not isinstance(maps[0], Tensor) or maps[0].dim() != 4:
                shape = tuple(maps[0].shape) if maps and isinstance(maps[0], Tensor) else None
                raise ValueError(f"layer {layer!r} gives {shape}, not a 2-D feature map (N, C, H, W): the atlas "
                                 "lays out the vectors of a conv layer's positions.")  # fmt: skip
            out = maps[0]
            if positions is None:
                positions = sample_positions(len(inputs), out.shape[2], out.shape[3], count, seed).to(out.device)
            mine = positions[(positions[:, 0] >= start) & (positions[:, 0] < start + len(out))]
            found.append(out[mine[:, 0] - start, :, mine[:, 1], mine[:, 2]].float())
    assert positions is not None
    return torch.cat(found), positions


@dataclass
class Cells:
    """A layout binned into a ``grid x grid`` grid: each point's ``cell`` (M,) as ``row * grid + column`` (rows from
    the layout's top, its largest y), each cell's ``count`` (grid * grid,) and ``average`` vector (grid * grid, C),
    zero where the cell is empty."""

    grid: int
    cell: Tensor
    count: Tensor
    average: Tensor

    @property
    def filled(self) -> Tensor:
        """The indices of the non-empty cells, in row order."""
        return torch.nonzero(self.count > 0).flatten()


def bin_layout(layout: Tensor, vectors: Tensor, grid: int = 8) -> Cells:
    """Bin ``layout`` (M, 2: x, y) into a ``grid x grid`` grid spanning its extent (the largest values fall in the
    last cell) and average ``vectors`` (M, C) per cell, in one scatter.

    Example:
        >>> layout = torch.tensor([[0.0, 0.0], [1.0, 1.0], [0.9, 0.1]])
        >>> cells = bin_layout(layout, torch.tensor([[1.0], [3.0], [5.0]]), grid=2)
        >>> cells.cell.tolist(), cells.count.tolist(), cells.average.flatten().tolist()
        ([2, 1, 3], [0, 1, 1, 1], [0.0, 3.0, 1.0, 5.0])
    """
    low, high = layout.amin(dim=0), layout.amax(dim=0)
    extent = (high - low).clamp_min(1e-12)
    column = ((layout[:, 0] - low[0]) / extent[0] * grid).long().clamp(0, grid - 1)
    row = ((high[1] - layout[:, 1]) / extent[1] * grid).long().clamp(0, grid - 1)  # the top row: the largest y
    cell = row * grid + column
    count = torch.zeros(grid * grid, dtype=torch.long, device=layout.device).index_add_(0, cell, torch.ones_like(cell))
    total = vectors.new_zeros(grid * grid, vectors.shape[1]).index_add_(0, cell, vectors)
    average = total / count.clamp_min(1)[:, None].to(vectors.dtype)
    return Cells(grid, cell, count, average)
