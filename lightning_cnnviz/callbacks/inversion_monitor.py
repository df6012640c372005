"""InversionMonitor: a few probe images reconstructed from their codes at layers spread over depth, every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, FeatureInversion, ProbeSet
from lightning_cnnviz.core.methods.inversion import TV

__all__ = ["InversionMonitor"]


class InversionMonitor(EpochMonitor):
    """What a layer keeps of an image (Mahendran and Vedaldi 2015): ``images`` fixed probe images (one per class first,
    where the batches carry classes), each reconstructed from its code at layers spread over depth up to the code
    layer, ``cnnviz/inversion`` (rows [original | from layer 1 | ... | from the code layer], each captioned with its
    PSNR), the first image's reconstructions over training, ``cnnviz/inversion_evolution`` (saved in checkpoints),
    and per layer ``cnnviz/inversion/psnr/<layer>`` and ``cnnviz/inversion/code_error/<layer>``. Step: the epoch.
    The Lightning adapter of :class:`~lightning_cnnviz.core.FeatureInversion`, which says how the images are made.
    It needs no classes: every task with 2-D images draws it. Under DDP rank zero draws.

    Args:
        layers, images, steps, lr, tv, beta, seed, mean, std, normalize, max_evolution_columns, module: as
            :class:`~lightning_cnnviz.core.FeatureInversion`.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = InversionMonitor(layers=["net.conv1", "net.conv3"], images=2)
    """

    _state_fields = ("layers", "images")

    def __init__(
        self,
        layers: Sequence[str] | None = None,
        images: int = 4,
        every_n_epochs: Cadence = "auto",
        steps: int = 64,
        lr: float = 0.1,
        tv: float = TV,
        beta: float = 2.0,
        seed: int = 0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        max_evolution_columns: int = 24,
        module: str | None = None,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        self.inversion = FeatureInversion(
            layers=layers, images=images, steps=steps, lr=lr, tv=tv, beta=beta, seed=seed, mean=mean, std=std,
            normalize=normalize, max_evolution_columns=max_evolution_columns, module=module, who=who,
        )  # fmt: skip
        probe = ProbeSet(who, self.inversion.images, balanced=True, batch_to_images=batch_to_images,
                         batch_to_labels=batch_to_labels)  # fmt: skip
        super().__init__(self.inversion, probe, every_n_epochs, on_error, budget, priority)
        self.layers, self.images = self.inversion.layers, self.inversion.images
