"""TopPatchMonitor: Zeiler & Fergus's top-9 patches per filter with their projections, tracked across epochs."""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy
from lightning_cnnviz.callbacks._probe import ProbeSet, all_gather
from lightning_cnnviz.core._images import images_from_batch
from lightning_cnnviz.core.top_patch_gallery import Method, TopPatchGallery
from lightning_cnnviz.core.top_patches import StreamingTopK, TopActivations, merge_top_activations

__all__ = ["Method", "TopPatchMonitor"]


class TopPatchMonitor(EpochMonitor):
    """The top-``k`` probe patches of chosen filters beside their projections to pixel space, every N epochs.

    The Lightning adapter of :class:`~lightning_cnnviz.core.TopPatchGallery` (Zeiler & Fergus 2013), which says
    what is drawn: ``cnnviz/top_patches/<layer>`` (Fig. 2) and ``cnnviz/evolution/<layer>`` (Fig. 4, channels x
    logged epochs, saved in checkpoints).

    The probe set is the first ``probe_size`` images of the first validation pass (else the first training
    batches). Under DDP every rank scans its shard and the per-rank top-``k`` merge into the single-process
    result; rank zero projects and draws.

    Args:
        probe_size: probe images.
        every_n_epochs: log every this many epochs (and after the last one).
        layers, channels, k, method, max_channels, max_batch, thumbnail_px, max_evolution_columns: as
            :class:`~lightning_cnnviz.core.TopPatchGallery`.
        batch_to_images: where the images are in a batch, when it is not ``images`` or ``(images, labels)``.
        on_error: ``"warn"`` (report once, switch the failing piece off) or ``"raise"``.

    Example:
        >>> monitor = TopPatchMonitor(layers=["net.conv1", "net.conv3"], method="both", every_n_epochs=2)
    """

    probe: ProbeSet

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        k: int = 9,
        probe_size: int = 1024,
        every_n_epochs: int = 1,
        method: Method = "deconvnet",
        max_channels: int = 16,
        max_batch: int = 256,
        thumbnail_px: int = 48,
        max_evolution_columns: int = 24,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        super().__init__(every_n_epochs, on_error, probe_size, batch_to_images=batch_to_images)
        self.batch_to_images = batch_to_images
        self.gallery = TopPatchGallery(
            layers, channels, k, method, max_channels, max_batch, thumbnail_px, max_evolution_columns
        )
        self.layers, self.k, self.method = self.gallery.layers, self.gallery.k, self.gallery.method
        self.history = self.gallery.history
        self.last_top: dict[str, TopActivations] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, k=self.k, method=self.method)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        fields = self.gallery.fields
        self.gallery.configure(pl_module)
        if stage != "fit":
            self.gallery.fields = fields
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.dim() == 4:
            self._prepare(pl_module, example.to(pl_module.device))

    def _prepare(self, pl_module: pl.LightningModule, example: Tensor) -> bool:
        """Channels and receptive fields before any training step (:meth:`TopPatchGallery.prepare`)."""
        measure = functools.partial(self._run, "receptive fields")
        return self.gallery.prepare(pl_module, example, say=rank_zero_warn, measure=measure)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self.gallery.fields and batch_idx == 0:  # check the configuration before any training has happened
            images = images_from_batch(batch, who=self._who, batch_to_images=self.batch_to_images)
            self._prepare(pl_module, images[:1])
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def scan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, TopActivations] | None:
        """Top-``k`` of every layer over the probe set; under DDP each rank scans a shard and the shards merge.

        A collective under DDP (call it on every rank). None when a rank failed (all ranks then agree)."""
        device, world = pl_module.device, trainer.world_size
        shard, indices = (t.to(device) for t in self.probe.shard(trainer.global_rank, world))
        result = self._run("top patches scan", self.gallery.scan, pl_module, shard, indices)
        if world == 1:
            return result
        channels = self.gallery.chosen_channels
        local = result or {n: StreamingTopK(c, self.k, device).result() for n, c in channels.items()}
        packed: dict[str, Tensor] = {"ok": torch.tensor([0 if result is None else 1], device=device)}
        for name, top in local.items():
            packed[f"{name}/values"] = top.values
            packed[f"{name}/where"] = torch.stack([top.images, top.ys, top.xs])
        gathered = {key: all_gather(trainer, value) for key, value in packed.items()}
        if int(gathered["ok"].min()) < 1:
            return None
        merged = {}
        for name, top in local.items():
            values, where = gathered[f"{name}/values"], gathered[f"{name}/where"]  # (W, C, k), (W, 3, C, k)
            parts = [TopActivations(top.channels, v, w[0], w[1], w[2]) for v, w in zip(values, where)]
            merged[name] = merge_top_activations(parts)
        return merged

    def layer_panels(self, pl_module: pl.LightningModule, name: str, top: TopActivations) -> dict[str, Tensor]:
        """Per projection method and ``"patches"``: (C, k, 3, h, w) tiles of one layer's top-``k`` in the probe."""
        assert self.probe.images is not None
        return self.gallery.layer_panels(pl_module, name, top, self.probe.images)

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe.images is None or not self._prepare(pl_module, self.probe.images[:1].to(pl_module.device)):
            return
        tops = self.scan(trainer, pl_module)
        inf, nan = float("inf"), float("nan")  # -inf marks an empty slot (fewer positions than k), not divergence
        values = [top.values.nan_to_num(nan=nan, posinf=inf, neginf=0.0) for top in (tops or {}).values()]
        if tops is None or not self.finite(values, what="the probe's activations", trainer=trainer):
            return
        self.last_top = {name: top.to("cpu") for name, top in tops.items()}
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch, step, probe = trainer.current_epoch, trainer.global_step, self.probe.images
        caption = self.history.caption(epoch, step)
        for name, top in tops.items():

            def draw(name: str = name, top: TopActivations = top) -> None:
                for tag, picture in self.gallery.pictures(pl_module, name, top, probe, caption, step).items():
                    sink.image(tag, picture, epoch)

            self._run(f"top patches of {name}", draw)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history.load_state_dict(state_dict.get("history", {}))
