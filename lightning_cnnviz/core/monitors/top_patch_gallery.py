"""TopPatchMonitor's logic, Trainer-free: the top-k probe patches of chosen channels beside their projections to
pixel space, and their evolution over calls."""

from __future__ import annotations

import functools
from typing import Any

from torch import Tensor, nn
from typing_extensions import Unpack

from lightning_cnnviz.core.checks import check_choice, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.history import EvolutionHistory
from lightning_cnnviz.core.drawing.render import render_evolution, render_top_patches
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.methods.saliency import ReluRule
from lightning_cnnviz.core.methods.top_patches import TopActivations
from lightning_cnnviz.core.model.modules import model_device
from lightning_cnnviz.core.monitors.selection import PROJECTIONS, ChannelSelection, Projection, SelectionArguments
from lightning_cnnviz.core.protocol import Snapshot

__all__ = ["TopPatchGallery"]



class TopPatchGallery:
    """Zeiler & Fergus (2013, arXiv 1311.2901) for chosen filters: per channel, the projections of its ``k``
    strongest activations over the probe images (at most one per image), cropped to their receptive fields and
    drawn as ``0.5 + p / (2 max |p|)``, beside the image patches (Fig. 2), deconvnet or guided backprop
    (Springenberg et al. 2014) or both; and channels x calls, each cell the projection of the channel's strongest
    activation (Fig. 4, :class:`.EvolutionHistory`). Tags ``cnnviz/top_patches/<layer>`` and
    ``cnnviz/evolution/<layer>``.

    Args:
        layers, channels, k, max_channels, max_batch, module: which channels, and how they are scanned
            (:class:`~lightning_cnnviz.core.ChannelSelection`): module names with (N, C, H, W) outputs (default:
            three conv layers across depth), channel indices for every layer or a mapping layer -> indices (default:
            up to ``max_channels`` evenly spread), activations (and patches) per channel, images per forward when
            scanning (default: sized by memory), the part of the model fed the probe images.
        method: ``"deconvnet"``, ``"guided_backprop"`` or ``"both"``.
        thumbnail_px: largest side of a stored evolution thumbnail.
        max_evolution_columns: columns the evolution keeps.

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
        >>> gallery = TopPatchGallery(layers=["2"], k=2)
        >>> gallery.attach(net, torch.randn(1, 1, 12, 12))
        >>> shot = gallery.snapshot(net, Probe(torch.randn(6, 1, 12, 12)), Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images)
        ['cnnviz/evolution/2', 'cnnviz/top_patches/2']
    """

    what = "the top-9 patches and their projections"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        method: Projection = "deconvnet",
        thumbnail_px: int = 48,
        max_evolution_columns: int = 24,
        who: str | None = None,
        **selection: Unpack[SelectionArguments],
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.selection = ChannelSelection(**selection, who=who)
        self.layers, self.k = self.selection.layers, self.selection.k
        self.method: Projection = check_choice(who, "method", method, tuple(PROJECTIONS))
        self.thumbnail_px = check_positive_int(who, "thumbnail_px", thumbnail_px)
        self.max_evolution_columns = check_positive_int(who, "max_evolution_columns", max_evolution_columns)
        self.history = EvolutionHistory(self.max_evolution_columns, self.thumbnail_px)
        self.last_top: dict[str, TopActivations] = {}

    @property
    def methods(self) -> tuple[ReluRule, ...]:
        return PROJECTIONS[self.method]

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Choose the layers (and, given ``example``, the channels) of ``model``: :meth:`ChannelSelection.attach
        <lightning_cnnviz.core.ChannelSelection.attach>`."""
        self.selection.attach(model, example)

    def layer_panels(self, model: nn.Module, name: str, top: TopActivations, probe: Tensor) -> dict[str, Tensor]:
        """Per projection method and ``"patches"``: (C, k, 3, h, w) tiles in [0, 1] of one layer's top-``k``."""
        return self.selection.layer_panels(model, name, top, probe, self.methods)

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
        evolution = render_evolution(thumbnails, captions, self.selection.chosen_channels[name])
        return {f"cnnviz/top_patches/{name}": image, f"cnnviz/evolution/{name}": evolution}

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history.state_dict()}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history.load_state_dict(state_dict.get("history", {}))

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """Every chosen layer's top patches and evolution (this moment's column added), drawn on rank zero; the
        scan is shared over the ranks (a collective) and with the context's other pictures. Kept in
        :attr:`last_top` (on the host)."""
        guard, ranks, moment, shot = context.guard, context.ranks, context.moment, Snapshot()
        if probe is None:
            return shot
        selection = self.selection
        part = selection.ready(model, probe.images[:1].to(model_device(model)), guard)
        if part is None:
            return shot
        model = part
        tops, images = selection.top(model, probe.images, context)
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
            drawn = guard.run(f"top patches of {name}", draw) or {}
            shot.images.update(drawn)
            shot.captions.update({tag: f"{name}: top-{self.k} patches of its channels" for tag in drawn})
        return shot
