"""Zeiler & Fergus 2013 (arXiv 1311.2901) on a probe set: the strongest activations of chosen channels
(:func:`top_activations`, at most one per image as in the paper, deterministic ties, shards that merge into
exactly the one-pass result), their projections to pixel space with the deconvnet or guided-backprop
(Springenberg et al. 2014) ReLU rule (:func:`project_activations`, for ``nn.ReLU``, in-place ReLU and
``F.relu`` alike; parameter ``.grad`` untouched), and the receptive-field patches they come from
(:func:`crop_patches`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.inputs.batches import check_images, in_layout_of
from lightning_cnnviz.core.methods.saliency import ReluGradientRule, ReluRule
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, run_to
from lightning_cnnviz.core.model.passes import pass_size
from lightning_cnnviz.core.model.receptive_field import ReceptiveField

__all__ = ["crop_patches", "project_activations", "top_activations"]


@dataclass
class TopActivations:
    """Per channel, the ``k`` strongest activations, strongest first.

    Attributes:
        channels: (C,) channel indices of the layer.
        values: (C, k) activation values; ``-inf`` where fewer than ``k`` images were seen.
        images: (C, k) image indices (``-1`` for an empty slot).
        ys, xs: (C, k) positions in the layer's feature map.
    """

    channels: Tensor
    values: Tensor
    images: Tensor
    ys: Tensor
    xs: Tensor

    @property
    def valid(self) -> Tensor:
        """(C, k) mask of filled slots."""
        return self.images >= 0

    def to(self, device: torch.device | str) -> TopActivations:
        return TopActivations(*(t.to(device) for t in (self.channels, self.values, self.images, self.ys, self.xs)))


def _ordered(k: int, values: Tensor, images: Tensor, ys: Tensor, xs: Tensor) -> tuple[Tensor, ...]:
    """The first ``k`` candidates per row by value (descending), ties by image index (ascending)."""
    by_image = torch.argsort(torch.where(images < 0, torch.iinfo(torch.long).max, images), dim=1, stable=True)
    values, images, ys, xs = (t.gather(1, by_image) for t in (values, images, ys, xs))
    by_value = torch.argsort(values, dim=1, descending=True, stable=True)[:, :k]
    return tuple(t.gather(1, by_value) for t in (values, images, ys, xs))


class StreamingTopK:
    """Streaming per-channel top-``k`` over batches of activations, at most one entry per image.

    Args:
        channels: the channels to follow.
        k: entries per channel.
        device: where the running state lives (the activations' device).

    Example:
        >>> top = StreamingTopK([0], k=2)
        >>> top.update(torch.tensor([[[[1.0, 5.0]]], [[[3.0, 2.0]]], [[[4.0, 0.0]]]]), torch.arange(3))
        >>> top.result().values.tolist(), top.result().images.tolist(), top.result().xs.tolist()
        ([[5.0, 4.0]], [[0, 2]], [[1, 0]])
    """

    def __init__(self, channels: Sequence[int] | Tensor, k: int = 9, device: torch.device | str | None = None) -> None:
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        self.k = k
        self.channels = torch.as_tensor(channels, dtype=torch.long, device=device).flatten()
        count = self.channels.numel()
        device = self.channels.device
        self.values = torch.full((count, k), float("-inf"), device=device)
        self.images = torch.full((count, k), -1, dtype=torch.long, device=device)
        self.ys = torch.zeros((count, k), dtype=torch.long, device=device)
        self.xs = torch.zeros((count, k), dtype=torch.long, device=device)

    def update(self, activations: Tensor, image_indices: Tensor) -> None:
        """Offer a batch: ``activations`` (B, C_all, H, W) of the layer, ``image_indices`` (B,) of the images."""
        if activations.dim() != 4:
            raise ValueError(f"activations must be (B, C, H, W), got shape {tuple(activations.shape)}")
        act = activations.detach()
        channels = self.channels.to(act.device)
        width = act.shape[-1]
        best, where = act[:, channels].flatten(2).max(dim=2)  # (B, C): first maximum in row-major order
        best = best.float().nan_to_num(nan=float("-inf"))  # a channel with NaN values never ranks
        indices = image_indices.to(self.values.device).long()[None].expand(self.channels.numel(), -1)
        self._offer(best.t(), indices, (where // width).t(), (where % width).t())

    def _offer(self, values: Tensor, images: Tensor, ys: Tensor, xs: Tensor) -> None:
        device = self.values.device
        state = (self.values, self.images, self.ys, self.xs)
        cat = [torch.cat([s, n.to(device)], dim=1) for s, n in zip(state, (values, images, ys, xs))]
        self.values, self.images, self.ys, self.xs = _ordered(self.k, *cat)

    def result(self) -> TopActivations:
        return TopActivations(self.channels, self.values, self.images, self.ys, self.xs)


def merge_top_activations(parts: Sequence[TopActivations], k: int | None = None) -> TopActivations:
    """Merge the results of disjoint image sets (e.g. ranks) into the result of one pass over all of them."""
    if not parts:
        raise ValueError("merge_top_activations needs at least one part")
    channels = parts[0].channels
    if any(not torch.equal(p.channels.cpu(), channels.cpu()) for p in parts):
        raise ValueError("merge_top_activations: the parts follow different channels")
    k = k or parts[0].values.shape[1]
    device = parts[0].values.device
    cat = [torch.cat([getattr(p, f).to(device) for p in parts], dim=1) for f in ("values", "images", "ys", "xs")]
    return TopActivations(channels, *_ordered(k, *cat))


def feature_map(layer: str, output: Tensor) -> Tensor:
    if output.dim() != 4:
        raise ValueError(f"layer {layer!r} gives {tuple(output.shape)}; top patches need a (N, C, H, W) feature map")
    return output


def top_activations(
    model: nn.Module,
    layers: Mapping[str, Sequence[int] | Tensor],
    images: Tensor,
    *,
    k: int = 9,
    image_indices: Tensor | None = None,
    max_batch: int | None = None,
) -> dict[str, TopActivations]:
    """Per layer and chosen channel, the top-``k`` activations over ``images`` (at most one per image).

    Eval mode, no gradients, batches of ``max_batch`` (default: :func:`~lightning_cnnviz.core.model.passes.pass_size`),
    each forward stopped after the deepest chosen layer.
    ``image_indices`` (default ``0..N-1``) name the images in the result, so shards of a probe set can merge.

    Example:
        >>> top_activations(net, {"0": [0, 3]}, images, k=2)["0"].images.shape
        torch.Size([2, 2])
    """
    check_images(images)
    indices = torch.arange(images.shape[0], device=images.device) if image_indices is None else image_indices
    if indices.shape != images.shape[:1]:
        raise ValueError(f"image_indices must have shape ({images.shape[0]},), got {tuple(indices.shape)}")
    tops = {name: StreamingTopK(channels, k, device=images.device) for name, channels in layers.items()}
    max_batch = max_batch or pass_size(model, images[:1])
    with evaluating(model):
        for chunk, chunk_indices in zip(images.split(max_batch), indices.split(max_batch)):

            def offer(name: str, output: Tensor, chunk_indices: Tensor = chunk_indices) -> None:
                tops[name].update(feature_map(name, output), chunk_indices)

            run_to(model, chunk, list(layers), offer)
    return {name: top.result() for name, top in tops.items()}


def _project_rows(
    model: nn.Module,
    layer: str,
    inputs: Tensor,
    channels: Tensor,
    ys: Tensor,
    xs: Tensor,
    rules: Sequence[ReluRule],
    holder: ReluGradientRule,
) -> tuple[list[Tensor], Tensor]:
    """(input gradients per rule, activation values) of one batch of rows, from one forward pass."""
    inputs = inputs.detach().clone().requires_grad_(True)
    captured: dict[str, Tensor] = {}
    run_to(model, inputs, [layer], captured.__setitem__)
    activation = feature_map(layer, captured[layer])
    rows = torch.arange(inputs.shape[0], device=activation.device)
    # clones: index tensors made under inference mode cannot be saved for backward
    where = [t.to(activation.device).clone() for t in (channels, ys, xs)]
    picked = activation[rows, where[0], where[1], where[2]]
    grads = []
    for index, rule in enumerate(rules):
        holder.rule = rule
        (grad,) = torch.autograd.grad(picked.sum(), inputs, retain_graph=index < len(rules) - 1)
        grads.append(grad.contiguous())
    return grads, picked.detach()


def _aligned_crops(field: ReceptiveField, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per row, a crop holding the activation's receptive field that keeps the layer's grid (it starts at a
    multiple of the stride, so pooling windows fall as on the whole image). Along each axis a crop has one of two
    lengths, so rows batch well: the longest the field needs, or a longer one placed against the far edge.
    Returns (starts (B, 2), lengths (B, 2), local ys, local xs in the crop's feature map).
    """
    starts, lengths = [], []
    for axis, positions in enumerate((ys, xs)):
        stride, size = field.stride[axis], field.input_size[axis]
        first = field.offset[axis] + positions * stride
        begin = torch.div(first.clamp_min(0), stride, rounding_mode="floor") * stride
        last = (first + field.size[axis] - 1).clamp_max(size - 1)
        need = int((last - begin + 1).max()) if len(positions) else 1
        edge = min(size, need + (size - need) % stride)  # image - edge is a multiple of the stride
        fits = begin + need <= size
        start = torch.where(fits, begin, torch.full_like(begin, size - edge))
        if edge == size:  # the far-edge crop is the whole axis, which always starts at 0
            start = torch.where(fits, begin, torch.zeros_like(begin))
        starts.append(start)
        lengths.append(torch.where(fits, torch.full_like(begin, need), torch.full_like(begin, edge)))
    start, length = torch.stack(starts, 1), torch.stack(lengths, 1)
    return start, length, ys - start[:, 0] // field.stride[0], xs - start[:, 1] // field.stride[1]


def project_activations(
    model: nn.Module,
    layer: str,
    images: Tensor,
    channels: Tensor,
    ys: Tensor,
    xs: Tensor,
    *,
    rules: Sequence[ReluRule] = ("deconvnet", "guided_backprop"),
    field: ReceptiveField | None = None,
    expected: Tensor | None = None,
    max_batch: int | None = None,
) -> dict[str, Tensor]:
    """Project activation ``(channels[i], ys[i], xs[i])`` of ``layer`` on ``images[i]`` to pixel space, with each
    ReLU backward rule in ``rules``: rule -> (B, C, H, W).

    Each result is the gradient of that single activation with respect to image ``i`` with the ReLU backward rule
    (``"deconvnet"`` or ``"guided_backprop"``) below the layer. Rows are independent (each image is its own batch
    entry), so one backward pass serves a whole batch of pairs, and the rules share one forward, which stops at
    ``layer``. Eval mode with gradients enabled (also under inference mode); training flags are restored and
    parameter gradients never accumulated.

    With the layer's receptive ``field`` (:func:`~lightning_cnnviz.core.receptive_fields`), each row runs on a crop
    of its image that holds the field, aligned to the layer's grid, which is several times less work for early
    layers. Cropping is exact for networks that are translation-equivariant up to the layer; each row checks it
    (the activation on the crop must equal ``expected[i]``, its whole-image value, to ``1e-4`` relative) and rows
    that differ (coordinate channels, adaptive pooling, ...) are redone on the whole image, as are the rows of a crop
    size the network refuses (:meth:`~lightning_cnnviz.core.LayerMap.takes`).

    Example:
        >>> where = torch.tensor([0, 1]), torch.tensor([2, 3]), torch.tensor([4, 5])
        >>> project_activations(net, "0", images, *where)["deconvnet"].shape
        torch.Size([2, 3, 8, 8])
    """
    check_images(images)
    if not rules or any(r not in ("deconvnet", "guided_backprop") for r in rules):
        raise ValueError(f"rules can be 'deconvnet' and 'guided_backprop', got {tuple(rules)!r}")
    count = images.shape[0]
    for name, value in (("channels", channels), ("ys", ys), ("xs", xs)):
        if value.shape != (count,):
            raise ValueError(f"{name} must have shape ({count},), got {tuple(value.shape)}")
    channels, ys, xs = (t.to(images.device).long() for t in (channels, ys, xs))
    max_batch = max_batch or (pass_size(model, images[:1], grad=True) if count else 1)
    with evaluating(model, grad=True), ReluGradientRule(rules[0]) as holder:
        # made here, outside inference mode, so that they can be written in place
        results: dict[str, Tensor] = {rule: images.new_zeros(images.shape) for rule in rules}
        redo = torch.ones(count, dtype=torch.bool, device=images.device)
        if field is not None and not field.whole_input and count:
            if expected is None:
                expected = _values_at(model, layer, images, channels, ys, xs, max_batch)
            expected = expected.to(images.device)
            starts, lengths, local_y, local_x = _aligned_crops(field, ys, xs)
            for shape in torch.unique(lengths, dim=0).tolist():
                if not LayerMap.of(model).takes(model, (images.shape[1], *shape), layer):
                    continue  # the network refuses crops of this size: these rows are done on the whole image
                group = (lengths == torch.tensor(shape, device=lengths.device)).all(dim=1).nonzero().flatten()
                for part in group.split(max_batch):
                    top, left = starts[part, 0], starts[part, 1]
                    rows = (top[:, None] + torch.arange(shape[0], device=top.device))[:, :, None]
                    cols = (left[:, None] + torch.arange(shape[1], device=top.device))[:, None, :]
                    crops = in_layout_of(images[part[:, None, None], :, rows, cols].permute(0, 3, 1, 2), images)
                    grads, values = _project_rows(
                        model, layer, crops, channels[part], local_y[part], local_x[part], rules, holder
                    )
                    exact = (values - expected[part]).abs() <= 1e-4 * expected[part].abs().clamp_min(1e-6)
                    keep = part[exact]
                    for rule, grad in zip(rules, grads):
                        results[rule][keep[:, None, None], :, rows[exact], cols[exact]] = grad[exact].permute(
                            0, 2, 3, 1
                        )
                    redo[keep] = False
        for part in redo.nonzero().flatten().split(max_batch):
            whole = in_layout_of(images[part], images)
            grads, _ = _project_rows(model, layer, whole, channels[part], ys[part], xs[part], rules, holder)
            for rule, grad in zip(rules, grads):
                results[rule][part] = grad
    return results


def _values_at(
    model: nn.Module, layer: str, images: Tensor, channels: Tensor, ys: Tensor, xs: Tensor, max_batch: int
) -> Tensor:
    """The activations ``(channels[i], ys[i], xs[i])`` of ``layer`` on whole images (no gradient)."""
    values = []
    with torch.no_grad():
        for part in torch.arange(images.shape[0], device=images.device).split(max_batch):
            captured: dict[str, Tensor] = {}
            run_to(model, in_layout_of(images[part], images), [layer], captured.__setitem__)
            activation = feature_map(layer, captured[layer])
            rows = torch.arange(len(part), device=activation.device)
            values.append(activation[rows, channels[part], ys[part], xs[part]])
    return torch.cat(values)


def crop_patches(images: Tensor, field: ReceptiveField, ys: Tensor, xs: Tensor) -> Tensor:
    """The receptive-field crop (see :meth:`ReceptiveField.crop_corners`) of position ``(ys[i], xs[i])`` out of
    ``images[i]``: (B, C, crop_h, crop_w), one gather for the whole batch.

    Example:
        >>> field = ReceptiveField((2, 2), (2, 2), (0, 0), (4, 4))
        >>> crop_patches(torch.arange(16.0).view(1, 1, 4, 4), field, torch.tensor([1]), torch.tensor([0]))
        tensor([[[[ 8.,  9.],
                  [12., 13.]]]])
    """
    tops, lefts, crop_h, crop_w = field.crop_corners(ys.cpu(), xs.cpu())
    device = images.device
    rows = (tops[:, None] + torch.arange(crop_h)).to(device)  # (B, crop_h)
    cols = (lefts[:, None] + torch.arange(crop_w)).to(device)  # (B, crop_w)
    batch = torch.arange(images.shape[0], device=device)[:, None, None]
    patches = images[batch, :, rows[:, :, None], cols[:, None, :]]  # (B, crop_h, crop_w, C)
    return patches.permute(0, 3, 1, 2)
