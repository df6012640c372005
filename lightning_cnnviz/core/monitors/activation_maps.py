"""ActivationMapMonitor's logic, Trainer-free: a few probe images' activation maps at chosen layers, framed by the
channels' health, and one image's maps over training."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_names, check_number, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.basic import to_rgb, upscale
from lightning_cnnviz.core.drawing.filters import render_profiles
from lightning_cnnviz.core.drawing.history import EvolutionHistory
from lightning_cnnviz.core.drawing.maps import MapLayout, framed, line_tiles, render_activation_maps
from lightning_cnnviz.core.drawing.render import display_rgb, render_evolution
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.activation_maps import choose_channels, percentile, probe_health, site_outputs
from lightning_cnnviz.core.methods.activation_sites import ActivationSite, find_activation_sites, site_scope
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import class_name, evaluating, format_names, model_device, spread
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.protocol import DoesNotApply, Guard, Snapshot

__all__ = ["ActivationMaps"]


class ActivationMaps:
    """One image's activation maps (CS231n, "Visualizing what ConvNets learn", the picture its notes open with):
    for each probe image and each chosen activation, the image beside its channel maps, one grayscale tile per
    channel in channel order, tag ``cnnviz/activation_maps/<layer>``; the ``evolution_image``-th probe image's
    maps at every call, ``evolution_channels`` channels x calls, tag ``cnnviz/activation_maps_evolution/<layer>``
    (kept in :meth:`state_dict`); the fraction of exact zeros of a ReLU-family layer's maps,
    ``cnnviz/activation_maps/sparsity/<layer>``.

    * **Where:** the outputs of activations (after the nonlinearity), named as ActivationMonitor names them (a
      module used twice is ``name`` and ``name#2``). By default one activation for each of the conv layers that
      TopPatchMonitor shows (three spread over depth), the first one computed after it.
    * **Scale:** one per layer and image: 0 is black and the ``percentile``-th percentile of the image's values at
      that layer is white (the caption gives it), so that a map compares across epochs and a dead one is black.
    * **Health:** a dead (ReLU family, never > 0) channel is framed red and a dormant one amber, as ActivationMonitor
      saw them in its latest window of training steps when it runs (``context.shared.health``), else as the probe
      images show them.
    * **Wide layers:** at most ``max_channels`` tiles: every dead or dormant channel (up to half of them) and the
      most active others, kept from call to call (a channel that dies later takes a healthy one's place, and the
      evolution restarts); said once.
    * 1-D networks draw a channel's response as a line; 3-D networks the middle slice of the depth, said once.

    Args:
        layers: activation names (as ActivationMonitor's ``layers``); default: as above.
        max_channels: tiles per image and layer.
        percentile: the value drawn white, a percentile in (0, 100] of each image's values at the layer.
        columns: tiles to a line.
        min_tile_px, max_tile_px: a map is enlarged (by whole pixels) to at least ``min_tile_px`` and shrunk (by
            area) to at most ``max_tile_px`` a side.
        evolution_image: which probe image the evolution follows; ``evolution_channels``: how many of the channels
            shown it follows (spread over them); ``max_evolution_columns``: its columns.
        dormant_threshold: as ActivationMonitor's, for the health read from the probe.
        class_names: names of the probe images' classes in the captions.
        module: the part of the model fed the probe images (as TopPatchMonitor's).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.ReLU(), nn.Flatten(),
        ...                     nn.Linear(512, 2))
        >>> maps = ActivationMaps()
        >>> maps.attach(net, torch.rand(1, 1, 12, 12))
        >>> shot = maps.snapshot(net, Probe(torch.rand(4, 1, 12, 12)), Context(Moment(epoch=0, step=0)))
        >>> sorted(tag for tag in shot.images if "evolution" not in tag), sorted(shot.scalars)
        (['cnnviz/activation_maps/1', 'cnnviz/activation_maps/3'], ['cnnviz/activation_maps/sparsity/1', \
'cnnviz/activation_maps/sparsity/3'])
    """

    what = "the probe images' activation maps"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        max_channels: int = 64,
        percentile: float = 99.5,
        columns: int = 8,
        min_tile_px: int = 24,
        max_tile_px: int = 64,
        evolution_image: int = 0,
        evolution_channels: int = 16,
        max_evolution_columns: int = 24,
        dormant_threshold: float = 0.1,
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.layers = check_names(who, "layers", layers, "activation names")
        self.max_channels = check_positive_int(who, "max_channels", max_channels)
        self.percentile = check_number(who, "percentile", percentile, lambda v: 0 < v <= 100, "a number in (0, 100]")
        self.columns = check_positive_int(who, "columns", columns)
        self.min_tile_px = check_positive_int(who, "min_tile_px", min_tile_px)
        self.max_tile_px = check_positive_int(who, "max_tile_px", max(max_tile_px, min_tile_px))
        if not isinstance(evolution_image, int) or evolution_image < 0:
            raise ValueError(f"{who}: `evolution_image` is the index of a probe image (an int >= 0), got "
                             f"{evolution_image!r}.")  # fmt: skip
        self.evolution_image = evolution_image
        self.evolution_channels = check_positive_int(who, "evolution_channels", evolution_channels)
        self.dormant_threshold = check_number(who, "dormant_threshold", dormant_threshold, lambda v: v >= 0, ">= 0")
        self.class_names = list(class_names) if class_names is not None else None
        self.entry = ImageEntry(who, module)
        self.history = EvolutionHistory(check_positive_int(who, "max_evolution_columns", max_evolution_columns), 32)
        self.sites: list[ActivationSite] | None = None  # the chosen activations, once found
        self._fitted: int | None = None  # id of the part they were found on
        self.shown: dict[str, list[int]] = {}  # by layer, the channels shown (kept in state_dict)
        self.last: dict[str, dict[str, Any]] = {}  # by layer, what the latest call drew (values before the scale)

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check ``layers`` against ``model`` (ValueError naming the activations it has) and, given an example
        batch, choose the activations; :class:`DoesNotApply` for a model without activations with maps."""
        self.entry.check(model)
        self.sites, self._fitted = None, None
        for name in self.layers or []:
            if site_scope(model, name) is None:
                raise ValueError(f"{self.who} `layers`: no activation of {type(model).__name__} can be named "
                                 f"{name!r}; name activation modules, or functional calls as '<module>.<kind>' "
                                 "(as ActivationMonitor names them).")  # fmt: skip
        if example is not None:
            self.ready(model, example.to(model_device(model)))

    def ready(self, model: nn.Module, example: Tensor, guard: Guard | None = None) -> nn.Module:
        """The part of ``model`` fed the probe images, with the activations chosen on it (once per model)."""
        part = self.entry.of(model, example, guard) if LayerMap.of(model).conv2d else model
        if self.sites is None or self._fitted != id(part):
            self.sites, self._fitted = self.choose(part, example), id(part)
        if guard is not None and any(len(site.shape) == 4 for site in self.sites):
            guard.inform("3-D activations are drawn at the middle slice of their depth.")  # said once
        return part

    def choose(self, model: nn.Module, example: Tensor) -> list[ActivationSite]:
        """The activations drawn: ``layers``, else those fed by the conv layers TopPatchMonitor shows (spread over
        depth), else three spread over every activation with a map."""
        found = find_activation_sites(model, example[:2])
        maps = [site for site in found if not site.units and not site.on_logits]
        if self.layers is not None:
            by_name = {site.name: site for site in found}
            for name in self.layers:
                if name not in by_name:
                    raise ValueError(f"{self.who} `layers`: no activation named {name!r} in the forward; found: "
                                     f"{format_names(list(by_name))}.")  # fmt: skip
                if by_name[name].units:
                    raise ValueError(f"{self.who} `layers`: {name!r} is the activation of a fully connected layer "
                                     "(one value per unit): it has no map to draw.")  # fmt: skip
            return [by_name[name] for name in self.layers]
        if not maps:
            raise DoesNotApply(f"it draws activations with a map (N, C, L), (N, C, H, W) or (N, C, D, H, W), and "
                               f"{type(model).__name__} computes none.")  # fmt: skip
        layers = LayerMap.of(model)
        convs = layers.default_layers() or spread(list(layers.convs), 3)
        fed, names = layers.feeds(model, example), {site.name for site in maps}
        chosen = list(dict.fromkeys(fed[conv] for conv in convs if fed.get(conv) in names))
        by_name = {site.name: site for site in maps}
        return [by_name[name] for name in chosen] if chosen else [by_name[n] for n in spread(list(by_name), 3)]

    def activations(self, model: nn.Module, images: Tensor) -> dict[str, Tensor]:
        """The chosen activations of ``images`` (N, C, *spatial), in eval mode without gradients, by name."""
        part = self.ready(model, images)
        assert self.sites is not None
        with evaluating(part):
            return site_outputs(part, self.sites, images)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """Every chosen activation's maps on the probe images and the evolution (drawn on rank zero only: a few
        images, one forward)."""
        guard, shot = context.guard, Snapshot()
        if probe is None or not context.ranks.is_zero:
            return shot
        images = probe.images.to(model_device(model))
        part = guard.run("activation maps", self.ready, model, images[:1], guard)
        if part is None or self.sites is None:
            return shot
        values = guard.run("activation maps", self.activations, part, images) or {}
        if not values or not guard.finite(list(values.values()), what="the probe's activations", moment=context.moment):
            return shot
        pictures = images.float()
        if images.dim() == 4:
            pictures = context.scale.to_pixels(pictures) if context.scale.known else display_rgb(pictures)
        pictures = self.inputs(pictures)
        relu = {site.name: site.relu for site in self.sites}
        for name, value in values.items():
            draw = functools.partial(self.draw_layer, shot, name, value, relu[name], pictures, probe, context)
            guard.run(f"activation maps of {name}", draw)
        return shot

    def inputs(self, images: Tensor) -> Tensor:
        """The probe images as drawn beside their maps (N, 3, h, w): 2-D as they are, 1-D as line plots, 3-D at the
        middle slice of their depth."""
        if images.dim() == 3:
            return render_profiles(images, min_tile_px=self.min_tile_px * 2)
        if images.dim() == 5:
            images = display_rgb(images[:, :, images.shape[2] // 2])
        return to_rgb(images)

    def tiles(self, values: Tensor, scale: Tensor) -> Tensor:
        """Maps ``values`` (N, C, *spatial) on the scale ``scale`` (N,) as tiles (N, C, 3, h, w): 0 black, the
        scale white (a scale of 0 draws black); 1-D as lines, 3-D at the middle slice."""
        if values.dim() == 5:
            values = values[:, :, values.shape[2] // 2]
        shaped = scale.view(-1, *([1] * (values.dim() - 1)))
        scaled = torch.where(shaped > 0, values.float() / shaped.clamp_min(1e-30), 0.0).clamp(0, 1)
        if values.dim() == 3:
            return line_tiles(scaled, self.min_tile_px + 8)
        grey = upscale(scaled, self.min_tile_px)
        side = max(grey.shape[-2:])
        if side > self.max_tile_px:
            size = [max(1, round(s * self.max_tile_px / side)) for s in grey.shape[-2:]]
            grey = torch.nn.functional.interpolate(grey, size=size, mode="area")
        return grey.unsqueeze(2).expand(-1, -1, 3, -1, -1)

    def draw_layer(
        self, shot: Snapshot, name: str, values: Tensor, relu: bool, pictures: Tensor, probe: Probe, context: Context
    ) -> None:
        """One activation's maps, its evolution column and its sparsity, into ``shot``."""
        count = values.shape[1]
        scale = percentile(values.flatten(1), self.percentile)  # (N,)
        activity = values.transpose(0, 1).flatten(1).float().mean(dim=1)
        shared = context.shared.health.get(name)
        health = shared if shared is not None else probe_health(values, relu, self.dormant_threshold)
        zeros = (values == 0).float().mean() if relu else None
        numbers = torch.cat([scale.float(), activity, zeros.view(1) if zeros is not None else scale[:0]]).cpu()
        scales, activity = numbers[: len(scale)].tolist(), numbers[len(scale) : len(scale) + count]
        marks = health.marks(count)
        chosen, said = choose_channels(activity, marks, self.max_channels, self.shown.get(name))
        if said:
            context.guard.inform(f"cnnviz/activation_maps/{name} shows {said} channels (at most {self.max_channels}: "
                                 "pass `max_channels=` for more).")  # fmt: skip
        if self.shown.get(name) not in (None, chosen):
            self.history.forget(name)  # other channels: the evolution starts afresh
        self.shown[name] = chosen
        index = torch.tensor(chosen, device=values.device)
        tiles = self.tiles(values.index_select(1, index), scale)
        shown_marks = [marks[c] for c in chosen]
        captions = [self.caption(i, probe, value) for i, value in enumerate(scales)]
        tag = f"cnnviz/activation_maps/{name}"
        shot.images[tag] = render_activation_maps(pictures, tiles, shown_marks, chosen, captions, columns=self.columns)
        shot.captions[tag] = (f"{name}: {len(chosen)} of {count} channels; frames from {health.seen}: "
                              f"{len(health.dead)} dead {list(health.dead)[:16]}, "
                              f"{len(health.dormant)} dormant")  # fmt: skip
        shot.images.update(self.evolve(name, tiles, chosen, shown_marks, context, shot))
        if zeros is not None:
            shot.scalars[f"cnnviz/activation_maps/sparsity/{name}"] = float(numbers[-1])
        layout = MapLayout.of(pictures.shape, tiles.shape, self.columns)
        self.last[name] = {"values": values, "scale": scale, "channels": chosen, "marks": marks, "seen": health.seen,
                           "layout": layout, "health": health}  # fmt: skip

    def evolve(
        self, name: str, tiles: Tensor, chosen: list[int], marks: list[int], context: Context, shot: Snapshot
    ) -> dict[str, Tensor]:
        """The evolution picture with this call's column added: ``evolution_channels`` of the ``chosen`` channels'
        tiles (N, C, 3, h, w) of the ``evolution_image``-th probe image."""
        which, rows = min(self.evolution_image, len(tiles) - 1), spread(range(len(chosen)), self.evolution_channels)
        moment = context.moment
        column = framed(tiles[which, rows].cpu(), [marks[r] for r in rows])
        self.history.add(name, self.history.caption(moment.epoch, moment.step), column, moment.step)
        thumbnails, columns = self.history.stacked(name)
        tag, channels = f"cnnviz/activation_maps_evolution/{name}", [chosen[r] for r in rows]
        shot.captions[tag] = (f"{name}: probe image {which}'s maps over training, channels {channels} (rows); "
                              f"dead now: {[c for c, r in zip(channels, rows) if marks[r] == 2]}")  # fmt: skip
        return {tag: render_evolution(thumbnails, columns, channels, min_tile_px=thumbnails.shape[-1])}

    def caption(self, index: int, probe: Probe, white: float) -> str:
        """A row's caption: the image, its class when there is one, and the value drawn white."""
        label = ""
        if probe.labels is not None and probe.labels.dim() == 1 and not probe.labels.is_floating_point():
            label = f" ({class_name(int(probe.labels[index]), self.class_names)})"
        return f"image {index}{label}: white = {white:.3g}"

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict(), "shown": {k: list(v) for k, v in self.shown.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.history.load_state_dict(state.get("history", {}))
        self.shown = {k: [int(c) for c in v] for k, v in state.get("shown", {}).items()}

