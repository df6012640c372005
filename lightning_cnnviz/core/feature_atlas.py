"""FeatureVisMonitor's logic, Trainer-free: images synthesised to excite chosen channels, their evolution over
calls, the atlas beside the channels' top patches, and DeepDream of probe images."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnnviz.core._checks import check_positive_int
from lightning_cnnviz.core._images import annotate, tile_grid, upscale_nearest
from lightning_cnnviz.core._model import first_conv
from lightning_cnnviz.core.feature_vis import color_correlation, deep_dream, visualize_features
from lightning_cnnviz.core.history import EvolutionHistory
from lightning_cnnviz.core.render import render_evolution, render_top_patches

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
        steps: int = 256,
        lr: float = 0.05,
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
        shown = _rgb(images)
        self.history.add(layer, caption, shown, step)
        thumbnails, captions = self.history.stacked(layer)
        pictures = {
            f"cnnviz/feature_vis/{layer}": _captioned_grid(shown, channels),
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
        pairs = torch.stack([_rgb(start), _rgb(dreamed)], dim=1).flatten(0, 1)
        factor = max(1, 96 // max(start.shape[-2:]))
        return tile_grid(upscale_nearest(pairs, factor), 2, padding=2)


def _rgb(images: Tensor) -> Tensor:
    """(N, 3, H, W) for display: grayscale repeated, extra channels dropped."""
    images = images.float().clamp(0, 1)
    return images.expand(-1, 3, -1, -1) if images.shape[1] == 1 else images[:, :3]


def _captioned_grid(images: Tensor, channels: Sequence[int]) -> Tensor:
    factor = max(1, 64 // max(images.shape[-2:]))
    tiles = F.pad(upscale_nearest(images, factor), (0, 0, 12, 0), value=1.0)
    grid = tile_grid(tiles, padding=2)
    per_row = max(1, round((grid.shape[-1] - 2) / (tiles.shape[-1] + 2)))
    notes = [
        (2 + (i % per_row) * (tiles.shape[-1] + 2), 2 + (i // per_row) * (tiles.shape[-2] + 2), f"ch {c}")
        for i, c in enumerate(channels)
    ]
    return annotate(grid, notes)
