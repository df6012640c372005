"""OcclusionMonitor: Zeiler & Fergus's whole occlusion figure for a few probe images, every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, OcclusionFigure, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.inputs.task import Task

__all__ = ["OcclusionMonitor"]


class OcclusionMonitor(EpochMonitor):
    """Why the network decides, as Zeiler & Fergus show it (2013, Fig. 7): for ``probe_size`` fixed probe images
    (one per class first), a grey square slides over each, and at every position the figure reads (b) the total
    of the layer's strongest map, (d) the probability of the true class and (e) the most probable class, beside
    (c) the strongest activation projected to pixels; ``cnnviz/occlusion/<layer>``, one row per image. Step: the
    epoch. The square's forwards are shared with SaliencyMonitor's occlusion when both log at one step with the
    same square. The Lightning adapter of :class:`~lightning_cnnviz.core.OcclusionFigure`, which says what each
    task shows. Under DDP each rank occludes its share of the images; rank zero draws.

    Args:
        probe_size: probe images (rows of the figure).
        layer, patch, stride, baseline, projection, task, class_names, module, min_px: as
            :class:`~lightning_cnnviz.core.OcclusionFigure`.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = OcclusionMonitor(layer="net.conv3", probe_size=2)
    """

    _state_fields = ("probe_size", "layer")

    def __init__(
        self,
        layer: str | None = None,
        probe_size: int = 4,
        every_n_epochs: Cadence = "auto",
        patch: int | None = None,
        stride: int | None = None,
        baseline: float | Literal["mean"] = "mean",
        projection: Literal["deconvnet", "guided_backprop"] = "deconvnet",
        task: Task = "auto",
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        min_px: int = 96,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        self.probe_size = check_positive_int(who, "probe_size", probe_size)
        self.figure = OcclusionFigure(
            layer=layer, patch=patch, stride=stride, baseline=baseline, projection=projection, task=task,
            class_names=class_names, module=module, min_px=min_px, who=who,
        )  # fmt: skip
        probe = ProbeSet(who, self.probe_size, balanced=True, batch_to_images=batch_to_images,
                         batch_to_labels=batch_to_labels)  # fmt: skip
        super().__init__(self.figure, probe, every_n_epochs, on_error, budget, priority)
        self.layer = layer
