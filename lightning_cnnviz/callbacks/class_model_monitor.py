"""ClassModelMonitor: Simonyan et al.'s class models, one image per class, tracked over epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, ClassModels, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.methods.objectives import Objective
from lightning_cnnviz.core.monitors.class_models import L2

__all__ = ["ClassModelMonitor"]


class ClassModelMonitor(EpochMonitor):
    """What the network thinks each class looks like (Simonyan et al. 2013): per class, the image that maximises its
    score, ``cnnviz/class_models`` (captioned by class name), and the classes x logged epochs
    ``cnnviz/class_models_evolution`` (saved in checkpoints). Step: the epoch. The Lightning adapter of
    :class:`~lightning_cnnviz.core.ClassModels`, which says how the images are made. The probe (``probe_size``
    images, the first of each class first) gives the colours of the render and tells whether the task has
    classes; a task without says once that class models do not apply. Under DDP rank zero renders.

    Args:
        classes, objective, l2, plain, steps, lr, seed, size, class_names, mean, std, normalize,
            max_evolution_columns: as :class:`~lightning_cnnviz.core.ClassModels`.
        probe_size: probe images.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = ClassModelMonitor(classes=[0, 3, 5], plain=True)
    """

    _state_fields = ("classes", "plain")

    def __init__(
        self,
        classes: Sequence[int] | None = None,
        objective: str | Objective = "logit",
        l2: float = L2,
        plain: bool = False,
        steps: int = 64,
        lr: float = 0.15,
        seed: int = 0,
        size: int | None = None,
        class_names: Sequence[str] | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        max_evolution_columns: int = 24,
        probe_size: int = 64,
        every_n_epochs: Cadence = "auto",
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        self.models = ClassModels(
            classes=classes, objective=objective, l2=l2, plain=plain, steps=steps, lr=lr, seed=seed, size=size,
            class_names=class_names, mean=mean, std=std, normalize=normalize,
            max_evolution_columns=max_evolution_columns, who=who,
        )  # fmt: skip
        size = check_positive_int(who, "probe_size", probe_size)
        probe = ProbeSet(who, size, balanced=True, batch_to_images=batch_to_images, batch_to_labels=batch_to_labels)
        super().__init__(self.models, probe, every_n_epochs, on_error, budget, priority)
        self.classes, self.plain = self.models.classes, self.models.plain
