"""Evolution history, Trainer-free: one column of thumbnails per logged point, thinned to a fixed width."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["EvolutionHistory"]


@dataclass
class Column:
    """One column of an evolution picture: its log index, caption and uint8 thumbnails (C, 3, h, w)."""

    index: int
    caption: str
    thumbnails: Tensor


@dataclass
class LayerHistory:
    """One layer's columns, oldest first, on every ``stride``-th of ``count`` logged points, last drawn at ``step``."""

    stride: int = 1
    count: int = 0
    step: int | None = None
    columns: list[Column] = field(default_factory=list)


class EvolutionHistory:
    """Per layer, the columns of an evolution picture (Zeiler & Fergus 2013, Fig. 4), oldest first.

    Columns sit on every ``stride``-th logged point plus the latest; past ``max_columns`` the stride doubles, so
    the picture spans the run at an even, coarser step. Thumbnails are uint8 (C, 3, h, w), at most
    ``thumbnail_px`` a side; a column of another shape than the last starts the layer afresh.

    Example:
        >>> history = EvolutionHistory(max_columns=2)
        >>> for epoch in range(5):
        ...     history.add("conv1", f"ep {epoch}", torch.rand(4, 3, 8, 8))
        >>> [caption for caption, _ in history.columns("conv1")]
        ['ep 0', 'ep 4']
    """

    def __init__(self, max_columns: int = 24, thumbnail_px: int = 48) -> None:
        self.max_columns = max_columns
        self.thumbnail_px = thumbnail_px
        self._layers: dict[str, LayerHistory] = {}

    def _thumbnail(self, tiles: Tensor) -> Tensor:
        side = max(tiles.shape[-2:])
        if side > self.thumbnail_px:
            size = [max(1, round(s * self.thumbnail_px / side)) for s in tiles.shape[-2:]]
            tiles = F.interpolate(tiles.float(), size=size, mode="area")
        return (tiles.clamp(0, 1) * 255).round().byte().cpu()

    def caption(self, epoch: int, step: int) -> str:
        """``"ep {epoch}"``, or ``"step {step}"`` for a second column in one epoch at another step (the end of a
        short fit); the same epoch and step again (``cnnviz report`` on a checkpoint) is the same column."""
        caption = f"ep {epoch}"
        for history in self._layers.values():
            last = history.columns[-1] if history.columns else None
            if last is not None and last.caption == caption and history.step not in (None, step):
                return f"step {step}"
        return caption

    def add(self, layer: str, caption: str, tiles: Tensor, step: int | None = None) -> None:
        """Add a column: ``tiles`` (C, 3, h, w) in [0, 1], one per channel, drawn at training ``step``. A column
        with the latest column's caption replaces it."""
        thumbnail = self._thumbnail(tiles)
        history = self._layers.setdefault(layer, LayerHistory())
        history.step = step
        columns = history.columns
        if columns and columns[-1].caption == caption and columns[-1].thumbnails.shape == thumbnail.shape:
            columns[-1] = Column(columns[-1].index, caption, thumbnail)
            return
        if columns and columns[-1].thumbnails.shape != thumbnail.shape:
            history.stride, history.count, history.columns = 1, 0, []
            columns = history.columns
        index = history.count
        history.count = index + 1
        if columns and columns[-1].index % history.stride != 0:
            columns.pop()  # the previous latest column is off the grid
        columns.append(Column(index, caption, thumbnail))
        while len(columns) > self.max_columns:
            history.stride *= 2
            columns[:] = [c for c in columns[:-1] if c.index % history.stride == 0] + columns[-1:]

    def forget(self, layer: str) -> None:
        """Drop ``layer``'s columns: its next column starts it afresh."""
        self._layers.pop(layer, None)

    def columns(self, layer: str) -> list[tuple[str, Tensor]]:
        """The layer's kept columns, oldest first: (caption, uint8 thumbnails (C, 3, h, w))."""
        history = self._layers.get(layer)
        return [(c.caption, c.thumbnails) for c in history.columns] if history is not None else []

    def stacked(self, layer: str) -> tuple[Tensor, list[str]]:
        """(C, T, 3, h, w) float thumbnails in [0, 1] and the T captions."""
        columns = self.columns(layer)
        return torch.stack([t for _, t in columns], dim=1).float() / 255, [c for c, _ in columns]

    def state_dict(self) -> dict[str, Any]:
        return {
            name: {"stride": h.stride, "count": h.count, "step": h.step,
                   "columns": [(c.index, c.caption, c.thumbnails.clone()) for c in h.columns]}
            for name, h in self._layers.items()
        }  # fmt: skip

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._layers = {
            name: LayerHistory(
                int(h.get("stride", 1)), int(h.get("count", 0)), h.get("step"),
                [Column(int(i), str(c), t.cpu()) for i, c, t in h["columns"]],
            )
            for name, h in state.items()
        }  # fmt: skip
