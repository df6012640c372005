"""Rendering of activation statistics as images."""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["dead_filter_map"]

_DEAD_RGB = (0.85, 0.1, 0.1)


def dead_filter_map(firing_rates: Tensor, *, cell_px: int = 4, window_px: int = 8) -> Tensor:
    """Channels x windows picture of a layer's history: rows are channels, columns are windows (oldest left).

    A live cell is gray, brighter the more often the channel fired (``sqrt`` of the firing rate, so rare
    firing is still visible); a dead cell (rate exactly 0) is red. Non-finite rates are drawn blue.

    Args:
        firing_rates: (channels, windows) firing rates in [0, 1].
        cell_px: height of one channel's row in pixels.
        window_px: width of one window's column in pixels.

    Returns:
        (3, channels * cell_px, windows * window_px) image in [0, 1].

    Example:
        >>> [round(v, 2) for v in dead_filter_map(torch.tensor([[0.5, 0.0]]), cell_px=1, window_px=1)[:, 0, 1].tolist()]
        [0.85, 0.1, 0.1]
    """
    if firing_rates.dim() != 2:
        raise ValueError(f"firing_rates must be (channels, windows), got {tuple(firing_rates.shape)}")
    rates = firing_rates.float()
    finite = torch.isfinite(rates)
    gray = rates.nan_to_num(0.0).clamp(0, 1).sqrt().mul(0.8).add(0.2)
    image = gray.unsqueeze(0).repeat(3, 1, 1)
    dead = finite & (rates == 0)
    for channel, value in enumerate(_DEAD_RGB):
        image[channel][dead] = value
    image[:, ~finite] = torch.tensor([0.1, 0.3, 0.9]).view(3, 1).to(image)
    return image.repeat_interleave(cell_px, dim=1).repeat_interleave(window_px, dim=2)
