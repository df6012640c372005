"""SaliencyMonitor: saliency maps of a fixed probe set (class-balanced when there are classes), every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, ProbeSet, SaliencyPanel
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.inputs.task import TargetSpec, Task

__all__ = ["SaliencyMonitor"]


class SaliencyMonitor(EpochMonitor):
    """Saliency maps of a fixed probe set, one TensorBoard image per method: ``cnnviz/saliency/<method>``.

    The Lightning adapter of :class:`~lightning_cnnviz.core.SaliencyPanel`, which says what each method draws and
    what it explains for each task (classification, multi-label, regression, segmentation, reconstruction,
    embedding: ``task="auto"`` reads it off the labels or the output and says what it chose). One row per probe
    image, [image | map | overlay], captioned with what the batch holds and what was predicted; the step is the
    epoch. The probe set is chosen once, round-robin over the classes when the labels are classes, from the first
    validation pass (else the first training batches). Rank zero computes the maps in its own grad-enabled eval
    pass.

    Args:
        num_images: probe images.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        methods, target, task, smoothgrad_samples, smoothgrad_sigma, occlusion_patch, occlusion_stride,
            grad_cam_layer, class_names, seed, output_to_logits: as :class:`~lightning_cnnviz.core.SaliencyPanel`.
        batch_to_images: where the images are in a batch (default: the batch, its first element, or a dict's
            ``image``/``images``/``input``/``inputs``/``x``); uint8 images are taken as floats in [0, 1].
        batch_to_labels: where the labels are (default: a batch's second element or a dict's
            ``label``/``labels``/``target``/``targets``/``y``/``mask``/``masks``), of any task.

    Example:
        >>> monitor = SaliencyMonitor(methods=("grad_cam", "occlusion"), num_images=8)
    """

    _state_fields = ("methods", "num_images")

    def __init__(
        self,
        methods: Sequence[str] = SaliencyPanel.DEFAULT_METHODS,
        num_images: int = 8,
        target: TargetSpec = "auto",
        every_n_epochs: Cadence = "auto",
        smoothgrad_samples: int = 25,
        smoothgrad_sigma: float = 0.15,
        occlusion_patch: int | None = None,
        occlusion_stride: int | None = None,
        grad_cam_layer: str | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        output_to_logits: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
        task: Task = "auto",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        self.panel = SaliencyPanel(
            methods=methods, target=target, task=task, smoothgrad_samples=smoothgrad_samples,
            smoothgrad_sigma=smoothgrad_sigma, occlusion_patch=occlusion_patch, occlusion_stride=occlusion_stride,
            grad_cam_layer=grad_cam_layer, class_names=class_names, seed=seed, output_to_logits=output_to_logits,
            who=type(self).__name__,
        )  # fmt: skip
        who, size = type(self).__name__, check_positive_int(type(self).__name__, "num_images", num_images)
        probe = ProbeSet(who, size, balanced=True, batch_to_images=batch_to_images, batch_to_labels=batch_to_labels)
        super().__init__(self.panel, probe, every_n_epochs, on_error, budget, priority)
        self.methods, self.num_images = self.panel.methods, num_images

    def compute_maps(self, pl_module: pl.LightningModule, method: str) -> Tensor:
        """The ``method``'s (N, C, H, W) maps of the probe images (on the model's device)."""
        assert self.probe is not None and self.probe.probe is not None
        probe = self.probe.probe.to(pl_module.device)
        return self.panel.maps(pl_module, probe.images, probe.labels, method)
