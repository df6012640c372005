"""ActivationMapMonitor: a few probe images' activation maps at layers spread over depth, every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import ActivationMaps, Budget, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int

__all__ = ["ActivationMapMonitor"]


class ActivationMapMonitor(EpochMonitor):
    """What a layer makes of an image (CS231n's first picture): for ``probe_size`` fixed probe images (one per class
    first, where the batches carry classes), each chosen layer's channel maps beside the image,
    ``cnnviz/activation_maps/<layer>``, and one image's maps over training,
    ``cnnviz/activation_maps_evolution/<layer>`` (saved in checkpoints); a ReLU layer's fraction of zeros in its
    maps, ``cnnviz/activation_maps/sparsity/<layer>``. Step: the epoch. Dead and dormant channels are framed as
    ActivationMonitor saw them in its latest window, when it runs, else as the probe images show them. The
    Lightning adapter of :class:`~lightning_cnnviz.core.ActivationMaps`, which says what is drawn.

    Under DDP rank zero draws (a few images, one forward); the other ranks do nothing.

    Args:
        probe_size: probe images (rows of the picture).
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        layers, max_channels, percentile, columns, min_tile_px, max_tile_px, evolution_image, evolution_channels,
            max_evolution_columns, dormant_threshold, class_names, module: as
            :class:`~lightning_cnnviz.core.ActivationMaps`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = ActivationMapMonitor(layers=["net.3", "net.7"], probe_size=2)
    """

    _state_fields = ("layers", "probe_size")

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        probe_size: int = 4,
        every_n_epochs: Cadence = "auto",
        max_channels: int = 64,
        percentile: float = 99.5,
        columns: int = 8,
        min_tile_px: int = 24,
        max_tile_px: int = 64,
        evolution_image: int = 0,
        evolution_channels: int = 16,
        max_evolution_columns: int = 24,
        dormant_threshold: float = 0.1,
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who, size = type(self).__name__, check_positive_int(type(self).__name__, "probe_size", probe_size)
        probe = ProbeSet(who, size, balanced=True, batch_to_images=batch_to_images, batch_to_labels=batch_to_labels,
                         signals=True)  # fmt: skip
        self.maps = ActivationMaps(
            layers=layers, max_channels=max_channels, percentile=percentile, columns=columns, min_tile_px=min_tile_px,
            max_tile_px=max_tile_px, evolution_image=evolution_image, evolution_channels=evolution_channels,
            max_evolution_columns=max_evolution_columns, dormant_threshold=dormant_threshold,
            class_names=class_names, module=module, who=who,
        )  # fmt: skip
        super().__init__(self.maps, probe, every_n_epochs, on_error, budget, priority)
        self.layers, self.probe_size = self.maps.layers, size
