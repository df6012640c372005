"""Private to the callbacks: the fixed probe set that SaliencyMonitor, TopPatchMonitor and EmbeddingMonitor
draw on, chosen once per fit, the same on every rank, kept across a resume."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor

from lightning_cnnviz.core._images import images_from_batch, labels_from_batch
from lightning_cnnviz.core.probe import select_balanced

__all__ = ["ProbeSet", "gather_interleaved"]

_MAX_STATE_BYTES = 32 * 2**20  # a larger probe is not saved in checkpoints; it is chosen afresh after a resume


def all_gather(trainer: pl.Trainer, tensor: Tensor) -> Tensor:
    """Every rank's ``tensor`` (the same shape on all), stacked: (world, *shape), on the strategy's device. A
    collective, with ``torch.distributed.all_gather`` (not the deprecated autograd-aware gather that Lightning's
    ``strategy.all_gather`` calls)."""
    tensor = tensor.to(trainer.strategy.root_device).contiguous()
    if trainer.world_size == 1 or not torch.distributed.is_initialized():
        return tensor.unsqueeze(0)
    parts = [torch.empty_like(tensor) for _ in range(trainer.world_size)]
    torch.distributed.all_gather(parts, tensor)
    return torch.stack(parts)


def gather_interleaved(trainer: pl.Trainer, local: Tensor, counts: Tensor) -> Tensor:
    """All ranks' ``local`` rows (rank ``r`` holds ``counts[r]`` of them) in the order of a distributed sampler
    without shuffling: row 0 of rank 0, row 0 of rank 1, ..., row 1 of rank 0, ... A collective; returned on
    the host."""
    quota = int(counts.max())
    padded = local.new_zeros((quota, *local.shape[1:]))
    padded[: len(local)] = local
    everything = all_gather(trainer, padded).cpu()  # (W, quota, ...)
    keep = torch.arange(quota)[:, None] < counts.cpu()[None, :]  # (quota, W)
    return everything.transpose(0, 1)[keep]


class ProbeSet:
    """A monitor's fixed probe images (and labels, when the batches carry them), on the host.

    Chosen once per fit from the first validation pass (else the first training batches): the first ``size``
    images, or with ``balanced`` round-robin over the classes (:func:`select_balanced`, holding about ``2 * size``
    images while it collects). Under DDP the ranks' parts are gathered in the sampler's interleaved order, so all
    hold the same probe (an ordered one is a single process's). At most 32 MiB of it is saved in checkpoints.
    """

    def __init__(
        self,
        who: str,
        size: int,
        *,
        balanced: bool = False,
        require_labels: bool = False,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
    ) -> None:
        self.who, self.size, self.balanced = who, size, balanced
        self.require_labels = require_labels
        self.batch_to_images = batch_to_images
        self.batch_to_labels = batch_to_labels
        self.from_training = False
        self.reset()

    def reset(self) -> None:
        """Forget the probe: the next fit chooses it afresh."""
        self.images: Tensor | None = None
        self.labels: Tensor | None = None
        self._collected: list[tuple[Tensor, Tensor | None]] = []  # (image, label or None), in arrival order

    def start(self, trainer: pl.Trainer) -> None:
        """Note where the probe comes from (call at ``on_train_start``)."""
        self.from_training = not any(trainer.num_val_batches)

    def offer(self, trainer: pl.Trainer, batch: Any) -> None:
        """Keep what the probe may still need from one batch."""
        quota = math.ceil(self.size / max(1, trainer.world_size))
        if self.images is not None or ((self.from_training or not self.balanced) and len(self._collected) >= quota):
            return
        images = images_from_batch(batch, who=self.who, batch_to_images=self.batch_to_images)
        labels = labels_from_batch(batch, images, self.batch_to_labels)
        if labels is None and self.require_labels:
            raise TypeError(
                f"{self.who}: target='true' needs a label per image: (images, labels) batches, a dict with one of "
                f"the keys 'label', 'labels', 'target', 'targets', 'y', or `batch_to_labels=`; got no integer label "
                f"tensor of shape ({images.shape[0]},). Use target='predicted' or a class index otherwise."
            )
        if not self.balanced or labels is None:
            take = images[: quota - len(self._collected)].detach().cpu().clone()
            kept = labels[: len(take)].detach().cpu() if labels is not None else [None] * len(take)
            self._collected += list(zip(take.unbind(0), kept))
            return
        # balanced: keep per class what a round-robin choice can still pick (copies of single images, so no
        # batch stays alive for one image)
        by_class: dict[int, list[tuple[Tensor, Tensor | None]]] = {}
        for pair in self._collected:
            by_class.setdefault(int(pair[1]), []).append(pair)  # type: ignore[arg-type]
        for image, label in zip(images.detach(), labels.detach().cpu()):
            if len(members := by_class.setdefault(int(label), [])) < self.size:
                members.append((image.cpu().clone(), label))
        classes = sorted(by_class)[: self.size]
        cap = -(-self.size // len(classes))
        self._collected = [pair for label in classes for pair in by_class[label][:cap]]

    def finish(self, trainer: pl.Trainer) -> None:
        """Fix the probe set. A collective under DDP: every rank calls it at the same point."""
        if self.images is not None:
            return
        pairs = self._collected
        images = torch.stack([image for image, _ in pairs]) if pairs else None
        labelled = bool(pairs) and all(label is not None for _, label in pairs)
        labels = torch.stack([label for _, label in pairs]).long() if labelled else None  # type: ignore[misc]
        if trainer.world_size > 1:
            device = trainer.strategy.root_device
            counts = all_gather(trainer, torch.tensor([len(pairs)], device=device)).view(-1).cpu()
            if int(counts.max()) == 0:
                return
            if images is None:
                raise RuntimeError(f"{self.who}: a rank collected no probe images while others did")
            images = gather_interleaved(trainer, images, counts)
            has_labels = all_gather(trainer, torch.tensor([int(labels is not None)], device=device))
            labelled = labels is not None and bool(has_labels.min())
            labels = gather_interleaved(trainer, labels, counts) if labelled else None  # type: ignore[arg-type]
        if images is None or len(images) == 0:
            return
        chosen = select_balanced(labels, self.size) if self.balanced and labels is not None else range(self.size)
        index = torch.as_tensor(list(chosen), dtype=torch.long)[: len(images)]
        self.images = images[index].contiguous()
        self.labels = None if labels is None else labels[index].contiguous()
        self._collected = []

    def shard(self, rank: int, world: int) -> tuple[Tensor, Tensor]:
        """This rank's share of the probe: (images, their indices in the probe)."""
        assert self.images is not None
        return self.images[rank::world], torch.arange(rank, len(self.images), world)

    def state_dict(self) -> dict[str, Any]:
        if self.images is None or self.images.numel() * self.images.element_size() > _MAX_STATE_BYTES:
            return {}
        return {"images": self.images.clone(), "labels": None if self.labels is None else self.labels.clone()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("images") is not None:
            self.images, self.labels, self._collected = state["images"], state.get("labels"), []
