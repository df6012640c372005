"""FeatureVisMonitor's logic, Trainer-free: images synthesised to excite chosen channels, their evolution over
calls, beside the channels' top patches, and DeepDream of probe images."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from typing_extensions import Unpack

from lightning_cnnviz.core.checks import check_choice, check_number, check_positive_int
from lightning_cnnviz.core.context import Context, InputScale
from lightning_cnnviz.core.drawing.basic import captioned_grid, tile_grid, to_rgb, upscale
from lightning_cnnviz.core.drawing.history import EvolutionHistory
from lightning_cnnviz.core.drawing.render import render_evolution, render_top_patches
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.feature_vis import (
    DIVERSITY_WEIGHT,
    ObjectiveFactory,
    color_correlation,
    deep_dream,
    visualize_features,
)
from lightning_cnnviz.core.methods.top_patches import TopActivations
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import model_device
from lightning_cnnviz.core.monitors.selection import PROJECTIONS, ChannelSelection, Projection, SelectionArguments
from lightning_cnnviz.core.protocol import Ranks, Snapshot

__all__ = ["FeatureVisPanel"]



class FeatureVisPanel:
    """Images synthesised to excite chosen channels (:func:`~lightning_cnnviz.core.visualize_features`; Olah et
    al. 2017), and their pictures: ``cnnviz/feature_vis/<layer>`` (one captioned tile per channel),
    ``cnnviz/feature_vis_evolution/<layer>`` (channels x calls), ``cnnviz/feature_vis_patches/<layer>`` (per channel
    [synthesised image | its top-k probe patches | their projections]) and ``cnnviz/deep_dream`` (probe images
    [original | dreamed at a layer]).

    The first conv layer's channels are rendered for their central position (a linear map's mean over positions
    is maximised by a flat colour), the others for their mean over positions. The renders start from the same
    seed every time, so one call's image is comparable to the next one's. The images are optimised in [0, 1]
    pixels, in the colour statistics of the probe images, and normalised as the model expects: ``normalize``, or
    ``(x - mean) / std``, else the context's :class:`~lightning_cnnviz.core.InputScale`, else as they are. The
    top patches beside the renders reuse another picture's scan of the same channels at the same step (the
    context's shared service), or scan the probe itself.

    Args:
        layers, channels, k, max_channels, module: which channels (:class:`~lightning_cnnviz.core.ChannelSelection`;
            by default three conv layers across depth, up to 16 channels each) and the top patches per channel.
        method: the projections beside the renders: ``"deconvnet"``, ``"guided_backprop"`` or ``"both"``.
        steps: optimisation steps per render; ``lr``: Adam's learning rate; ``seed``: the render's seed.
        size: side of the synthesised images (default: the probe images' size).
        mean, std, normalize: how the model's inputs are normalised (see above).
        dream_images: probe images to dream (0: none).
        patches: draw ``cnnviz/feature_vis_patches/<layer>``.
        objective: what a channel's image maximises: ``"auto"`` (as above), ``"channel"``, ``"neuron"``, or a function
            of ``(layer, channels)`` returning an :class:`~lightning_cnnviz.core.Objective` scoring one image per
            channel given (see :func:`~lightning_cnnviz.core.visualize_features`), e.g. a channel minus a share of
            DeepDream's layer objective.
        diversity: images per channel (Olah et al. 2017's diversity: k images that lower the similarity of their
            Gram matrices, ``diversity_weight`` times their own score; the first of each is the one tracked and
            shown beside the patches). ``cnnviz/feature_vis/<layer>`` then has one row per channel.

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> panel = FeatureVisPanel(layers=["2"], channels=[0, 1], steps=4, dream_images=0)
        >>> shot = panel.snapshot(net, Probe(torch.rand(8, 3, 16, 16)), Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images)
        ['cnnviz/feature_vis/2', 'cnnviz/feature_vis_evolution/2', 'cnnviz/feature_vis_patches/2']
    """

    what = "the feature visualizations"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        steps: int = 64,
        lr: float = 0.15,
        seed: int = 0,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        dream_images: int = 4,
        patches: bool = True,
        method: Projection = "guided_backprop",
        objective: str | ObjectiveFactory = "auto",
        diversity: int = 1,
        diversity_weight: float = DIVERSITY_WEIGHT,
        who: str | None = None,
        **selection: Unpack[SelectionArguments],
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.selection = ChannelSelection(**selection, who=who)
        check_positive_int(who, "steps", steps)
        if size is not None:
            check_positive_int(who, "size", size)
        check_number(who, "lr", lr, lambda v: v > 0, "a positive number")
        if (mean is None) != (std is None):
            raise ValueError(f"{who}: pass both `mean` and `std`, or neither (got mean={mean}, std={std}).")
        check_choice(who, "method", method, tuple(PROJECTIONS))
        if not callable(objective):
            check_choice(who, "objective", objective, ("auto", "channel", "neuron"))
        self.objective = objective
        self.diversity = check_positive_int(who, "diversity", diversity)
        self.diversity_weight = check_number(
            who, "diversity_weight", diversity_weight, lambda v: v >= 0, "a number >= 0"
        )
        self.steps, self.lr, self.seed, self.size = steps, float(lr), int(seed), size
        self.scale = InputScale(mean, std, normalize)
        self.dream_images, self.patches, self.rules = int(dream_images), bool(patches), PROJECTIONS[method]
        self.history = EvolutionHistory()
        self.last_images: dict[str, Tensor] = {}
        self._scale = self.scale  # the scale of the current snapshot: this one's, else the context's

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Choose the layers (and, given ``example``, the channels) of ``model``."""
        self.selection.attach(model, example)

    def to_model(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels as the model takes them."""
        return self._scale.to_model(pixels)

    def to_pixels(self, inputs: Tensor) -> Tensor:
        """Model inputs (the probe images) back to [0, 1] pixels (as they are, without a known normalisation)."""
        return self._scale.to_pixels(inputs)

    def colors(self, probe: Tensor) -> Tensor:
        """The colour correlation of (up to 256 of) the probe images, in which the renders are made."""
        return color_correlation(self.to_pixels(probe[:256].float()))

    def render(self, model: nn.Module, layer: str, channels: Sequence[int], probe: Tensor, colors: Tensor) -> Tensor:
        """The synthesised images (len(channels) * diversity, C, H, W) in [0, 1] of ``channels`` of ``layer``."""
        size = (probe.shape[-2], probe.shape[-1])
        if self.size is not None:  # a size of the user's, or the nearest one the network takes
            _, height, width = LayerMap.of(model).size_near(model, (probe.shape[1], self.size, self.size), layer)
            size = (height, width)
        device = model_device(model)
        # The first conv layer is linear in its input: the mean of a channel over positions is maximised by the
        # flat colour its weights sum to, so it gets the neuron objective (its central position), whose optimum
        # under the sigmoid's bounds is the filter's own pattern.
        objective = self.objective
        if objective == "auto":
            objective = "neuron" if layer == LayerMap.of(model).first else "channel"
        return visualize_features(
            model, layer, list(channels), size=size, in_channels=probe.shape[1], steps=self.steps, lr=self.lr,
            seed=self.seed, colors=colors, normalize=self.to_model, device=device, objective=objective,
            diversity_images=self.diversity, diversity_weight=self.diversity_weight,
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
        top patches' ``panels`` (:meth:`~lightning_cnnviz.core.ChannelSelection.layer_panels`) and validity, its
        renders beside them."""
        every = to_rgb(images.float().clamp(0, 1))
        copies = len(every) // max(len(channels), 1)
        shown = every[::copies]  # the first image of each channel: the evolution and the patches
        self.history.add(layer, caption, shown, step)
        thumbnails, captions = self.history.stacked(layer)
        names = [f"ch {c}" if copies == 1 else f"ch {c} #{j + 1}" for c in channels for j in range(copies)]
        grid = captioned_grid(every, names, columns=copies if copies > 1 else None)
        pictures = {
            f"cnnviz/feature_vis/{layer}": grid,
            f"cnnviz/feature_vis_evolution/{layer}": render_evolution(thumbnails, captions, list(channels)),
        }
        if panels is not None and top_valid is not None:
            beside = {"feature vis": shown[:, None], **panels}
            pictures[f"cnnviz/feature_vis_patches/{layer}"] = render_top_patches(beside, top_valid, list(channels))
        return pictures

    def dream(self, model: nn.Module, layer: str, probe: Tensor) -> Tensor:
        """``dream_images`` probe images [original | dreamed at ``layer``], one pair per row."""
        device = model_device(model)
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
        local = self.render(model, layer, mine or list(channels[:1]), probe, colors)[: len(mine) * self.diversity]
        shape = local.shape[1:]  # each channel's images as one row to join
        joined = ranks.join(local.reshape(len(mine), -1), len(channels))
        return joined.reshape(len(channels) * self.diversity, *shape)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The renders of the chosen layers and channels, their evolution, with ``patches`` the renders beside their
        top patches, and the dream; drawn on rank zero. Renders are kept in :attr:`last_images` (on the host)."""
        guard, ranks, moment, shot = context.guard, context.ranks, context.moment, Snapshot()
        if probe is None:
            return shot
        self._scale = self.scale.over(context.scale)
        selection = self.selection
        part = selection.ready(model, probe.images[:1].to(model_device(model)), guard)
        if part is None:
            return shot
        model = part
        colors = self.colors(probe.images)  # one for every layer
        rendered = {
            layer: guard.run(f"feature vis of {layer}", self.render_split, model, layer,
                             selection.chosen_channels[layer], probe.images, colors, ranks)
            for layer in selection.chosen_layers
        }  # fmt: skip
        tops, scanned = selection.top(model, probe.images, context) if self.patches else (None, probe.images)
        if not ranks.is_zero:
            return shot
        caption = self.history.caption(moment.epoch, moment.step)
        for layer, images in rendered.items():
            if images is None or not guard.finite(images, what=f"the feature visualizations of {layer}",
                                                  moment=moment):  # fmt: skip
                continue
            self.last_images[layer] = images.cpu()
            top = tops.get(layer) if tops is not None else None

            def draw(layer: str = layer, images: Tensor = images, top: TopActivations | None = top) -> None:
                panels = selection.layer_panels(model, layer, top, scanned, self.rules) if top is not None else None
                channels, valid = selection.chosen_channels[layer], None if top is None else top.valid
                drawn = self.pictures(layer, images, channels, caption, moment.step, panels, valid)
                shot.images.update(drawn)
                shot.captions.update({tag: f"{layer}: channels {channels}" for tag in drawn})

            guard.run(f"feature vis images of {layer}", draw)
        if self.dream_images > 0:
            layer = selection.chosen_layers[len(selection.chosen_layers) // 2]
            dream = guard.run("deep dream", self.dream, model, layer, probe.images)
            if dream is not None:
                shot.images["cnnviz/deep_dream"] = dream
        return shot

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict.get("history", {}))
