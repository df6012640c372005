"""Saliency maps, batched on the model's device: gradients, SmoothGrad, guided backprop, deconvnet, Grad-CAM,
occlusion.

Every function runs its own forward pass with gradients enabled (also when called under
``torch.inference_mode``), takes gradients with ``torch.autograd.grad`` with respect to the inputs only (so
no parameter's ``.grad`` changes), runs the model in eval mode and restores every module's ``training`` flag
on exit. Guided backprop and deconvnet change the backward rule of *every* ReLU the forward computes,
``nn.ReLU`` modules, ``nn.ReLU(inplace=True)`` and ``F.relu``/``torch.relu_``/``x.relu()`` calls alike,
through a :class:`~torch.overrides.TorchFunctionMode` that is gone when the function returns.

Targets: ``None`` is the predicted class, an ``int`` one class for every image, a tensor (N,) a class per
image.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_cnnviz.core.incremental import EvaluatorError, Unsupported, clean_pass_bytes, occluded_logits
from lightning_cnnviz.core.layers import conv_layers, resolve_modules
from lightning_cnnviz.core.receptive_field import _argument, _conv2d_arguments
from lightning_cnnviz.core.relu_sites import _RELU_FUNCTIONS, restore_training_flags

__all__ = [
    "SALIENCY_METHODS",
    "deconvnet",
    "grad_cam",
    "guided_backprop",
    "occlusion",
    "override_relu_gradient",
    "smoothgrad",
    "vanilla_gradient",
]

SALIENCY_METHODS = ("vanilla_gradient", "smoothgrad", "guided_backprop", "deconvnet", "grad_cam", "occlusion")
Target = Tensor | int | None
ReluRule = Literal["guided_backprop", "deconvnet"]


class ReluGradientRule:
    """The backward rule that ReLUs computed under :func:`override_relu_gradient` use; ``rule`` is read at
    backward time, so one forward can serve a deconvnet and a guided-backprop backward pass."""

    def __init__(self, rule: ReluRule) -> None:
        self.rule: ReluRule = rule


class _RuleRelu(torch.autograd.Function):
    """ReLU forward. Backward: guided backprop passes only positive gradients where the input was positive
    (Springenberg 2014); deconvnet passes the ReLU of the gradient signal (Zeiler & Fergus 2013)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, rule: ReluGradientRule) -> Tensor:
        out = x.clamp_min(0)
        ctx.save_for_backward(out)
        ctx.rule = rule
        return out

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (out,) = ctx.saved_tensors
        if ctx.rule.rule == "guided_backprop":
            return grad.clamp_min(0) * (out > 0), None
        return grad.clamp_min(0), None


_INPLACE = {torch.relu_, Tensor.relu_}


class _ReluGradientMode(TorchFunctionMode):
    def __init__(self, rule: ReluGradientRule) -> None:
        super().__init__()
        self._rule = rule

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if _RELU_FUNCTIONS.get(func) != "relu" or not isinstance(args[0], Tensor):
            return func(*args, **kwargs)
        x = args[0]
        inplace = func in _INPLACE or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        out = _RuleRelu.apply(x, self._rule)
        if inplace:  # keep the in-place contract: the caller may use x afterwards instead of the result
            x.copy_(out)
            return x
        return out


class _ThinConv(torch.autograd.Function):
    """Stride-1 ``conv2d`` whose input gradient is one stride-2 convolution, for layers with few input channels.

    The input gradient of a convolution is its transpose. For the first layer of a CNN (3 or 1 input
    channels) oneDNN computes that transpose with vector lanes over the 3 input channels, i.e. mostly padding,
    about 5x slower than the forward. Written per output phase instead: pixel ``(2I + a, 2J + b)`` of the
    input gradient is a stride-2 correlation of the output gradient with the flipped kernel shifted by
    ``(a, b)``. All four phases are output channels of one stride-2 convolution (``4 x in_channels`` of
    them, a ``(k + 1) x (k + 1)`` kernel), then ``pixel_shuffle`` interleaves them: the same sums, about
    3x faster on CPU. Only for even input sizes, dilation 1, one group and ``padding <= k - 1``. Gradients
    flow to the input only (the saliency passes take no parameter gradient).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor | None, padding: tuple[int, int]) -> Tensor:
        ctx.save_for_backward(weight)
        ctx.padding = padding
        return F.conv2d(x, weight, bias, 1, padding)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:
        (weight,) = ctx.saved_tensors
        out_channels, in_channels, kh, kw = weight.shape
        flipped = weight.flip(2, 3).transpose(0, 1)
        phases = weight.new_zeros(in_channels, 2, 2, out_channels, kh + 1, kw + 1)
        for a in (0, 1):
            for b in (0, 1):
                phases[:, a, b, :, a : a + kh, b : b + kw] = flipped
        phases = phases.reshape(in_channels * 4, out_channels, kh + 1, kw + 1)
        padding = (kh - 1 - ctx.padding[0], kw - 1 - ctx.padding[1])
        return F.pixel_shuffle(F.conv2d(grad, phases, None, 2, padding), 2), None, None, None


class _GlobalPool(torch.autograd.Function):
    """``adaptive_avg_pool2d`` whose input gradient keeps the input's memory format.

    Its stock backward returns NCHW even for a channels-last input, and the ReLU before it then runs its
    backward on mixed layouts, about 15x slower on CPU than on matching ones.
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, output_size: Any) -> Tensor:
        ctx.save_for_backward(x)
        return F.adaptive_avg_pool2d(x, output_size)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (x,) = ctx.saved_tensors
        grad_x = torch.ops.aten._adaptive_avg_pool2d_backward(grad.contiguous(), x)
        return grad_x.contiguous(memory_format=torch.channels_last), None


def _thin_conv_padding(args: Sequence[Any], kwargs: dict[str, Any]) -> tuple[int, int] | None:
    """The padding of a ``conv2d`` call that :class:`_ThinConv` computes exactly, else ``None``."""
    x, weight = _argument(args, kwargs, 0, "input", None), _argument(args, kwargs, 1, "weight", None)
    if not (isinstance(x, Tensor) and isinstance(weight, Tensor)) or x.device.type != "cpu":
        return None
    if x.dim() != 4 or weight.dim() != 4 or x.dtype != torch.float32 or weight.dtype != torch.float32:
        return None
    (kh, kw), stride, padding, dilation = _conv2d_arguments(args, kwargs)
    if _argument(args, kwargs, 6, "groups", 1) != 1 or stride != (1, 1) or dilation != (1, 1):
        return None
    if _argument(args, kwargs, 4, "padding", 0) == "same" and (kh % 2 == 0 or kw % 2 == 0):
        return None  # torch pads an even kernel's "same" asymmetrically
    if not (0 <= padding[0] <= kh - 1 and 0 <= padding[1] <= kw - 1):
        return None
    height, width = x.shape[-2:]
    thin = weight.shape[1] < 8  # oneDNN's transpose pads the input channels to its vector width
    fits = height % 2 == 0 and width % 2 == 0 and height + 2 * padding[0] >= kh and width + 2 * padding[1] >= kw
    return padding if thin and fits else None


class _FastInputGradientMode(TorchFunctionMode):
    """CPU input-gradient passes: first-layer convolutions through :class:`_ThinConv`, channels-last global
    average pooling through :class:`_GlobalPool`. Same values; every other call is left alone."""

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is F.conv2d and torch.is_grad_enabled():
            padding = _thin_conv_padding(args, kwargs)
            if padding is not None:
                x, weight = _argument(args, kwargs, 0, "input", None), _argument(args, kwargs, 1, "weight", None)
                bias = _argument(args, kwargs, 2, "bias", None)
                return _ThinConv.apply(x, weight.detach(), bias.detach() if bias is not None else None, padding)
        elif func is F.adaptive_avg_pool2d and torch.is_grad_enabled() and not kwargs:
            x = args[0]
            if isinstance(x, Tensor) and x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last):
                return _GlobalPool.apply(x, args[1])
        return func(*args, **kwargs)


@contextlib.contextmanager
def override_relu_gradient(rule: ReluRule) -> Iterator[ReluGradientRule]:
    """Inside the block, every ReLU computed (module or functional, in-place or not) uses ``rule``'s backward.

    Yields the :class:`ReluGradientRule`: set its ``rule`` between backward passes of one forward to get both
    projections from a single forward.
    """
    if rule not in ("guided_backprop", "deconvnet"):
        raise ValueError(f"rule can be 'guided_backprop' or 'deconvnet', got {rule!r}")
    holder = ReluGradientRule(rule)
    with _ReluGradientMode(holder):
        yield holder


@contextlib.contextmanager
def _gradient_pass(model: nn.Module) -> Iterator[None]:
    with restore_training_flags(model), torch.inference_mode(False), torch.enable_grad():
        model.eval()
        yield


def _targets(model: nn.Module, images: Tensor, target: Target, max_batch: int, logits: Tensor | None = None) -> Tensor:
    """Target classes; the prediction for ``None`` (from ``logits`` when the caller already has them)."""
    count = images.shape[0]
    if isinstance(target, Tensor):
        if target.shape != (count,):
            raise ValueError(f"target must have shape ({count},), got {tuple(target.shape)}")
        return target.to(images.device).long()
    if isinstance(target, int):
        return torch.full((count,), target, dtype=torch.long, device=images.device)
    if target is not None:
        raise TypeError(f"target can be None (predicted class), an int or a tensor of classes, got {target!r}")
    if logits is not None:
        return logits.argmax(dim=1)
    with restore_training_flags(model), torch.no_grad():
        model.eval()
        return torch.cat([model(chunk).argmax(dim=1) for chunk in images.split(max_batch)])


def _fast_layout(images: Tensor) -> Tensor:
    """NHWC on CPU, where oneDNN convolutions run faster on it (same values); unchanged elsewhere."""
    return images.contiguous(memory_format=torch.channels_last) if images.device.type == "cpu" else images


def _check_images(images: Tensor) -> None:
    if not (isinstance(images, Tensor) and images.dim() == 4 and images.is_floating_point()):
        raise TypeError(f"images must be a floating tensor of shape (N, C, H, W), got {images!r:.120}")


def _input_gradient(model: nn.Module, images: Tensor, targets: Tensor, max_batch: int) -> Tensor:
    """d score_target / d input for every image, in chunks of ``max_batch``; the caller sets any ReLU rule."""
    grads = []
    for chunk, chunk_targets in zip(images.split(max_batch), targets.split(max_batch)):
        inputs = _fast_layout(chunk).detach().clone().requires_grad_(True)
        with _FastInputGradientMode() if inputs.device.type == "cpu" else contextlib.nullcontext():
            scores = model(inputs).gather(1, chunk_targets[:, None]).sum()
        (grad,) = torch.autograd.grad(scores, inputs)
        grads.append(grad.contiguous())
    return torch.cat(grads)


def vanilla_gradient(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Simonyan et al. 2013 (arXiv 1312.6034): ``max_c |d score / d x|``, shape (N, H, W)."""
    _check_images(images)
    targets = _targets(model, images, target, max_batch)
    with _gradient_pass(model):
        return _input_gradient(model, images, targets, max_batch).abs().amax(dim=1)


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    samples: int = 50,
    sigma: float = 0.15,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_batch: int = 64,
) -> Tensor:
    """Smilkov et al. 2017 (arXiv 1706.03825): the mean of ``|gradient|`` over noisy copies, max over channels.

    The ``samples`` noisy copies of every image are evaluated in batches of ``max_batch`` (not one by one).
    Noise is Gaussian with standard deviation ``sigma * (max(x) - min(x))`` of each image (the paper's noise
    level), unless ``noise`` (shape (N * samples, C, H, W), copies of image ``i`` at rows
    ``i * samples ... (i + 1) * samples - 1``) is given. Returns (N, H, W).
    """
    _check_images(images)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    count = images.shape[0]
    targets = _targets(model, images, target, max_batch)
    expanded = images.repeat_interleave(samples, dim=0)
    if noise is None:
        span = (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).repeat_interleave(samples)
        noise = torch.randn(expanded.shape, generator=generator, device=images.device, dtype=images.dtype)
        noise = noise * (sigma * span).view(-1, 1, 1, 1)
    elif noise.shape != expanded.shape:
        raise ValueError(f"noise must have shape {tuple(expanded.shape)}, got {tuple(noise.shape)}")
    with _gradient_pass(model):
        grads = _input_gradient(model, expanded + noise, targets.repeat_interleave(samples), max_batch)
    return grads.abs().view(count, samples, *images.shape[1:]).mean(dim=1).amax(dim=1)


def guided_backprop(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Springenberg et al. 2014 (arXiv 1412.6806): input gradient with guided ReLU backward, (N, C, H, W)."""
    return _relu_rule_gradient(model, images, target, "guided_backprop", max_batch)


def deconvnet(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Zeiler & Fergus 2013 (arXiv 1311.2901): input gradient with ReLU applied to the backward signal, (N, C, H, W)."""
    return _relu_rule_gradient(model, images, target, "deconvnet", max_batch)


def _relu_rule_gradient(model: nn.Module, images: Tensor, target: Target, rule: ReluRule, max_batch: int) -> Tensor:
    _check_images(images)
    targets = _targets(model, images, target, max_batch)
    with _gradient_pass(model), override_relu_gradient(rule):
        return _input_gradient(model, images, targets, max_batch)


def last_conv(model: nn.Module) -> str:
    """Name of the last ``nn.Conv2d`` in registration order (Grad-CAM's default layer)."""
    convs = conv_layers(model)
    if not convs:
        raise ValueError(f"{type(model).__name__} has no nn.Conv2d layer for Grad-CAM")
    return list(convs)[-1]


def grad_cam(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    layer: str | None = None,
    max_batch: int = 64,
) -> Tensor:
    """Selvaraju et al. 2017 (arXiv 1610.02391): ``ReLU(sum_k w_k A_k)``, ``w_k`` the spatial mean of
    ``d score / d A_k``, upsampled (bilinear) to the input size. Shape (N, H, W).

    ``layer`` defaults to the last ``nn.Conv2d``. The layer's output is kept out of reach of a following
    in-place ReLU (the hook hands the rest of the network a copy), so ``A`` is the layer's own output.
    """
    _check_images(images)
    name = layer if layer is not None else last_conv(model)
    module = resolve_modules(model, [name], what="grad_cam layer")[name]
    targets = _targets(model, images, target, max_batch)
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        captured.append(output)
        return output.clone()

    maps = []
    handle = module.register_forward_hook(keep)
    try:
        with _gradient_pass(model):
            for chunk, chunk_targets in zip(images.split(max_batch), targets.split(max_batch)):
                captured.clear()
                scores = model(chunk.detach()).gather(1, chunk_targets[:, None]).sum()
                activations = captured[-1]
                (grad,) = torch.autograd.grad(scores, activations)
                weights = grad.mean(dim=(2, 3), keepdim=True)
                maps.append(F.relu((weights * activations).sum(dim=1, keepdim=True)).detach())
    finally:
        handle.remove()
    cam = torch.cat(maps)
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)


def _window_offsets(size: int, patch: int, stride: int) -> list[int]:
    steps = math.ceil((size - patch) / stride) + 1 if size > patch else 1
    return [k * stride for k in range(steps)]


def _occlusion_boxes(height: int, width: int, patch: int, stride: int) -> Tensor:
    """(windows, 4): (top, left, height, width) of every occluding square, row by row, clipped at the border."""
    ys, xs = _window_offsets(height, patch, stride), _window_offsets(width, patch, stride)
    return torch.tensor([(y, x, min(patch, height - y), min(patch, width - x)) for y in ys for x in xs])


def occlusion(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    patch: int = 8,
    stride: int = 2,
    baseline: float | Literal["mean"] = "mean",
    probability: Callable[[Tensor], Tensor] | None = None,
    max_batch: int = 64,
    incremental: bool = True,
) -> Tensor:
    """Zeiler & Fergus 2013 occlusion: slide a ``patch`` x ``patch`` square (all channels) with ``stride``;
    each pixel gets the mean drop of the target probability over the windows that cover it. (N, H, W).

    ``baseline`` fills the square: a number, or ``"mean"`` for each image's per-channel mean. ``probability``
    maps logits to the score (softmax by default). Window positions follow captum's ``Occlusion`` (offsets
    ``k * stride``, the last window clipped at the border), so the result equals ``Occlusion(...).attribute``
    on the same score.

    With ``incremental`` (the default) each occluded copy recomputes only the activations the square can
    change (:mod:`lightning_cnnviz.core.incremental`), in passes that hold about 256 MiB of crops each; a few
    copies are checked against full forwards, and a model the incremental evaluator cannot follow gets full
    forwards, ``max_batch`` copies at a time.
    """
    _check_images(images)
    if patch < 1 or stride < 1 or stride > patch:
        raise ValueError(f"need 1 <= stride <= patch, got patch={patch}, stride={stride}")
    score = probability or (lambda logits: logits.softmax(dim=1))
    count, channels, height, width = images.shape
    boxes = _occlusion_boxes(height, width, patch, stride)
    masks = torch.zeros(len(boxes), 1, height, width, device=images.device, dtype=images.dtype)
    for index, (y, x, h, w) in enumerate(boxes.tolist()):
        masks[index, :, y : y + h, x : x + w] = 1
    if baseline == "mean":
        fill = images.mean(dim=(2, 3), keepdim=True)
    elif isinstance(baseline, (int, float)):
        fill = torch.full((count, channels, 1, 1), float(baseline), device=images.device, dtype=images.dtype)
    else:
        raise ValueError(f"baseline can be a number or 'mean', got {baseline!r}")

    with restore_training_flags(model), torch.no_grad():
        model.eval()
        logits: Tensor | None = None
        if incremental:
            try:
                logits = _occluded_logits_checked(model, images, boxes, masks, fill, max_batch)
            except EvaluatorError as error:
                warnings.warn(f"{error}; occlusion uses full forwards", stacklevel=2)
            except Unsupported:
                pass  # the model does something the crops cannot follow: full forwards
        if logits is None:
            logits = _occluded_logits_full(model, images, masks, fill, max_batch)
        clean_logits, occluded_logits = logits[:, 0], logits[:, 1:]
        targets = _targets(model, images, target, max_batch, logits=clean_logits)
        clean = score(clean_logits).gather(1, targets[:, None])
        probs = score(occluded_logits.reshape(count * len(boxes), -1)).view(count, len(boxes), -1)
        drop = clean - probs.gather(2, targets[:, None, None].expand(count, len(boxes), 1))[..., 0]
    covered = masks.sum(dim=0)  # (1, H, W)
    total = torch.einsum("nw,whk->nhk", drop, masks[:, 0])
    return total / covered.clamp_min(1)


def _occluded(images: Tensor, masks: Tensor, fill: Tensor) -> Tensor:
    """Every image with every mask filled: (N * windows, C, H, W)."""
    occluded = images[:, None] * (1 - masks[None]) + fill[:, None] * masks[None]
    return occluded.reshape(-1, *images.shape[1:])


def _occluded_logits_full(model: nn.Module, images: Tensor, masks: Tensor, fill: Tensor, max_batch: int) -> Tensor:
    """(N, 1 + windows, K): the clean logits, then each occluded copy's, from full forwards."""
    windows = masks.shape[0]
    clean = torch.cat([model(chunk) for chunk in images.split(max_batch)])
    per_image = max(1, max_batch // windows)
    parts = []
    for start in range(0, images.shape[0], per_image):
        flat = _occluded(images[start : start + per_image], masks, fill[start : start + per_image])
        parts.append(torch.cat([model(part) for part in flat.split(max_batch)]).view(-1, windows, clean.shape[1]))
    return torch.cat([clean[:, None], torch.cat(parts)], dim=1)


_CLEAN_PASS_BUDGET = 512 * 2**20  # bytes of recorded clean activations per chunk of images
_OCCLUDED_PASS_BUDGET = 256 * 2**20  # bytes of crops per pass of occluded copies (about)


def _occluded_logits_checked(
    model: nn.Module, images: Tensor, boxes: Tensor, masks: Tensor, fill: Tensor, max_batch: int
) -> Tensor:
    """(N, 1 + windows, K) from the incremental evaluator, on chunks of at most ``max_batch`` images whose
    recorded clean activations fit in 512 MiB, each pass of occluded copies holding about 256 MiB of crops (but
    no fewer than ``max_batch`` images' worth); three copies of the first image of each chunk are compared with
    full forwards, and a disagreement beyond float rounding raises :class:`EvaluatorError`."""
    parts = []
    per_image = max(clean_pass_bytes(model, images[:1]), 1)
    step = max(1, min(max_batch, _CLEAN_PASS_BUDGET // per_image))
    pass_images = max(max_batch, _OCCLUDED_PASS_BUDGET // per_image)
    for start in range(0, images.shape[0], step):
        chunk, chunk_fill = images[start : start + step], fill[start : start + step]
        clean, occluded = occluded_logits(model, chunk, boxes, chunk_fill, pass_images)
        sample = sorted({0, len(boxes) // 2, len(boxes) - 1})
        reference = model(_occluded(chunk[:1], masks[sample], chunk_fill[:1]))
        scale = 1.0 + float(reference.abs().max())
        if not torch.allclose(occluded[0, sample], reference, rtol=1e-4, atol=1e-5 * scale):
            gap = float((occluded[0, sample] - reference).abs().max())
            raise EvaluatorError(f"incremental evaluation disagrees with full forwards by {gap:.3g} on this model")
        parts.append(torch.cat([clean[:, None], occluded], dim=1))
    return torch.cat(parts)
