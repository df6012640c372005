"""TopPatchMonitor: Zeiler & Fergus's top-9 patches per filter with their projections, tracked across epochs."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor, nn
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, needs_2d_images
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, ProbeSet, TopPatchGallery, check_positive_int
from lightning_cnnviz.core.batches import NoImages
from lightning_cnnviz.core.top_patch_gallery import Method

__all__ = ["Method", "TopPatchMonitor"]


class TopPatchMonitor(EpochMonitor):
    """The top-``k`` probe patches of chosen filters beside their projections to pixel space, every N epochs.

    The Lightning adapter of :class:`~lightning_cnnviz.core.TopPatchGallery` (Zeiler & Fergus 2013), which says
    what is drawn: ``cnnviz/top_patches/<layer>`` (Fig. 2) and ``cnnviz/evolution/<layer>`` (Fig. 4, channels x
    logged epochs, saved in checkpoints).

    The probe set is the first ``probe_size`` images of the first validation pass (else the first training
    batches). Under DDP every rank scans its shard and the per-rank top-``k`` merge into the single-process
    result; rank zero projects and draws. The receptive fields are measured at ``setup`` from
    ``example_input_array``, else on the first training batch, so a wrong layer or channel fails before training.

    Args:
        probe_size: probe images.
        every_n_epochs: ``"auto"`` (log after the first epoch, at the end, and in between within the run's time
            budget) or an integer (every this many epochs, and after the last one).
        budget, priority: the fraction of training time all monitors' logs may take (set once per Trainer: 0.05 on
            a CPU, 0.02 on CUDA by default), and this monitor's weight in it (see
            :class:`~lightning_cnnviz.core.Budget`).
        layers, channels, k, method, max_channels, max_batch, thumbnail_px, max_evolution_columns: as
            :class:`~lightning_cnnviz.core.TopPatchGallery`.
        batch_to_images: where the images are in a batch, when it is not ``images`` or ``(images, labels)``.
        module: the part of the model fed the probe images, named as in ``named_modules`` (default: the model, or
            its backbone when the model transforms its input first, as torchvision's detectors resize it; which
            part was chosen is said once).
        on_error: ``"warn"`` (report once, switch the failing piece off) or ``"raise"``.

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
        method: Method = "deconvnet",
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
        size = check_positive_int(type(self).__name__, "probe_size", probe_size)
        probe = ProbeSet(type(self).__name__, size, batch_to_images=batch_to_images)
        super().__init__(every_n_epochs, on_error, probe, budget, priority)
        self.gallery = TopPatchGallery(
            layers, channels, k, method, max_channels, max_batch, thumbnail_px, max_evolution_columns, module
        )
        self.core, self.history, self.batch_to_images = self.gallery, self.gallery.history, batch_to_images
        self.layers, self.k, self.method = self.gallery.layers, self.gallery.k, self.gallery.method

    @property
    def last_top(self) -> dict[str, Any]:
        """The latest scan's top activations per layer (on the host)."""
        return self.gallery.last_top

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        fields = self.gallery.fields
        super().setup(trainer, pl_module, stage)
        if self.off:
            return
        if stage != "fit":
            self.gallery.fields = fields
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.dim() == 4:
            self._prepare(pl_module, example.to(pl_module.device))

    @override
    def attach(self, model: Any, data: Any = None) -> None:
        self.gallery.configure(model)

    @override
    def applies(self, model: nn.Module) -> str | None:
        return needs_2d_images(model)

    def _prepare(self, pl_module: pl.LightningModule, example: Tensor) -> bool:
        part = self.guard.run("top patches", self.gallery.fed, pl_module, example, self.guard)
        measure = functools.partial(self.guard.run, "receptive fields")
        return part is not None and self.gallery.prepare(part, example, say=self.guard.once, measure=measure)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        # before any training happened
        if not (self.gallery.fields or self.off) and batch_idx == 0 and self.probe is not None:
            with contextlib.suppress(NoImages):  # the probe says so, once
                self._prepare(pl_module, self.probe.unpack(batch)[0][:1])
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    @override
    def options(self) -> dict[str, Any]:
        return {"service": self.service}
