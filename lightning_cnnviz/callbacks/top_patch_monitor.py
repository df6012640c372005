"""TopPatchMonitor: Zeiler & Fergus's top-9 patches per filter with their projections, tracked across epochs."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor, nn
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy, check_choice, check_positive_int
from lightning_cnnviz.callbacks._probe import ProbeSet, all_gather
from lightning_cnnviz.core._images import images_from_batch, normalize_per_item
from lightning_cnnviz.core._model import conv_layers, evaluating, format_names, resolve_modules, run_to
from lightning_cnnviz.core.history import EvolutionHistory
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
    top_activations,
)

__all__ = ["TopPatchMonitor", "default_channels", "default_layers"]

Method = Literal["deconvnet", "guided_backprop", "both"]
METHODS = ("deconvnet", "guided_backprop", "both")


def default_layers(model: nn.Module, count: int = 3) -> list[str]:
    """``count`` conv layers spread over depth (first, middle, last), preferring kernels larger than 1x1 (the
    1x1 projections of residual shortcuts are skipped when there are enough others)."""
    convs = conv_layers(model)
    spatial = [name for name, conv in convs.items() if max(conv.kernel_size) > 1]
    names = spatial if len(spatial) >= min(count, len(convs)) else list(convs)
    if len(names) <= count:
        return names
    picks = sorted({round(i * (len(names) - 1) / (count - 1)) for i in range(count)}) if count > 1 else [0]
    return [names[i] for i in picks]


def default_channels(num_channels: int, count: int = 16) -> list[int]:
    """Up to ``count`` channel indices evenly spread over ``range(num_channels)``, first and last included."""
    if num_channels <= count:
        return list(range(num_channels))
    return sorted({round(i * (num_channels - 1) / (count - 1)) for i in range(count)})


class TopPatchMonitor(EpochMonitor):
    """The top-``k`` probe patches of chosen filters beside their projections to pixel space, every N epochs.

    What it draws (Zeiler & Fergus 2013, arXiv 1311.2901):

    * ``cnnviz/top_patches/<layer>`` (Fig. 2): per chosen channel, the projections of its ``k`` strongest
      activations over the probe set (at most one per image), cropped to their receptive fields and drawn as
      ``0.5 + p / (2 max |p|)``, beside the image patches; with ``method="both"`` deconvnet and guided backprop
      (Springenberg et al. 2014) side by side.
    * ``cnnviz/evolution/<layer>`` (Fig. 4): channels x logged epochs, each cell the projection of the channel's
      strongest activation (:class:`~lightning_cnnviz.core.EvolutionHistory`, saved in checkpoints).

    The probe set is the first ``probe_size`` images of the first validation pass (else the first training
    batches). Under DDP every rank scans its shard and the per-rank top-``k`` merge into the single-process
    result; rank zero projects and draws.

    Args:
        layers: module names with (N, C, H, W) outputs; default: three conv layers across depth
            (:func:`default_layers`).
        channels: channel indices for every layer, or a mapping layer -> indices; default: up to
            ``max_channels`` evenly spread channels of each layer.
        k: activations (and patches) per channel.
        probe_size: probe images.
        every_n_epochs: log every this many epochs (and after the last one).
        method: ``"deconvnet"``, ``"guided_backprop"`` or ``"both"``.
        max_channels: channels per layer when ``channels`` is not given.
        max_batch: images per forward when scanning the probe set (and rows per projection pass / 4).
        thumbnail_px: largest side of a stored evolution thumbnail.
        max_evolution_columns: columns the evolution keeps.
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
        self.layers = [layers] if isinstance(layers, str) else (list(layers) if layers is not None else None)
        if self.layers is not None and not self.layers:
            raise ValueError("TopPatchMonitor: `layers` is empty; pass module names or None for the default.")
        if channels is not None and not isinstance(channels, Mapping):
            channels = [int(c) for c in channels]
        self.channels = channels
        self.k = check_positive_int(self._who, "k", k)
        self.method: Method = check_choice(self._who, "method", method, METHODS)
        self.max_channels = check_positive_int(self._who, "max_channels", max_channels)
        self.max_batch = check_positive_int(self._who, "max_batch", max_batch)
        self.thumbnail_px = check_positive_int(self._who, "thumbnail_px", thumbnail_px)
        self.max_evolution_columns = check_positive_int(self._who, "max_evolution_columns", max_evolution_columns)
        self.history = EvolutionHistory(self.max_evolution_columns, self.thumbnail_px)
        self._layers: list[str] = []
        self._channels: dict[str, list[int]] = {}
        self._fields: dict[str, ReceptiveField] = {}
        self.last_top: dict[str, TopActivations] = {}

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, k=self.k, method=self.method)

    @property
    def methods(self) -> tuple[ReluRule, ...]:
        return ("deconvnet", "guided_backprop") if self.method == "both" else (self.method,)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self._layers = self.layers if self.layers is not None else default_layers(pl_module)
        resolve_modules(pl_module, self._layers, what="TopPatchMonitor `layers`", extra_valid=())
        if isinstance(self.channels, Mapping):
            unknown = [name for name in self.channels if name not in self._layers]
            if unknown:
                raise ValueError(
                    f"TopPatchMonitor: `channels` names {unknown[0]!r}, which is not a monitored layer; the layers "
                    f"are {format_names(self._layers)}."
                )
        if stage == "fit":
            self._fields = {}
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor) and example.dim() == 4:
            self._prepare(pl_module, example.to(pl_module.device))

    def _prepare(self, pl_module: pl.LightningModule, example: Tensor) -> bool:
        """Channel choice and receptive fields from one example, before any training step. A channel out of
        range, or a layer named in ``layers`` whose receptive field cannot be followed, is a configuration error
        and raises; a default layer that cannot be followed is left out, said once with the reason. True when
        ready."""
        size = (example.shape[-2], example.shape[-1])
        if self._fields and next(iter(self._fields.values())).input_size == size:
            return True
        followed = self._follow(pl_module, example) if not self._fields else None
        shapes: dict[str, tuple[int, ...]] = {}
        with evaluating(pl_module):
            try:
                run_to(pl_module, example[:1], self._layers, lambda n, o: shapes.update({n: feature_map(n, o).shape}))
            except ValueError as error:
                raise ValueError(f"TopPatchMonitor: {error}") from None
        channels: dict[str, list[int]] = {}
        for name in self._layers:
            count = shapes[name][1]
            if self.channels is None:
                chosen = default_channels(count, self.max_channels)
            elif isinstance(self.channels, Mapping):
                chosen = [int(c) for c in self.channels.get(name, default_channels(count, self.max_channels))]
            else:
                chosen = list(self.channels)
            bad = [c for c in chosen if not 0 <= c < count]
            if bad or not chosen:
                raise ValueError(
                    f"TopPatchMonitor: channel {bad[0] if bad else None} of layer {name!r} is out of range; the "
                    f"layer has {count} channels, so indices 0..{count - 1} are allowed."
                )
            channels[name] = chosen
        self._channels = channels
        if followed is None:  # a new input size: the same layers, measured again
            followed = self._run("receptive fields", receptive_fields, pl_module, self._layers, example[:1])
        self._fields = followed or {}
        return bool(self._fields)

    def _follow(self, pl_module: pl.LightningModule, example: Tensor) -> dict[str, ReceptiveField]:
        """Each layer's receptive field, measured one layer at a time so that one that cannot be followed is named
        with its reason; such a default layer is left out (said once), a named one raises."""
        fields: dict[str, ReceptiveField] = {}
        reasons: dict[str, str] = {}
        for name in self._layers:
            try:
                fields.update(receptive_fields(pl_module, [name], example[:1]))
            except ValueError as error:
                reasons[name] = str(error).removeprefix("receptive_fields: ")
        if not reasons:
            return fields
        said = "; ".join(f"{name!r}: {reason}" for name, reason in reasons.items())
        if self.layers is not None or len(reasons) == len(self._layers):
            raise ValueError(
                f"TopPatchMonitor: the receptive field of {said}, so its top patches cannot be cropped. Choose "
                "other `layers` (conv layers before the unsupported operation)."
            )
        rank_zero_warn(f"TopPatchMonitor: leaving out default layer(s) whose receptive field is unknown: {said}.")
        self._layers = [name for name in self._layers if name not in reasons]
        return fields

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if not self._fields and batch_idx == 0:  # check the configuration before any training has happened
            images = images_from_batch(batch, who=self._who, batch_to_images=self.batch_to_images)
            self._prepare(pl_module, images[:1])
        super().on_train_batch_start(trainer, pl_module, batch, batch_idx)

    def scan(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> dict[str, TopActivations] | None:
        """Top-``k`` of every layer over the probe set; under DDP each rank scans a shard and the shards merge.

        A collective under DDP (call it on every rank). None when a rank failed (all ranks then agree)."""
        assert self.probe.images is not None
        device, world = pl_module.device, trainer.world_size
        shard, indices = (t.to(device) for t in self.probe.shard(trainer.global_rank, world))
        layers = dict(self._channels)
        result = self._run(
            "top patches scan",
            lambda: top_activations(
                pl_module, layers, shard, k=self.k, image_indices=indices, max_batch=self.max_batch
            ),
        )
        if world == 1:
            return result
        ok = torch.tensor([0 if result is None else 1], device=device)
        local = result or {n: StreamingTopK(c, self.k, device).result() for n, c in self._channels.items()}
        packed: dict[str, Tensor] = {"ok": ok}
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

    def render_layer(self, pl_module: pl.LightningModule, name: str, top: TopActivations) -> tuple[Tensor, Tensor]:
        """(top-patches image, evolution thumbnails (C, 3, h, w) in [0, 1]) of one layer."""
        panels = self.layer_panels(pl_module, name, top)
        image = render_top_patches(panels, top.valid, top.channels.tolist())
        blank = ~top.valid[:, 0].to(panels["patches"].device)
        return image, panels[self.methods[0]][:, 0].masked_fill(blank[:, None, None, None], 1.0)

    def layer_panels(self, pl_module: pl.LightningModule, name: str, top: TopActivations) -> dict[str, Tensor]:
        """Per projection method and ``"patches"``: (C, k, 3, h, w) tiles in [0, 1] of one layer's top-``k``."""
        assert self.probe.images is not None
        device = pl_module.device
        field = self._fields[name]
        count, k = top.values.shape
        rows = top.valid.flatten().nonzero().flatten().to(device)
        # the images of the k activations per channel, not the whole probe
        images = self.probe.images[top.images.flatten().cpu().clamp_min(0)].to(device)
        channels = top.channels.to(device).repeat_interleave(k)
        ys, xs = top.ys.flatten().to(device), top.xs.flatten().to(device)
        panels: dict[str, Tensor] = {}
        where = (images[rows], channels[rows], ys[rows], xs[rows])
        expected, rules = top.values.flatten().to(device)[rows], self.methods
        projected = project_activations(
            pl_module, name, *where, rules=rules, field=field, expected=expected, max_batch=max(1, self.max_batch // 4)
        )
        for method in self.methods:
            projections = torch.zeros_like(images)
            projections[rows] = projected[method]
            crops = signed_display(crop_patches(projections, field, ys.cpu(), xs.cpu()))
            panels[method] = crops.unflatten(0, (count, k))
        shown = normalize_per_item(images.float())  # per image, so the same as normalising the probe first
        patches = crop_patches(shown, field, ys.cpu(), xs.cpu())
        patches = patches.expand(-1, 3, -1, -1) if patches.shape[1] == 1 else patches[:, :3]
        panels["patches"] = patches.unflatten(0, (count, k))
        return panels

    def evolution_image(self, name: str) -> Tensor:
        thumbnails, captions = self.history.stacked(name)
        return render_evolution(thumbnails, captions, self._channels[name])

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe.images is None:
            return
        if not self._prepare(pl_module, self.probe.images[:1].to(pl_module.device)):
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
        epoch = trainer.current_epoch
        caption = self.history.caption(epoch, trainer.global_step)
        for name, top in tops.items():

            def draw(name: str = name, top: TopActivations = top) -> None:
                image, strongest = self.render_layer(pl_module, name, top)
                sink.image(f"cnnviz/top_patches/{name}", image, epoch)
                self.history.add(name, caption, strongest, trainer.global_step)
                sink.image(f"cnnviz/evolution/{name}", self.evolution_image(name), epoch)

            self._run(f"top patches of {name}", draw)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "history": self.history.state_dict()}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.history.load_state_dict(state_dict.get("history", {}))
