"""Saliency maps, batched on the model's device: gradients, SmoothGrad, guided backprop, deconvnet, Grad-CAM,
occlusion.

Each function runs its own eval-mode forward with gradients (also under ``torch.inference_mode``) and takes
``torch.autograd.grad`` with respect to the inputs only, so no ``.grad`` changes; ``training`` flags are
restored. Guided backprop and deconvnet change the backward rule of every ReLU the forward computes (modules,
in-place modules and ``F.relu``/``torch.relu_``/``x.relu()`` alike) through a ``TorchFunctionMode``. Targets:
``None`` is the predicted class, an ``int`` one class for all, a tensor (N,) one class per image, and a callable
``score(output, inputs, rows) -> (n,)`` any score per input (``rows``: the index in ``images`` of the image each
input is, or is a noisy or occluded copy of), such as :class:`~lightning_cnnviz.core.inputs.task.Target` makes for
every task.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.overrides import TorchFunctionMode

from lightning_cnnviz.core.inputs.batches import check_images, in_layout_of
from lightning_cnnviz.core.inputs.task import Score, check_scores, class_score
from lightning_cnnviz.core.methods._calls import INPLACE_RELU, relu_kind
from lightning_cnnviz.core.methods.perturbation.occlusion import OcclusionMemo, check_window, occlude, occlusion_masks
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, hooked, logits_of, resolve_modules
from lightning_cnnviz.core.model.passes import even_passes, pass_size

__all__ = ["deconvnet", "grad_cam", "guided_backprop", "occlusion", "smoothgrad", "vanilla_gradient"]

Target = Tensor | int | Score | None
ReluRule = Literal["guided_backprop", "deconvnet", "redirected"]


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
        if ctx.rule.rule == "redirected":  # Lucid's: also the gradients that would raise a negative input
            return grad * ((out > 0) | (grad > 0)), None
        return grad.clamp_min(0), None


class ReluGradientRule(TorchFunctionMode):
    """Inside ``with ReluGradientRule(rule) as holder:`` every ReLU computed (module or functional, in-place
    or not) uses ``holder.rule``'s backward, read at backward time: set it between backward passes of one
    forward to get both projections from a single forward."""

    def __init__(self, rule: ReluRule) -> None:
        if rule not in ("guided_backprop", "deconvnet", "redirected"):
            raise ValueError(f"rule can be 'guided_backprop', 'deconvnet' or 'redirected', got {rule!r}")
        super().__init__()
        self.rule: ReluRule = rule

    def __torch_function__(
        self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if relu_kind(func) != "relu" or not isinstance(args[0], Tensor):
            return func(*args, **kwargs)
        x = args[0]
        inplace = func in INPLACE_RELU or bool(kwargs.get("inplace", args[1] if len(args) > 1 else False))
        out = _RuleRelu.apply(x, self)
        if inplace:  # keep the in-place contract: the caller may use x afterwards instead of the result
            x.copy_(out)
            return x
        return out


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
    with evaluating(model):
        return torch.cat([logits_of(model(chunk)).argmax(dim=1) for chunk in images.split(max_batch)])


def _scorer(model: nn.Module, images: Tensor, target: Target, max_batch: int, logits: Tensor | None = None) -> Score:
    """The score of each input: ``target`` itself when it is a callable, else the logit of its image's class."""
    return target if callable(target) else class_score(_targets(model, images, target, max_batch, logits))


def _input_gradient(
    model: nn.Module, images: Tensor, score: Score, max_batch: int, rows: Tensor | None = None
) -> Tensor:
    """d score / d input for every image (``rows``: each one's image, default its own index), in chunks of
    ``max_batch``; the caller sets any ReLU rule."""
    rows = torch.arange(len(images), device=images.device) if rows is None else rows
    grads = []
    for chunk, chunk_rows in zip(images.split(max_batch), rows.split(max_batch)):
        inputs = chunk.detach().clone().requires_grad_(True)
        scores = check_scores(score(model(inputs), inputs, chunk_rows), len(inputs)).sum()
        (grad,) = torch.autograd.grad(scores, inputs)
        grads.append(grad)
    return torch.cat(grads)


def vanilla_gradient(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Simonyan et al. 2013 (arXiv 1312.6034): ``max_c |d score / d x|``, shape (N, H, W).

    Example:
        >>> vanilla_gradient(net, images).shape
        torch.Size([2, 8, 8])
    """
    check_images(images)
    score = _scorer(model, images, target, max_batch)
    with evaluating(model, grad=True):
        return _input_gradient(model, images, score, max_batch).abs().amax(dim=1)


def smoothgrad(
    model: nn.Module,
    images: Tensor,
    target: Target = None,
    *,
    samples: int = 50,
    sigma: float = 0.15,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    max_batch: int | None = None,
) -> Tensor:
    """Smilkov et al. 2017 (arXiv 1706.03825): the mean of ``|gradient|`` over noisy copies, max over channels.

    The noisy copies run in batches of ``max_batch`` (default: :func:`.pass_size` with
    gradients, at least one copy of every image). Noise is Gaussian with standard deviation ``sigma * (max(x) -
    min(x))`` per image (the paper's level), unless ``noise`` (N * samples, C, H, W) is given (copies of image
    ``i`` at rows ``i * samples`` to ``(i + 1) * samples - 1``). Returns (N, H, W).

    Example:
        >>> smoothgrad(net, images, samples=4).shape
        torch.Size([2, 8, 8])
    """
    check_images(images)
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    count = images.shape[0]
    max_batch = max_batch or even_passes(count * samples, pass_size(model, images[:1], minimum=count, grad=True))
    score = _scorer(model, images, target, max_batch)
    expanded = images.repeat_interleave(samples, dim=0)
    if noise is None:
        span = (images.amax(dim=(1, 2, 3)) - images.amin(dim=(1, 2, 3))).repeat_interleave(samples)
        noise = torch.randn(expanded.shape, generator=generator, device=images.device, dtype=images.dtype)
        noise = noise * (sigma * span).view(-1, 1, 1, 1)
    elif noise.shape != expanded.shape:
        raise ValueError(f"noise must have shape {tuple(expanded.shape)}, got {tuple(noise.shape)}")
    with evaluating(model, grad=True):
        noisy = in_layout_of(expanded + noise, images)
        rows = torch.arange(count, device=images.device).repeat_interleave(samples)
        grads = _input_gradient(model, noisy, score, max_batch, rows)
    return grads.abs().view(count, samples, *images.shape[1:]).mean(dim=1).amax(dim=1)


def guided_backprop(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Springenberg et al. 2014 (arXiv 1412.6806): input gradient with guided ReLU backward, (N, C, H, W).

    The rule replaces the backward of ``relu`` calls only (modules, functional, in place), as captum does; other
    activations (ReLU6, GELU, SiLU, Hardswish, ...) pass their true gradient.

    Example:
        >>> guided_backprop(net, images, target=1).shape
        torch.Size([2, 3, 8, 8])
    """
    return _relu_rule_gradient(model, images, target, "guided_backprop", max_batch)


def deconvnet(model: nn.Module, images: Tensor, target: Target = None, *, max_batch: int = 64) -> Tensor:
    """Zeiler & Fergus 2013 (arXiv 1311.2901): input gradient with ReLU of the backward signal, (N, C, H, W).
    Applied to ``relu`` calls only, as :func:`guided_backprop`.

    Example:
        >>> deconvnet(net, images, target=torch.tensor([0, 1])).shape
        torch.Size([2, 3, 8, 8])
    """
    return _relu_rule_gradient(model, images, target, "deconvnet", max_batch)


def _relu_rule_gradient(model: nn.Module, images: Tensor, target: Target, rule: ReluRule, max_batch: int) -> Tensor:
    check_images(images)
    score = _scorer(model, images, target, max_batch)
    with evaluating(model, grad=True), ReluGradientRule(rule):
        return _input_gradient(model, images, score, max_batch)


def grad_cam(
    model: nn.Module, images: Tensor, target: Target = None, *, layer: str | None = None, max_batch: int = 64
) -> Tensor:
    """Selvaraju et al. 2017 (arXiv 1610.02391): ``ReLU(sum_k w_k A_k)``, ``w_k`` the spatial mean of
    ``d score / d A_k``, upsampled (bilinear) to the input size. Shape (N, H, W).

    ``layer`` defaults to the last ``nn.Conv2d``; the rest of the network gets a copy of its output, so a
    following in-place ReLU cannot change ``A``.

    Example:
        >>> grad_cam(net, images).shape
        torch.Size([2, 8, 8])
    """
    check_images(images)
    name = layer if layer is not None else LayerMap.of(model).last
    module = resolve_modules(model, [name], what="grad_cam layer")[name]
    score = _scorer(model, images, target, max_batch)
    rows = torch.arange(len(images), device=images.device)
    captured: list[Tensor] = []

    def keep(module: nn.Module, args: Any, output: Tensor) -> Tensor:
        captured.append(output)
        return output.clone()

    maps = []
    with hooked([(module, keep)]), evaluating(model, grad=True):
        for chunk, chunk_rows in zip(images.split(max_batch), rows.split(max_batch)):
            captured.clear()
            scores = check_scores(score(model(chunk.detach()), chunk, chunk_rows), len(chunk)).sum()
            activations = captured[-1]
            (grad,) = torch.autograd.grad(scores, activations)
            weights = grad.mean(dim=(2, 3), keepdim=True)
            maps.append(F.relu((weights * activations).sum(dim=1, keepdim=True)).detach())
    cam = torch.cat(maps)
    return F.interpolate(cam, size=images.shape[-2:], mode="bilinear", align_corners=False).squeeze(1)


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
    memory_budget: int | None = None,
    memo: OcclusionMemo | None = None,
) -> Tensor:
    """Zeiler & Fergus 2013 occlusion: slide a ``patch`` x ``patch`` square (all channels) with ``stride``;
    each pixel gets the mean drop of the target probability over the windows that cover it. (N, H, W).

    ``baseline`` fills the square: a number, or ``"mean"`` (each image's per-channel mean); ``probability`` maps
    the logits of a class target to the score (softmax); a callable target is the score itself. Windows follow
    captum's ``Occlusion``, so the maps equal its own. The copies are built on the model's device and run as full
    forwards (:func:`~lightning_cnnviz.core.methods.perturbation.occlusion.occlude`), copies of several images and
    windows together, as many per pass as fit ``memory_budget`` bytes of activations (default:
    :func:`~lightning_cnnviz.core.model.passes.pass_size`, at least one copy of every image), with no host sync
    between. A class target's forwards come from ``memo`` when one is given (those another picture of the same
    step made, the occlusion figure's).

    Example:
        >>> occlusion(net, images, patch=4, stride=2).shape
        torch.Size([2, 8, 8])
    """
    check_images(images)
    check_window(patch, stride)
    score = probability or (lambda logits: logits.softmax(dim=1))
    height, width = images.shape[-2:]
    if callable(target):
        measure = target

        def read(output: Any, inputs: Tensor, rows: Tensor) -> Tensor:
            return check_scores(measure(output, inputs, rows), len(inputs))

        found = occlude(model, images, patch=patch, stride=stride, baseline=baseline, reads={"score": read},
                        max_batch=max_batch, memory_budget=memory_budget)  # fmt: skip
        drop = found.clean["score"][:, None] - found.outputs["score"]
    else:
        if memo is not None:
            found = memo.occlude(model, images, patch=patch, stride=stride, baseline=baseline, max_batch=max_batch)
        else:
            logits = {"logits": lambda output, inputs, rows: logits_of(output)}
            found = occlude(model, images, patch=patch, stride=stride, baseline=baseline, reads=logits,
                            max_batch=max_batch, memory_budget=memory_budget)  # fmt: skip
        clean_logits, copies = found.clean["logits"], found.outputs["logits"]
        classes = _targets(model, images, target, max_batch, logits=clean_logits)
        clean = score(clean_logits).gather(1, classes[:, None])
        occluded = score(copies.flatten(0, 1)).view(*copies.shape[:2], -1)
        drop = clean - occluded.gather(2, classes[:, None, None].expand(-1, copies.shape[1], 1))[..., 0]
    masks = occlusion_masks(height, width, patch, stride).to(images.device)
    total = torch.einsum("nw,whk->nhk", drop, masks[:, 0].to(drop.dtype))
    return total / masks.sum(dim=0).clamp_min(1)
