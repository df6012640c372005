"""TopPatchMonitor's logic, Trainer-free: which layers and channels, their receptive fields, the top-k scan of probe
images, the projections beside the patches, and their evolution over calls."""

from __future__ import annotations

import functools
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_positive_int
from lightning_cnnviz.core.drawing import normalize_per_item, to_rgb
from lightning_cnnviz.core.history import EvolutionHistory
from lightning_cnnviz.core.model import conv_layers, evaluating, format_names, resolve_modules, run_to
from lightning_cnnviz.core.probe import Probe, ProbeService
from lightning_cnnviz.core.protocol import Guard, Moment, Ranks, Snapshot
from lightning_cnnviz.core.receptive_field import ReceptiveField, receptive_fields
from lightning_cnnviz.core.render import render_evolution, render_top_patches, signed_display
from lightning_cnnviz.core.saliency import ReluRule
from lightning_cnnviz.core.top_patches import (
    StreamingTopK,
    TopActivations,
    crop_patches,
    feature_map,
    merge_top_activations,
    project_activations,
)
from lightning_cnnviz.core.top_patches import top_activations as scan_top_activations
from lightning_cnnviz.core.trunk import ImageEntry

__all__ = ["TopPatchGallery", "default_channels", "default_layers"]

Method = Literal["deconvnet", "guided_backprop", "both"]
METHODS = ("deconvnet", "guided_backprop", "both")
WHO = "TopPatchMonitor"


def default_layers(model: nn.Module, count: int = 3) -> list[str]:
    """``count`` conv layers spread over depth (first, middle, last), preferring kernels larger than 1x1 (the
    1x1 projections of residual shortcuts are skipped when there are enough others).

    Example:
        >>> default_layers(nn.Sequential(*(nn.Conv2d(1, 1, 3) for _ in range(5))))
        ['0', '2', '4']
    """
    convs = conv_layers(model)
    spatial = [name for name, conv in convs.items() if max(conv.kernel_size) > 1]
    names = spatial if len(spatial) >= min(count, len(convs)) else list(convs)
    if len(names) <= count:
        return names
    picks = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [names[i] for i in picks]


def default_channels(num_channels: int, count: int = 16) -> list[int]:
    """Up to ``count`` channel indices evenly spread over ``range(num_channels)``, first and last included.

    Example:
        >>> default_channels(10, 4)
        [0, 3, 6, 9]
    """
    if num_channels <= count:
        return list(range(num_channels))
    return sorted({round(i * (num_channels - 1) / (count - 1)) for i in range(count)})


class TopPatchGallery:
    """Zeiler & Fergus (2013, arXiv 1311.2901) for chosen filters: per channel, the projections of its ``k``
    strongest activations over the probe images (at most one per image), cropped to their receptive fields and
    drawn as ``0.5 + p / (2 max |p|)``, beside the image patches (Fig. 2), deconvnet or guided backprop
    (Springenberg et al. 2014) or both; and channels x calls, each cell the projection of the channel's strongest
    activation (Fig. 4, :class:`~lightning_cnnviz.core.EvolutionHistory`).

    Args:
        layers: module names with (N, C, H, W) outputs; default: three conv layers across depth
            (:func:`default_layers`).
        channels: channel indices for every layer, or a mapping layer -> indices; default: up to
            ``max_channels`` evenly spread channels of each layer.
        k: activations (and patches) per channel.
        method: ``"deconvnet"``, ``"guided_backprop"`` or ``"both"``.
        max_channels: channels per layer when ``channels`` is not given.
        max_batch: images per forward when scanning (and rows per projection pass / 4); default: sized by
            :func:`~lightning_cnnviz.core.passes.pass_size` from the model's activations and the device's memory.
        thumbnail_px: largest side of a stored evolution thumbnail.
        max_evolution_columns: columns the evolution keeps.
        module: the part of the model fed the probe images (default: the model, or its backbone when the model
            transforms its input before its first conv, as a detector's resize does: :class:`~lightning_cnnviz.core
            .trunk.ImageEntry`).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> gallery = TopPatchGallery(layers=["2"], k=2)
        >>> gallery.configure(net)
        >>> images = torch.randn(6, 1, 12, 12)
        >>> gallery.prepare(net, images[:1])
        True
        >>> tops = gallery.scan(net, images)
        >>> sorted(gallery.pictures(net, "2", tops["2"], images, caption="call 1"))
        ['cnnviz/evolution/2', 'cnnviz/top_patches/2']
    """

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        k: int = 9,
        method: Method = "deconvnet",
        max_channels: int = 16,
        max_batch: int | None = None,
        thumbnail_px: int = 48,
        max_evolution_columns: int = 24,
        module: str | None = None,
    ) -> None:
        self.entry = ImageEntry(WHO, module)
        self._part: nn.Module | None = None
        self.layers = [layers] if isinstance(layers, str) else (list(layers) if layers is not None else None)
        if self.layers is not None and not self.layers:
            raise ValueError(f"{WHO}: `layers` is empty; pass module names or None for the default.")
        if channels is not None and not isinstance(channels, Mapping):
            channels = [int(c) for c in channels]
        self.channels = channels
        self.k = check_positive_int(WHO, "k", k)
        self.method: Method = check_choice(WHO, "method", method, METHODS)
        self.max_channels = check_positive_int(WHO, "max_channels", max_channels)
        self.max_batch = None if max_batch is None else check_positive_int(WHO, "max_batch", max_batch)
        self.thumbnail_px = check_positive_int(WHO, "thumbnail_px", thumbnail_px)
        self.max_evolution_columns = check_positive_int(WHO, "max_evolution_columns", max_evolution_columns)
        self.history = EvolutionHistory(self.max_evolution_columns, self.thumbnail_px)
        self.chosen_layers: list[str] = []
        self.chosen_channels: dict[str, list[int]] = {}
        self.fields: dict[str, ReceptiveField] = {}
        self.unfollowed = False
        self.last_top: dict[str, TopActivations] = {}

    @property
    def methods(self) -> tuple[ReluRule, ...]:
        return ("deconvnet", "guided_backprop") if self.method == "both" else (self.method,)

    def configure(self, model: nn.Module) -> None:
        """Choose the layers of ``model`` (ValueError for an unknown one, or a ``channels`` mapping that names a
        layer not watched); the receptive fields are measured again by :meth:`prepare`."""
        self.entry.check(model)
        self.chosen_layers = self.layers if self.layers is not None else default_layers(model)
        resolve_modules(model, self.chosen_layers, what=f"{WHO} `layers`", extra_valid=())
        if isinstance(self.channels, Mapping):
            unknown = [name for name in self.channels if name not in self.chosen_layers]
            if unknown:
                raise ValueError(
                    f"{WHO}: `channels` names {unknown[0]!r}, which is not a monitored layer; the layers are "
                    f"{format_names(self.chosen_layers)}."
                )
        self.fields = {}
        self.unfollowed = False  # no chosen layer's receptive field can be followed: nothing is drawn

    def fed(self, model: nn.Module, example: Tensor, guard: Guard | None = None) -> nn.Module:
        """The part of ``model`` that takes ``example``-like images (:class:`~lightning_cnnviz.core.trunk.ImageEntry`;
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
        left out and ``say`` is told why (default: a warning). ``measure(receptive_fields, model, layers,
        example)`` measures them again for a new image size (a caller's error policy). True when ready. Chooses
        the layers first (:meth:`configure`) when no layers are chosen yet."""
        if self.unfollowed:
            return False
        if not self.chosen_layers:
            self.configure(model)
        size = (example.shape[-2], example.shape[-1])
        if self.fields and next(iter(self.fields.values())).input_size == size:
            return True
        tell = say or (lambda message: warnings.warn(f"{WHO}: {message}", stacklevel=2))
        followed = self._follow(model, example, tell) if not self.fields else None
        if self.unfollowed:
            return False
        shapes: dict[str, tuple[int, ...]] = {}
        with evaluating(model):
            try:
                run_to(model, example[:1], self.chosen_layers, lambda n, o: shapes.update({n: feature_map(n, o).shape}))
            except ValueError as error:
                raise ValueError(f"{WHO}: {error}") from None
        self.chosen_channels = {name: self._channels_of(name, shapes[name][1]) for name in self.chosen_layers}
        if followed is None:  # a new input size: the same layers, measured again
            run = measure or (lambda function, *args: function(*args))
            followed = run(receptive_fields, model, self.chosen_layers, example[:1])
        self.fields = followed or {}
        return bool(self.fields)

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
                f"{WHO}: channel {bad[0] if bad else None} of layer {name!r} is out of range; the layer has "
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
                fields.update(receptive_fields(model, [name], example[:1]))
            except ValueError as error:
                reasons[name] = str(error).removeprefix("receptive_fields: ")
        if not reasons:
            return fields
        said = "; ".join(f"{name!r}: {reason}" for name, reason in reasons.items())
        if self.layers is not None:
            raise ValueError(
                f"{WHO}: the receptive field of {said}, so its top patches cannot be cropped. Choose other `layers` "
                "(conv layers before the unsupported operation)."
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

    def layer_panels(self, model: nn.Module, name: str, top: TopActivations, probe: Tensor) -> dict[str, Tensor]:
        """Per projection method and ``"patches"``: (C, k, 3, h, w) tiles in [0, 1] of one layer's top-``k``
        (``top.images`` index ``probe``)."""
        device = next(iter(model.parameters()), torch.empty(0)).device
        field = self.fields[name]
        count, k = top.values.shape
        rows = top.valid.flatten().nonzero().flatten().to(device)
        # the images of the k activations per channel, not the whole probe
        images = probe[top.images.flatten().cpu().clamp_min(0)].to(device)
        channels = top.channels.to(device).repeat_interleave(k)
        ys, xs = top.ys.flatten().to(device), top.xs.flatten().to(device)
        panels: dict[str, Tensor] = {}
        where = (images[rows], channels[rows], ys[rows], xs[rows])
        expected, rules = top.values.flatten().to(device)[rows], self.methods
        rows_per_pass = None if self.max_batch is None else max(1, self.max_batch // 4)
        projected = project_activations(
            model, name, *where, rules=rules, field=field, expected=expected, max_batch=rows_per_pass
        )
        for method in self.methods:
            projections = torch.zeros_like(images)
            projections[rows] = projected[method]
            crops = signed_display(crop_patches(projections, field, ys.cpu(), xs.cpu()))
            panels[method] = crops.unflatten(0, (count, k))
        shown = normalize_per_item(images.float())  # per image, so the same as normalising the probe first
        patches = crop_patches(shown, field, ys.cpu(), xs.cpu())
        patches = to_rgb(patches)
        panels["patches"] = patches.unflatten(0, (count, k))
        return panels

    def pictures(
        self,
        model: nn.Module,
        name: str,
        top: TopActivations,
        probe: Tensor,
        caption: str,
        step: int | None = None,
        panels: dict[str, Tensor] | None = None,
    ) -> dict[str, Tensor]:
        """One layer's top-patches picture and its evolution, with this call's column added (``caption`` over
        it; ``step`` the training step, which a later column of the same step replaces). ``panels``: the layer's
        :meth:`layer_panels` when the caller has them already (they are computed otherwise)."""
        panels = panels if panels is not None else self.layer_panels(model, name, top, probe)
        image = render_top_patches(panels, top.valid, top.channels.tolist())
        blank = ~top.valid[:, 0].to(panels["patches"].device)
        strongest = panels[self.methods[0]][:, 0].masked_fill(blank[:, None, None, None], 1.0)
        self.history.add(name, caption, strongest, step)
        thumbnails, captions = self.history.stacked(name)
        evolution = render_evolution(thumbnails, captions, self.chosen_channels[name])
        return {f"cnnviz/top_patches/{name}": image, f"cnnviz/evolution/{name}": evolution}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict.get("history", {}))

    def top(
        self, model: nn.Module, probe: Tensor, moment: Moment, guard: Guard, ranks: Ranks, service: ProbeService | None
    ) -> tuple[dict[str, TopActivations] | None, Tensor]:
        """The top-``k`` of every chosen channel over ``probe`` (a scan another monitor made at this step when the
        ``service`` has one that covers them), and the probe images they index. Each rank scans its shard and the
        shards merge: a collective under several processes. None when the scan failed on a rank."""

        def compute() -> dict[str, TopActivations] | None:
            device = next(iter(model.parameters()), torch.empty(0)).device
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

        if service is None:
            return compute(), probe
        return service.scan(moment.step, self.chosen_channels, self.k, probe, compute)

    def snapshot(
        self,
        model: nn.Module,
        probe: Probe,
        moment: Moment,
        *,
        guard: Guard | None = None,
        ranks: Ranks | None = None,
        service: ProbeService | None = None,
    ) -> Snapshot:
        """Every chosen layer's top patches and evolution (this moment's column added), drawn on rank zero; the
        scan is shared over the ranks (a collective) and with the ``service``'s other monitors. Kept in
        :attr:`last_top` (on the host)."""
        guard, ranks, shot = guard or Guard(WHO), ranks or Ranks.single(), Snapshot()
        device = next(iter(model.parameters()), torch.empty(0)).device
        part = guard.run("top patches", self.fed, model, probe.images[:1].to(device), guard)
        if part is None:
            return shot
        model = part
        measure = functools.partial(guard.run, "receptive fields")
        if not self.prepare(model, probe.images[:1].to(device), say=guard.once, measure=measure):
            return shot
        tops, images = self.top(model, probe.images, moment, guard, ranks, service)
        inf, nan = float("inf"), float("nan")  # -inf marks an empty slot (fewer positions than k), not divergence
        values = [top.values.nan_to_num(nan=nan, posinf=inf, neginf=0.0) for top in (tops or {}).values()]
        if tops is None or not guard.finite(values, what="the probe's activations", moment=moment):
            return shot
        self.last_top = {name: top.to("cpu") for name, top in tops.items()}
        if not ranks.is_zero:
            return shot
        caption = self.history.caption(moment.epoch, moment.step)
        for name, top in tops.items():
            draw = functools.partial(self.pictures, model, name, top, images, caption, moment.step)
            shot.images.update(guard.run(f"top patches of {name}", draw) or {})
        return shot
