"""Invariance curves (Zeiler & Fergus 2013, Fig. 5): how far a layer's features move, and how the class probability
changes, as an image is translated, scaled or rotated. The transformed copies of an image are made by one batched
``grid_sample`` (torchvision's ``affine`` geometry, zero padding) and run as batched forwards on the model's
device."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnnviz.core.inputs.batches import check_images, in_layout_of
from lightning_cnnviz.core.methods._calls import flat_tensors
from lightning_cnnviz.core.model.modules import evaluating, hooked, logits_of, resolve_modules
from lightning_cnnviz.core.model.passes import even_passes, pass_size

__all__ = [
    "TRANSFORMATIONS", "Invariance", "distance_between_images", "invariance", "transform", "transformation_values"
]  # fmt: skip

TRANSFORMATIONS = ("translation", "scale", "rotation")
UNITS = {"translation": "vertical shift (fraction of the side)", "scale": "scale factor", "rotation": "degrees"}


def transformation_values(kind: str) -> Tensor:
    """The paper's range of a transformation, as a fraction of the image where it has a size: a vertical
    ``translation`` of -27% to 27% of the side (their -60 to 60 pixels of 224) in 13 steps, ``scale`` 1 to 1.8 in
    steps of 0.1, ``rotation`` 0 to 350 degrees in steps of 10.

    Example:
        >>> transformation_values("scale").tolist()[:3], len(transformation_values("rotation"))
        ([1.0, 1.100000023841858, 1.2000000476837158], 36)
    """
    if kind == "translation":
        return torch.linspace(-0.27, 0.27, 13)
    if kind == "scale":
        return torch.linspace(1.0, 1.8, 9)
    if kind == "rotation":
        return torch.arange(0.0, 360.0, 10.0)
    known = ", ".join(map(repr, TRANSFORMATIONS))
    raise ValueError(f"unknown transformation {kind!r}; the transformations are {known}")


def _inverse_matrix(kind: str, value: float, height: int) -> list[float]:
    """torchvision's inverse affine matrix about the image centre (no shear) for one value of ``kind``."""
    angle, translate, scale = 0.0, 0.0, 1.0
    if kind == "translation":
        translate = value * height
    elif kind == "scale":
        scale = value
    else:
        angle = value
    rot = math.radians(angle)
    a, b, c, d = math.cos(rot), -math.sin(rot), math.sin(rot), math.cos(rot)
    matrix = [d / scale, -b / scale, 0.0, -c / scale, a / scale, 0.0]
    matrix[2] -= matrix[1] * translate
    matrix[5] -= matrix[4] * translate
    return matrix


def transform(images: Tensor, kind: str, values: Tensor, fill: Tensor | None = None) -> Tensor:
    """Every image (N, C, H, W) under every value of the transformation ``kind``: (N, T, C, H, W), bilinear, with
    what falls outside the image filled with ``fill`` (C,) (zeros by default), as torchvision's
    ``affine(image, angle, translate, scale, shear=0, interpolation=BILINEAR)`` makes each one: a vertical
    ``translation`` by ``value`` x the height, a ``scale`` about the centre, a ``rotation`` by ``value`` degrees.

    Example:
        >>> transform(torch.rand(2, 3, 8, 8), "rotation", torch.tensor([0.0, 90.0])).shape
        torch.Size([2, 2, 3, 8, 8])
    """
    check_images(images)
    count, channels, height, width = images.shape
    dtype, device = images.dtype, images.device
    theta = torch.tensor([_inverse_matrix(kind, float(v), height) for v in values], dtype=dtype, device=device)
    base = torch.empty(1, height, width, 3, dtype=dtype, device=device)
    base[..., 0].copy_(torch.linspace((1.0 - width) * 0.5, (width - 1.0) * 0.5, steps=width, device=device))
    base[..., 1].copy_(torch.linspace((1.0 - height) * 0.5, (height - 1.0) * 0.5, steps=height, device=device)[:, None])
    base[..., 2].fill_(1)
    rescaled = theta.view(-1, 2, 3).transpose(1, 2) / torch.tensor([0.5 * width, 0.5 * height], dtype=dtype,
                                                                     device=device)  # fmt: skip
    grid = base.view(1, height * width, 3).expand(len(values), -1, -1).bmm(rescaled).view(-1, height, width, 2)
    shift = torch.zeros(channels, dtype=dtype, device=device) if fill is None else fill.to(device, dtype).view(-1)
    centred = images - shift.view(1, -1, 1, 1)
    copies = centred[:, None].expand(-1, len(values), -1, -1, -1).reshape(-1, channels, height, width)
    moved = F.grid_sample(copies, grid.repeat(count, 1, 1, 1), mode="bilinear", padding_mode="zeros",
                          align_corners=False)  # fmt: skip
    return (moved + shift.view(1, -1, 1, 1)).view(count, len(values), channels, height, width)


@dataclass(frozen=True)
class Invariance:
    """One transformation's curves: its ``values`` (T,); per layer, ``distances[layer]`` (N, T) the Euclidean
    distance between the features of each transformed image and of the image itself, divided by the latter's
    norm; ``probability`` (N, T) of each image's class (None without classes)."""

    values: Tensor
    distances: dict[str, Tensor]
    probability: Tensor | None

    def area(self, layer: str) -> float:
        """The area under the mean normalised distance curve of ``layer``, the values scaled to [0, 1]: 0 for
        features that do not move at all."""
        curve = self.distances[layer].float().mean(dim=0)
        return float(torch.trapezoid(curve, dx=1.0 / max(len(curve) - 1, 1))) if len(curve) > 1 else float(curve[0])


class _Reader:
    """Forward hooks that read each ``(layer, read_input)`` of one forward (its first call), flattened per input."""

    def __init__(self, model: nn.Module, layers: Sequence[tuple[str, bool]]) -> None:
        self.model, self.names = model, [name for name, _ in layers]
        modules = resolve_modules(model, self.names, what="layer")
        inputs_of = {name for name, read_input in layers if read_input}
        self.captured: dict[str, Tensor] = {}

        def keep(name: str) -> Callable[..., None]:
            def hook(module: nn.Module, *found: Any) -> None:
                tensor = next(flat_tensors(found[0] if name in inputs_of else found[-1]), None)
                if name not in self.captured and tensor is not None:
                    self.captured[name] = tensor.detach().flatten(1).float()

            return hook

        self.post = [(modules[name], keep(name)) for name in self.names if name not in inputs_of]
        self.pre = [(modules[name], keep(name)) for name in self.names if name in inputs_of]

    def run(self, batch: Tensor) -> tuple[dict[str, Tensor], Tensor]:
        """(features by layer, the logits as floats) of one batch; inside :meth:`hooked`."""
        self.captured.clear()
        output = self.model(batch)
        missing = [name for name in self.names if name not in self.captured]
        if missing:
            raise ValueError(f"layers {missing} are never called by {type(self.model).__name__}.forward")
        return dict(self.captured), logits_of(output).detach().float()

    def hooked(self) -> Any:
        return hooked(self.post, self.pre)


def distance_between_images(
    model: nn.Module, images: Tensor, layers: Sequence[tuple[str, bool]]
) -> dict[str, float]:
    """Per layer, the mean normalised distance between the features of two different images,
    ``|f(x_i) - f(x_j)| / |f(x_i)|`` over ordered pairs: the scale a curve of :func:`invariance` reads against (a
    layer that barely moves under a transformation is invariant only if it moves between images). NaN for one image.

    Example:
        >>> distance_between_images(net, images, [("0", False)])["0"] > 0
        True
    """
    check_images(images)
    reader = _Reader(model, layers)
    with evaluating(model), reader.hooked():
        features, _ = reader.run(images)
    found = {}
    count = len(images)
    for name, values in features.items():
        distances = torch.cdist(values.double(), values.double()) / values.double().norm(dim=1, keepdim=True)
        off = ~torch.eye(count, dtype=torch.bool, device=values.device)
        found[name] = float(distances[off].mean()) if count > 1 else float("nan")
    return found


def invariance(
    model: nn.Module,
    images: Tensor,
    kind: str,
    layers: Sequence[tuple[str, bool]],
    *,
    values: Tensor | None = None,
    classes: Tensor | None = None,
    probability: Callable[[Tensor], Tensor] | None = None,
    fill: Tensor | None = None,
    max_batch: int | None = None,
) -> Invariance:
    """The invariance curves of ``images`` under ``kind`` (default :func:`transformation_values`): features read at
    each ``(layer, read_input)`` (its first output, or its first input for a code read at a classifier's input),
    and, given ``classes``, the ``probability`` (softmax by default) of each image's class. Eval mode, no
    gradients; the images and all their copies run in passes of ``max_batch`` (default:
    :func:`~lightning_cnnviz.core.model.passes.pass_size`), with no host sync between.

    Example:
        >>> found = invariance(net, images, "scale", [("0", False)], classes=torch.tensor([0, 1]))
        >>> tuple(found.distances["0"].shape), float(found.distances["0"][:, 0].abs().max()) < 1e-5
        ((2, 9), True)
    """
    check_images(images)
    values = transformation_values(kind) if values is None else values
    squash = probability or (lambda logits: logits.softmax(dim=1))
    reader = _Reader(model, layers)
    count, steps = len(images), len(values)
    per_pass = max_batch or even_passes(count * steps, pass_size(model, images[:1], minimum=count))
    with evaluating(model), reader.hooked():
        reference, _ = reader.run(images)
        copies = transform(images, kind, values.to(images.device), fill).flatten(0, 1)
        rows = torch.arange(count, device=images.device).repeat_interleave(steps)
        found: dict[str, list[Tensor]] = {name: [] for name in reader.names}
        chances: list[Tensor] = []
        for start in range(0, count * steps, per_pass):
            part = slice(start, start + per_pass)
            features, logits = reader.run(in_layout_of(copies[part], images))
            for name in found:
                base = reference[name][rows[part]]
                found[name].append((features[name] - base).norm(dim=1) / base.norm(dim=1).clamp_min(1e-12))
            if classes is not None:
                chances.append(squash(logits).gather(1, classes.to(logits.device)[rows[part], None])[:, 0])
    distances = {name: torch.cat(parts).view(count, steps) for name, parts in found.items()}
    chance = torch.cat(chances).view(count, steps) if classes is not None else None
    return Invariance(values.cpu(), distances, chance)
