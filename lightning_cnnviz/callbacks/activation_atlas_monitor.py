"""ActivationAtlasMonitor: the activation atlas of a layer (Carter et al. 2019), every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import ActivationAtlas, Budget, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int

__all__ = ["ActivationAtlasMonitor"]


class ActivationAtlasMonitor(EpochMonitor):
    """The whole space a layer represents, and how it is organised (Carter, Armstrong, Schubert, Johnson and Olah
    2019): ``vectors`` spatial activation vectors of ``layer`` over ``probe_size`` fixed probe images, laid out by
    t-SNE, binned into a ``grid x grid`` grid, each cell's average vector rendered as the image it wants,
    ``cnnviz/activation_atlas/<layer>`` (each cell as opaque as it is dense, with its count; with ``examples`` the
    best probe patch beside it). The layout is aligned from epoch to epoch (saved in checkpoints), so the slider
    shows the space forming. Step: the epoch. The Lightning adapter of :class:`~lightning_cnnviz.core.ActivationAtlas`,
    which says how it is made. It needs no labels: every task with 2-D images draws it. Under DDP rank zero draws.

    Args:
        probe_size: probe images the vectors are sampled from.
        layer, vectors, grid, perplexity, steps, lr, cosine_power, seed, size, examples, mean, std, normalize,
            module: as
            :class:`~lightning_cnnviz.core.ActivationAtlas`.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are.

    Example:
        >>> monitor = ActivationAtlasMonitor(layer="net.conv3", grid=6, examples=True)
    """

    _state_fields = ("probe_size", "layer")

    def __init__(
        self,
        layer: str | None = None,
        probe_size: int = 1000,
        vectors: int = 2000,
        grid: int = 8,
        every_n_epochs: Cadence = "auto",
        perplexity: float = 30.0,
        steps: int = 48,
        lr: float = 0.1,
        cosine_power: float = 0.0,
        seed: int = 0,
        size: int | None = None,
        examples: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        module: str | None = None,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        self.probe_size = check_positive_int(who, "probe_size", probe_size)
        self.atlas = ActivationAtlas(
            layer=layer, vectors=vectors, grid=grid, perplexity=perplexity, steps=steps, lr=lr,
            cosine_power=cosine_power, seed=seed, size=size, examples=examples, mean=mean, std=std,
            normalize=normalize, module=module, who=who,
        )  # fmt: skip
        probe = ProbeSet(who, self.probe_size, batch_to_images=batch_to_images, batch_to_labels=batch_to_labels)
        super().__init__(self.atlas, probe, every_n_epochs, on_error, budget, priority)
        self.layer = layer
