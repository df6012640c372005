"""OcclusionMonitor's logic, Trainer-free: Zeiler & Fergus's whole occlusion figure (their Fig. 7), read on the grid
of occluder positions, inside the network as well as at its output."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_positive_int
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.plots import OcclusionRow, render_occlusion_rows
from lightning_cnnviz.core.inputs.probe import Probe, ProbeService
from lightning_cnnviz.core.inputs.task import (
    TASKS,
    Task,
    describe_labels,
    label_kind,
    main_class,
)
from lightning_cnnviz.core.methods.perturbation.occlusion import (
    Baseline,
    OcclusionMemo,
    Occlusions,
    default_window,
    occlude,
    occlusion_grid,
)
from lightning_cnnviz.core.methods.top_patches import feature_map, project_activations
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import class_name, evaluating, logits_of, model_device, resolve_modules, run_to
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.monitors.activation_atlas import last_conv_block
from lightning_cnnviz.core.monitors.perturbation.answers import answer_of
from lightning_cnnviz.core.protocol import Guard, Snapshot

__all__ = ["OcclusionFigure"]

CLASS_TASKS = ("classification", "multilabel", "segmentation")  # where (d) and (e) mean something


@dataclass(frozen=True)
class Panels:
    """What one rank measured for its images: per image and occluder position the strongest map's total (b), the
    probability of the class (d) and the most probable class (e) (NaN and -1 where they do not apply), and per
    image the strongest channel and the unoccluded values."""

    b: Tensor  # (n, P)
    d: Tensor  # (n, P)
    e: Tensor  # (n, P) long
    channel: Tensor  # (n,) long
    clean: Tensor  # (n, 3): b, d, e of the unoccluded image

    def packed(self) -> Tensor:
        return torch.cat([self.b, self.d, self.e.float(), self.channel[:, None].float(), self.clean], dim=1)

    @classmethod
    def unpacked(cls, rows: Tensor) -> Panels:
        """The panels :meth:`packed` into ``rows`` (n, 3 P + 4)."""
        p = (rows.shape[1] - 4) // 3
        return cls(rows[:, :p], rows[:, p : 2 * p], rows[:, 2 * p : 3 * p].long(), rows[:, 3 * p].long(),
                   rows[:, 3 * p + 1 :])  # fmt: skip


class OcclusionFigure:
    """Zeiler & Fergus's occlusion figure (2013, Fig. 7), one row per probe image: [image | (b) | (c) | (d) | (e)],
    tag ``cnnviz/occlusion/<layer>``. A square filled with the image's mean colour slides over the image (the
    window SaliencyMonitor's occlusion uses) and, at each position of the square:

    * (b) the total activation of the strongest map of ``layer`` (the strongest on the unoccluded image), as a heat
      map on the grid of positions, scaled per image (the caption gives the range and the unoccluded total); the
      default layer is the last conv layer's activation (after its nonlinearity, as Zeiler & Fergus's maps are:
      before it, most totals are negative);
    * (c) that map's strongest activation on the unoccluded image projected to pixels (TopPatchMonitor's deconvnet
      or guided backprop), the receptive field of the activation framed;
    * (d) the probability of the true class (the predicted one without labels), on a fixed 0-to-1 scale;
    * (e) the most probable class, as a label map with a legend.

    The forwards are shared with SaliencyMonitor's occlusion when both draw the same images at one step with the
    same square (the probe service's :class:`~lightning_cnnviz.core.methods.perturbation.occlusion.OcclusionMemo`).

    Tasks: classification as above; multilabel reads the sigmoid of the top true class and the top class; for
    segmentation (d) is the mean probability of each pixel's true class (its predicted class on the unoccluded
    image without masks) and (e) the class predicted on most pixels other than the background; for other tasks
    (and detectors, whose probe images go into the backbone) (d) and (e) do not apply and the rows hold (b) and
    (c), said once. 1-D and 3-D networks: it does not apply.

    Args:
        layer: the layer whose maps (b) and (c) read (default: the last conv layer's activation: the activation
            module it feeds, else the innermost block holding it, as the activation atlas's).
        patch, stride: the square's side and step (default: a quarter of the image's side, a quarter of that).
        baseline: what fills the square: ``"mean"`` (each image's mean colour) or a number.
        projection: (c)'s rule, ``"deconvnet"`` (Zeiler & Fergus's) or ``"guided_backprop"``.
        task: as SaliencyMonitor's (``"auto"`` decides from the labels, else the output).
        class_names: names of the classes in captions and legends.
        module: the part of the model fed the probe images (as TopPatchMonitor's).
        min_px: each panel is enlarged to at least this size.

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 3))
        >>> figure = OcclusionFigure()
        >>> figure.attach(net, torch.rand(1, 1, 16, 16))
        >>> shot = figure.snapshot(net, Probe(torch.rand(2, 1, 16, 16)), Context(Moment(epoch=0, step=0)))
        >>> list(shot.images)
        ['cnnviz/occlusion/1']
    """

    what = "the occlusion figure"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        layer: str | None = None,
        patch: int | None = None,
        stride: int | None = None,
        baseline: Baseline = "mean",
        projection: Literal["deconvnet", "guided_backprop"] = "deconvnet",
        task: Task = "auto",
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        min_px: int = 96,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__
        if layer is not None and not isinstance(layer, str):
            raise ValueError(f"{who}: `layer` is a module name or None, got {layer!r}.")
        self.layer = layer
        self.patch = None if patch is None else check_positive_int(who, "patch", patch)
        self.stride = None if stride is None else check_positive_int(who, "stride", stride)
        if self.patch is not None and self.stride is not None and self.stride > self.patch:
            raise ValueError(f"{who}: `stride` ({stride}) must not exceed `patch` ({patch}).")
        if baseline != "mean" and not (isinstance(baseline, (int, float)) and not isinstance(baseline, bool)):
            raise ValueError(f"{who}: `baseline` can be 'mean' or a number, got {baseline!r}.")
        self.baseline = baseline
        self.projection = check_choice(who, "projection", projection, ("deconvnet", "guided_backprop"))
        self.task = check_choice(who, "task", task, ("auto", *TASKS))
        self.class_names = list(class_names) if class_names is not None else None
        self.min_px = check_positive_int(who, "min_px", min_px)
        self.entry = ImageEntry(who, module)
        self.chosen: str | None = None  # the layer, once attached with an example
        self._memo: OcclusionMemo | None = None  # the run's shared occluded forwards, once shared
        self._found: tuple[int, str] | None = None  # (id of the part, its default layer)
        self.last: Panels | None = None  # what the latest figure drew (every image, on rank zero)

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check ``layer`` and ``module`` against ``model`` (ValueError naming its modules); DoesNotApply for a
        model without 2-D convolutions."""
        LayerMap.of(model).need_images()
        self.entry.check(model)
        if self.layer is not None:
            resolve_modules(model, [self.layer], what=f"{self.who} `layer`")
        self.chosen = self.layer
        if example is not None and example.dim() == 4:
            self.chosen = self.layer_of(self.entry.of(model, example), example)
        if self._memo is not None and self.chosen is not None:
            self._memo.want([self.chosen])

    def layer_of(self, part: nn.Module, example: Tensor) -> str:
        """The layer (b) and (c) read on ``part`` (the model, or the part the images go into), found once per part."""
        if self.layer is not None:
            return self.layer
        if self._found is None or self._found[0] != id(part):
            self._found = (id(part), last_conv_block(part, example[:1]))
        return self._found[1]

    def share(self, shared: ProbeService) -> None:
        """Ask the run's other pictures to read this figure's layer when they occlude the probe first (now, or once
        an example batch tells the default layer)."""
        self._memo = shared.occlusions
        if self.chosen is not None:
            shared.occlusions.want([self.chosen])

    def window(self, images: Tensor) -> tuple[int, int]:
        """The square's side and step for ``images``."""
        return default_window(images.shape[-2:], self.patch, self.stride)

    def measure(
        self, model: nn.Module, images: Tensor, labels: Tensor | None, context: Context, guard: Guard
    ) -> tuple[Panels, str]:
        """Panels (b), (d), (e) of ``images`` (this rank's share) and what (d) reads, in words."""
        layer = self.layer_of(model, images)
        patch, stride = self.window(images)
        answer = answer_of(model, images, labels, self.task, self.class_names)
        d: Tensor | None
        e: Tensor | None
        clean_d: Tensor | None
        clean_e: Tensor | None
        if answer.target is not None and answer.probability is not None:
            classes = answer.target.classes
            assert classes is not None
            memo = context.shared.occlusions.at(context.moment.step)
            found = memo.occlude(model, images, patch=patch, stride=stride, baseline=self.baseline, layers=[layer])
            probabilities = answer.probability(found.outputs["logits"])
            clean = answer.probability(found.clean["logits"])
            picked = classes[:, None, None].expand(-1, probabilities.shape[1], 1)
            d, e = probabilities.gather(2, picked)[..., 0], probabilities.argmax(dim=2)
            clean_d, clean_e = clean.gather(1, classes[:, None])[:, 0], clean.argmax(dim=1)
            said = f"p({answer.target.rule})"
        elif answer.task == "segmentation" and answer.main is not None and answer.main.dim() == 4:
            found, said = self._segmentation(model, images, labels, answer.main, layer, patch, stride)
            d, e = found.outputs["probability"], found.outputs["class"]
            clean_d, clean_e = found.clean["probability"], found.clean["class"]
        else:
            guard.inform(f"panels (d) and (e) read class probabilities, and the task is {answer.task}: the figure "
                         "shows (b) and (c).")  # fmt: skip
            found = occlude(model, images, patch=patch, stride=stride, baseline=self.baseline, layers=[layer])
            d = e = clean_d = clean_e = None
            said = ""
        totals, clean_totals = found.totals[layer], found.clean_totals[layer]
        channel = clean_totals.argmax(dim=1)
        b = totals.gather(2, channel[:, None, None].expand(-1, totals.shape[1], 1))[..., 0]
        missing, none = torch.full_like(b, float("nan")), torch.full_like(b, -1, dtype=torch.long)
        panels = Panels(
            b.float(), missing if d is None else d.float(), none if e is None else e.long(),
            channel, torch.stack([clean_totals.gather(1, channel[:, None])[:, 0].float(),
                                  (missing[:, 0] if clean_d is None else clean_d.float()),
                                  (missing[:, 0] if clean_e is None else clean_e.float())], dim=1),
        )  # fmt: skip
        return panels, said

    def _segmentation(
        self, model: nn.Module, images: Tensor, labels: Tensor | None, main: Tensor, layer: str, patch: int,
        stride: int,
    ) -> tuple[Occlusions, str]:  # fmt: skip
        """Occluded forwards of a segmentation network: the mean probability of each pixel's true class and the
        class predicted on most pixels other than the background."""
        masks = labels.to(images.device).long() if label_kind(labels, len(images)) == "mask" else None  # type: ignore[union-attr]
        said = "mean p(true class of each pixel)"
        if masks is None or masks.shape[1:] != main.shape[2:]:
            masks, said = main.argmax(dim=1), "mean p(unoccluded prediction of each pixel)"
        classes = main.shape[1]

        def probability(output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
            scores = logits_of(output).softmax(dim=1)
            return scores.gather(1, masks[rows][:, None]).flatten(1).mean(dim=1)

        def majority(output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
            return main_class(logits_of(output).argmax(dim=1), classes)

        reads = {"probability": probability, "class": majority}
        found = occlude(model, images, patch=patch, stride=stride, baseline=self.baseline, reads=reads, layers=[layer])
        return found, said

    def strongest(self, model: nn.Module, images: Tensor, layer: str, channel: Tensor) -> tuple[Tensor, Tensor]:
        """Where ``channel[i]`` of ``layer`` is largest on ``images[i]``: (ys, xs)."""
        captured: dict[str, Tensor] = {}
        with evaluating(model):
            run_to(model, images, [layer], captured.__setitem__)
        maps = feature_map(layer, captured[layer])
        rows = torch.arange(len(images), device=maps.device)
        chosen = maps[rows, channel.to(maps.device)].flatten(1).argmax(dim=1)
        return chosen // maps.shape[-1], chosen % maps.shape[-1]

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The figure of the probe: each rank measures its share of the images (a collective gathers them); rank
        zero projects (c) and draws."""
        guard, ranks, shot = context.guard, context.ranks, Snapshot()
        if probe is None or probe.images.dim() != 4:
            return shot
        device = model_device(model)
        part = guard.run("the occlusion figure", self.entry.of, model, probe.images[:1].to(device), guard)
        if part is None:
            return shot
        layer = self.layer_of(part, probe.images[:1].to(device))
        context.shared.occlusions.want([layer])
        shard, rows = probe.shard(ranks)
        labels = None if probe.labels is None else probe.labels[rows].to(device)
        measured = guard.run("the occlusion figure", self.measure, part, shard.to(device), labels, context, guard)
        patch, stride = self.window(probe.images)
        joined = ranks.join_rows(None if measured is None else measured[0].packed(), len(probe.images))
        if measured is None or joined is None:
            return shot  # every rank returns here alike
        panels = Panels.unpacked(joined)
        if not ranks.is_zero or not guard.finite(panels.b, what="the occlusion figure's activations",
                                                 moment=context.moment):  # fmt: skip
            return shot
        self.last = panels
        drawn = guard.run("the occlusion figure picture", self.picture, part, probe, panels, layer, measured[1])
        if drawn is not None:
            shot.images[f"cnnviz/occlusion/{layer}"] = drawn
            shot.captions[f"cnnviz/occlusion/{layer}"] = (
                f"Zeiler & Fergus occlusion of {len(probe.images)} probe images at {layer} ({patch} px square, "
                f"{stride} px step)"
            )
        return shot

    def picture(self, model: nn.Module, probe: Probe, panels: Panels, layer: str, said: str) -> Tensor:
        """The (3, H, W) figure: rows of [image | (b) | (c) | (d) | (e)]."""
        device = model_device(model)
        images = probe.images.to(device)
        ys, xs = self.strongest(model, images, layer, panels.channel)
        try:
            fields = LayerMap.of(model).receptive_fields(model, [layer], images[:1])
        except ValueError:  # a geometry it cannot follow (upsampling, ...): projected on the whole image, no frame
            fields = {}
        projected = project_activations(model, layer, images, panels.channel, ys, xs, rules=(self.projection,),
                                        field=fields.get(layer))[self.projection]  # fmt: skip
        grid = occlusion_grid(images.shape[-2:], *self.window(images))
        truth = describe_labels(probe.labels, self.class_names) or [""] * len(images)
        rows = []
        for i in range(len(images)):
            box = fields[layer].box(int(ys[i]), int(xs[i])) if layer in fields else None
            has_class = bool(panels.e[i, 0] >= 0)
            predicted = class_name(int(panels.clean[i, 2]), self.class_names) if has_class else ""
            said_row = ([f"true {truth[i]}"] if truth[i] else []) + ([f"pred {predicted}"] if predicted else [])
            rows.append(OcclusionRow(
                image=images[i].cpu(), b=panels.b[i].view(grid).cpu(), projection=projected[i].cpu(),
                d=panels.d[i].view(grid).cpu() if has_class else None,
                e=panels.e[i].view(grid).cpu() if has_class else None,
                channel=int(panels.channel[i]), clean_b=float(panels.clean[i, 0]),
                clean_d=float(panels.clean[i, 1]), box=box,
                caption="\n".join(said_row),
            ))  # fmt: skip
        return render_occlusion_rows(rows, layer=layer, said=said, class_names=self.class_names, min_px=self.min_px)

    def state_dict(self) -> dict[str, Any]:
        """Nothing to resume: every figure is drawn from the model as it is."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Nothing to restore."""
