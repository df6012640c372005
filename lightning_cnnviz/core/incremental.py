"""Occluded copies of an image evaluated incrementally: only the activations a patch can change are recomputed.

An occluded copy differs from its clean image inside the patch only, so every activation map of a
convolutional network differs from the clean map inside a box that grows with the layers' receptive fields.
:func:`occluded_logits` runs the model once on the clean images (recording every op's output) and then once
per batch of occluded copies on *crops*: each copy carries, for every 4-D activation, a fixed-size window that
holds the box it may have changed, its position in the map, and the clean map around it. Ops are intercepted
with a :class:`~torch.overrides.TorchFunctionMode`:

* ``conv2d`` (any stride, padding including ``"same"``/``"valid"``, dilation, groups), ``max_pool2d`` and
  ``avg_pool2d`` compute only the output box the crop reaches, from a window of the clean input with the crop
  pasted in;
* pointwise ops (ReLU family, sigmoid, tanh, GELU/SiLU, eval-mode ``batch_norm`` and dropout) and add/sub/mul/
  div with a number, a per-channel tensor or another crop (residual sums) act on the crops;
* a global average (``adaptive_avg_pool2d(x, 1)`` or a mean over both spatial axes) is the clean sum with the
  crop's box swapped for the crop's sum (box sums of the clean map come from an integral image);
* any other op sees the crops pasted into the clean maps ("densified") and runs unchanged.

Copies are grouped by the sizes of the boxes they reach, so a copy near the border, whose boxes are clipped,
is not padded to the size of one in the middle. The values are those of the full forward up to the order of
float summation. The op sequence must not depend on the batch; where it does, or where an op changes a crop
in place in a way the crops cannot follow, :class:`Unsupported` is raised and the caller evaluates full copies.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from lightning_cnnviz.core.native import window_kernel
from lightning_cnnviz.core.receptive_field import _argument, _conv2d_arguments, _pair, _pool2d_arguments

__all__ = ["EvaluatorError", "Unsupported", "clean_pass_bytes", "occluded_logits"]


class Unsupported(Exception):
    """The model does something the crops cannot follow; evaluate full occluded copies instead."""


class EvaluatorError(Unsupported):
    """The incremental evaluation failed where it was expected to work (a fault of this module, not of the
    model): evaluate full occluded copies, and say so."""


@dataclass(frozen=True)
class _Crop:
    """A (V, C, h, w) tensor holding rows [top, top + h) and columns [left, left + w) of each copy's occluded
    map; ``clean[image]`` is that map outside rows [low_r, high_r] x columns [low_c, high_c] (the box the
    occlusion can have changed, inside the crop)."""

    clean: Tensor
    top: Tensor
    left: Tensor
    low_r: Tensor
    high_r: Tensor
    low_c: Tensor
    high_c: Tensor

    def moved(self, clean: Tensor) -> _Crop:
        return _Crop(clean, self.top, self.left, self.low_r, self.high_r, self.low_c, self.high_c)


class _Trace(TorchFunctionMode):
    """Records every op of the clean forward and a copy of each 4-D output (in-place ops change them later)."""

    def __init__(self) -> None:
        super().__init__()
        self.funcs: list[Any] = []
        self.outputs: list[Tensor | None] = []

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        result = func(*args, **(kwargs or {}))
        self.funcs.append(func)
        keep = isinstance(result, Tensor) and result.dim() == 4 and result.is_floating_point()
        self.outputs.append(result.detach().clone() if keep else None)
        return result


def clean_pass_bytes(model: nn.Module, image: Tensor) -> int:
    """Bytes the clean pass of :func:`occluded_logits` keeps per image (its copies of every 4-D output), from
    one forward of ``image`` (1, C, H, W); use it to size the image chunks."""
    trace = _Trace()
    with trace:
        model(image)
    return sum(out.numel() * out.element_size() for out in trace.outputs if out is not None)


_POINTWISE: frozenset[Any] = frozenset(
    {
        F.relu, F.relu_, torch.relu, torch.relu_, Tensor.relu, Tensor.relu_, F.relu6, F.leaky_relu, F.leaky_relu_,
        F.elu, F.selu, F.celu, F.gelu, F.silu, F.mish, F.hardtanh, F.hardswish, F.hardsigmoid, torch.sigmoid,
        Tensor.sigmoid, F.sigmoid, torch.tanh, Tensor.tanh, F.tanh, Tensor.contiguous, Tensor.clamp, torch.clamp,
        Tensor.clamp_min, torch.clamp_min, Tensor.clamp_, Tensor.clamp_min_,
    }
)  # fmt: skip
_DROPOUT: frozenset[Any] = frozenset({F.dropout, F.dropout2d, F.alpha_dropout, F.feature_alpha_dropout})
_ARITHMETIC: frozenset[Any] = frozenset(
    {
        torch.add, Tensor.add, Tensor.add_, Tensor.__add__, Tensor.__radd__, Tensor.__iadd__,
        torch.sub, Tensor.sub, Tensor.sub_, Tensor.__sub__, Tensor.__isub__,
        torch.mul, Tensor.mul, Tensor.mul_, Tensor.__mul__, Tensor.__rmul__, Tensor.__imul__,
        torch.div, Tensor.div, Tensor.div_, Tensor.__truediv__, Tensor.__itruediv__,
    }
)  # fmt: skip
_METADATA: frozenset[Any] = frozenset(
    {Tensor.dim, Tensor.ndimension, Tensor.is_floating_point, Tensor.__len__, Tensor.get_device}
)
_SHAPE: frozenset[Any] = frozenset({Tensor.size, Tensor.shape.__get__})  # type: ignore[attr-defined]


def _flatten(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[list[Any], Any]:
    """The arguments as a flat list and the spec to rebuild them (``None``: ``args`` then ``kwargs``' values,
    the common case of no tensor inside a container, without the cost of a pytree walk)."""
    values = [*args, *kwargs.values()]
    for value in values:
        if isinstance(value, dict) or (
            isinstance(value, (list, tuple)) and any(isinstance(item, (Tensor, list, tuple, dict)) for item in value)
        ):
            return tree_flatten((args, kwargs))
    return values, None


def _name(func: Any) -> str:
    return str(getattr(func, "__name__", repr(func)))


def _in_place(func: Any, kwargs: dict[str, Any]) -> bool:
    name = _name(func)
    return (name.endswith("_") and not name.endswith("__")) or name.startswith("__i") or "out" in kwargs


def _reach(
    low: Tensor, high: Tensor, kernel: int, stride: int, pad: int, dilation: int, out: int
) -> tuple[Tensor, Tensor, Tensor, int]:
    """Output rows whose window meets input rows [low, high] (per copy, clipped to the map), where a box of
    one size for all copies starts so that it holds them and stays inside the ``out`` rows, and that size."""
    first = -torch.div(-(low + pad - dilation * (kernel - 1)), stride, rounding_mode="floor")
    last = torch.div(high + pad, stride, rounding_mode="floor")
    first, last = first.clamp_min(0), last.clamp_max(out - 1)
    rows = min(max(int((last - first + 1).max()), 1), out)
    return first, last, first.clamp_max(out - rows).clamp_min(0), rows


class _Replay(TorchFunctionMode):
    """Re-runs the traced forward on crops of the occluded copies (see the module docstring). With
    ``compute=False`` it only follows the boxes (crops are zeros) and records each window op's reach."""

    def __init__(self, trace: _Trace, image: Tensor, cache: dict[Any, Tensor], compute: bool = True) -> None:
        super().__init__()
        self.trace, self.image, self.cache, self.compute = trace, image, cache, compute
        self.kernel = window_kernel() if compute and image.device.type == "cpu" else None
        self.step = 0
        self.crops: dict[int, tuple[Tensor, _Crop]] = {}
        # per window op: rows and columns reached per copy, multiply-adds per output position, output area
        self.reach: list[tuple[Tensor, Tensor, float, int]] = []

    def register(self, tensor: Tensor, crop: _Crop) -> Tensor:
        self.crops[id(tensor)] = (tensor, crop)
        return tensor

    def crop(self, value: Any) -> _Crop | None:
        if isinstance(value, Tensor):
            entry = self.crops.get(id(value))
            if entry is not None and entry[0] is value:
                return entry[1]
        return None

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        step = self.step
        self.step += 1
        if step >= len(self.trace.funcs) or not (self.trace.funcs[step] is func or self.trace.funcs[step] == func):
            raise Unsupported(f"the forward pass of the occluded copies differs from the clean one at {_name(func)}")
        flat, spec = _flatten(args, kwargs)
        cropped = [i for i, value in enumerate(flat) if self.crop(value) is not None]
        if not cropped:
            return func(*args, **kwargs)
        first = self.crop(args[0]) if args else None
        clean = self.trace.outputs[step]
        if first is not None:
            if func in _METADATA:
                return func(*args, **kwargs)
            if func is Tensor.size or getattr(func, "__self__", None) is Tensor.shape:
                shape = torch.Size((args[0].shape[0], args[0].shape[1], *first.clean.shape[2:]))
                dim = _argument(args, kwargs, 1, "dim", None)
                return shape if dim is None else shape[dim]
            if len(cropped) == 1:
                result = self.handle_mean(func, args, kwargs, first)
                if result is not NotImplemented:
                    return result
            if clean is not None:
                result = self.handle(func, list(args), kwargs, clean, first, len(cropped))
                if result is not NotImplemented:
                    return result
            if _in_place(func, kwargs):
                raise Unsupported(f"{_name(func)} changes a crop in place")
        flat = [self.densify(value) if i in cropped else value for i, value in enumerate(flat)]
        if spec is None:
            args, kwargs = flat[: len(args)], dict(zip(kwargs, flat[len(args) :]))
        else:
            args, kwargs = tree_unflatten(flat, spec)
        return func(*args, **kwargs)

    def handle(
        self, func: Any, args: list[Any], kwargs: dict[str, Any], clean: Tensor, first: _Crop, crops: int
    ) -> Any:
        x: Tensor = args[0]
        if func is torch.conv2d and crops == 1:
            kernel, stride, padding, dilation = _conv2d_arguments(args, kwargs)
            trailing: tuple[int, ...] = padding
            if _argument(args, kwargs, 4, "padding", 0) == "same":
                trailing = tuple(d * (k - 1) - p for d, k, p in zip(dilation, kernel, padding))
            weight = _argument(args, kwargs, 1, "weight", None)
            bias = _argument(args, kwargs, 2, "bias", None)
            groups = _argument(args, kwargs, 6, "groups", 1)

            def conv(window: Tensor) -> Tensor:
                return F.conv2d(window, weight, bias, stride, 0, dilation, groups)

            cost = float(weight[0].numel() * weight.shape[0])
            return self.window_op(x, first, clean, kernel, stride, padding, trailing, dilation, 0.0, cost, conv)
        if func in (F.max_pool2d, F.avg_pool2d) and crops == 1:
            return self.pool(func, args, kwargs, clean, first)
        if crops == 1 and (
            func in _POINTWISE
            or (func in _DROPOUT and not _argument(args, kwargs, 2, "training", True))
            or (func is F.batch_norm and not _argument(args, kwargs, 5, "training", False))
        ):
            return self.register(func(*args, **kwargs) if self.compute else x, first.moved(clean))
        if func in _ARITHMETIC:
            return self.arithmetic(func, args, kwargs, clean, first)
        return NotImplemented

    def handle_mean(self, func: Any, args: Sequence[Any], kwargs: dict[str, Any], first: _Crop) -> Any:
        """A global average: ``adaptive_avg_pool2d(x, 1)`` or a mean over both spatial axes."""
        x: Tensor = args[0]
        if func is F.adaptive_avg_pool2d:
            size = _argument(args, kwargs, 1, "output_size", None)
            if _pair(size, 0) != (1, 1):
                return NotImplemented
            return self.global_mean(x, first)[:, :, None, None]
        if func in (torch.mean, Tensor.mean) and "dtype" not in kwargs:
            dims = _argument(args, kwargs, 1, "dim", None)
            dims = [dims] if isinstance(dims, int) else dims
            if dims is None or sorted(d % 4 for d in dims) != [2, 3]:
                return NotImplemented
            mean = self.global_mean(x, first)
            return mean[:, :, None, None] if _argument(args, kwargs, 2, "keepdim", False) else mean
        return NotImplemented

    def pool(self, func: Any, args: list[Any], kwargs: dict[str, Any], clean: Tensor, first: _Crop) -> Any:
        x: Tensor = args[0]
        kernel, stride, padding, dilation = _pool2d_arguments(args, kwargs, max_pool=func is F.max_pool2d)
        cost = float(kernel[0] * kernel[1] * x.shape[1])
        if func is F.max_pool2d:
            if _argument(args, kwargs, 5, "ceil_mode", False) or _argument(args, kwargs, 6, "return_indices", False):
                return NotImplemented

            def max_pool(window: Tensor) -> Tensor:
                return F.max_pool2d(window, kernel, stride, 0, dilation)

            return self.window_op(
                x, first, clean, kernel, stride, padding, padding, dilation, -math.inf, cost, max_pool, True
            )
        include_pad = _argument(args, kwargs, 5, "count_include_pad", True)
        if _argument(args, kwargs, 4, "ceil_mode", False) or (any(padding) and not include_pad):
            return NotImplemented
        divisor = _argument(args, kwargs, 6, "divisor_override", None)

        def avg_pool(window: Tensor) -> Tensor:
            return F.avg_pool2d(window, kernel, stride, 0, False, True, divisor)

        return self.window_op(x, first, clean, kernel, stride, padding, padding, (1, 1), 0.0, cost, avg_pool)

    def window_op(
        self,
        x: Tensor,
        crop: _Crop,
        clean: Tensor,
        kernel: tuple[int, int],
        stride: tuple[int, int],
        leading: tuple[int, ...],
        trailing: tuple[int, ...],
        dilation: tuple[int, int],
        fill: float,
        cost: float,
        op: Callable[[Tensor], Tensor],
        is_max_pool: bool = False,
    ) -> Tensor:
        """A sliding-window op (conv or pool) evaluated on the output box the changed box reaches; a max pool
        (``is_max_pool``) by the compiled kernel straight from the crop and the clean map, where it can."""
        out_h, out_w = clean.shape[-2:]
        geometry_r = (kernel[0], stride[0], leading[0], dilation[0], out_h)
        geometry_c = (kernel[1], stride[1], leading[1], dilation[1], out_w)
        low_r, high_r, top, rows = _reach(crop.low_r, crop.high_r, *geometry_r)
        low_c, high_c, left, cols = _reach(crop.low_c, crop.high_c, *geometry_c)
        self.reach.append((high_r - low_r + 1, high_c - low_c + 1, cost, out_h * out_w))
        reached = _Crop(clean, top, left, low_r, high_r, low_c, high_c)
        if not self.compute:
            return self.register(x.new_zeros(x.shape[0], clean.shape[1], rows, cols), reached)
        height = (rows - 1) * stride[0] + dilation[0] * (kernel[0] - 1) + 1
        width = (cols - 1) * stride[1] + dilation[1] * (kernel[1] - 1) + 1
        pads = (leading[1], trailing[1], leading[0], trailing[0])
        start_r, start_c = top * stride[0], left * stride[1]
        if is_max_pool and self.kernel is not None and x.dtype in (torch.float32, torch.float64):
            placed = self.placed(x, crop, start_r, start_c, pads, fill)
            if placed is not None:
                out = self.kernel.max_pool(
                    *placed[:2], self.image, start_r, start_c, *placed[2:], (rows, cols), kernel, stride, dilation
                )
                return self.register(out.permute(0, 3, 1, 2), reached)
        window = self.window(x, crop, start_r, start_c, height, width, pads, fill)
        return self.register(op(window), reached)

    def arithmetic(self, func: Any, args: list[Any], kwargs: dict[str, Any], clean: Tensor, first: _Crop) -> Any:
        """add/sub/mul/div of a crop with a number, a tensor without batch or spatial extent, or another crop."""
        if len(args) < 2:
            return NotImplemented
        x, other = args[0], args[1]
        second = self.crop(other)
        if second is None:
            if isinstance(other, Tensor) and (
                other.dim() > 4 or any(s != 1 for s in other.shape[-2:]) or (other.dim() == 4 and other.shape[0] != 1)
            ):
                return NotImplemented
            return self.register(func(*args, **kwargs) if self.compute else x, first.moved(clean))
        changed = (
            torch.minimum(first.low_r, second.low_r),
            torch.maximum(first.high_r, second.high_r),
            torch.minimum(first.low_c, second.low_c),
            torch.maximum(first.high_c, second.high_c),
        )
        if x.shape == other.shape and torch.equal(first.top, second.top) and torch.equal(first.left, second.left):
            out = func(*args, **kwargs) if self.compute else x
            return self.register(out, _Crop(clean, first.top, first.left, *changed))
        height, width = clean.shape[-2:]
        if _in_place(func, kwargs):
            inside = (
                (second.low_r >= first.top)
                & (second.high_r < first.top + x.shape[-2])
                & (second.low_c >= first.left)
                & (second.high_c < first.left + x.shape[-1])
            ) | (second.low_r > second.high_r)
            if not bool(inside.all()):
                raise Unsupported(f"{_name(func)} adds a box larger than the crop it changes in place")
            if self.compute:
                args[1] = self.window(other, second, first.top, first.left, x.shape[-2], x.shape[-1], (0, 0, 0, 0), 0)
                func(*args, **kwargs)
            return self.register(x, _Crop(clean, first.top, first.left, *changed))
        rows = min(max(int((changed[1] - changed[0] + 1).max()), 1), height)
        cols = min(max(int((changed[3] - changed[2] + 1).max()), 1), width)
        top = changed[0].clamp_max(height - rows).clamp_min(0)
        left = changed[2].clamp_max(width - cols).clamp_min(0)
        union = _Crop(clean, top, left, *changed)
        if not self.compute:
            return self.register(x.new_zeros(x.shape[0], clean.shape[1], rows, cols), union)
        args[0] = self.window(x, first, top, left, rows, cols, (0, 0, 0, 0), 0)
        args[1] = self.window(other, second, top, left, rows, cols, (0, 0, 0, 0), 0)
        return self.register(func(*args, **kwargs), union)

    def global_mean(self, x: Tensor, crop: _Crop) -> Tensor:
        """Per copy and channel, the mean of the occluded map: clean sum - clean box sum + crop sum."""
        if not self.compute:
            return x.new_zeros(x.shape[0], x.shape[1])
        key = ("integral", id(crop.clean))
        integral = self.cache.get(key)
        if integral is None:  # (N * (H + 1) * (W + 1), C): row (n, r, c) sums rows < r and columns < c
            summed = F.pad(crop.clean.double().cumsum(2).cumsum(3), (1, 0, 1, 0))
            integral = self.cache[key] = summed.permute(0, 2, 3, 1).reshape(-1, x.shape[1])
        height, width = crop.clean.shape[-2:]
        bottom, right, top, left = crop.top + x.shape[-2], crop.left + x.shape[-1], crop.top, crop.left
        base = self.image * ((height + 1) * (width + 1))
        corners = torch.stack(
            [
                base + height * (width + 1) + width,  # the whole map
                base + bottom * (width + 1) + right,
                base + top * (width + 1) + right,
                base + bottom * (width + 1) + left,
                base + top * (width + 1) + left,
            ]
        )
        whole, br, tr, bl, tl = integral.index_select(0, corners.view(-1)).view(5, len(base), -1)
        total = whole - (br - tr - bl + tl) + x.sum(dim=(2, 3)).double()
        return (total / (height * width)).to(x.dtype)

    def window(
        self,
        x: Tensor,
        crop: _Crop,
        top: Tensor,
        left: Tensor,
        height: int,
        width: int,
        pads: tuple[int, int, int, int],
        fill: float,
    ) -> Tensor:
        """Rows [top, top + height) and columns [left, left + width) of each copy's occluded map padded by
        ``pads`` (left, right, top, bottom) with ``fill``: the clean map with the crop pasted in. Channels-last."""
        placed = self.placed(x, crop, top, left, pads, fill)
        if placed is not None and self.kernel is not None:
            padded, source, shift_r, shift_c = placed
            out = self.kernel.window(padded, source, self.image, top, left, shift_r, shift_c, height, width)
            return out.permute(0, 3, 1, 2)
        padded = self.padded(crop.clean, pads, fill)
        source = x.permute(0, 2, 3, 1)
        shift_r, shift_c = crop.top + pads[2] - top, crop.left + pads[0] - left
        count, channels, device = x.shape[0], x.shape[1], x.device
        full_h, full_w = padded.shape[1], padded.shape[2]
        rows = top[:, None] + torch.arange(height, device=device)
        cols = left[:, None] + torch.arange(width, device=device)
        index = (self.image[:, None, None] * full_h + rows[:, :, None]) * full_w + cols[:, None, :]
        out = padded.view(-1, channels).index_select(0, index.view(-1)).view(count, height, width, channels)
        r0, c0 = int(shift_r[0]), int(shift_c[0])
        h, w = x.shape[-2], x.shape[-1]
        if bool((shift_r == r0).all()) and bool((shift_c == c0).all()):
            out[:, max(r0, 0) : min(r0 + h, height), max(c0, 0) : min(c0 + w, width)] = source[
                :, max(-r0, 0) : min(height - r0, h), max(-c0, 0) : min(width - c0, w)
            ]
        else:
            at_r = shift_r[:, None] + torch.arange(h, device=device)
            at_c = shift_c[:, None] + torch.arange(w, device=device)
            inside = ((at_r >= 0) & (at_r < height))[:, :, None] & ((at_c >= 0) & (at_c < width))[:, None, :]
            target = (torch.arange(count, device=device)[:, None, None] * height + at_r[:, :, None]) * width
            target = target + at_c[:, None, :]
            out.view(-1, channels).index_copy_(0, target[inside], source.reshape(-1, channels)[inside.view(-1)])
        return out.permute(0, 3, 1, 2)

    def placed(
        self, x: Tensor, crop: _Crop, top: Tensor, left: Tensor, pads: tuple[int, int, int, int], fill: float
    ) -> tuple[Tensor, Tensor, Tensor, Tensor] | None:
        """What the compiled kernel reads for windows starting at rows ``top`` and columns ``left`` of the clean
        map padded by ``pads``: that padded map, the crops channels-last and contiguous, and each crop's row and
        column inside its window; ``None`` without the kernel or for a crop it cannot read."""
        if self.kernel is None or x.device.type != "cpu" or x.dtype != crop.clean.dtype:
            return None
        source = x.permute(0, 2, 3, 1).contiguous()  # a no-op for the channels-last outputs of convs and pools
        return self.padded(crop.clean, pads, fill), source, crop.top + pads[2] - top, crop.left + pads[0] - left

    def padded(self, clean: Tensor, pads: tuple[int, int, int, int], fill: float) -> Tensor:
        """``clean`` padded by ``pads`` (left, right, top, bottom) with ``fill``, channels-last (N, H, W, C);
        built once per pass set."""
        key = ("padded", id(clean), pads, fill)
        padded = self.cache.get(key)
        if padded is None:
            padded = self.cache[key] = F.pad(clean, pads, value=fill).permute(0, 2, 3, 1).contiguous()
        return padded

    def densify(self, value: Any) -> Any:
        """The full occluded maps of a crop (other values unchanged)."""
        crop = self.crop(value)
        if crop is None:
            return value
        height, width = crop.clean.shape[-2:]
        if not self.compute:
            return value.new_zeros(value.shape[0], value.shape[1], height, width)
        zeros = torch.zeros_like(crop.top)
        dense = self.window(value, crop, zeros, zeros, height, width, (0, 0, 0, 0), 0.0)
        return dense.contiguous() if crop.clean.is_contiguous() else dense  # the layout the model had


def _input_crops(
    images: Tensor, nhwc: Tensor, image: Tensor, boxes: Tensor, fill: Tensor, rows: int, cols: int
) -> tuple[Tensor, _Crop]:
    """Crops of ``rows`` x ``cols`` pixels holding each copy's box (top, left, height, width), filled;
    ``nhwc`` is ``images`` in (N, H, W, C) order."""
    height, width = images.shape[-2:]
    device = images.device
    top = boxes[:, 0].clamp_max(height - rows).clamp_min(0)
    left = boxes[:, 1].clamp_max(width - cols).clamp_min(0)
    filled = fill[image].view(-1, 1, 1, images.shape[1])
    if bool((boxes[:, 2] == rows).all()) and bool((boxes[:, 3] == cols).all()):  # the crops are the boxes
        crops = filled.expand(-1, rows, cols, -1).contiguous()
    else:
        at_r = top[:, None] + torch.arange(rows, device=device)
        at_c = left[:, None] + torch.arange(cols, device=device)
        pixels = nhwc[image[:, None, None], at_r[:, :, None], at_c[:, None, :]]  # (V, h, w, C)
        covered_r = (at_r >= boxes[:, 0:1]) & (at_r < boxes[:, 0:1] + boxes[:, 2:3])
        covered_c = (at_c >= boxes[:, 1:2]) & (at_c < boxes[:, 1:2] + boxes[:, 3:4])
        crops = torch.where((covered_r[:, :, None] & covered_c[:, None, :])[..., None], filled, pixels)
    last_r, last_c = boxes[:, 0] + boxes[:, 2] - 1, boxes[:, 1] + boxes[:, 3] - 1
    return crops.permute(0, 3, 1, 2), _Crop(images, top, left, boxes[:, 0], last_r, boxes[:, 1], last_c)


def _replay(
    model: nn.Module,
    trace: _Trace,
    images: Tensor,
    image: Tensor,
    boxes: Tensor,
    fill: Tensor,
    cache: dict[Any, Tensor],
    compute: bool,
) -> tuple[Tensor, _Replay]:
    rows, cols = int(boxes[:, 2].max()), int(boxes[:, 3].max())
    nhwc = cache.get(("images", id(images)))
    if nhwc is None:
        nhwc = cache[("images", id(images))] = images.permute(0, 2, 3, 1).contiguous()
    crops, crop = _input_crops(images, nhwc, image, boxes, fill, rows, cols)
    replay = _Replay(trace, image, cache, compute)
    replay.register(crops, crop)
    with replay:
        output = model(crops)
    if replay.step != len(trace.funcs):
        raise Unsupported("the forward pass of the occluded copies stopped before the clean one's end")
    output = replay.densify(output)
    if not isinstance(output, Tensor) or output.dim() != 2:
        raise Unsupported(f"the model returned {type(output).__name__} instead of (N, classes) logits")
    return output, replay


def _window_reach(
    model: nn.Module,
    images: Tensor,
    boxes: Tensor,
    fill: Tensor,
    trace: _Trace | None = None,
    cache: dict[Any, Tensor] | None = None,
) -> list[tuple[Tensor, Tensor, float, int]]:
    """Per sliding-window op, in forward order: the rows and columns each box reaches, the op's multiply-adds
    per output position and its output area; from a pass that follows the boxes only, on the first image
    (``trace`` is the clean pass of ``images`` when the caller has one)."""
    if trace is None:
        trace = _Trace()
        with trace:
            model(images)
    first = torch.zeros(len(boxes), dtype=torch.long, device=images.device)
    _, geometry = _replay(model, trace, images, first, boxes, fill, {} if cache is None else cache, compute=False)
    return geometry.reach


def _groups(reach: list[tuple[Tensor, Tensor, float, int]], boxes: Tensor, overhead: float) -> list[Tensor]:
    """Copies grouped so one group's boxes share sizes: rows and columns of the boxes with equal reach per
    window op form classes; a group is a (row class, column class) pair. Classes merge greedily while that
    costs less work (multiply-adds at each op's box size) than the ``overhead`` of one more group."""
    boxes_cpu = boxes.cpu()
    costs = torch.tensor([1.0] + [c for _, _, c, _ in reach], dtype=torch.float64)
    need_r = torch.stack([boxes_cpu[:, 2]] + [r.cpu() for r, _, _, _ in reach], dim=1).double()
    need_c = torch.stack([boxes_cpu[:, 3]] + [c.cpu() for _, c, _, _ in reach], dim=1).double()
    keys_r, row_class = torch.unique(need_r, dim=0, return_inverse=True)
    keys_c, col_class = torch.unique(need_c, dim=0, return_inverse=True)
    count = torch.zeros(len(keys_r), len(keys_c), dtype=torch.float64)
    count.index_put_((row_class, col_class), torch.ones(len(boxes_cpu), dtype=torch.float64), accumulate=True)
    keys = [keys_r, keys_c]
    sizes = [keys_r, keys_c]
    members: list[list[list[int]]] = [[[i] for i in range(len(k))] for k in keys]
    while True:
        best: tuple[float, int, int, int] | None = None
        for axis in (0, 1):
            own, other = sizes[axis], sizes[1 - axis]
            counts = count if axis == 0 else count.T
            if len(own) < 2:
                continue
            weight = counts @ (other * costs)  # (classes, ops): copies x other-axis size x cost, summed
            merged = torch.maximum(own[:, None], own[None, :])
            delta = (weight[:, None] + weight[None, :]) * merged - (weight * own)[:, None] - (weight * own)[None, :]
            occupied = (counts > 0).double()
            saved = occupied @ occupied.T  # groups that disappear when two classes merge
            total = delta.sum(dim=2) - overhead * saved
            total.fill_diagonal_(math.inf)
            flat = int(total.argmin())
            a, b = divmod(flat, len(own))
            if best is None or float(total[a, b]) < best[0]:
                best = (float(total[a, b]), axis, a, b)
        if best is None or best[0] >= 0:
            break
        _, axis, a, b = best
        a, b = min(a, b), max(a, b)
        members[axis][a] += members[axis].pop(b)
        sizes[axis] = torch.cat([sizes[axis][:b], sizes[axis][b + 1 :]])
        sizes[axis][a] = keys[axis][members[axis][a]].amax(dim=0)
        counts = (count if axis == 0 else count.T).clone()
        counts[a] += counts[b]
        counts = torch.cat([counts[:b], counts[b + 1 :]])
        count = counts if axis == 0 else counts.T
    labels = []
    for axis in (0, 1):
        label = torch.empty(len(keys[axis]), dtype=torch.long)
        for index, group in enumerate(members[axis]):
            label[group] = index
        labels.append(label)
    label = labels[0][row_class] * len(members[1]) + labels[1][col_class]
    return [indices for indices in (torch.nonzero(label == g).flatten() for g in label.unique()) if len(indices)]


_malloc_nudged = False


def _nudge_malloc() -> None:
    """Let glibc keep freed memory between passes: each pass allocates and frees tens of MiB of crops, and
    while glibc's adaptive thresholds are low it returns them to the system after every pass, so the next
    pass pays a page fault per 4 KiB (a third of the time on a small CNN). Freeing one 31 MiB block, which
    any training loop does all the time, raises the thresholds as glibc itself would (to 31 MiB for mmap,
    62 MiB of free heap top before trimming); the block is never touched. Once per process, CPU only."""
    global _malloc_nudged
    if not _malloc_nudged:
        _malloc_nudged = True
        torch.empty(31 * 2**18, dtype=torch.float32)


def occluded_logits(
    model: nn.Module, images: Tensor, boxes: Tensor, fill: Tensor, max_batch: int = 64
) -> tuple[Tensor, Tensor]:
    """The model's logits for ``images`` (N, K) and for every image with every box filled (N, B, K).

    ``boxes`` (B, 4) holds (top, left, height, width) inside the image; ``fill`` (N, C, 1, 1) the value that
    fills a box. One pass holds the crops of at most ``8 * max_batch`` copies and at most as many activation
    values as ``max_batch`` whole images. Call under ``torch.no_grad()`` with the model in eval mode. Raises
    :class:`Unsupported` when the model does something the crops cannot follow.
    """
    boxes = boxes.to(images.device).long()
    if images.device.type == "cpu":
        _nudge_malloc()
    trace = _Trace()
    with trace:
        clean = model(images)
    if not isinstance(clean, Tensor) or clean.dim() != 2:
        raise Unsupported(f"the model returned {type(clean).__name__} instead of (N, classes) logits")
    try:
        return clean, _occluded(model, trace, images, boxes, fill, max_batch)
    except Unsupported:
        raise
    except Exception as error:  # the clean forward worked, so this is the evaluator's fault
        raise EvaluatorError(f"incremental evaluation failed: {error!r}") from error


def _occluded(model: nn.Module, trace: _Trace, images: Tensor, boxes: Tensor, fill: Tensor, max_batch: int) -> Tensor:
    count = images.shape[0]
    cache: dict[Any, Tensor] = {}
    reach = _window_reach(model, images, boxes, fill, trace, cache)
    overhead = 4e6 * len(trace.funcs)  # about 40 us of Python per op and pass, in multiply-adds at 100 G/s
    out: Tensor | None = None
    for group in _groups(reach, boxes, overhead / count):
        share = max([1 / 8] + [float(r[group].max() * c[group].max()) / area for r, c, _, area in reach])
        chunk = max(1, int(max_batch / min(share, 1.0)))
        image = torch.arange(count, device=images.device).repeat_interleave(len(group))
        box = group.to(images.device).repeat(count)
        for start in range(0, len(image), chunk):
            part_image, part_box = image[start : start + chunk], box[start : start + chunk]
            logits, _ = _replay(model, trace, images, part_image, boxes[part_box], fill, cache, compute=True)
            if out is None:
                out = logits.new_empty(count, len(boxes), logits.shape[1])
            out[part_image, part_box] = logits
    assert out is not None
    return out
