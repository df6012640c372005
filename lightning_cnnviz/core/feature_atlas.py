"""FeatureVisMonitor's logic, Trainer-free: images synthesised to excite chosen channels, their evolution over
calls, the atlas beside the channels' top patches, and DeepDream of probe images."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.drawing import captioned_grid, tile_grid, to_rgb, upscale
from lightning_cnnviz.core.feature_vis import color_correlation, deep_dream, visualize_features
from lightning_cnnviz.core.history import EvolutionHistory
from lightning_cnnviz.core.model import first_conv
from lightning_cnnviz.core.probe import Probe, ProbeService
from lightning_cnnviz.core.protocol import Guard, Moment, Ranks, Snapshot
from lightning_cnnviz.core.render import render_evolution, render_top_patches
from lightning_cnnviz.core.top_patch_gallery import TopPatchGallery
from lightning_cnnviz.core.top_patches import TopActivations

__all__ = ["FeatureAtlas"]

WHO = "FeatureVisMonitor"


class FeatureAtlas:
    """Images synthesised to excite chosen channels (:func:`~lightning_cnnviz.core.visualize_features`; Olah et
    al. 2017), and their pictures: ``cnnviz/feature_vis/<layer>`` (one captioned tile per channel),
    ``cnnviz/feature_vis_evolution/<layer>`` (channels x calls), ``cnnviz/atlas/<layer>`` (per channel
    [synthesised image | its top-k probe patches | their projections]) and ``cnnviz/deep_dream`` (probe images
    [original | dreamed at a layer]).

    The first conv layer's channels are rendered for their central position (a linear map's mean over positions
    is maximised by a flat colour), the others for their mean over positions. The renders start from the same
    seed every time, so one call's image is comparable to the next one's. The images are optimised in [0, 1]
    pixels, in the colour statistics of the probe images, and normalised as the model expects: ``normalize``, or
    ``(x - mean) / std``, else as they are.

    Args:
        steps: optimisation steps per render; ``lr``: Adam's learning rate; ``seed``: the render's seed.
        size: side of the synthesised images (default: the probe images' size).
        mean, std, normalize: how the model's inputs are normalised (see above).
        dream_images: probe images to dream (0: none).
        history: where the evolution columns go (default: a new :class:`~lightning_cnnviz.core.EvolutionHistory`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> atlas = FeatureAtlas(steps=4, dream_images=0)
        >>> probe = torch.rand(8, 3, 16, 16)
        >>> images = atlas.render(net, "2", [0, 1], probe, atlas.colors(probe))
        >>> images.shape, sorted(atlas.pictures("2", images, [0, 1], caption="call 1"))
        (torch.Size([2, 3, 16, 16]), ['cnnviz/feature_vis/2', 'cnnviz/feature_vis_evolution/2'])
    """

    def __init__(
        self,
        steps: int = 64,
        lr: float = 0.15,
        seed: int = 0,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        dream_images: int = 4,
        history: EvolutionHistory | None = None,
    ) -> None:
        check_positive_int(WHO, "steps", steps)
        if size is not None:
            check_positive_int(WHO, "size", size)
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr <= 0:
            raise ValueError(f"{WHO}: `lr` must be a positive number, got {lr!r}.")
        if (mean is None) != (std is None):
            raise ValueError(f"{WHO}: pass both `mean` and `std`, or neither (got mean={mean}, std={std}).")
        self.steps, self.lr, self.seed, self.size = steps, float(lr), int(seed), size
        self.mean, self.std, self.normalize = mean, std, normalize
        self.dream_images = int(dream_images)
        self.history = history if history is not None else EvolutionHistory()
        self.scale: tuple[Tensor, Tensor] | None = None
        self.use_scale(mean, std)
        self.last_images: dict[str, Tensor] = {}

    def use_scale(self, mean: Sequence[float] | Tensor | None, std: Sequence[float] | Tensor | None) -> None:
        """Take ``(x - mean) / std`` as the model's normalisation (unless ``normalize`` was given)."""
        if mean is not None and std is not None and self.normalize is None:
            self.scale = (
                torch.as_tensor(mean).float().view(1, -1, 1, 1),
                torch.as_tensor(std).float().view(1, -1, 1, 1),
            )

    def to_model(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels as the model takes them."""
        if self.normalize is not None:
            return self.normalize(pixels)
        if self.scale is None:
            return pixels
        mean, std = (t.to(pixels.device) for t in self.scale)
        return (pixels - mean) / std

    def to_pixels(self, inputs: Tensor) -> Tensor:
        """Model inputs (the probe images) back to [0, 1] pixels (as they are, without a known normalisation)."""
        if self.scale is None or self.normalize is not None:
            return inputs.clamp(0, 1)
        mean, std = (t.to(inputs.device) for t in self.scale)
        return (inputs * std + mean).clamp(0, 1)

    def colors(self, probe: Tensor) -> Tensor:
        """The colour correlation of (up to 256 of) the probe images, in which the renders are made."""
        return color_correlation(self.to_pixels(probe[:256].float()))

    def render(self, model: nn.Module, layer: str, channels: Sequence[int], probe: Tensor, colors: Tensor) -> Tensor:
        """The synthesised images (len(channels), C, H, W) in [0, 1] of ``channels`` of ``layer``."""
        size = self.size or (probe.shape[-2], probe.shape[-1])
        device = next(model.parameters()).device
        # The first conv layer is linear in its input: the mean of a channel over positions is maximised by the
        # flat colour its weights sum to, so it gets the neuron objective (its central position), whose optimum
        # under the sigmoid's bounds is the filter's own pattern.
        objective = "neuron" if layer == first_conv(model)[0] else "channel"
        return visualize_features(
            model, layer, list(channels), size=size, in_channels=probe.shape[1], steps=self.steps, lr=self.lr,
            seed=self.seed, colors=colors, normalize=self.to_model, device=device, objective=objective,
        )  # fmt: skip

    def pictures(
        self,
        layer: str,
        images: Tensor,
        channels: Sequence[int],
        caption: str,
        step: int | None = None,
        panels: dict[str, Tensor] | None = None,
        top_valid: Tensor | None = None,
    ) -> dict[str, Tensor]:
        """One layer's captioned tiles and evolution (with this call's column, ``caption`` over it), and with the
        top patches' ``panels`` (:meth:`TopPatchGallery.layer_panels`) and validity, its atlas."""
        shown = to_rgb(images.float().clamp(0, 1))
        self.history.add(layer, caption, shown, step)
        thumbnails, captions = self.history.stacked(layer)
        pictures = {
            f"cnnviz/feature_vis/{layer}": captioned_grid(shown, [f"ch {c}" for c in channels]),
            f"cnnviz/feature_vis_evolution/{layer}": render_evolution(thumbnails, captions, list(channels)),
        }
        if panels is not None and top_valid is not None:
            atlas = {"feature vis": shown[:, None], **panels}
            pictures[f"cnnviz/atlas/{layer}"] = render_top_patches(atlas, top_valid, list(channels))
        return pictures

    def dream(self, model: nn.Module, layer: str, probe: Tensor) -> Tensor:
        """``dream_images`` probe images [original | dreamed at ``layer``], one pair per row."""
        device = next(model.parameters()).device
        start = self.to_pixels(probe[: self.dream_images].float().to(device))
        dreamed = deep_dream(model, layer, start, normalize=self.to_model, seed=self.seed)
        pairs = torch.stack([to_rgb(start.clamp(0, 1)), to_rgb(dreamed.clamp(0, 1))], dim=1).flatten(0, 1)
        return tile_grid(upscale(pairs, 96), 2, padding=2)

    def render_split(
        self, model: nn.Module, layer: str, channels: Sequence[int], probe: Tensor, colors: Tensor, ranks: Ranks
    ) -> Tensor:
        """:meth:`render` with the channels split over the ranks (each renders every ``world``-th) and joined in
        channel order on every rank: a collective under several processes."""
        mine = ranks.split(channels)
        local = self.render(model, layer, mine or list(channels[:1]), probe, colors)[: len(mine)]
        return ranks.join(local, len(channels))

    def snapshot(
        self,
        model: nn.Module,
        probe: Probe,
        moment: Moment,
        *,
        gallery: TopPatchGallery,
        guard: Guard | None = None,
        ranks: Ranks | None = None,
        service: ProbeService | None = None,
        atlas: bool = True,
    ) -> Snapshot:
        """The renders of the ``gallery``'s layers and channels, their evolution, with ``atlas`` their atlas beside
        the gallery's top patches (the ``service``'s scan at this step when it has one), and the dream; drawn on
        rank zero. Renders are kept in :attr:`last_images` (on the host)."""
        guard, ranks, shot = guard or Guard(WHO), ranks or Ranks.single(), Snapshot()
        device = next(model.parameters()).device
        part = guard.run("feature vis", gallery.fed, model, probe.images[:1].to(device), guard)
        if part is None:
            return shot
        model = part
        measure = functools.partial(guard.run, "receptive fields")
        if not gallery.prepare(model, probe.images[:1].to(device), say=guard.once, measure=measure):
            return shot
        colors = self.colors(probe.images)  # one for every layer
        rendered = {
            layer: guard.run(f"feature vis of {layer}", self.render_split, model, layer,
                             gallery.chosen_channels[layer], probe.images, colors, ranks)
            for layer in gallery.chosen_layers
        }  # fmt: skip
        scan = gallery.top(model, probe.images, moment, guard, ranks, service) if atlas else (None, probe.images)
        tops, scanned = scan
        if not ranks.is_zero:
            return shot
        caption = gallery.history.caption(moment.epoch, moment.step)
        for layer, images in rendered.items():
            if images is None or not guard.finite(images, what=f"the feature visualizations of {layer}",
                                                  moment=moment):  # fmt: skip
                continue
            self.last_images[layer] = images.cpu()
            top = tops.get(layer) if tops is not None else None

            def draw(layer: str = layer, images: Tensor = images, top: TopActivations | None = top) -> None:
                panels = gallery.layer_panels(model, layer, top, scanned) if top is not None else None
                channels, valid = gallery.chosen_channels[layer], None if top is None else top.valid
                shot.images.update(self.pictures(layer, images, channels, caption, moment.step, panels, valid))

            guard.run(f"feature vis images of {layer}", draw)
        if self.dream_images > 0:
            layer = gallery.chosen_layers[len(gallery.chosen_layers) // 2]
            dream = guard.run("deep dream", self.dream, model, layer, probe.images)
            if dream is not None:
                shot.images["cnnviz/deep_dream"] = dream
        return shot
