"""EmbeddingMonitor: periodic t-SNE maps of the network's penultimate codes for a fixed probe set."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_info, rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy
from lightning_cnnviz.callbacks._probe import ProbeSet, all_gather, gather_interleaved
from lightning_cnnviz.core._model import class_name
from lightning_cnnviz.core.embedding_map import EmbeddingMap

__all__ = ["EmbeddingMonitor"]


class EmbeddingMonitor(EpochMonitor):
    """t-SNE maps of the penultimate-layer codes of a fixed probe set, every ``every_n_epochs`` epochs.

    Writes ``cnnviz/embedding/tsne`` (class-coloured scatter), ``cnnviz/embedding/grid`` (the probe images on a
    grid at their map positions, Karpathy's "t-SNE of CNN codes"), ``cnnviz/embedding/knn_accuracy``
    (leave-one-out ``knn_k``-NN accuracy in code space) and the Projector data (codes, labels, a sprite) under
    ``cnnviz/embedding``; the step is the epoch.

    The code is the input of the last ``nn.Linear``; without one, the globally pooled input of a last 1x1 conv
    (a conv classifier head, as in SqueezeNet) or else the pooled output of the last conv (said once at the
    start); or the output of the module ``layer`` (averaged over positions). Each map is Procrustes-aligned to the
    previous one (saved in checkpoints), so the slider shows clusters forming, not the map turning, and with
    ``warm_start`` starts from it without early exaggeration.
    The probe set is the first ``probe_size`` images and labels of the first validation pass; under DDP each
    rank codes its shard, the codes are gathered, and rank zero embeds and draws.

    The Lightning adapter of :class:`~lightning_cnnviz.core.EmbeddingMap`.

    Args:
        probe_size: probe images.
        every_n_epochs: log every this many epochs (and after the last one).
        projector: write the Projector data.
        perplexity, layer, knn_k, grid_cells, cell_px, warm_start, class_names, seed: as
            :class:`~lightning_cnnviz.core.EmbeddingMap`.
        batch_to_images: where the images are in a batch; ``batch_to_labels``: where the labels are (see
            :class:`SaliencyMonitor`).
        on_error: ``"warn"`` or ``"raise"``.

    Example:
        >>> monitor = EmbeddingMonitor(probe_size=1000, every_n_epochs=2)
    """

    probe: ProbeSet

    def __init__(
        self,
        probe_size: int = 2000,
        every_n_epochs: int = 5,
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
    ) -> None:
        probe: dict[str, Any] = {"batch_to_images": batch_to_images, "batch_to_labels": batch_to_labels}
        super().__init__(every_n_epochs, on_error, probe_size, **probe)
        self.map = EmbeddingMap(perplexity, layer, knn_k, grid_cells, cell_px, warm_start, class_names, seed)
        self.layer, self.knn_k, self.class_names = layer, self.map.knn_k, self.map.class_names
        self.projector = bool(projector)
        self._said_too_few = False

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(probe_size=self.probe.size, layer=self.layer)

    @property
    def last_map(self) -> Tensor | None:
        """The latest t-SNE map (N, 2) on the host."""
        return self.map.previous

    @property
    def last_knn_accuracy(self) -> float | None:
        return self.map.last_knn_accuracy

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        said = self.map.resolve(pl_module)
        if said is not None:
            rank_zero_info(said)

    def codes(self, pl_module: nn.Module, images: Tensor, max_batch: int = 256) -> Tensor:
        """The codes of ``images`` (N, D) on the model's device (:meth:`EmbeddingMap.codes`)."""
        return self.map.codes(pl_module, images, max_batch)

    def _gather_codes(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> Tensor | None:
        """Every rank codes its shard; the codes come back in probe order on every rank. A collective."""
        assert self.probe.images is not None
        world, device = trainer.world_size, pl_module.device
        shard, _ = self.probe.shard(trainer.global_rank, world)
        local = self._run("embedding codes", self.codes, pl_module, shard.to(device))
        if world == 1:
            return local
        width = all_gather(trainer, torch.tensor([-1 if local is None else local.shape[1]], device=device))
        if local is None or int(width.min()) < 0 or int(width.min()) != int(width.max()):
            return None  # every rank returns here alike
        counts = torch.tensor([len(range(r, len(self.probe.images), world)) for r in range(world)])
        return gather_interleaved(trainer, local, counts).to(device)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        images, labels = self.probe.images, self.probe.labels
        if images is None or len(images) <= max(3, self.knn_k):
            if not self._said_too_few:
                self._said_too_few = True
                rank_zero_warn(
                    f"EmbeddingMonitor: the probe holds {0 if images is None else len(images)} image(s), and a map "
                    f"needs more than {max(3, self.knn_k)} (knn_k={self.knn_k}); nothing is drawn. The probe is "
                    "filled from the first validation pass (else the first training batches): give it more batches "
                    "or images."
                )
            return
        codes = self._gather_codes(trainer, pl_module)
        if codes is None or not self.finite(codes, what="the probe's codes", trainer=trainer):
            return
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch = trainer.current_epoch
        if labels is not None:
            accuracy = self._run("embedding knn accuracy", self.map.knn, codes, labels)
            if accuracy is not None:
                sink.scalars({"cnnviz/embedding/knn_accuracy": accuracy}, epoch)
        embedding = self._run("embedding t-SNE", self.map.embed, codes)
        if embedding is None:
            return
        pictures = self._run("embedding images", self.map.pictures, embedding, codes, images, labels, epoch) or {}
        for tag, picture in pictures.items():
            sink.image(tag, picture, epoch)
        if self.projector:
            self._run("embedding projector", self._write_projector, sink, codes, labels, epoch)

    def _write_projector(self, sink: Any, codes: Tensor, labels: Tensor | None, epoch: int) -> None:
        assert self.probe.images is not None
        metadata = None if labels is None else [class_name(v, self.class_names) for v in labels.tolist()]
        thumbnails = self.map.thumbnails(self.probe.images)
        sink.embedding("cnnviz/embedding", codes, epoch, metadata=metadata, thumbnails=thumbnails)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.map.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.map.load_state_dict(state_dict)
