"""EmbeddingMonitor: periodic t-SNE maps of the network's penultimate codes for a fixed probe set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from torch import Tensor, nn

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, EmbeddingMap, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.inputs.task import Task

__all__ = ["EmbeddingMonitor"]


class EmbeddingMonitor(EpochMonitor):
    """t-SNE maps of the penultimate-layer codes of a fixed probe set, every ``every_n_epochs`` epochs.

    Writes ``cnnviz/embedding/tsne`` (a scatter coloured by class, by value for regression, by the first positive
    class of multi-hot labels, or in one colour without labels), ``cnnviz/embedding/grid`` (the probe images on a
    grid at their map positions, Karpathy's "t-SNE of CNN codes"), ``cnnviz/embedding/neighbours``,
    ``cnnviz/embedding/knn_accuracy`` (leave-one-out ``knn_k``-NN accuracy in code space, where the labels are
    classes) and the Projector data
    (codes, labels, a sprite) under ``cnnviz/embedding``; the step is the epoch.

    The code is the input of the last ``nn.Linear``; without one, the globally pooled input of a last 1x1 conv
    (a conv classifier head, as in SqueezeNet) or else the pooled output of the last conv (said once at the
    start); or the output of the module ``layer`` (averaged over positions). Each map is Procrustes-aligned to the
    previous one (saved in checkpoints), so the slider shows clusters forming, not the map turning, and with
    ``warm_start`` starts from it without early exaggeration. The probe set is the first ``probe_size`` images and
    labels of the first validation pass; under DDP each rank codes its shard, the codes are gathered, and rank
    zero embeds and draws. The Lightning adapter of :class:`~lightning_cnnviz.core.EmbeddingMap`.

    Args:
        probe_size: probe images.
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        perplexity, layer, knn_k, grid_cells, cell_px, warm_start, class_names, seed, projector, task, module: as
            :class:`~lightning_cnnviz.core.EmbeddingMap` (``module``: the part fed the probe images, by default the
            model or, when it transforms its input first as a detector does, its backbone; said once).
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are (see
            :class:`SaliencyMonitor`).

    Example:
        >>> monitor = EmbeddingMonitor(probe_size=1000, every_n_epochs=2)
    """

    _state_fields = ("probe_size", "layer")

    def __init__(
        self,
        probe_size: int = 1000,
        every_n_epochs: Cadence = "auto",
        perplexity: float = 30.0,
        layer: str | None = None,
        knn_k: int = 5,
        grid_cells: int = 32,
        cell_px: int = 32,
        warm_start: bool = True,
        projector: bool = True,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        on_error: ErrorPolicy = "warn",
        task: Task = "auto",
        module: str | None = None,
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who, size = type(self).__name__, check_positive_int(type(self).__name__, "probe_size", probe_size)
        probe = ProbeSet(who, size, batch_to_images=batch_to_images, batch_to_labels=batch_to_labels)
        self.map = EmbeddingMap(
            perplexity=perplexity, layer=layer, knn_k=knn_k, grid_cells=grid_cells, cell_px=cell_px,
            warm_start=warm_start, class_names=class_names, seed=seed, projector=projector, task=task, module=module,
            who=who,
        )  # fmt: skip
        super().__init__(self.map, probe, every_n_epochs, on_error, budget, priority)
        self.probe_size, self.layer, self.knn_k, self.class_names = size, layer, self.map.knn_k, self.map.class_names

    @property
    def last_map(self) -> Tensor | None:
        """The latest t-SNE map (N, 2) on the host; ``last_knn_accuracy``: the latest kNN accuracy."""
        return self.map.previous

    @property
    def last_knn_accuracy(self) -> float | None:
        return self.map.last_knn_accuracy

    def codes(self, pl_module: nn.Module, images: Tensor, max_batch: int | None = None) -> Tensor:
        """The codes of ``images`` (N, D) on the model's device (:meth:`EmbeddingMap.codes`)."""
        return self.map.codes(pl_module, images, max_batch)
