"""FeatureVisMonitor: what each filter wants to see, synthesised, tracked over epochs, beside its top patches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._probe import gather_interleaved
from lightning_cnnviz.callbacks.top_patch_monitor import Method, TopPatchMonitor
from lightning_cnnviz.core.feature_atlas import FeatureAtlas

__all__ = ["FeatureVisMonitor"]


class FeatureVisMonitor(TopPatchMonitor):
    """Images synthesised to excite chosen channels (:func:`~lightning_cnnviz.core.visualize_features`), every N
    epochs, for the same layers and channels as :class:`TopPatchMonitor` (first, middle and last conv layer; up to
    16 channels each):

    * ``cnnviz/feature_vis/<layer>``: one tile per channel, captioned;
    * ``cnnviz/feature_vis_evolution/<layer>``: channels x logged epochs (saved in checkpoints, so a resumed run
      continues it);
    * ``cnnviz/atlas/<layer>``: per channel [synthesised image | its top-9 probe patches | their projections]:
      what the filter wants beside what it answers in the data;
    * ``cnnviz/deep_dream``: ``dream_images`` probe images [original | dreamed at the middle layer].

    The Lightning adapter of :class:`~lightning_cnnviz.core.FeatureAtlas`, which says how the images are made.
    Without ``mean``/``std``/``normalize``, the data module's ``mean`` and ``std`` attributes (the demo data modules
    have them) say how the model's inputs are normalised. Under DDP the channels are split over the ranks and
    gathered; rank zero draws. Parameters' ``.grad``, ``training`` flags and hooks are left as they were.

    Args:
        layers, channels, max_channels, k, probe_size, method, batch_to_images: as :class:`TopPatchMonitor`.
        every_n_epochs: render every this many epochs (and after the last one).
        steps, lr, seed, size, mean, std, normalize, dream_images: as :class:`~lightning_cnnviz.core.FeatureAtlas`.
        atlas: draw the atlas.
        on_error: ``"warn"`` (report once, switch the failing piece off) or ``"raise"``.

    Example:
        >>> monitor = FeatureVisMonitor(every_n_epochs=5, steps=256)
    """

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        every_n_epochs: int = 5,
        steps: int = 256,
        lr: float = 0.05,
        seed: int = 0,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        atlas: bool = True,
        dream_images: int = 4,
        k: int = 9,
        probe_size: int = 256,
        method: Method = "guided_backprop",
        max_channels: int = 16,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        super().__init__(
            layers, channels, k, probe_size, every_n_epochs, method, max_channels,
            batch_to_images=batch_to_images, on_error=on_error,
        )  # fmt: skip
        self.renderer = FeatureAtlas(steps, lr, seed, size, mean, std, normalize, dream_images, self.history)
        self.steps, self.seed, self.atlas = steps, seed, bool(atlas)
        self.last_images: dict[str, Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, steps=self.steps, seed=self.seed)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        data = getattr(trainer, "datamodule", None)
        if self.renderer.mean is None and data is not None:
            self.renderer.use_scale(getattr(data, "mean", None), getattr(data, "std", None))

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, layer: str, colors: Tensor) -> Tensor:
        """The layer's synthesised images (channels, C, H, W) in [0, 1] on every rank; a collective under DDP
        (each rank renders every ``world``-th channel)."""
        assert self.probe.images is not None
        channels = self.gallery.chosen_channels[layer]
        world, rank = trainer.world_size, trainer.global_rank
        mine = channels[rank::world]
        local = self.renderer.render(pl_module, layer, mine or channels[:1], self.probe.images, colors)[: len(mine)]
        if world == 1:
            return local
        counts = torch.tensor([len(channels[r::world]) for r in range(world)])
        return gather_interleaved(trainer, local, counts).to(local.device)

    @override
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe.images is None or not self._prepare(pl_module, self.probe.images[:1].to(pl_module.device)):
            return
        colors = self.renderer.colors(self.probe.images)  # one for every layer
        rendered = {
            layer: self._run(f"feature vis of {layer}", self.render, trainer, pl_module, layer, colors)
            for layer in self.gallery.chosen_layers
        }
        tops = self.scan(trainer, pl_module) if self.atlas else None  # a collective under DDP, on every rank
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch, step = trainer.current_epoch, trainer.global_step
        caption = self.history.caption(epoch, step)
        for layer, images in rendered.items():
            if images is None or not self.finite(images, what=f"the feature visualizations of {layer}",
                                                 trainer=trainer):  # fmt: skip
                continue
            self.last_images[layer] = images.cpu()

            def draw(layer: str = layer, images: Tensor = images) -> None:
                top = tops.get(layer) if tops is not None else None
                panels = self.layer_panels(pl_module, layer, top) if top is not None else None
                channels = self.gallery.chosen_channels[layer]
                valid = top.valid if top is not None else None
                for tag, picture in self.renderer.pictures(layer, images, channels, caption, step, panels,
                                                           valid).items():  # fmt: skip
                    sink.image(tag, picture, epoch)

            self._run(f"feature vis images of {layer}", draw)
        if self.renderer.dream_images > 0:
            layer = self.gallery.chosen_layers[len(self.gallery.chosen_layers) // 2]
            dream = self._run("deep dream", self.renderer.dream, pl_module, layer, self.probe.images)
            if dream is not None:
                sink.image("cnnviz/deep_dream", dream, epoch)
