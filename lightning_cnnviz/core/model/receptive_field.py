"""Exact receptive fields: the input box that one spatial position of a layer's output sees.

Along each axis position ``i`` of a feature map sees input pixels ``offset + i * stride`` to ``offset + i * stride
+ size - 1`` (``offset`` < 0 reaches into padding). :func:`receptive_fields` carries ``(size, stride, offset)``
along every tensor of one forward with a :class:`~torch.overrides.TorchFunctionMode`: ``conv2d`` (any padding),
max and average pooling, ``F.pad`` and evenly dividing adaptive pooling change it; every other op that keeps the
spatial size (batch norm, activations, residual ``+``, ``torch.cat``, in-place ops) takes the union of its
inputs' boxes. ``permute`` moves the spatial axes (ConvNeXt's channels-last blocks), and a ``Linear`` or a
``layer_norm`` over the channels alone then acts per position; global pooling, ``flatten``, ``Linear`` on a
flat code, spatial gates and group/instance/layer norm over the image see the whole image; any other change
of spatial size (``interpolate``, slicing) leaves no geometry, and asking for such a layer is an error naming
the op.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.weak import WeakIdKeyDictionary

from lightning_cnnviz.core.methods._calls import argument, conv2d_geometry, flat_tensors, pool2d_geometry
from lightning_cnnviz.core.model.modules import evaluating, hooked, resolve_modules

__all__ = ["receptive_fields"]


@dataclass(frozen=True)
class ReceptiveField:
    """Input box of one output position, per axis (height, width).

    Attributes:
        size: box side in input pixels.
        stride: input pixels between neighbouring output positions.
        offset: input coordinate of the box's first pixel for output position 0 (negative: padding).
        input_size: spatial size of the input the geometry was computed for.
        whole_input: the position sees the whole input (global pooling, fully connected layers); then
            ``size`` is the input size, ``stride`` 0 and ``offset`` 0.
    """

    size: tuple[int, int]
    stride: tuple[int, int]
    offset: tuple[int, int]
    input_size: tuple[int, int]
    whole_input: bool = False

    def box(self, y: int, x: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` input box of position ``(y, x)``, inclusive, not clipped to the image.

        Example:
            >>> ReceptiveField((3, 3), (2, 2), (-1, -1), (8, 8)).box(1, 2)
            (1, 3, 3, 5)
        """
        top = self.offset[0] + y * self.stride[0]
        left = self.offset[1] + x * self.stride[1]
        return top, left, top + self.size[0] - 1, left + self.size[1] - 1

    def crop_corners(self, ys: Tensor, xs: Tensor) -> tuple[Tensor, Tensor, int, int]:
        """Top-left corners of a fixed-size crop for each position, kept inside the image.

        The crop is ``min(size, image side)`` per axis and is shifted into the image where the box reaches
        into padding, so it always contains the part of the box that lies in the image. Returns
        ``(tops, lefts, crop_height, crop_width)``.
        """
        crop_h = min(self.size[0], self.input_size[0])
        crop_w = min(self.size[1], self.input_size[1])
        tops = (self.offset[0] + ys * self.stride[0]).clamp(0, self.input_size[0] - crop_h)
        lefts = (self.offset[1] + xs * self.stride[1]).clamp(0, self.input_size[1] - crop_w)
        return tops, lefts, crop_h, crop_w


@dataclass(frozen=True)
class _Axis:
    size: int
    stride: int
    offset: int

    def through(self, kernel: int, stride: int, padding: int, dilation: int) -> _Axis:
        return _Axis(
            size=self.size + (kernel - 1) * dilation * self.stride,
            stride=self.stride * stride,
            offset=self.offset - padding * self.stride,
        )


@dataclass(frozen=True)
class _Geometry:
    axes: tuple[_Axis, _Axis] | None  # None: sees the whole input
    spatial: tuple[int, int]
    dims: tuple[int, int] = (-2, -1)  # where height and width are, counted from the last dimension


@dataclass(frozen=True)
class _Unknown:
    reason: str


_Tracked = _Geometry | _Unknown


def _union(geometries: list[_Geometry], spatial: tuple[int, int]) -> _Tracked:
    if any(g.axes is None for g in geometries):
        return _Geometry(None, spatial)
    axes = []
    for axis in range(2):
        parts = [g.axes[axis] for g in geometries if g.axes is not None]
        strides = {p.stride for p in parts}
        if len(strides) > 1:
            return _Unknown(f"branches of different strides {sorted(strides)} meet")
        start = min(p.offset for p in parts)
        end = max(p.offset + p.size for p in parts)
        axes.append(_Axis(end - start, parts[0].stride, start))
    return _Geometry((axes[0], axes[1]), spatial, geometries[0].dims)


# Operations that keep the spatial size but mix all positions (normalisation over H and W): whole input.
_SPATIALLY_GLOBAL = frozenset({"group_norm", "instance_norm"})


class _GeometryMode(TorchFunctionMode):
    """Carries a receptive-field geometry along every tensor computed from the tracked input."""

    def __init__(self, image: Tensor) -> None:
        super().__init__()
        self.geometry = WeakIdKeyDictionary()
        spatial = (image.shape[-2], image.shape[-1])
        self.geometry[image] = _Geometry((_Axis(1, 1, 0), _Axis(1, 1, 0)), spatial)

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        inputs = [self.geometry[t] for t in flat_tensors((args, kwargs)) if t in self.geometry]
        result = func(*args, **kwargs)
        if not inputs:
            return result
        outputs = list(flat_tensors(result))
        if not outputs:
            return result
        unknown = [g for g in inputs if isinstance(g, _Unknown)]
        name = getattr(func, "__name__", repr(func))
        for index, output in enumerate(outputs):
            known = [g for g in inputs if isinstance(g, _Geometry)]
            if unknown:
                self.geometry[output] = unknown[0]
            elif output.dim() < 3:
                self.geometry[output] = _Geometry(None, (0, 0))
            elif name == "permute" and index == 0 and known:
                self.geometry[output] = _permuted(known[0], args, kwargs, output.dim())
            else:
                dims = known[0].dims if known and -output.dim() <= min(known[0].dims) else (-2, -1)
                spatial = (output.shape[dims[0]], output.shape[dims[1]])
                self.geometry[output] = self._rule(name, args, kwargs, known, spatial, main=index == 0)
        return result

    def _rule(
        self,
        name: str,
        args: Sequence[Any],
        kwargs: dict[str, Any],
        inputs: list[_Geometry],
        spatial: tuple[int, int],
        main: bool,
    ) -> _Tracked:
        first = self.geometry.get(args[0]) if args and isinstance(args[0], Tensor) else None
        dims = first.dims if isinstance(first, _Geometry) else (-2, -1)
        if name in _SPATIALLY_GLOBAL:
            return _Geometry(None, spatial, dims)
        if name == "layer_norm":  # over the last len(normalized_shape) dimensions: the image, or channels only
            normalized = len(tuple(argument(args, kwargs, 1, "normalized_shape", ())))
            if -normalized <= max(dims):
                return _Geometry(None, spatial, dims)
        spatial_op = name in ("conv2d", "_conv_forward", "max_pool2d", "avg_pool2d", "pad") or "adaptive" in name
        if main and dims != (-2, -1) and spatial_op:
            return _Unknown(f"{name} on a tensor whose spatial axes were permuted to dimensions {dims}")
        if main and isinstance(first, _Geometry) and first.axes is not None:
            kernel: tuple[int, int] | None = None
            if name in ("conv2d", "_conv_forward"):
                kernel, stride, padding, dilation = conv2d_geometry(args, kwargs)
            elif name in ("max_pool2d", "max_pool2d_with_indices", "_max_pool2d", "avg_pool2d"):
                kernel, stride, padding, dilation = pool2d_geometry(args, kwargs, max_pool="max" in name)
            elif name in ("adaptive_avg_pool2d", "adaptive_max_pool2d", "adaptive_max_pool2d_with_indices"):
                if spatial == (1, 1):
                    return _Geometry(None, spatial)
                if all(i % o == 0 for i, o in zip(first.spatial, spatial)):
                    kernel = (first.spatial[0] // spatial[0], first.spatial[1] // spatial[1])
                    stride, padding, dilation = kernel, (0, 0), (1, 1)
                else:
                    return _Unknown(f"{name} from {first.spatial} to {spatial} (windows of unequal size)")
            elif name == "pad":
                pads = list(argument(args, kwargs, 1, "pad", ()))
                pads += [0] * (4 - len(pads))
                axes = first.axes
                return _Geometry(
                    (
                        _Axis(axes[0].size, axes[0].stride, axes[0].offset - pads[2] * axes[0].stride),
                        _Axis(axes[1].size, axes[1].stride, axes[1].offset - pads[0] * axes[1].stride),
                    ),
                    spatial,
                )
            if kernel is not None:
                axes = first.axes
                return _Geometry(
                    (
                        axes[0].through(kernel[0], stride[0], padding[0], dilation[0]),
                        axes[1].through(kernel[1], stride[1], padding[1], dilation[1]),
                    ),
                    spatial,
                )
        same = [g for g in inputs if g.axes is None or g.spatial == spatial]
        if len(same) == len(inputs):
            return _union(inputs, spatial)
        if spatial == (1, 1) and not any(g.spatial == (1, 1) for g in inputs):
            return _Geometry(None, spatial)  # a global reduction with keepdim
        return _Unknown(f"{name} changes the spatial size in a way the receptive-field tracker does not model")


def _permuted(geometry: _Geometry, args: Sequence[Any], kwargs: dict[str, Any], ndim: int) -> _Geometry:
    """The geometry of ``permute(x, dims)``: the same boxes, the spatial axes where the permutation puts them."""
    order = kwargs.get("dims", args[1] if len(args) == 2 and not isinstance(args[1], int) else args[1:])
    order = [int(d) % ndim for d in order]
    height, width = (order.index(d % ndim) - ndim for d in geometry.dims)
    return _Geometry(geometry.axes, geometry.spatial, (height, width))


def receptive_fields(model: nn.Module, layers: Sequence[str], example: Tensor) -> dict[str, ReceptiveField]:
    """The receptive field of each named module's output, from one eval-mode forward of ``example``.

    ``layers`` are module names (a module called several times is measured at its first call); ``example`` is an
    input (N, C, H, W) of the size the geometry is wanted for. ValueError for an unknown layer (the valid names
    are listed), one the forward never reaches, or one whose geometry goes through an op the tracker does not
    model.

    Example:
        >>> import torch
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Conv2d(2, 2, 3))
        >>> receptive_fields(net, ["3"], torch.zeros(1, 1, 16, 16))["3"].size
        (8, 8)
    """
    if not (isinstance(example, Tensor) and example.dim() == 4):
        raise TypeError(f"example must be an image tensor of shape (N, C, H, W), got {example!r:.80}")
    modules = resolve_modules(model, list(layers), what="receptive_fields layers")
    image = example[:1].detach().clone()
    mode = _GeometryMode(image)
    found: dict[str, _Tracked | None] = {}
    hooks = []
    for name, module in modules.items():

        def keep(module: nn.Module, args: Any, output: Any, name: str = name) -> None:
            # read the geometry now: a later in-place op (``y += skip``) may widen the same tensor's box
            tensors = list(flat_tensors(output))
            if name not in found and tensors:
                found[name] = mode.geometry.get(tensors[0])

        hooks.append((module, keep))
    with hooked(hooks), evaluating(model), mode:
        model(image)
    height, width = image.shape[-2], image.shape[-1]
    fields: dict[str, ReceptiveField] = {}
    for name in modules:
        if name not in found:
            raise ValueError(f"receptive_fields: layer {name!r} is never called by {type(model).__name__}.forward")
        tracked = found[name]
        if tracked is None:
            raise ValueError(f"receptive_fields: the output of {name!r} is not computed from the input image")
        if isinstance(tracked, _Unknown):
            raise ValueError(f"receptive_fields: cannot follow the geometry up to {name!r}: {tracked.reason}")
        if tracked.axes is None:
            fields[name] = ReceptiveField((height, width), (0, 0), (0, 0), (height, width), whole_input=True)
        else:
            h, w = tracked.axes
            fields[name] = ReceptiveField((h.size, w.size), (h.stride, w.stride), (h.offset, w.offset), (height, width))
    return fields
