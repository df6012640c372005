"""TopPatchMonitor: Zeiler & Fergus's top-9 patches per filter with their projections, tracked across epochs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, ProbeSet, TopPatchGallery
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.monitors.selection import Projection

__all__ = ["TopPatchMonitor"]


class TopPatchMonitor(EpochMonitor):
    """The top-``k`` probe patches of chosen filters beside their projections to pixel space, every N epochs.

    The Lightning adapter of :class:`~lightning_cnnviz.core.TopPatchGallery` (Zeiler & Fergus 2013), which says
    what is drawn: ``cnnviz/top_patches/<layer>`` (Fig. 2) and ``cnnviz/evolution/<layer>`` (Fig. 4, channels x
    logged epochs, saved in checkpoints).

    The probe set is the first ``probe_size`` images of the first validation pass (else the first training
    batches). Under DDP every rank scans its shard and the per-rank top-``k`` merge into the single-process
    result; rank zero projects and draws. The channels are chosen at ``setup`` from ``example_input_array``, else
    on the first training batch, so a wrong layer or channel fails before training.

    Args:
        probe_size: probe images.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        layers, channels, k, method, max_channels, max_batch, thumbnail_px, max_evolution_columns: as
            :class:`~lightning_cnnviz.core.TopPatchGallery`.
        batch_to_images: where the images are in a batch, when it is not ``images`` or ``(images, labels)``.
        module: the part of the model fed the probe images, named as in ``named_modules`` (default: the model, or
            its backbone when the model transforms its input first, as torchvision's detectors resize it; which
            part was chosen is said once).

    Example:
        >>> monitor = TopPatchMonitor(layers=["net.conv1", "net.conv3"], method="both", every_n_epochs=2)
    """

    _state_fields = ("layers", "k", "method")

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        k: int = 9,
        probe_size: int = 512,
        every_n_epochs: Cadence = "auto",
        method: Projection = "deconvnet",
        max_channels: int = 16,
        max_batch: int | None = None,
        thumbnail_px: int = 48,
        max_evolution_columns: int = 24,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
        module: str | None = None,
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        probe = ProbeSet(who, check_positive_int(who, "probe_size", probe_size), batch_to_images=batch_to_images)
        self.gallery = TopPatchGallery(
            layers=layers, channels=channels, k=k, method=method, max_channels=max_channels, max_batch=max_batch,
            thumbnail_px=thumbnail_px, max_evolution_columns=max_evolution_columns, module=module, who=who,
        )  # fmt: skip
        super().__init__(self.gallery, probe, every_n_epochs, on_error, budget, priority)
        self.history, self.batch_to_images = self.gallery.history, batch_to_images
        self.layers, self.k, self.method = self.gallery.layers, self.gallery.k, self.gallery.method

    @property
    def last_top(self) -> dict[str, Any]:
        """The latest scan's top activations per layer (on the host)."""
        return self.gallery.last_top
