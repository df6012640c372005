"""FilterMonitor: the first conv layer's filters (and optionally deeper ones) as images, with a smoothness score."""

from __future__ import annotations

from collections.abc import Sequence

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, FilterPanel
from lightning_cnnviz.core.drawing.filters import Normalization

__all__ = ["FilterMonitor"]


class FilterMonitor(EpochMonitor):
    """Logs conv filters as an image grid and their smoothness, every ``every_n_epochs`` epochs.

    CS231n, "Visualizing what ConvNets learn": a well-trained first layer shows smooth edge, colour and blob
    detectors; noisy filters mean undertrained or under-regularized. The Lightning adapter of
    :class:`~lightning_cnnviz.core.FilterPanel`: images ``cnnviz/filters/<layer>`` (RGB tiles for a layer reading 3
    channels, else a grayscale tile per filter), ``cnnviz/filters/slices/<layer>`` for a deeper layer (a filter per
    row, a grayscale tile per input slice) and scalars ``cnnviz/filters/smoothness/<layer>``
    (:func:`lightning_cnnviz.core.filter_smoothness`); step: the epoch.

    Args:
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        layers, normalize, max_filters, min_tile_px, slices: as :class:`~lightning_cnnviz.core.FilterPanel`.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[FilterMonitor()], logger=False, enable_progress_bar=False)
    """

    _state_fields = ("layers", "every_n_epochs")

    def __init__(
        self,
        every_n_epochs: Cadence = "auto",
        layers: Sequence[str] | None = None,
        normalize: Normalization = "per_filter",
        max_filters: int = 64,
        min_tile_px: int = 48,
        slices: bool = True,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        panel = FilterPanel(layers=layers, normalize=normalize, max_filters=max_filters, min_tile_px=min_tile_px,
                            slices=slices, who=type(self).__name__)  # fmt: skip
        super().__init__(panel, every_n_epochs=every_n_epochs, on_error=on_error, budget=budget, priority=priority)
        self.layers, self.normalize = panel.layers, panel.normalize
