"""Private to :mod:`lightning_cnnviz.core`: reading the arguments of the torch calls that our
:class:`~torch.overrides.TorchFunctionMode` subclasses see (conv, pooling, ReLU), in one place."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["ACTIVATION_FUNCTIONS", "INPLACE_RELU", "RELU_FAMILY", "activation_kind", "argument", "conv2d_geometry"]
__all__ += ["flat_tensors", "pair", "pool2d_geometry", "relu_kind"]

Geometry = tuple[tuple[int, int], tuple[int, int], tuple[int, int], tuple[int, int]]

# Every spelling of an elementwise activation call that reaches ``__torch_function__``, mapped to its kind.
ACTIVATION_FUNCTIONS: dict[Any, str] = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu6: "relu6"}
ACTIVATION_FUNCTIONS.update({Tensor.relu: "relu", Tensor.relu_: "relu"})
ACTIVATION_FUNCTIONS.update({F.leaky_relu: "leaky_relu", F.leaky_relu_: "leaky_relu", torch.prelu: "prelu"})
ACTIVATION_FUNCTIONS.update({F.elu: "elu", F.elu_: "elu", F.selu: "selu", torch.selu_: "selu", F.celu: "celu"})
ACTIVATION_FUNCTIONS.update({F.gelu: "gelu", F.silu: "silu", F.hardswish: "hardswish", F.mish: "mish"})
ACTIVATION_FUNCTIONS.update({F.hardsigmoid: "hardsigmoid", torch.selu: "selu"})
RELU_FAMILY = frozenset({"relu", "relu6"})
INPLACE_RELU = frozenset({torch.relu_, Tensor.relu_})


def activation_kind(func: Any) -> str | None:
    """The activation kind (``"relu"``, ``"gelu"``, ...) when ``func`` (as seen by ``__torch_function__``) is an
    elementwise activation call, else None."""
    try:
        return ACTIVATION_FUNCTIONS.get(func)
    except TypeError:  # unhashable callables are never activations
        return None


def relu_kind(func: Any) -> str | None:
    """``"relu"``/``"relu6"`` when ``func`` is a ReLU-family call, else None."""
    kind = activation_kind(func)
    return kind if kind in RELU_FAMILY else None


def argument(args: Sequence[Any], kwargs: dict[str, Any], index: int, name: str, default: Any = None) -> Any:
    """The argument at position ``index`` or keyword ``name`` of a call."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


def pair(value: Any, default: int) -> tuple[int, int]:
    """An int or a 1- or 2-sequence as (height, width)."""
    if value is None:
        return default, default
    if isinstance(value, int):
        return value, value
    values = tuple(int(v) for v in value)
    return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])


def conv2d_geometry(args: Sequence[Any], kwargs: dict[str, Any]) -> Geometry:
    """Kernel size, stride, padding and dilation of a ``conv2d(input, weight, bias, stride, padding, dilation,
    groups)`` call; ``"valid"`` padding is 0 and ``"same"`` is the leading side's ``dilation * (k - 1) // 2``."""
    weight = argument(args, kwargs, 1, "weight")
    kernel = (int(weight.shape[-2]), int(weight.shape[-1]))
    stride = pair(argument(args, kwargs, 3, "stride", 1), 1)
    dilation = pair(argument(args, kwargs, 5, "dilation", 1), 1)
    padding_arg = argument(args, kwargs, 4, "padding", 0)
    if padding_arg == "valid":
        padding = (0, 0)
    elif padding_arg == "same":
        padding = (dilation[0] * (kernel[0] - 1) // 2, dilation[1] * (kernel[1] - 1) // 2)
    else:
        padding = pair(padding_arg, 0)
    return kernel, stride, padding, dilation


def pool2d_geometry(args: Sequence[Any], kwargs: dict[str, Any], max_pool: bool) -> Geometry:
    """Kernel size, stride (the kernel when not given), padding and dilation (1 for average pooling) of a
    ``max_pool2d``/``avg_pool2d(input, kernel_size, stride, padding, ...)`` call."""
    kernel = pair(argument(args, kwargs, 1, "kernel_size"), 1)
    stride_arg = argument(args, kwargs, 2, "stride")
    stride = pair(stride_arg, 1) if stride_arg not in (None, (), []) else kernel
    padding = pair(argument(args, kwargs, 3, "padding", 0), 0)
    dilation = pair(argument(args, kwargs, 4, "dilation", 1), 1) if max_pool else (1, 1)
    return kernel, stride, padding, dilation


def flat_tensors(value: Any) -> Iterator[Tensor]:
    """Every tensor inside nested lists, tuples and dicts, in order."""
    if isinstance(value, Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from flat_tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from flat_tensors(item)
