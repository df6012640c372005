"""Which layers and channels a picture of filters shows (Zeiler & Fergus's top patches, feature visualization, ...):
chosen once per model, with their receptive fields, the top-k scan of probe images shared between the pictures of
one model at one step, and the projections of the strongest activations beside their image patches."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Literal, TypedDict

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.basic import normalize_per_item, to_rgb
from lightning_cnnviz.core.drawing.render import signed_display
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.saliency import ReluRule
from lightning_cnnviz.core.methods.top_patches import (
    StreamingTopK,
    TopActivations,
    crop_patches,
    feature_map,
    merge_top_activations,
    project_activations,
)
from lightning_cnnviz.core.methods.top_patches import top_activations as scan_top_activations
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, format_names, model_device, resolve_modules, run_to, spread
from lightning_cnnviz.core.model.receptive_field import ReceptiveField
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.protocol import Guard

__all__ = ["PROJECTIONS", "ChannelSelection", "Projection", "SelectionArguments", "default_channels"]

Projection = Literal["deconvnet", "guided_backprop", "both"]
#: The ReLU backward rules each ``Projection`` projects with.
PROJECTIONS: dict[str, tuple[ReluRule, ...]] = {
    "deconvnet": ("deconvnet",), "guided_backprop": ("guided_backprop",), "both": ("deconvnet", "guided_backprop"),
}


class SelectionArguments(TypedDict, total=False):
    """The arguments of a :class:`ChannelSelection`, which a picture built on one (TopPatchGallery, FeatureVisPanel)
    takes as keywords and hands on, declared once."""

    layers: Sequence[str] | str | None
    channels: Sequence[int] | Mapping[str, Sequence[int]] | None
    k: int
    max_channels: int
    max_batch: int | None
    module: str | None


def default_channels(num_channels: int, count: int = 16) -> list[int]:
    """Up to ``count`` channel indices evenly spread over ``range(num_channels)``, first and last included.

    Example:
        >>> default_channels(10, 4)
        [0, 3, 6, 9]
    """
    return spread(range(num_channels), count)


class ChannelSelection:
    """The layers and channels of a model that a picture of filters shows, chosen once per model: ``layers``
    (default: three conv layers across depth, :meth:`LayerMap.default_layers
    <lightning_cnnviz.core.LayerMap.default_layers>`), ``channels`` (indices for every layer, or a mapping layer ->
    indices; default: up to ``max_channels`` evenly spread), their receptive fields, and the top-``k`` scan of the
    probe images (``max_batch`` images per forward, default: sized by memory), which the pictures of one model
    share through the :class:`~lightning_cnnviz.core.Context` when they select the same channels at one step.
    ``module``: the part of the model fed the probe images (:class:`~lightning_cnnviz.core.model.trunk.ImageEntry`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> selection = ChannelSelection(layers=["2"], k=2)
        >>> selection.attach(net, torch.randn(1, 1, 12, 12))
        >>> selection.chosen_channels
        {'2': [0, 1, 2, 3]}
    """

    def __init__(
        self,
        *,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        k: int = 9,
        max_channels: int = 16,
        max_batch: int | None = None,
        module: str | None = None,
        who: str = "ChannelSelection",
    ) -> None:
        self.who = who
        self.entry = ImageEntry(who, module)
        self._part: nn.Module | None = None
        self.layers = [layers] if isinstance(layers, str) else (list(layers) if layers is not None else None)
        if self.layers is not None and not self.layers:
            raise ValueError(f"{who}: `layers` is empty; pass module names or None for the default.")
        if channels is not None and not isinstance(channels, Mapping):
            channels = [int(c) for c in channels]
        self.channels = channels
        self.k = check_positive_int(who, "k", k)
        self.max_channels = check_positive_int(who, "max_channels", max_channels)
        self.max_batch = None if max_batch is None else check_positive_int(who, "max_batch", max_batch)
        self.chosen_layers: list[str] = []
        self.chosen_channels: dict[str, list[int]] = {}
        self.fields: dict[str, ReceptiveField] = {}
        self.unfollowed = False

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Choose the layers of ``model`` (ValueError for an unknown one; DoesNotApply without a ``nn.Conv2d``)
        and, given an example batch of images, the part fed them, the channels and the receptive fields
        (:meth:`prepare`: ValueError for a channel out of range or a named layer whose field cannot be followed),
        so that a wrong configuration fails before training. Without one, :meth:`ready` does so at the first
        picture."""
        LayerMap.of(model).need_images()
        self._part = None
        self.configure(model)
        if isinstance(example, Tensor) and example.dim() == 4:
            self.prepare(self.fed(model, example[:1]), example[:1])

    def ready(self, model: nn.Module, example: Tensor, guard: Guard) -> nn.Module | None:
        """The part of ``model`` fed ``example``-like images, its channels chosen and receptive fields measured
        (failures go to ``guard``); None when nothing can be drawn."""
        part = guard.run("the part fed the images", self.fed, model, example[:1], guard)
        if part is None:
            return None
        measure = lambda function, *args: guard.run("receptive fields", function, *args)  # noqa: E731
        return part if self.prepare(part, example[:1], say=guard.warn_once, measure=measure) else None

    def configure(self, model: nn.Module) -> None:
        """Choose the layers of ``model`` (ValueError for an unknown one, or a ``channels`` mapping that names a
        layer not watched); the receptive fields are measured again by :meth:`prepare`."""
        self.entry.check(model)
        self.chosen_layers = self.layers if self.layers is not None else LayerMap.of(model).default_layers()
        resolve_modules(model, self.chosen_layers, what=f"{self.who} `layers`", extra_valid=())
        if isinstance(self.channels, Mapping):
            unknown = [name for name in self.channels if name not in self.chosen_layers]
            if unknown:
                raise ValueError(
                    f"{self.who}: `channels` names {unknown[0]!r}, which is not a monitored layer; the layers are "
                    f"{format_names(self.chosen_layers)}."
                )
        self.fields = {}
        self.unfollowed = False  # no chosen layer's receptive field can be followed: nothing is drawn

    def fed(self, model: nn.Module, example: Tensor, guard: Guard | None = None) -> nn.Module:
        """The part of ``model`` that takes ``example``-like images (:class:`.ImageEntry`;
        ``guard`` told which), its layers chosen again when it is not the model itself. ``DoesNotApply`` when none
        does."""
        part = self.entry.of(model, example, guard)
        if part is not model and part is not self._part:
            self.configure(part)
        self._part = part
        return part

    def prepare(
        self,
        model: nn.Module,
        example: Tensor,
        say: Callable[[str], None] | None = None,
        measure: Callable[..., dict[str, ReceptiveField] | None] | None = None,
    ) -> bool:
        """Channel choice and receptive fields from one example image. A channel out of range, or a layer named
        in ``layers`` whose receptive field cannot be followed, raises; a default layer that cannot be followed is
        left out and ``say`` is told why (default: a warning). ``measure(LayerMap.receptive_fields, model, layers,
        example)`` measures them again for a new image size (a caller's error policy). True when ready. Chooses
        the layers first (:meth:`configure`) when no layers are chosen yet."""
        if self.unfollowed:
            return False
        if not self.chosen_layers:
            self.configure(model)
        size = (example.shape[-2], example.shape[-1])
        if self.fields and next(iter(self.fields.values())).input_size == size:
            return True
        tell = say or (lambda message: warnings.warn(f"{self.who}: {message}", stacklevel=2))
        followed = self._follow(model, example, tell) if not self.fields else None
        if self.unfollowed:
            return False
        self.choose_channels(model, example)
        if followed is None:  # a new input size: the same layers, measured again
            run = measure or (lambda function, *args: function(*args))
            followed = run(LayerMap.of(model).receptive_fields, model, self.chosen_layers, example[:1])
        self.fields = followed or {}
        return bool(self.fields)

    def choose_channels(self, model: nn.Module, example: Tensor) -> None:
        """The channels of every chosen layer, from one forward of ``example`` (ValueError for one out of range)."""
        shapes: dict[str, tuple[int, ...]] = {}
        with evaluating(model):
            try:
                run_to(model, example[:1], self.chosen_layers, lambda n, o: shapes.update({n: feature_map(n, o).shape}))
            except ValueError as error:
                raise ValueError(f"{self.who}: {error}") from None
        self.chosen_channels = {name: self._channels_of(name, shapes[name][1]) for name in self.chosen_layers}

    def _channels_of(self, name: str, count: int) -> list[int]:
        if self.channels is None:
            chosen = default_channels(count, self.max_channels)
        elif isinstance(self.channels, Mapping):
            chosen = [int(c) for c in self.channels.get(name, default_channels(count, self.max_channels))]
        else:
            chosen = list(self.channels)
        bad = [c for c in chosen if not 0 <= c < count]
        if bad or not chosen:
            raise ValueError(
                f"{self.who}: channel {bad[0] if bad else None} of layer {name!r} is out of range; the layer has "
                f"{count} channels, so indices 0..{count - 1} are allowed."
            )
        return chosen

    def _follow(self, model: nn.Module, example: Tensor, say: Callable[[str], None]) -> dict[str, ReceptiveField]:
        """Each layer's receptive field, measured one layer at a time so that one that cannot be followed is named
        with its reason; such a default layer is left out (said once), a named one raises."""
        fields: dict[str, ReceptiveField] = {}
        reasons: dict[str, str] = {}
        for name in self.chosen_layers:
            try:
                fields.update(LayerMap.of(model).receptive_fields(model, [name], example[:1]))
            except ValueError as error:
                reasons[name] = str(error).removeprefix("receptive_fields: ")
        if not reasons:
            return fields
        said = "; ".join(f"{name!r}: {reason}" for name, reason in reasons.items())
        if self.layers is not None:
            raise ValueError(
                f"{self.who}: the receptive field of {said}, so its top patches cannot be cropped. Choose other "
                "`layers` (conv layers before the unsupported operation)."
            )
        if len(reasons) == len(self.chosen_layers):
            self.unfollowed = True
            say(f"no default layer has a receptive field that can be followed ({said}), so nothing is drawn. Pass "
                "`layers=` (conv layers before the unsupported operation) or `module=`.")  # fmt: skip
        else:
            say(f"leaving out default layer(s) whose receptive field is unknown: {said}.")
        self.chosen_layers = [name for name in self.chosen_layers if name not in reasons]
        return fields

    def scan(self, model: nn.Module, images: Tensor, indices: Tensor | None = None) -> dict[str, TopActivations]:
        """Top-``k`` of every layer over ``images`` (``indices``: their numbers in the whole probe set)."""
        layers = dict(self.chosen_channels)
        return scan_top_activations(model, layers, images, k=self.k, image_indices=indices, max_batch=self.max_batch)

    def layer_panels(
        self, model: nn.Module, name: str, top: TopActivations, probe: Tensor, rules: Sequence[ReluRule]
    ) -> dict[str, Tensor]:
        """Per projection rule (``rules``) and ``"patches"``: (C, k, 3, h, w) tiles in [0, 1] of one layer's
        top-``k`` (``top.images`` index ``probe``)."""
        device = model_device(model)
        field = self.fields[name]
        count, k = top.values.shape
        rows = top.valid.flatten().nonzero().flatten().to(device)
        # the images of the k activations per channel, not the whole probe
        images = probe[top.images.flatten().cpu().clamp_min(0)].to(device)
        channels = top.channels.to(device).repeat_interleave(k)
        ys, xs = top.ys.flatten().to(device), top.xs.flatten().to(device)
        panels: dict[str, Tensor] = {}
        where = (images[rows], channels[rows], ys[rows], xs[rows])
        expected = top.values.flatten().to(device)[rows]
        rows_per_pass = None if self.max_batch is None else max(1, self.max_batch // 4)
        projected = project_activations(
            model, name, *where, rules=tuple(rules), field=field, expected=expected, max_batch=rows_per_pass
        )
        for method in rules:
            projections = torch.zeros_like(images)
            projections[rows] = projected[method]
            crops = signed_display(crop_patches(projections, field, ys.cpu(), xs.cpu()))
            panels[method] = crops.unflatten(0, (count, k))
        shown = normalize_per_item(images.float())  # per image, so the same as normalising the probe first
        patches = crop_patches(shown, field, ys.cpu(), xs.cpu())
        patches = to_rgb(patches)
        panels["patches"] = patches.unflatten(0, (count, k))
        return panels


    def top(self, model: nn.Module, probe: Tensor, context: Context) -> tuple[dict[str, TopActivations] | None, Tensor]:
        """The top-``k`` of every chosen channel over ``probe`` (a scan another picture made at this step when the
        context's shared service has one that covers them), and the probe images they index. Each rank scans its
        shard and the shards merge: a collective under several processes. None when the scan failed on a rank."""
        guard, ranks = context.guard, context.ranks

        def compute() -> dict[str, TopActivations] | None:
            device = model_device(model)
            shard, indices = Probe(probe).shard(ranks)
            result = guard.run("top patches scan", self.scan, model, shard.to(device), indices.to(device))
            if ranks.world == 1:
                return result
            channels = self.chosen_channels
            local = result or {n: StreamingTopK(c, self.k, device).result() for n, c in channels.items()}
            if not ranks.agree(result is not None):
                return None
            merged = {}
            for name, top in local.items():
                values, where = ranks.gather(top.values), ranks.gather(torch.stack([top.images, top.ys, top.xs]))
                parts = [TopActivations(top.channels, v, w[0], w[1], w[2]) for v, w in zip(values, where)]
                merged[name] = merge_top_activations(parts)
            return merged

        return context.shared.scan(context.moment.step, self.chosen_channels, self.k, probe, compute)
