"""FilterMonitor: the first conv layer's filters (and optionally deeper ones) as images, with a smoothness score."""

from __future__ import annotations

from collections.abc import Sequence

import lightning.pytorch as pl
import torch
from torch import nn
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy, check_choice, check_positive_int
from lightning_cnnviz.core._model import first_conv, resolve_modules
from lightning_cnnviz.core.filters import Normalization, filter_smoothness, render_filter_grid

__all__ = ["FilterMonitor"]


class FilterMonitor(EpochMonitor):
    """Logs conv filters as an image grid and their smoothness, every ``every_n_epochs`` epochs.

    CS231n, "Visualizing what ConvNets learn": a well-trained first layer shows smooth edge, colour and blob
    detectors; noisy filters mean undertrained or under-regularized. Images ``cnnviz/filters/<layer>`` (RGB tiles
    for a layer reading 3 channels, else a grayscale tile per filter and input channel) and scalars
    ``cnnviz/filters/smoothness/<layer>`` (:func:`lightning_cnnviz.core.filter_smoothness`); step: the epoch.

    Args:
        every_n_epochs: log every this many training epochs.
        layers: ``nn.Conv2d`` module names; ``None`` means the first ``nn.Conv2d``.
        normalize: ``"per_filter"`` (each filter stretched to its own range) or ``"global"`` (one for the layer).
        max_filters: draw at most this many output filters per layer.
        min_tile_px: upscale kernels (nearest neighbour) until a tile is at least this many pixels wide.
        on_error: ``"warn"`` (report once, switch the failing piece off, keep training) or ``"raise"``.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> trainer = Trainer(callbacks=[FilterMonitor()], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        every_n_epochs: int = 1,
        layers: Sequence[str] | None = None,
        normalize: Normalization = "per_filter",
        max_filters: int = 64,
        min_tile_px: int = 48,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        super().__init__(every_n_epochs=every_n_epochs, on_error=on_error)
        if layers is not None and (isinstance(layers, str) or not all(isinstance(n, str) for n in layers)):
            raise TypeError(f"FilterMonitor: `layers` must be a list of layer names or None, got {layers!r}.")
        self.layers = list(layers) if layers is not None else None
        self.normalize: Normalization = check_choice(self._who, "normalize", normalize, ("per_filter", "global"))
        self.max_filters = check_positive_int(self._who, "max_filters", max_filters)
        self.min_tile_px = check_positive_int(self._who, "min_tile_px", min_tile_px)
        self._convs: dict[str, nn.Conv2d] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, every_n_epochs=self.every_n_epochs)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_model(pl_module)
        if self.layers is None:
            name, conv = first_conv(pl_module)
            self._convs = {name: conv}
        else:
            found = resolve_modules(pl_module, self.layers, what="FilterMonitor `layers`", kinds=(nn.Conv2d,))
            self._convs = {name: module for name, module in found.items() if isinstance(module, nn.Conv2d)}

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink_for(trainer)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch = trainer.current_epoch
        scores: dict[str, torch.Tensor] = {}
        for name, conv in self._convs.items():
            weight = conv.weight.detach()

            def draw(weight: torch.Tensor = weight, name: str = name) -> None:
                grid = render_filter_grid(
                    weight,
                    normalize=self.normalize,
                    max_filters=self.max_filters,
                    min_tile_px=self.min_tile_px,
                )
                sink.image(f"cnnviz/filters/{name}", grid, epoch)

            self._run(f"filter image of {name!r}", draw)
            score = self._run(f"smoothness of {name!r}", filter_smoothness, weight)
            if score is not None:
                scores[name] = score
        if scores:
            values = torch.stack(list(scores.values())).cpu().tolist()  # one host copy for all layers
            sink.scalars(
                {
                    f"cnnviz/filters/smoothness/{name}": value
                    for name, value in zip(scores, values)
                    if value == value  # NaN: no slice with spatial extent
                },
                epoch,
            )
