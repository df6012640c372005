"""InvarianceMonitor's logic, Trainer-free: Zeiler & Fergus's invariance curves (their Fig. 5) for a few probe
images, and one number per layer and transformation to watch invariance grow over training."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_choice, check_names
from lightning_cnnviz.core.context import Context
from lightning_cnnviz.core.drawing.plots import render_curves
from lightning_cnnviz.core.inputs.probe import Probe
from lightning_cnnviz.core.inputs.task import TASKS, Task, describe_labels
from lightning_cnnviz.core.methods.perturbation.invariance import (
    TRANSFORMATIONS,
    UNITS,
    Invariance,
    distance_between_images,
    invariance,
    transformation_values,
)
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import model_device, resolve_modules
from lightning_cnnviz.core.model.trunk import ImageEntry
from lightning_cnnviz.core.monitors.perturbation.answers import answer_of
from lightning_cnnviz.core.protocol import Snapshot

__all__ = ["InvarianceCurves"]


class InvarianceCurves:
    """Zeiler & Fergus's invariance curves (2013, Fig. 5) of a few probe images under a vertical ``translation``
    (up to 27% of the side either way), a ``scale`` (1 to 1.8) and a ``rotation`` (0 to 350 degrees in steps of
    10), zero padding throughout (zero pixels, so through the data's normalisation where it is known): per
    transformation, one picture ``cnnviz/invariance/<transformation>`` with the Euclidean distance between the
    features of the transformed and of the original image, divided by the original's norm so that layers compare,
    at the first conv layer and at the code layer, and the probability of the true class (the predicted class
    without labels; classification and multilabel only), one line per image; and one scalar per layer and
    transformation, ``cnnviz/invariance/<transformation>/<layer>``, the area under the mean normalised distance
    curve over the range scaled to [0, 1], which falls as the layer grows invariant (every call's areas are kept in
    ``history``, saved in checkpoints). A dashed line in each distance
    panel gives the layer's mean normalised distance between two different probe images: the scale to read a curve
    against (a layer that barely moves under a transformation but barely moves between images either, as an untrained
    network's code, is insensitive rather than invariant).

    Args:
        transformations: any of ``"translation"``, ``"scale"``, ``"rotation"``.
        layers: module names whose outputs are compared (default: the first ``nn.Conv2d`` and the code layer:
            the input of the last ``nn.Linear``, else the last conv's output).
        task: as SaliencyMonitor's (``"auto"`` decides from the labels, else the output).
        class_names: names of the classes in the legend.
        module: the part of the model fed the probe images (as TopPatchMonitor's).

    Example:
        >>> from lightning_cnnviz.core import Context, Moment
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 3))
        >>> curves = InvarianceCurves()
        >>> curves.attach(net, torch.rand(1, 1, 16, 16))
        >>> shot = curves.snapshot(net, Probe(torch.rand(2, 1, 16, 16)), Context(Moment(epoch=0, step=0)))
        >>> sorted(shot.images), sorted(shot.scalars)[:2]
        (['cnnviz/invariance/rotation', 'cnnviz/invariance/scale', 'cnnviz/invariance/translation'], \
['cnnviz/invariance/rotation/0', 'cnnviz/invariance/rotation/4'])
    """

    what = "the invariance curves"  # what a log of it draws, in words (said when it takes long)

    def __init__(
        self,
        *,
        transformations: Sequence[str] = TRANSFORMATIONS,
        layers: Sequence[str] | None = None,
        task: Task = "auto",
        class_names: Sequence[str] | None = None,
        module: str | None = None,
        who: str | None = None,
    ) -> None:
        self.who = who = who or type(self).__name__
        if isinstance(transformations, str):
            transformations = (transformations,)
        unknown = [t for t in transformations if t not in TRANSFORMATIONS]
        if unknown or not transformations:
            raise ValueError(f"{who}: unknown transformation {unknown[0] if unknown else None!r} in `transformations`; "
                             f"the transformations are {', '.join(map(repr, TRANSFORMATIONS))}.")  # fmt: skip
        self.transformations = tuple(transformations)
        self.layers = check_names(who, "layers", layers, "module names")
        self.task = check_choice(who, "task", task, ("auto", *TASKS))
        self.class_names = list(class_names) if class_names is not None else None
        self.entry = ImageEntry(who, module)
        self.last: dict[str, Invariance] | None = None  # the latest curves (every image, on rank zero)
        self.between: dict[str, float] = {}  # the latest distances between images, by layer (rank zero)
        self.history: list[tuple[int, int, dict[str, float]]] = []  # (epoch, step, areas by tag) of every call

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        """Check ``layers`` and ``module`` against ``model`` (ValueError naming its modules); DoesNotApply for a
        model without 2-D convolutions."""
        LayerMap.of(model).need_images()
        self.entry.check(model)
        if self.layers:
            resolve_modules(model, list(self.layers), what=f"{self.who} `layers`")

    def read(self, model: nn.Module) -> list[tuple[str, bool]]:
        """The layers compared, each with whether its input (the code of a classifier) is read rather than its
        output."""
        if self.layers:
            return [(name, False) for name in self.layers]
        found = LayerMap.of(model)
        code = found.code
        return [(found.first, False)] + ([code] if code[0] != found.first else [])

    def curves(
        self, model: nn.Module, images: Tensor, labels: Tensor | None, context: Context
    ) -> tuple[dict[str, Invariance], str]:
        """Every transformation's curves of ``images`` (this rank's share), and what the probability reads."""
        answer = answer_of(model, images, labels, self.task, self.class_names)
        classes = None if answer.target is None else answer.target.classes
        rule = "" if answer.target is None else answer.target.rule
        if answer.target is None:
            context.guard.inform(f"the probability curve reads class scores, and the task is {answer.task}: the "
                                 "curves show the layers' distances only.")  # fmt: skip
        fill = context.scale.to_model(images.new_zeros(1, images.shape[1], 1, 1)).view(-1)
        layers = self.read(model)
        found = {kind: invariance(model, images, kind, layers, classes=classes, probability=answer.probability,
                                  fill=fill) for kind in self.transformations}  # fmt: skip
        return found, rule

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        """The curves of the probe: each rank transforms its share of the images (a collective gathers the
        curves); rank zero draws them and the areas."""
        guard, ranks, shot = context.guard, context.ranks, Snapshot()
        if probe is None or probe.images.dim() != 4:
            return shot
        device = model_device(model)
        part = guard.run("the invariance curves", self.entry.of, model, probe.images[:1].to(device), guard)
        if part is None:
            return shot
        shard, rows = probe.shard(ranks)
        labels = None if probe.labels is None else probe.labels[rows].to(device)
        measured = guard.run("the invariance curves", self.curves, part, shard.to(device), labels, context)
        local = None if measured is None else self._packed(measured[0])
        joined = ranks.join_rows(local, len(probe.images))
        if measured is None or joined is None:
            return shot  # every rank returns here alike
        everything = self._unpacked(joined, measured[0])
        if not ranks.is_zero or not guard.finite(joined, what="the invariance curves", moment=context.moment):
            return shot
        self.last = everything
        self.between = guard.run("the invariance curves' scale", distance_between_images, part, probe.images.to(device),
                                self.read(part)) or {}  # fmt: skip
        names = describe_labels(probe.labels, self.class_names) or [f"image {i}" for i in range(len(probe.images))]
        names = [f"{i}: {name}" for i, name in enumerate(names)]
        areas = {f"cnnviz/invariance/{kind}/{layer}": found.area(layer)
                 for kind, found in everything.items() for layer in found.distances}  # fmt: skip
        shot.scalars.update(areas)
        self.history.append((context.moment.epoch, context.moment.step, areas))
        for kind, found in everything.items():
            drawn = guard.run("the invariance pictures", self.picture, kind, found, names, measured[1])
            if drawn is not None:
                shot.images[f"cnnviz/invariance/{kind}"] = drawn
                shot.captions[f"cnnviz/invariance/{kind}"] = (
                    f"{kind}: normalised feature distances and class probability of {len(probe.images)} probe images"
                )
        return shot

    def picture(self, kind: str, found: Invariance, names: Sequence[str], rule: str) -> Tensor:
        """One transformation's curves side by side: each layer's normalised distance, then the probability."""
        panels = [(f"{layer}: |f(Tx) - f(x)| / |f(x)|, area {found.area(layer):.3f}", values)
                  for layer, values in found.distances.items()]  # fmt: skip
        references: list[tuple[float, str] | None] = [
            (self.between[layer], f"between images {self.between[layer]:.2f}") if layer in self.between else None
            for layer in found.distances
        ]
        if found.probability is not None:
            panels.append((f"p({rule})", found.probability))
        return render_curves(found.values, panels, xlabel=UNITS[kind], names=names, title=f"invariance: {kind}",
                             references=references)  # fmt: skip

    @staticmethod
    def _packed(found: dict[str, Invariance]) -> Tensor:
        parts = []
        for curves in found.values():
            parts += list(curves.distances.values())
            if curves.probability is not None:
                parts.append(curves.probability)
        return torch.cat(parts, dim=1).float()

    @staticmethod
    def _unpacked(rows: Tensor, like: dict[str, Invariance]) -> dict[str, Invariance]:
        found, start = {}, 0
        for kind, curves in like.items():
            steps = len(transformation_values(kind))
            distances = {}
            for layer in curves.distances:
                distances[layer], start = rows[:, start : start + steps], start + steps
            probability = None
            if curves.probability is not None:
                probability, start = rows[:, start : start + steps], start + steps
            found[kind] = Invariance(curves.values, distances, probability)
        return found

    def state_dict(self) -> dict[str, Any]:
        """The areas of every call so far (``history``): a resumed run goes on from them."""
        return {"history": [[epoch, step, dict(areas)] for epoch, step, areas in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the areas of earlier calls."""
        self.history = [(int(epoch), int(step), {str(tag): float(area) for tag, area in areas.items()})
                        for epoch, step, areas in state.get("history", [])]  # fmt: skip
