"""Occluded forwards (Zeiler & Fergus 2013): every image under a square at every position of a grid, run as batched
forwards on the model's device. What they give (any read of the output, each channel's total activation at chosen
layers) is kept per image and occluder position, so the occlusion saliency map and the whole occlusion figure are
reductions of one set of forwards, which :class:`OcclusionMemo` shares between two pictures of one step."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.inputs.batches import check_images, in_layout_of
from lightning_cnnviz.core.model.modules import StopForward, evaluating, hooked, logits_of, resolve_modules
from lightning_cnnviz.core.model.passes import activation_bytes, even_passes, pass_size

__all__ = ["OcclusionMemo", "Occlusions", "occlude", "occlusion_masks"]

Read = Callable[[Any, Tensor, Tensor], Tensor]  # (model output, inputs, each input's image index) -> (n, ...)
Baseline = float | Literal["mean"]


def occlusion_masks(height: int, width: int, patch: int, stride: int) -> Tensor:
    """(windows, 1, H, W) bool: every occluding square, row by row, at offsets ``k * stride`` with the last one
    clipped at the border (captum's ``Occlusion`` windows).

    Example:
        >>> occlusion_masks(3, 3, 2, 1).flatten(1).int().tolist()[0]
        [1, 1, 0, 1, 1, 0, 0, 0, 0]
    """
    rows, cols = _covered(height, patch, stride), _covered(width, patch, stride)
    return (rows[:, None, :, None] & cols[None, :, None, :]).reshape(-1, 1, height, width)


def _covered(size: int, patch: int, stride: int) -> Tensor:
    """(windows along the axis, size): which pixels each window covers."""
    starts = torch.arange(math.ceil((size - patch) / stride) + 1 if size > patch else 1) * stride
    pixels = torch.arange(size)
    return (pixels >= starts[:, None]) & (pixels < starts[:, None] + patch)


def occlusion_grid(size: Sequence[int], patch: int, stride: int) -> tuple[int, int]:
    """Positions of the square down and across an image of ``size`` (height, width).

    Example:
        >>> occlusion_grid((64, 64), 16, 4)
        (13, 13)
    """
    return len(_covered(size[0], patch, stride)), len(_covered(size[1], patch, stride))


def check_window(patch: int, stride: int) -> None:
    """ValueError unless ``1 <= stride <= patch``."""
    if patch < 1 or stride < 1 or stride > patch:
        raise ValueError(f"need 1 <= stride <= patch, got patch={patch}, stride={stride}")


def default_window(size: Sequence[int], patch: int | None = None, stride: int | None = None) -> tuple[int, int]:
    """The occluding square's side (default a quarter of the image's shorter side, at least 2) and step (default a
    quarter of the side), as SaliencyMonitor and the occlusion figure take them.

    Example:
        >>> default_window((64, 64)), default_window((28, 28), stride=2)
        ((16, 4), (7, 2))
    """
    patch = patch or max(2, min(size) // 4)
    return patch, stride or max(1, patch // 4)


def fill_of(images: Tensor, baseline: Baseline) -> Tensor:
    """(N, C, 1, 1): what fills the square, each image's per-channel mean or one number."""
    if baseline == "mean":
        return images.mean(dim=(2, 3), keepdim=True)
    if isinstance(baseline, (int, float)) and not isinstance(baseline, bool):
        return images.new_full((*images.shape[:2], 1, 1), float(baseline))
    raise ValueError(f"baseline can be a number or 'mean', got {baseline!r}")


@dataclass(frozen=True)
class Occlusions:
    """The forwards of ``images`` (N, C, H, W) under a ``patch`` x ``patch`` square at each of the ``grid`` positions
    (rows x columns, row by row; P of them): ``outputs[read]`` (N, P, ...) what each read of the output gave for
    every occluded copy and ``clean[read]`` (N, ...) for the images themselves; ``totals[layer]`` (N, P, C) each
    channel's total activation (summed over its map) under every occluder and ``clean_totals[layer]`` (N, C)."""

    images: Tensor
    patch: int
    stride: int
    baseline: Baseline
    grid: tuple[int, int]
    outputs: dict[str, Tensor]
    clean: dict[str, Tensor]
    totals: dict[str, Tensor]
    clean_totals: dict[str, Tensor]

    def parts(self) -> dict[str, dict[str, Tensor]]:
        return {"outputs": self.outputs, "clean": self.clean, "totals": self.totals, "clean_totals": self.clean_totals}

    def joined(self, other: Occlusions) -> Occlusions:
        """These images and then ``other``'s, made with the same square, reads and layers."""
        other_parts = other.parts()
        both = {name: {k: torch.cat([v, other_parts[name][k]]) for k, v in part.items()}
                for name, part in self.parts().items()}  # fmt: skip
        return Occlusions(torch.cat([self.images, other.images]), self.patch, self.stride, self.baseline, self.grid,
                          **both)  # fmt: skip

    def rows(self, index: Tensor) -> Occlusions:
        """The same for the images ``index`` picks."""
        pick = {name: {k: v[index.to(v.device)] for k, v in part.items()} for name, part in self.parts().items()}
        return Occlusions(self.images[index.to(self.images.device)], self.patch, self.stride, self.baseline,
                          self.grid, **pick)  # fmt: skip


def occlude(
    model: nn.Module,
    images: Tensor,
    *,
    patch: int,
    stride: int,
    baseline: Baseline = "mean",
    reads: Mapping[str, Read] | None = None,
    layers: Sequence[str] = (),
    max_batch: int = 64,
    memory_budget: int | None = None,
) -> Occlusions:
    """Run ``model`` (eval mode, no gradients) on ``images`` and on every copy of them with a square of side
    ``patch`` placed at offsets ``k * stride`` (captum's ``Occlusion`` windows, all channels) and filled with
    ``baseline`` (a number, or ``"mean"``: each image's per-channel mean); return what each of ``reads`` takes of
    the output and each channel's total activation at ``layers`` (their first output in a forward, summed over
    positions) for every copy. Copies of several images and positions run together, as many per pass as fit
    ``memory_budget`` bytes of activations (default: :func:`~lightning_cnnviz.core.model.passes.pass_size`, at least one
    copy of every image), with no host sync between; without reads, each forward stops after the last layer.

    Example:
        >>> found = occlude(net, images, patch=4, stride=4, reads={"logits": lambda out, x, rows: out})
        >>> found.grid, tuple(found.outputs["logits"].shape)
        ((2, 2), (2, 4, 2))
    """
    check_images(images)
    check_window(patch, stride)
    reads = dict(reads or {})
    count, _, height, width = images.shape
    masks = occlusion_masks(height, width, patch, stride).to(images.device)
    fill, windows = fill_of(images, baseline), masks.shape[0]
    grid = occlusion_grid((height, width), patch, stride)
    modules = resolve_modules(model, list(layers), what="layer") if layers else {}
    captured: dict[str, Tensor] = {}

    def total(name: str) -> Callable[..., None]:
        def keep(module: nn.Module, args: Any, output: Any) -> None:
            value = logits_of(output)
            if name not in captured:  # a module called twice: its first output, as run_to reads it
                if value.dim() < 3:
                    raise ValueError(f"layer {name!r} gives {tuple(value.shape)}, not one map per channel")
                captured[name] = value.detach().flatten(2).sum(dim=2)
            if not reads and len(captured) == len(modules):
                raise StopForward

        return keep

    def run(inputs: Tensor, rows: Tensor) -> dict[str, Tensor]:
        captured.clear()
        found: dict[str, Tensor] = {}
        with contextlib.suppress(StopForward):
            output = model(inputs)
            found = {name: read(output, inputs, rows).detach() for name, read in reads.items()}
        return {**found, **{f"layer:{name}": captured[name] for name in modules}}

    if memory_budget is not None:
        per_pass = max(1, memory_budget // max(activation_bytes(model, images[:1]), 1))
    else:
        per_pass = even_passes(count * windows, pass_size(model, images[:1], minimum=count))
    indices = torch.arange(count, device=images.device)
    with evaluating(model), hooked([(module, total(name)) for name, module in modules.items()]):
        clean = _joined([run(chunk, rows) for chunk, rows in zip(images.split(max_batch), indices.split(max_batch))])
        parts = []
        for start in range(0, count * windows, per_pass):
            copy = torch.arange(start, min(start + per_pass, count * windows), device=images.device)
            image, window = copy // windows, copy % windows
            occluded = in_layout_of(torch.where(masks[window], fill[image], images[image]), images)
            parts.append(run(occluded, image))
    copies = {name: value.view(count, windows, *value.shape[1:]) for name, value in _joined(parts).items()}
    split = {name[len("layer:"):]: name for name in copies if name.startswith("layer:")}
    return Occlusions(
        images, patch, stride, baseline, grid,
        {name: value for name, value in copies.items() if not name.startswith("layer:")},
        {name: value for name, value in clean.items() if not name.startswith("layer:")},
        {layer: copies[key] for layer, key in split.items()}, {layer: clean[key] for layer, key in split.items()},
    )  # fmt: skip


def _joined(parts: Sequence[dict[str, Tensor]]) -> dict[str, Tensor]:
    return {name: torch.cat([part[name] for part in parts]) for name in parts[0]} if parts else {}


class OcclusionMemo:
    """The latest class-score forwards of occluded probe images, shared by the pictures of one model at one step
    (SaliencyMonitor's occlusion and the occlusion figure): each image occluded with one square is run once. The
    forwards read the logits and the layers any picture asked for (:meth:`want`); a request at another step, or
    with another square or fill, starts afresh; images already run are reused one by one.

    Example:
        >>> memo = OcclusionMemo()
        >>> first = memo.at(step=5).occlude(net, images[:1], patch=4, stride=4)
        >>> both = memo.at(step=5).occlude(net, images, patch=4, stride=4)  # runs the second image only
        >>> again = memo.at(step=5).occlude(net, images[1:], patch=4, stride=4)  # served from the forwards kept
        >>> memo.runs, len(memo.at(step=5).occlude(net, images, patch=4, stride=4).images), memo.runs
        (2, 2, 2)
    """

    def __init__(self) -> None:
        self.layers: set[str] = set()
        self.step: int | None = None
        self.runs = 0  # forwards made (sets of images occluded), for tests and benchmarks
        self._kept: tuple[tuple[Any, ...], Occlusions] | None = None

    def want(self, layers: Sequence[str]) -> None:
        """Read these layers' totals too, from now on (the occlusion figure asks at setup and at every call)."""
        self.layers.update(layers)

    def at(self, step: int) -> OcclusionMemo:
        """This memo at training step ``step``: forwards kept from another step are dropped."""
        if step != self.step:
            self.step, self._kept = step, None
        return self

    def occlude(
        self,
        model: nn.Module,
        images: Tensor,
        *,
        patch: int,
        stride: int,
        baseline: Baseline = "mean",
        layers: Sequence[str] = (),
        max_batch: int = 64,
    ) -> Occlusions:
        """:func:`occlude` of ``images`` reading the logits (``outputs["logits"]``, (N, P, classes)) and the layers
        wanted, from the forwards kept at this step where they hold every image and layer."""
        self.want(layers)
        key = (id(model), patch, stride, baseline, images.shape[1:], images.device)
        wanted = sorted(self.layers)
        kept = self._kept[1] if self._kept is not None and self._kept[0] == key else None
        if kept is None or not set(wanted) <= set(kept.totals):
            made = self._run(model, images, patch, stride, baseline, wanted, max_batch)
            self._kept = (key, made)
            return made
        same = (images.flatten(1)[:, None] == kept.images.flatten(1)[None]).all(dim=2)  # (N, kept)
        missing = ~same.any(dim=1)
        if bool(missing.any()):  # one host sync a request: which images are new
            kept = kept.joined(self._run(model, images[missing], patch, stride, baseline, sorted(kept.totals),
                                         max_batch))  # fmt: skip
            same = (images.flatten(1)[:, None] == kept.images.flatten(1)[None]).all(dim=2)
        self._kept = (key, kept)
        return kept.rows(same.float().argmax(dim=1))

    def _run(self, model: nn.Module, images: Tensor, patch: int, stride: int, baseline: Baseline,
             layers: Sequence[str], max_batch: int) -> Occlusions:  # fmt: skip
        self.runs += 1
        read = {"logits": lambda output, inputs, rows: logits_of(output)}
        return occlude(model, images, patch=patch, stride=stride, baseline=baseline, reads=read, layers=layers,
                       max_batch=max_batch)  # fmt: skip
