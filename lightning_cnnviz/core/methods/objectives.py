"""What an optimised image maximises, as values that compose (Lucent's ``objectives``): a neuron, a channel, a whole
layer (DeepDream's), a class logit, a class probability, a direction in a layer's activation space; their sums,
differences and scalings. Each gives one score per image of a batch, so that a batch of images is optimised for a
batch of objectives at once (image ``i`` for class ``i``, channel ``i``, ...).

Olah, Mordvintsev and Schubert (2017), "Feature Visualization" (Distill): the objectives; Simonyan, Vedaldi and
Zisserman (2013): class models maximise the class score, not its probability (the probability can rise by lowering
the other classes' scores); Mordvintsev et al. (2015): DeepDream's layer objective; Carter et al. (2019): the
direction objective of the activation atlas.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

__all__ = [
    "OUTPUT", "Objective", "channel", "class_logit", "class_probability", "direction", "direction_scores", "diversity",
    "layer", "neuron",
]  # fmt: skip

#: The name under which an objective reads the model's output (its class scores).
OUTPUT = "<output>"


@dataclass(frozen=True)
class Term:
    """One elementary objective: ``kind`` read at ``layer`` (``OUTPUT`` for class scores), for ``index`` (a channel or
    class per image, or one for all), at ``position`` (a neuron's (y, x); the centre when None; for a direction,
    None is the mean over positions and () the centre), or along ``vector``
    (a direction: (C,) for all images or (N, C) one per image, its dot product weighted by the cosine to the power
    ``power``)."""

    kind: str
    layer: str
    index: tuple[int, ...] = ()
    position: tuple[int, ...] | None = None
    vector: Tensor | None = field(default=None, compare=False)
    power: float = 0.0

    def indices(self, count: int, device: torch.device) -> Tensor:
        """Each image's channel or class (one given for all images is broadcast)."""
        if len(self.index) not in (1, count):
            raise ValueError(f"the {self.kind} objective of {self.layer!r} names {len(self.index)} indices for "
                             f"{count} images: give one, or one per image.")  # fmt: skip
        chosen = torch.as_tensor(self.index, device=device)
        return chosen.expand(count) if len(self.index) == 1 else chosen

    def value(self, outputs: Mapping[str, Tensor]) -> Tensor:
        """Its score per image, (N,)."""
        found = outputs[self.layer]
        count, device = found.shape[0], found.device
        rows = torch.arange(count, device=device)
        if self.kind == "layer":  # DeepDream: the mean squared activation
            return found.float().pow(2).flatten(1).mean(dim=1)
        if self.kind == "diversity":
            return gram_similarity(found, self.index[0])
        if self.kind == "direction":
            assert self.vector is not None
            vector = self.vector.to(device=device, dtype=found.dtype)
            vector = vector.expand(count, -1) if vector.dim() == 1 else vector
            shape = (count, vector.shape[1], *([1] * (found.dim() - 2)))
            dot = direction_scores(found, vector.reshape(shape), self.power)
            if self.position is not None and dot.dim() > 1:  # one position: (), the centre, or (y, x)
                where = self.position or tuple(side // 2 for side in dot.shape[1:])
                return dot[(rows, *(torch.tensor(i, device=device) for i in where))]
            return dot.flatten(1).mean(dim=1)
        picked = found[rows, self.indices(count, device)]  # (N, *spatial) or (N,)
        if self.kind == "logit":
            return picked
        if self.kind == "probability":
            return found.float().softmax(dim=1)[rows, self.indices(count, device)]
        if self.kind == "neuron" and picked.dim() > 1:
            where = self.position if self.position is not None else tuple(side // 2 for side in picked.shape[1:])
            return picked[(rows, *(torch.tensor(i, device=device) for i in where))]
        return picked.flatten(1).mean(dim=1) if picked.dim() > 1 else picked

    def describe(self) -> str:
        if self.kind in ("logit", "probability"):
            return f"class {self.kind} {list(self.index) if len(self.index) > 1 else self.index[0]}"
        if self.kind == "diversity":
            return f"diversity {self.layer} (groups of {self.index[0]})"
        if self.kind in ("layer", "direction"):
            return f"{self.kind} {self.layer}"
        place = "" if self.position is None else f" at {self.position}"
        return f"{self.kind} {self.layer}:{list(self.index) if len(self.index) > 1 else self.index[0]}{place}"


def direction_scores(found: Tensor, vector: Tensor, power: float = 0.0) -> Tensor:
    """The direction objective at each position: the dot product over dimension 1 of activations ``found`` with
    ``vector`` (broadcast against them), times their cosine floored at 0.1 to the ``power`` (Lucid's ``cossim_pow``;
    0: the dot product alone)."""
    dot = (found * vector).sum(dim=1)
    if power:
        norms = (found.norm(dim=1) + 1e-4) * (vector.norm(dim=1) + 1e-4)
        dot = dot * (dot / norms).clamp_min(0.1).pow(power)
    return dot


def gram_similarity(activations: Tensor, group: int) -> Tensor:
    """Per image (N,), the mean cosine similarity of its Gram matrix (channels x channels, over positions) with those
    of the other images of its group (``group`` consecutive images; N a multiple of it): Olah et al. (2017)'s
    diversity term, which a batch of images of one objective lowers to look
    different (Lucid's ``diversity``). 0 for a group of one."""
    count = activations.shape[0]
    if group < 1 or count % group:
        raise ValueError(f"the diversity objective groups {group} images, and a batch of {count} is not made of them.")
    flat = activations.float().flatten(2)  # (N, C, positions)
    grams = torch.nn.functional.normalize((flat @ flat.transpose(1, 2)).flatten(1), dim=1)
    grams = grams.view(count // group, group, -1)
    similar = grams @ grams.transpose(1, 2)  # (groups, group, group)
    others = (similar.sum(dim=2) - similar.diagonal(dim1=1, dim2=2)) / max(group - 1, 1)
    return others.flatten()


@dataclass(frozen=True)
class Objective:
    """A score per image to maximise: a weighted sum of elementary terms. Objectives add, subtract and scale
    (``channel("conv3", 5) - 0.5 * layer("conv2")``); :attr:`layers` are the outputs a forward must capture
    (:data:`OUTPUT` for the model's output).

    Example:
        >>> outputs = {"conv": torch.arange(8.0).view(1, 2, 2, 2), OUTPUT: torch.tensor([[1.0, 3.0]])}
        >>> (channel("conv", 1) + 2 * class_logit(0))(outputs).tolist()  # mean(4, 5, 6, 7) + 2 * 1
        [7.5]
        >>> str(channel("conv", 1) - layer("conv"))
        'channel conv:1 - layer conv'
    """

    terms: tuple[tuple[float, Term], ...]

    @property
    def layers(self) -> tuple[str, ...]:
        """The outputs the terms read, in order, each once."""
        return tuple(dict.fromkeys(term.layer for _, term in self.terms))

    @property
    def needs_output(self) -> bool:
        """Whether a term reads the model's output (the forward must run to the end)."""
        return OUTPUT in self.layers

    def __call__(self, outputs: Mapping[str, Tensor]) -> Tensor:
        total: Tensor | None = None
        for weight, term in self.terms:
            value = term.value(outputs).float() * weight
            total = value if total is None else total + value
        assert total is not None
        return total

    def __add__(self, other: Objective) -> Objective:
        return Objective(self.terms + other.terms)

    def __sub__(self, other: Objective) -> Objective:
        return self + (-1.0) * other

    def __mul__(self, scale: float) -> Objective:
        return Objective(tuple((weight * float(scale), term) for weight, term in self.terms))

    __rmul__ = __mul__

    def __neg__(self) -> Objective:
        return self * -1.0

    def __truediv__(self, scale: float) -> Objective:
        return self * (1.0 / float(scale))

    def __str__(self) -> str:
        parts = []
        for weight, term in self.terms:
            sign = "-" if weight < 0 else "+"
            size = abs(weight)
            text = term.describe() if size == 1 else f"{size:g} * {term.describe()}"
            parts.append((sign, text))
        first = ("-" if parts[0][0] == "-" else "") + parts[0][1]
        return " ".join([first, *(f"{sign} {text}" for sign, text in parts[1:])])


def _indices(value: int | Sequence[int]) -> tuple[int, ...]:
    found = (value,) if isinstance(value, int) else tuple(int(v) for v in value)
    if not found or any(not isinstance(v, int) or v < 0 for v in found):
        raise ValueError(f"an objective's index is a channel or class number >= 0, or one per image; got {value!r}.")
    return found


def neuron(layer: str, index: int | Sequence[int], position: tuple[int, ...] | None = None) -> Objective:
    """The activation of channel ``index`` of ``layer`` at ``position`` ((y, x) in a 2-D map; default its centre)."""
    return Objective(((1.0, Term("neuron", layer, _indices(index), position)),))


def channel(layer: str, index: int | Sequence[int]) -> Objective:
    """The mean activation of channel ``index`` of ``layer`` over its positions."""
    return Objective(((1.0, Term("channel", layer, _indices(index))),))


def layer(name: str) -> Objective:
    """DeepDream's objective: the mean squared activation of the whole layer ``name``."""
    return Objective(((1.0, Term("layer", name)),))


def class_logit(index: int | Sequence[int]) -> Objective:
    """The model's score (logit) of class ``index``: Simonyan et al.'s class model."""
    return Objective(((1.0, Term("logit", OUTPUT, _indices(index))),))


def class_probability(index: int | Sequence[int]) -> Objective:
    """The softmax probability of class ``index`` (worse images, as the essay notes: it rises as much by lowering the
    other classes)."""
    return Objective(((1.0, Term("probability", OUTPUT, _indices(index))),))


def diversity(layer: str, group: int) -> Objective:
    """The mean cosine similarity of each image's Gram matrix at ``layer`` with those of the other images of its group
    of ``group`` consecutive images (:func:`gram_similarity`). Subtract it to render ``group`` different images of
    one objective: ``channel(l, [c] * 4) - diversity(l, 4)``."""
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"the diversity objective's group is a number of images >= 1, got {group!r}.")
    return Objective(((1.0, Term("diversity", layer, (group,))),))


def direction(
    layer: str, vector: Tensor, cosine_power: float = 0.0, position: str | tuple[int, ...] = "mean"
) -> Objective:
    """The dot product of ``layer``'s activation vector with ``vector`` ((C,), or (N, C) one per image), averaged
    over positions, or at one ``position``: ``"centre"`` or ``(y, x)`` (a neuron, as Lucid's ``direction_neuron``,
    with which Carter et al. render the activation atlas's cells); with ``cosine_power`` p, each position's dot
    product times its cosine with ``vector``, floored at 0.1, to the power p (Lucid's ``cossim_pow``, which favours
    the vector's own direction over the large activations it shares with others)."""
    if position not in ("mean", "centre") and not (isinstance(position, tuple) and position):
        raise ValueError(f"a direction's position is 'mean', 'centre' or a tuple (y, x), got {position!r}.")
    if vector.dim() not in (1, 2):
        raise ValueError(f"a direction is a vector (C,) or one per image (N, C); got shape {tuple(vector.shape)}.")
    if not cosine_power >= 0:
        raise ValueError(f"a direction's cosine_power is a number >= 0, got {cosine_power!r}.")
    where = None if position == "mean" else () if position == "centre" else tuple(int(i) for i in position)
    return Objective(((1.0, Term("direction", layer, position=where, vector=vector.detach(),
                                 power=float(cosine_power))),))  # fmt: skip
