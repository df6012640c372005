"""Feature visualization: images synthesised to excite chosen channels, all channels in one batch, and DeepDream.

Activation maximisation (Erhan et al. 2009; Simonyan et al. 2013) with the regularisers of Olah et al. 2017
("Feature Visualization", Distill) and Lucid: the image is parameterised in a decorrelated Fourier basis (each
frequency scaled by 1 / frequency) with decorrelated colour (the square root of the data's own colour covariance),
squashed by a sigmoid to the data's [0, 1] range, then normalised as the model expects; each step sees it through
a random jitter, scale and rotation (one ``affine_grid``/``grid_sample``), and Adam follows the gradient of each
channel's mean activation. One image per channel, one forward and backward per step for all of them.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.context import InputScale
from lightning_cnnviz.core.methods.objectives import OUTPUT, Objective, channel, diversity, neuron
from lightning_cnnviz.core.methods.objectives import layer as layer_objective
from lightning_cnnviz.core.methods.saliency import ReluGradientRule
from lightning_cnnviz.core.model.capture import capture
from lightning_cnnviz.core.model.layers import LayerMap
from lightning_cnnviz.core.model.modules import evaluating, logits_of, model_device, resolve_modules, run_to

__all__ = ["DIVERSITY_WEIGHT", "ObjectiveFactory", "deep_dream", "evaluate", "render_objective", "render_pixels",
           "visualize_features"]  # fmt: skip

#: What FeatureVisMonitor renders for a layer: a function of (layer, one channel per image) giving their objective.
ObjectiveFactory = Callable[[str, list[int]], Objective]
#: The diversity term's weight, as a share of each image's own score per unit of Gram cosine similarity.
DIVERSITY_WEIGHT = 0.5


def color_correlation(images: Tensor) -> Tensor:
    """The (C, C) matrix that turns decorrelated colour into the colour statistics of ``images`` (N, C, H, W) in
    [0, 1]: the square root of their colour covariance (``U sqrt(S)`` of its SVD), scaled so that its largest
    column has norm 1 (Lucid's ``color_correlation_svd_sqrt``). The identity for one channel.

    Example:
        >>> from lightning_cnnviz.core.methods.feature_vis import color_correlation
        >>> color_correlation(torch.rand(4, 1, 8, 8))
        tensor([[1.]])
    """
    channels = images.shape[1]
    if channels == 1:
        return torch.ones(1, 1, device=images.device)
    pixels = images.detach().double().transpose(0, 1).reshape(channels, -1)
    u, s, _ = torch.linalg.svd(torch.cov(pixels))
    root = u * s.clamp_min(0).sqrt()
    return (root / root.norm(dim=0).max().clamp_min(1e-12)).float()


def _frequencies(height: int, width: int, device: torch.device) -> Tensor:
    """|frequency| of every coefficient of an ``rfft2`` of an (height, width) image."""
    fy = torch.fft.fftfreq(height, device=device)[:, None]
    fx = torch.fft.rfftfreq(width, device=device)[None, :]
    return torch.sqrt(fx * fx + fy * fy)


class FourierImage(nn.Module):
    """A batch of images parameterised by their decorrelated spectra (Olah et al. 2017, Lucid's ``fft_image``)."""

    scale: Tensor
    colors: Tensor

    def __init__(
        self,
        count: int,
        channels: int,
        size: tuple[int, int],
        colors: Tensor,
        generators: Sequence[torch.Generator],
        device: torch.device,
        decay: float = 1.0,
    ) -> None:
        super().__init__()
        height, width = size
        self.size = size
        frequencies = _frequencies(height, width, device)
        scale = 1.0 / frequencies.clamp_min(1.0 / max(height, width)) ** decay
        self.register_buffer("scale", scale * math.sqrt(height * width))
        self.register_buffer("colors", colors.to(device))
        shape = (channels, *frequencies.shape, 2)
        start = torch.stack([torch.randn(shape, generator=generator) for generator in generators])  # one per image
        self.spectrum = nn.Parameter(0.01 * start.to(device))

    def forward(self) -> Tensor:
        """The images in [0, 1], (count, channels, height, width)."""
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=self.size) / 4.0  # scales as Lucid (TF's unnormalised irfft2d)
        image = torch.einsum("nchw,dc->ndhw", image, self.colors)  # decorrelated colour -> the data's colour
        return torch.sigmoid(image)


def random_views(
    images: Tensor, draws: Tensor, *, jitter: float = 0.05, scale: float = 0.05, degrees: float = 10.0
) -> Tensor:
    """Each image through its own random translation (up to ``jitter`` of its side), scale (1 +- ``scale``) and
    rotation (+- ``degrees``), from ``draws`` (N, 4) uniform in [-1, 1]: one ``affine_grid`` and ``grid_sample``,
    reflecting at the border."""
    draws = draws.to(images.device)
    angle = draws[:, 0] * math.radians(degrees)
    zoom = 1 + draws[:, 1] * scale
    cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
    theta = torch.stack(
        [torch.stack([cos, -sin, draws[:, 2] * 2 * jitter], 1), torch.stack([sin, cos, draws[:, 3] * 2 * jitter], 1)],
        1,
    )
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _check_channels(model: nn.Module, layer: str, channels: Sequence[int], example: Tensor) -> int:
    shapes: dict[str, tuple[int, ...]] = {}
    with evaluating(model):
        run_to(model, example, [layer], lambda name, output: shapes.update({name: tuple(output.shape)}))
    count = shapes[layer][1]
    bad = [c for c in channels if not (isinstance(c, int) and 0 <= c < count)]
    if bad or not channels:
        raise ValueError(
            f"visualize_features: channel {bad[0] if bad else None!r} of layer {layer!r} is out of range; the layer "
            f"has {count} channels, so indices 0..{count - 1} are allowed."
        )
    return count


def evaluate(model: nn.Module, objective: Objective, inputs: Tensor, *others: Objective) -> Tensor:
    """``objective``'s score per image of one forward of ``inputs`` (N,): to the last layer it reads (``run_to``), or
    through the whole model when it reads the class scores (``logits_of`` the output, the activations captured in
    the graph). Gradients flow when the caller enables them. With ``others``, the scores of each objective from
    the same forward, (1 + len(others), N)."""
    every = (objective, *others)
    layers = list(dict.fromkeys(name for wanted in every for name in wanted.layers if name != OUTPUT))
    if not any(wanted.needs_output for wanted in every):
        captured: dict[str, Tensor] = {}
        run_to(model, inputs, layers, captured.__setitem__)
    else:
        with capture(model, layers, detach=False) as found:
            output = logits_of(model(inputs))
        captured = {**found, OUTPUT: output}
    return objective(captured) if not others else torch.stack([wanted(captured) for wanted in every])


def render_objective(
    model: nn.Module,
    objective: Objective,
    count: int,
    *,
    size: int | tuple[int, int] = 64,
    in_channels: int = 3,
    steps: int = 256,
    lr: float = 0.05,
    seeds: Sequence[int] | None = None,
    colors: Tensor | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
    transforms: bool = True,
    l2: float = 0.0,
    redirected_relu_steps: int = 0,
    device: torch.device | str | None = None,
    penalty: Objective | None = None,
) -> Tensor:
    """``count`` images (count, C, H, W) in [0, 1] that maximise ``objective`` (one score per image: image ``i``
    its ``i``-th channel or class, or all the same), optimised in one batch: decorrelated Fourier parameterisation
    in the data's colour (``colors``, (C, C); the identity by default) squashed by a sigmoid, each step seen
    through a random jitter, scale and rotation (``transforms``), Adam on the spectra. ``l2`` subtracts
    ``l2 * ||image - 0.5||^2`` from each score (Simonyan et al.'s regulariser). The model sees ``normalize(image)``
    (else the image). Image ``i`` starts from ``seeds[i]`` (default ``range(count)``), so it does not depend on the
    other images of its batch. The model runs in eval mode; parameters' ``.grad`` are untouched; no hook is left.
    ``redirected_relu_steps``: for that many first steps the ReLU backward also passes gradients that would raise
    a negative input (Lucid's "redirected ReLU"). ``penalty`` is added at every step, each image's times its current
    |objective| (so a weight is a share of the objective, whatever the layer's scale): a diversity term that sends
    the images of one objective apart.

    Example:
        >>> from lightning_cnnviz.core.methods.objectives import channel
        >>> render_objective(net, channel("0", [0, 2]), 2, size=8, steps=4).shape
        torch.Size([2, 3, 8, 8])
    """
    height, width = (size, size) if isinstance(size, int) else size
    device = torch.device(device) if device is not None else model_device(model)
    seeds = list(seeds) if seeds is not None else list(range(count))
    if len(seeds) != count:
        raise ValueError(f"render_objective: {len(seeds)} seeds for {count} images; give one per image.")
    if colors is None:
        colors = torch.eye(in_channels)
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    image = FourierImage(count, in_channels, (height, width), colors.float(), generators, device)
    draws = torch.stack([torch.rand(steps, 4, generator=generator) * 2 - 1 for generator in generators], dim=1)
    optimizer = torch.optim.Adam(image.parameters(), lr=lr)
    jitter = 2.0 / max(height, width)  # about a pixel or two, in grid units
    with evaluating(model, grad=True):
        for step in range(steps):
            pixels = image()
            seen = random_views(pixels, draws[step], jitter=max(jitter, 0.03)) if transforms else pixels
            inputs = normalize(seen) if normalize is not None else seen
            extra = (penalty,) if penalty is not None else ()
            with ReluGradientRule("redirected") if step < redirected_relu_steps else contextlib.nullcontext():
                scores = evaluate(model, objective, inputs, *extra)
            # the penalty trades a share of each image's own score: the same on any layer's scale
            score = scores.sum() if not extra else (scores[0] + scores[1] * scores[0].detach().abs()).sum()
            if l2:
                score = score - l2 * (pixels - 0.5).pow(2).sum()
            (grad,) = torch.autograd.grad(-score, image.spectrum)
            image.spectrum.grad = grad
            optimizer.step()
            image.spectrum.grad = None
    with torch.no_grad():
        return image().detach()


def render_pixels(
    model: nn.Module,
    objective: Objective,
    shape: Sequence[int],
    *,
    steps: int = 256,
    lr: float = 0.1,
    l2: float = 1e-3,
    device: torch.device | str | None = None,
) -> Tensor:
    """Simonyan et al. (2013)'s class models as the paper makes them: ``shape`` (N, C, *spatial) unbounded inputs, in
    the model's own input space (zero is the mean image of normalised data), that maximise ``objective`` minus
    ``l2 * ||input||^2`` per image, by Adam from zero, with no parameterisation and no transformation. Returns the
    inputs (not pixels: show them stretched). For a linear score ``w . x + b`` the optimum is ``w / (2 * l2)``.

    Example:
        >>> from lightning_cnnviz.core.methods.objectives import class_logit
        >>> linear = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
        >>> render_pixels(linear, class_logit([0, 1, 2]), (3, 1, 4, 4), steps=8).shape
        torch.Size([3, 1, 4, 4])
    """
    device = torch.device(device) if device is not None else model_device(model)
    inputs = torch.zeros(tuple(shape), device=device, requires_grad=True)
    optimizer = torch.optim.Adam([inputs], lr=lr)
    with evaluating(model, grad=True):
        for _ in range(steps):
            score = evaluate(model, objective, inputs).sum() - l2 * inputs.pow(2).sum()
            (grad,) = torch.autograd.grad(-score, inputs)
            inputs.grad = grad
            optimizer.step()
            inputs.grad = None
    return inputs.detach()


def visualize_features(
    model: nn.Module,
    layer: str,
    channels: Sequence[int],
    *,
    size: int | tuple[int, int] = 64,
    in_channels: int = 3,
    steps: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    colors: Tensor | None = None,
    normalize: Callable[[Tensor], Tensor] | None = None,
    mean: Sequence[float] | Tensor | None = None,
    std: Sequence[float] | Tensor | None = None,
    transforms: bool = True,
    objective: str | ObjectiveFactory = "channel",
    l2: float = 0.0,
    redirected_relu_steps: int = 0,
    device: torch.device | str | None = None,
    diversity_images: int = 1,
    diversity_weight: float = DIVERSITY_WEIGHT,
) -> Tensor:
    """Images that maximise the mean activation of each of ``channels`` of ``layer``: (len(channels) *
    diversity_images, C, H, W) in [0, 1], ``diversity_images`` per channel (channel after channel), all optimised in
    one batch (:func:`render_objective` of the channel objectives).

    ``objective``: ``"channel"`` (the channel's mean activation over all positions), ``"neuron"`` (its activation
    at the central position), or a function of ``(layer, channels)`` (one channel per image) returning the
    :class:`~lightning_cnnviz.core.Objective` of those images (``lambda layer, chans: channel(layer, chans) - 0.1 *
    layer_objective(layer)``). With ``diversity_images`` = k > 1, each channel's k images (each from its own seed)
    also lower the mean cosine similarity of their Gram matrices at ``layer`` (Olah et al. 2017's diversity;
    :func:`~lightning_cnnviz.core.methods.objectives.diversity`), weighted by ``diversity_weight`` times each
    image's own score (:func:`render_objective`'s ``penalty``), so that they show different things the channel
    answers to. ``l2`` subtracts ``l2 * ||image - 0.5||^2`` from each score (Simonyan et al. 2013's
    class-model regulariser; with it, a linear unit's optimum is its own weights). ``colors``: (C, C) colour
    correlation of the data (:func:`color_correlation` of probe images; the identity by
    default). The model sees ``normalize(image)``, or ``(image - mean) / std``, or the image. The same ``seed``,
    weights and arguments give the same images, and a channel's image does not depend on the other channels
    rendered with it. The model runs in eval mode; parameters' ``.grad`` are untouched
    (gradients come from ``torch.autograd.grad`` on the image parameters only) and no hook is left. ReLU gradients
    are autograd's own, unless ``redirected_relu_steps`` > 0 (see :func:`render_objective`).

    Example:
        >>> visualize_features(net, "0", [0, 2], size=8, steps=4).shape
        torch.Size([2, 3, 8, 8])
    """
    height, width = (size, size) if isinstance(size, int) else size
    if not callable(objective) and objective not in ("channel", "neuron"):
        raise ValueError(f"visualize_features: `objective` can be 'channel', 'neuron' or a function of (layer, "
                         f"channels) returning an Objective, got {objective!r}")  # fmt: skip
    device = torch.device(device) if device is not None else model_device(model)
    resolve_modules(model, [layer], what="visualize_features layer")
    _check_channels(model, layer, channels, torch.zeros(1, in_channels, height, width, device=device))
    if normalize is None and mean is not None and std is not None:
        normalize = InputScale(mean, std).to_model
    # One seed per image, from the seed, its channel and its copy: a channel's render does not depend on which other
    # channels share its batch (so the channels can be split over processes).
    copies = check_positive_int("visualize_features", "diversity_images", diversity_images)
    seeds = [seed * 1_000_003 + int(c) + 7_919 * j for c in channels for j in range(copies)]
    repeated = [int(c) for c in channels for _ in range(copies)]
    if callable(objective):
        wanted = objective(layer, repeated)
        if not isinstance(wanted, Objective):
            raise TypeError(f"visualize_features: `objective` returned {type(wanted).__name__}, not an Objective.")
    else:
        wanted = (neuron if objective == "neuron" else channel)(layer, repeated)
    penalty = -float(diversity_weight) * diversity(layer, copies) if copies > 1 else None
    return render_objective(
        model, wanted, len(seeds), size=(height, width), in_channels=in_channels, steps=steps, lr=lr, seeds=seeds,
        colors=colors, normalize=normalize, transforms=transforms, l2=l2, redirected_relu_steps=redirected_relu_steps,
        device=device, penalty=penalty,
    )  # fmt: skip


def deep_dream(
    model: nn.Module,
    layer: str,
    images: Tensor,
    *,
    octaves: int = 3,
    octave_scale: float = 1.4,
    steps: int = 10,
    step_size: float = 0.01,
    normalize: Callable[[Tensor], Tensor] | None = None,
    seed: int = 0,
) -> Tensor:
    """DeepDream (Mordvintsev et al. 2015): gradient ascent on the squared norm of ``layer``'s activation,
    starting from ``images`` (N, C, H, W) in [0, 1], from the coarsest of ``octaves`` scales to the full size
    (each ``octave_scale`` times the previous, or the nearest size the network takes:
    :meth:`~lightning_cnnviz.core.LayerMap.size_near`), with steps normalised by the mean |gradient| and a random roll
    per step. Returns the dreamed images in [0, 1]; the model runs in eval mode and parameters' ``.grad`` are
    untouched.

    Example:
        >>> deep_dream(net, "0", images.clamp(0, 1), octaves=2, steps=2).shape
        torch.Size([2, 3, 8, 8])
    """
    resolve_modules(model, [layer], what="deep_dream layer")
    dream_objective = layer_objective(layer)  # the mean squared activation, averaged over the images
    generator = torch.Generator().manual_seed(seed)
    base = images.detach().float().clamp(0, 1)
    height, width = base.shape[-2:]
    scales = [octave_scale**o for o in range(octaves - 1, -1, -1)]
    wanted = [(base.shape[1], max(1, round(height / s)), max(1, round(width / s))) for s in scales]
    sizes = [LayerMap.of(model).size_near(model, shape, layer)[1:] for shape in wanted]
    detail = torch.zeros_like(F.interpolate(base, size=sizes[0], mode="bilinear", align_corners=False))
    dream = base
    with evaluating(model, grad=True):
        for size in sizes:
            scaled = F.interpolate(base, size=size, mode="bilinear", align_corners=False)
            detail = F.interpolate(detail, size=size, mode="bilinear", align_corners=False)
            for _ in range(steps):
                dy, dx = (int(v) for v in torch.randint(-2, 3, (2,), generator=generator))
                current = (scaled + detail).clamp(0, 1).requires_grad_(True)
                rolled = torch.roll(current, shifts=(dy, dx), dims=(2, 3))
                score = evaluate(model, dream_objective, normalize(rolled) if normalize else rolled).mean()
                (grad,) = torch.autograd.grad(score, current)
                detail = detail + step_size * grad / grad.abs().mean().clamp_min(1e-12)
            dream = (scaled + detail).clamp(0, 1)
    return dream.detach()
