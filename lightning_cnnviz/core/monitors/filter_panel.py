"""FilterMonitor's logic, Trainer-free: conv layers' filters as an image grid, and their smoothness."""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_names, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.filters import (
    Normalization,
    filter_smoothness,
    render_filter_grid,
    render_filter_slices,
)
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.model.layers import CONVS, LayerMap
from lightning_cnnviz.core.model.modules import resolve_modules
from lightning_cnnviz.core.protocol import DoesNotApply, Snapshot

__all__ = ["FilterPanel"]

SLICE_FILTERS, SLICE_INPUTS = 16, 32  # the filters and input slices a deeper layer's slice picture shows



class FilterPanel:
    """FilterMonitor's logic, Trainer-free: conv layers' filters as an image grid (:func:`render_filter_grid`)
    and their smoothness (:func:`filter_smoothness`), ``cnnviz/filters/<layer>`` and
    ``cnnviz/filters/smoothness/<layer>``; for a deeper Conv2d layer (one that reads neither 1 nor 3 channels), also
    its filters with their input slices, ``cnnviz/filters/slices/<layer>`` (:func:`render_filter_slices`: a filter
    per row, at most 16 filters and 32 slices, said when capped).

    Args:
        layers: ``nn.Conv1d``/``nn.Conv2d``/``nn.Conv3d`` module names; ``None`` means the first of them.
        normalize: ``"per_filter"`` (each filter stretched to its own range) or ``"global"`` (one for the layer).
        max_filters: draw at most this many output filters per layer.
        min_tile_px: upscale kernels (nearest neighbour) until a tile is at least this many pixels wide.
        slices: draw a deeper layer's input slices too.

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 5), nn.ReLU())
        >>> shot = FilterPanel().snapshot(net, None, Context(Moment(epoch=0, step=0)))
        >>> tuple(shot.images["cnnviz/filters/0"].shape), sorted(shot.scalars)
        ((3, 154, 154), ['cnnviz/filters/smoothness/0'])
    """

    what = "the filters"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        layers: Sequence[str] | None = None,
        normalize: Normalization = "per_filter",
        max_filters: int = 64,
        min_tile_px: int = 48,
        slices: bool = True,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__  # the name its messages start with
        self.layers = check_names(who, "layers", layers)
        self.normalize: Normalization = check_choice(who, "normalize", normalize, ("per_filter", "global"))
        self.max_filters = check_positive_int(who, "max_filters", max_filters)
        self.min_tile_px = check_positive_int(who, "min_tile_px", min_tile_px)
        self.slices = bool(slices)

    def convs(self, model: nn.Module) -> dict[str, nn.Module]:
        """The watched layers of ``model`` (ValueError naming the valid ones for a wrong name, or when it has no
        convolution)."""
        if self.layers is None:
            convs = LayerMap.of(model).convs
            if not convs:
                raise ValueError(f"{self.who}: {type(model).__name__} has no nn.Conv1d, nn.Conv2d or nn.Conv3d layer.")
            first = next(iter(convs.values()))
            return {first.name: first.module}
        return resolve_modules(model, self.layers, what=f"{self.who} `layers`", kinds=CONVS)

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check the ``layers`` of ``model`` (ValueError naming the valid ones); DoesNotApply for a model without
        a convolution."""
        if not LayerMap.of(model).convs:
            kinds = "nn.Conv1d, nn.Conv2d, nn.Conv3d"
            raise DoesNotApply(f"it draws the filters of convolutions ({kinds}), and {type(model).__name__} has none.")
        self.convs(model)

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """Every watched layer's filter grid and smoothness (from the weights alone: no probe, no forward)."""
        guard, shot = context.guard, Snapshot()
        scores: dict[str, Tensor] = {}
        draw = functools.partial(render_filter_grid, normalize=self.normalize, max_filters=self.max_filters,
                                 min_tile_px=self.min_tile_px)  # fmt: skip
        for name, conv in self.convs(model).items():
            weight = conv.weight.detach()  # type: ignore[operator]
            grid = guard.run(f"filter image of {name!r}", draw, weight)
            if grid is not None:
                shot.images[f"cnnviz/filters/{name}"] = grid
                shot.captions[f"cnnviz/filters/{name}"] = f"{name}: {weight.shape[0]} filters ({self.normalize} scale)"
            if self.slices and weight.dim() == 4 and weight.shape[1] not in (1, 3):
                guard.run(f"filter slices of {name!r}", self.draw_slices, shot, name, weight, guard)
            score = guard.run(f"smoothness of {name!r}", filter_smoothness, weight)
            if score is not None:
                scores[name] = score
        if scores:
            values = torch.stack(list(scores.values())).cpu().tolist()  # one host copy for all layers
            shot.scalars.update(
                {f"cnnviz/filters/smoothness/{n}": v for n, v in zip(scores, values) if v == v}  # NaN: no 2-D slice
            )
        return shot

    def draw_slices(self, shot: Snapshot, name: str, weight: Tensor, guard: Any) -> None:
        """``cnnviz/filters/slices/<name>``: the layer's filters with their input slices, capped and said."""
        count, inputs = min(weight.shape[0], SLICE_FILTERS), min(weight.shape[1], SLICE_INPUTS)
        tag = f"cnnviz/filters/slices/{name}"
        shot.images[tag] = render_filter_slices(weight, normalize=self.normalize, max_filters=SLICE_FILTERS,
                                                max_inputs=SLICE_INPUTS)  # fmt: skip
        shot.captions[tag] = f"{name}: {count} of {len(weight)} filters (rows), {inputs} of {weight.shape[1]} inputs"
        if (count, inputs) != tuple(weight.shape[:2]):
            guard.inform(f"{tag} shows the first {count} of {weight.shape[0]} filters with their first {inputs} of "
                         f"{weight.shape[1]} input slices.")  # fmt: skip

    def state_dict(self) -> dict[str, Any]:
        """Nothing to resume: every picture is drawn from the model as it is."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
