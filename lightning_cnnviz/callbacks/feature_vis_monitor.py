"""FeatureVisMonitor: what each filter wants to see, synthesised, tracked over epochs, beside its top patches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, check_positive_int
from lightning_cnnviz.callbacks._probe import gather_interleaved
from lightning_cnnviz.callbacks.top_patch_monitor import Method, TopPatchMonitor
from lightning_cnnviz.core._images import tile_grid, upscale_nearest
from lightning_cnnviz.core._model import first_conv
from lightning_cnnviz.core.feature_vis import color_correlation, deep_dream, visualize_features
from lightning_cnnviz.core.render import render_evolution, render_top_patches

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

    The first conv layer's channels are rendered for their central position (a linear map's mean over positions
    is maximised by a flat colour), the others for their mean over positions. The renders start from the same
    seed every time, so an epoch's image is comparable to the next one's. The
    images are optimised in [0, 1] pixels, in the colour statistics of the probe images, and normalised as the
    model expects: ``normalize``, or ``(x - mean) / std`` from the arguments or from the data module's ``mean`` and
    ``std`` attributes (the demo data modules have them), else as they are. Under DDP the channels are split over
    the ranks and gathered; rank zero draws. Parameters' ``.grad``, ``training`` flags and hooks are left as they
    were.

    Args:
        layers, channels, max_channels, k, probe_size, method, batch_to_images: as :class:`TopPatchMonitor`.
        every_n_epochs: render every this many epochs (and after the last one).
        steps: optimisation steps per render; ``lr``: Adam's learning rate; ``seed``: the render's seed.
        size: side of the synthesised images (default: the probe images' size).
        mean, std, normalize: how the model's inputs are normalised (see above).
        atlas: draw the atlas; ``dream_images``: probe images to dream (0: none).
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
        self.steps = check_positive_int(self._who, "steps", steps)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"{self._who}: `lr` must be a positive number, got {lr!r}.")
        self.lr, self.seed = float(lr), int(seed)
        self.size = check_positive_int(self._who, "size", size) if size is not None else None
        if (mean is None) != (std is None):
            raise ValueError(f"{self._who}: pass both `mean` and `std`, or neither (got mean={mean}, std={std}).")
        self.mean, self.std, self.normalize = mean, std, normalize
        self.atlas = bool(atlas)
        self.dream_images = int(dream_images)
        self._scale: tuple[Tensor, Tensor] | None = None
        self.last_images: dict[str, Tensor] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, steps=self.steps, seed=self.seed)

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        mean, std = self.mean, self.std
        data = getattr(trainer, "datamodule", None)
        if mean is None and self.normalize is None and data is not None:
            mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        if mean is not None and std is not None:
            self._scale = (
                torch.as_tensor(mean).float().view(1, -1, 1, 1),
                torch.as_tensor(std).float().view(1, -1, 1, 1),
            )

    def _to_model(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels as the model takes them."""
        if self.normalize is not None:
            return self.normalize(pixels)
        if self._scale is None:
            return pixels
        mean, std = (t.to(pixels.device) for t in self._scale)
        return (pixels - mean) / std

    def _to_pixels(self, inputs: Tensor) -> Tensor:
        """Model inputs (the probe images) back to [0, 1] pixels (as they are, without a known normalisation)."""
        if self._scale is None or self.normalize is not None:
            return inputs.clamp(0, 1)
        mean, std = (t.to(inputs.device) for t in self._scale)
        return (inputs * std + mean).clamp(0, 1)

    def render(self, trainer: pl.Trainer, pl_module: pl.LightningModule, layer: str, colors: Tensor) -> Tensor:
        """The layer's synthesised images (channels, C, H, W) in [0, 1], in the probe's colour correlation
        ``colors``, on every rank; a collective under DDP (each rank renders every ``world``-th channel)."""
        assert self.probe.images is not None
        channels = self.gallery.chosen_channels[layer]
        world, rank = trainer.world_size, trainer.global_rank
        mine = channels[rank::world]
        probe = self.probe.images
        size = self.size or (probe.shape[-2], probe.shape[-1])
        device = next(pl_module.parameters()).device
        # The first conv layer is linear in its input: the mean of a channel over positions is maximised by the
        # flat colour its weights sum to, so it gets the neuron objective (its central position), whose optimum
        # under the sigmoid's bounds is the filter's own pattern.
        objective = "neuron" if layer == first_conv(pl_module)[0] else "channel"
        local = visualize_features(
            pl_module, layer, mine or channels[:1], size=size, in_channels=probe.shape[1], steps=self.steps,
            lr=self.lr, seed=self.seed, colors=colors, normalize=self._to_model, device=device, objective=objective,
        )[: len(mine)]  # fmt: skip
        if world == 1:
            return local
        counts = torch.tensor([len(channels[r::world]) for r in range(world)])
        return gather_interleaved(trainer, local, counts).to(device)

    @override
    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe.images is None:
            return
        if not self._prepare(pl_module, self.probe.images[:1].to(pl_module.device)):
            return
        colors = color_correlation(self._to_pixels(self.probe.images[:256].float()))  # one for every layer
        rendered = {
            layer: self._run(f"feature vis of {layer}", self.render, trainer, pl_module, layer, colors)
            for layer in self.gallery.chosen_layers
        }
        tops = self.scan(trainer, pl_module) if self.atlas else None  # a collective under DDP, on every rank
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        epoch = trainer.current_epoch
        caption = self.history.caption(epoch, trainer.global_step)
        for layer, images in rendered.items():
            if images is None or not self.finite(
                images, what=f"the feature visualizations of {layer}", trainer=trainer
            ):
                continue
            self.last_images[layer] = images.cpu()

            def draw(layer: str = layer, images: Tensor = images) -> None:
                shown = _rgb(images)
                channels = self.gallery.chosen_channels[layer]
                sink.image(f"cnnviz/feature_vis/{layer}", _captioned_grid(shown, channels), epoch)
                self.history.add(layer, caption, shown, trainer.global_step)
                thumbnails, captions = self.history.stacked(layer)
                evolution = render_evolution(thumbnails, captions, self.gallery.chosen_channels[layer])
                sink.image(f"cnnviz/feature_vis_evolution/{layer}", evolution, epoch)
                if tops is not None and layer in tops:
                    panels = {"feature vis": shown[:, None], **self.layer_panels(pl_module, layer, tops[layer])}
                    atlas = render_top_patches(panels, tops[layer].valid, tops[layer].channels.tolist())
                    sink.image(f"cnnviz/atlas/{layer}", atlas, epoch)

            self._run(f"feature vis images of {layer}", draw)
        if self.dream_images > 0:
            self._run("deep dream", self._dream, pl_module, sink, epoch)

    def _dream(self, pl_module: pl.LightningModule, sink: Any, epoch: int) -> None:
        assert self.probe.images is not None
        device = next(pl_module.parameters()).device
        layer = self.gallery.chosen_layers[len(self.gallery.chosen_layers) // 2]
        start = self._to_pixels(self.probe.images[: self.dream_images].float().to(device))
        dreamed = deep_dream(pl_module, layer, start, normalize=self._to_model, seed=self.seed)
        pairs = torch.stack([_rgb(start), _rgb(dreamed)], dim=1).flatten(0, 1)
        factor = max(1, 96 // max(start.shape[-2:]))
        sink.image("cnnviz/deep_dream", tile_grid(upscale_nearest(pairs, factor), 2, padding=2), epoch)


def _rgb(images: Tensor) -> Tensor:
    """(N, 3, H, W) for display: grayscale repeated, extra channels dropped."""
    images = images.float().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def _captioned_grid(images: Tensor, channels: Sequence[int]) -> Tensor:
    from lightning_cnnviz.core._images import annotate

    factor = max(1, 64 // max(images.shape[-2:]))
    tiles = F.pad(upscale_nearest(images, factor), (0, 0, 12, 0), value=1.0)
    grid = tile_grid(tiles, padding=2)
    per_row = max(1, round((grid.shape[-1] - 2) / (tiles.shape[-1] + 2)))
    notes = [
        (2 + (i % per_row) * (tiles.shape[-1] + 2), 2 + (i // per_row) * (tiles.shape[-2] + 2), f"ch {c}")
        for i, c in enumerate(channels)
    ]
    return annotate(grid, notes)
