"""InvarianceMonitor: Zeiler & Fergus's invariance curves for a few probe images, every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, InvarianceCurves, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.inputs.task import Task
from lightning_cnnviz.core.methods.perturbation.invariance import TRANSFORMATIONS

__all__ = ["InvarianceMonitor"]


class InvarianceMonitor(EpochMonitor):
    """How the network's features change when the image moves (Zeiler & Fergus 2013, Fig. 5): for ``probe_size``
    fixed probe images (one per class first), a vertical translation, a scaling and a rotation over the paper's
    ranges; per transformation, the normalised distance of the first conv layer's and the code layer's features
    from the original's, and the probability of the true class, ``cnnviz/invariance/<transformation>``; the area
    under each distance curve, ``cnnviz/invariance/<transformation>/<layer>``, to watch invariance grow epoch by
    epoch (custom-scalars charts). Step: the epoch. The Lightning adapter of
    :class:`~lightning_cnnviz.core.InvarianceCurves`. Zero padding is zero pixels: the data module's ``mean`` and
    ``std`` say where they are. Under DDP each rank transforms its share of the images; rank zero draws.

    Args:
        probe_size: probe images (lines of each plot).
        transformations, layers, task, class_names, module: as :class:`~lightning_cnnviz.core.InvarianceCurves`.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = InvarianceMonitor(transformations=("translation", "rotation"), probe_size=2)
    """

    _state_fields = ("probe_size", "transformations")

    def __init__(
        self,
        transformations: Sequence[str] = TRANSFORMATIONS,
        probe_size: int = 4,
        every_n_epochs: Cadence = "auto",
        layers: Sequence[str] | None = None,
        task: Task = "auto",
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        self.probe_size = check_positive_int(who, "probe_size", probe_size)
        self.curves = InvarianceCurves(transformations=transformations, layers=layers, task=task,
                                       class_names=class_names, module=module, who=who)  # fmt: skip
        probe = ProbeSet(who, self.probe_size, balanced=True, batch_to_images=batch_to_images,
                         batch_to_labels=batch_to_labels)  # fmt: skip
        super().__init__(self.curves, probe, every_n_epochs, on_error, budget, priority)
        self.transformations = self.curves.transformations
