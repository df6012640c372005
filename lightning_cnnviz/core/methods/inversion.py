"""Feature inversion (Mahendran and Vedaldi 2015, "Understanding deep image representations by inverting them"):
the image whose code at a layer is closest to a given image's code, under a total-variation prior. What the
reconstruction keeps is what the layer keeps; what it loses (colour, position, texture) the layer dropped.

The objective per reconstruction ``x`` of image ``x0`` at layer ``l`` is the paper's

    ||phi_l(x) - phi_l(x0)||^2 / ||phi_l(x0)||^2  +  tv * TV_beta(x)

in [0, 1] pixels (the box constraint of the paper's bounded range, kept by clamping after each step), with
``TV_beta`` the mean over pixels of ``((dx)^2 + (dy)^2)^(beta / 2)`` and ``beta = 2`` by default; no random
transformation, so that the reconstruction stays aligned with its original. Every image at every layer is
optimised in one batch (image ``i`` at layer ``l`` is row ``l * N + i``): one forward and backward per step, to
the deepest layer asked for.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.model.modules import evaluating, model_device, run_to

__all__ = ["TV", "CodeSite", "code_distances", "codes", "invert", "psnr", "total_variation"]

#: The weight of the TV prior, per mean squared pixel difference (images in [0, 1]).
TV = 0.05


@dataclass(frozen=True)
class CodeSite:
    """Where a code is read: the output of module ``name``, or its input when ``is_input`` (the penultimate code is
    the input of the last ``nn.Linear``)."""

    name: str
    is_input: bool = False

    def __str__(self) -> str:
        return f"{self.name} (input)" if self.is_input else self.name


def codes(model: nn.Module, inputs: Tensor, sites: Sequence[CodeSite]) -> list[Tensor]:
    """The codes of ``inputs`` at ``sites`` (each (N, ...), in the order of ``sites``), from one forward that stops once
    each has been seen (:func:`~lightning_cnnviz.core.model.modules.run_to`). Gradients flow when the caller enables
    them. ValueError for a site the forward never reaches.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))
        >>> [tuple(c.shape) for c in codes(net, torch.zeros(4, 1, 5, 5), [CodeSite("0"), CodeSite("3", True)])]
        [(4, 2, 3, 3), (4, 18)]
    """
    names = [site.name for site in sites]
    if len(set(names)) != len(set(sites)):
        shown = [str(site) for site in sites]
        raise ValueError(f"inversion: a layer is read once, by its output or by its input; got {shown}.")
    found: dict[str, Tensor] = {}
    run_to(model, inputs, names, found.__setitem__, take_input={site.name for site in sites if site.is_input})
    return [found[name] for name in names]


def total_variation(images: Tensor, beta: float = 2.0) -> Tensor:
    """The paper's TV prior per image (N,): the mean over pixels and channels of ``(dx^2 + dy^2)^(beta / 2)``, with
    forward differences.

    Example:
        >>> total_variation(torch.tensor([[[[0.0, 1.0], [0.0, 1.0]]]])).tolist()  # dx = 1 at the one full pixel
        [1.0]
    """
    dy = images[..., 1:, :-1] - images[..., :-1, :-1]
    dx = images[..., :-1, 1:] - images[..., :-1, :-1]
    squared = dx * dx + dy * dy
    value = squared if beta == 2 else (squared + 1e-12).pow(beta / 2)
    return value.flatten(1).mean(dim=1)


def psnr(images: Tensor, references: Tensor) -> Tensor:
    """Peak signal-to-noise ratio in dB of [0, 1] ``images`` against ``references``, per image (N,).

    Example:
        >>> psnr(torch.full((1, 1, 2, 2), 0.1), torch.zeros(1, 1, 2, 2)).tolist()  # 10 log10(1 / 0.01)
        [20.0]
    """
    error = (images.float() - references.float()).pow(2).flatten(1).mean(dim=1)
    return 10 * torch.log10(1.0 / error.clamp_min(1e-12))


def invert(
    model: nn.Module,
    images: Tensor,
    sites: Sequence[CodeSite],
    *,
    steps: int = 64,
    lr: float = 0.1,
    tv: float = TV,
    beta: float = 2.0,
    normalize: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> Tensor:
    """Reconstructions (len(sites), N, C, H, W) in [0, 1] of ``images`` (N, C, H, W) in [0, 1] from their codes at
    each of ``sites``, all in one batch: Adam on the pixels from ``seed``'s uniform noise around mid-grey (the same
    noise for every image), on the relative code distance plus ``tv`` times the TV prior of exponent ``beta``, pixels
    clamped to [0, 1] after each step. The model sees ``normalize(x)`` (else ``x``), runs in eval mode; parameters'
    ``.grad`` are untouched and no hook is left. An image's reconstruction does not depend on the other images of its
    batch.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 8, 3))
        >>> invert(net, torch.rand(2, 3, 8, 8), [CodeSite("0"), CodeSite("2")], steps=4).shape
        torch.Size([2, 2, 3, 8, 8])
    """
    if images.dim() != 4:
        raise ValueError(f"inversion: `images` are (N, C, H, W) in [0, 1], got shape {tuple(images.shape)}.")
    if not sites:
        raise ValueError("inversion: give at least one layer to invert from.")
    device = model_device(model)
    originals = images.detach().float().to(device)
    count, layers = originals.shape[0], len(sites)
    see = normalize if normalize is not None else (lambda x: x)
    with evaluating(model, grad=True):
        with torch.no_grad():
            targets = [code.detach().float() for code in codes(model, see(originals), sites)]
        norms = [target.flatten(1).pow(2).sum(dim=1).clamp_min(1e-12) for target in targets]
        generator = torch.Generator().manual_seed(int(seed))
        start = 0.5 + 0.1 * (torch.rand((1, *originals.shape[1:]), generator=generator) - 0.5)  # one for all
        pixels = start.to(device).repeat(layers * count, 1, 1, 1).requires_grad_(True)
        optimizer = torch.optim.Adam([pixels], lr=lr)
        for _ in range(steps):
            found = codes(model, see(pixels), sites)
            loss = tv * total_variation(pixels, beta).sum()
            for index, (code, target, norm) in enumerate(zip(found, targets, norms, strict=True)):
                rows = code[index * count : (index + 1) * count].float()
                loss = loss + ((rows - target).flatten(1).pow(2).sum(dim=1) / norm).sum()
            (grad,) = torch.autograd.grad(loss, pixels)
            pixels.grad = grad
            optimizer.step()
            pixels.grad = None
            with torch.no_grad():
                pixels.clamp_(0, 1)
    return pixels.detach().view(layers, count, *originals.shape[1:])


def code_distances(model: nn.Module, inputs: Tensor, references: Tensor, site: CodeSite) -> Tensor:
    """Relative distances (len(inputs), len(references)) between the codes at ``site`` of ``inputs`` and of
    ``references``: ``||phi(a) - phi(b)|| / ||phi(b)||``. Without gradients, in eval mode.

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3))
        >>> x = torch.rand(3, 1, 5, 5)
        >>> code_distances(net, x, x, CodeSite("0")).diagonal().tolist()
        [0.0, 0.0, 0.0]
    """
    with torch.no_grad(), evaluating(model):
        (mine,) = codes(model, inputs, [site])
        (theirs,) = codes(model, references, [site])
    mine, theirs = mine.flatten(1).float(), theirs.flatten(1).float()
    return torch.cdist(mine, theirs) / theirs.norm(dim=1).clamp_min(math.ulp(1.0))[None, :]
