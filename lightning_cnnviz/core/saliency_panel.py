"""SaliencyMonitor's logic, Trainer-free: the maps of a probe set by each method, captioned, as pictures."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
from torch import Tensor, nn

from lightning_cnnviz.core import saliency as S
from lightning_cnnviz.core.activation_sites import find_activation_sites
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.drawing import annotate
from lightning_cnnviz.core.model import class_name, evaluating, logits_of, resolve_modules
from lightning_cnnviz.core.probe import Probe
from lightning_cnnviz.core.protocol import Guard, Moment, Ranks, Snapshot
from lightning_cnnviz.core.render import render_saliency

__all__ = ["SaliencyPanel"]

DEFAULT_METHODS = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")
WHO = "SaliencyMonitor"
Target = Literal["true", "predicted"] | int


class SaliencyPanel:
    """Saliency maps of probe images, one picture per method: rows of [image | map | overlay], captioned with the
    true and predicted class, normalised per image.

    Methods (:mod:`lightning_cnnviz.core.saliency`): ``vanilla_gradient`` (Simonyan et al. 2013), ``smoothgrad``
    (Smilkov et al. 2017), ``guided_backprop`` (Springenberg et al. 2014), ``deconvnet`` and ``occlusion`` (Zeiler
    & Fergus 2013), ``grad_cam`` (Selvaraju et al. 2017). SmoothGrad noise comes from a private generator seeded
    with ``seed``: the same at every call, the global RNG untouched.

    Args:
        methods: any of ``vanilla_gradient``, ``smoothgrad``, ``guided_backprop``, ``deconvnet``, ``grad_cam``,
            ``occlusion``.
        target: ``"true"`` (the label), ``"predicted"``, or a class index.
        smoothgrad_samples: noisy copies per image; ``smoothgrad_sigma``: noise level, a fraction of each
            image's value range.
        occlusion_patch: side of the occluding square (default: a quarter of the image side);
            ``occlusion_stride`` its step (default: a quarter of the patch).
        grad_cam_layer: conv layer for Grad-CAM (default: the last ``nn.Conv2d``).
        class_names: names for the captions (default: class indices).
        seed: seed of the SmoothGrad noise.
        output_to_logits: function from the model's output to the (N, classes) logits (default: the output, or
            its first tensor when it is a tuple, list, dict or dataclass; a ``logits`` entry first).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        ...                     nn.Linear(4, 3))
        >>> panel = SaliencyPanel(methods=("vanilla_gradient", "grad_cam"), target="predicted")
        >>> shot = panel.snapshot(net, Probe(torch.randn(2, 1, 8, 8)), Moment(epoch=0, step=0))
        >>> {tag: tuple(picture.shape) for tag, picture in shot.images.items()}
        {'cnnviz/saliency/vanilla_gradient': (3, 132, 196), 'cnnviz/saliency/grad_cam': (3, 132, 196)}
    """

    def __init__(
        self,
        methods: Sequence[str] = DEFAULT_METHODS,
        target: Target = "true",
        smoothgrad_samples: int = 25,
        smoothgrad_sigma: float = 0.15,
        occlusion_patch: int | None = None,
        occlusion_stride: int | None = None,
        grad_cam_layer: str | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        output_to_logits: Callable[[Any], Tensor] | None = None,
    ) -> None:
        if isinstance(methods, str):
            methods = (methods,)
        unknown = [m for m in methods if m not in S.SALIENCY_METHODS]
        if unknown or not methods:
            raise ValueError(
                f"{WHO}: unknown method {unknown[0] if unknown else None!r} in `methods`; the methods are "
                f"{', '.join(map(repr, S.SALIENCY_METHODS))}."
            )
        if output_to_logits is not None and not callable(output_to_logits):
            raise TypeError(f"{WHO}: `output_to_logits` must be a callable or None, got {output_to_logits!r}.")
        if not (target in ("true", "predicted") or (isinstance(target, int) and not isinstance(target, bool))):
            raise ValueError(f"{WHO}: `target` can be 'true', 'predicted' or a class index, got {target!r}.")
        self.methods = tuple(methods)
        self.target = target
        self.smoothgrad_samples = check_positive_int(WHO, "smoothgrad_samples", smoothgrad_samples)
        self.smoothgrad_sigma = float(smoothgrad_sigma)
        self.occlusion_patch = occlusion_patch
        self.occlusion_stride = occlusion_stride
        self.grad_cam_layer = grad_cam_layer
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = seed
        self.output_to_logits = output_to_logits
        self._kinds: list[str] | None = None

    def check(self, model: nn.Module) -> None:
        """ValueError, at once, for a ``grad_cam_layer`` that is not a ``nn.Conv2d`` of ``model``."""
        if self.grad_cam_layer is not None:
            resolve_modules(model, [self.grad_cam_layer], what=f"{WHO} `grad_cam_layer`", kinds=(nn.Conv2d,))

    def scored(self, model: nn.Module) -> Any:
        """The model as the maps see it: called through ``output_to_logits`` when one is given (without, the
        core takes the logits out of the output with ``logits_of``)."""
        return _OutputToLogits(model, self.output_to_logits) if self.output_to_logits else model

    def maps(self, model: nn.Module, images: Tensor, labels: Tensor | None, method: str) -> Tensor:
        """The ``method``'s maps of ``images`` (on the images' device), for the target of each image."""
        scored = self.scored(model)
        target: Tensor | int | None
        if self.target == "true":
            if labels is None:
                raise ValueError(f"{WHO}: target='true' needs the probe images' labels.")
            target = labels.to(images.device)
        else:
            target = None if self.target == "predicted" else int(self.target)
        if method == "smoothgrad":
            generator = torch.Generator(device=images.device).manual_seed(self.seed)
            samples, sigma = self.smoothgrad_samples, self.smoothgrad_sigma
            return S.smoothgrad(scored, images, target, samples=samples, sigma=sigma, generator=generator)
        if method == "grad_cam":
            return S.grad_cam(scored, images, target, layer=self.grad_cam_layer)
        if method == "occlusion":
            patch = self.occlusion_patch or max(2, min(images.shape[-2:]) // 4)
            stride = self.occlusion_stride or max(1, patch // 4)
            return S.occlusion(scored, images, target, patch=patch, stride=stride)
        function: Callable[..., Tensor] = getattr(S, method)
        return function(scored, images, target)

    def captions(self, model: nn.Module, images: Tensor, labels: Tensor | None) -> list[str]:
        """``true <class> / pred <class>`` per image (``pred <class>`` without labels)."""
        with evaluating(model):
            predicted = logits_of(self.scored(model)(images)).argmax(dim=1).cpu().tolist()

        def name(index: int) -> str:
            return class_name(index, self.class_names)

        truth = labels.tolist() if labels is not None else [None] * len(predicted)
        return [(f"true {name(t)} / " if t is not None else "") + f"pred {name(p)}" for t, p in zip(truth, predicted)]

    def other_kinds(self, model: nn.Module, images: Tensor) -> list[str]:
        """Activation kinds of the model other than ``relu``, through which guided rules pass the true gradient."""
        if self._kinds is None:
            sites = find_activation_sites(model, images[:1])
            self._kinds = sorted({site.function for site in sites} - {"relu"})
        return self._kinds

    def picture(self, model: nn.Module, images: Tensor, maps: Tensor, method: str, captions: list[str]) -> Tensor:
        """The (3, H, W) picture of one method's maps: rows of [image | map | overlay], captioned."""
        grid = render_saliency(images.to(maps.device), maps)
        shown = list(captions)
        if shown and method in ("guided_backprop", "deconvnet") and self.other_kinds(model, images):
            shown[0] += f" | rule on ReLU only; true gradient through {', '.join(self.other_kinds(model, images))}"
        if shown:
            rows = grid.shape[-2] // len(shown)
            grid = annotate(grid, [(1, row * rows, caption) for row, caption in enumerate(shown)])
        return grid

    def snapshot(
        self, model: nn.Module, probe: Probe, moment: Moment, *, guard: Guard | None = None, ranks: Ranks | None = None
    ) -> Snapshot:
        """Every method's picture of the probe (``cnnviz/saliency/<method>``), computed on rank zero only; a method
        that fails (under ``guard``'s policy) or whose maps are not finite is left out."""
        guard, shot = guard or Guard(WHO), Snapshot()
        if ranks is not None and not ranks.is_zero:
            return shot
        device = next(model.parameters()).device
        moved = probe.to(device)
        images, labels = moved.images, moved.labels
        captions = guard.run("saliency captions", self.captions, model, images, labels) or []
        for method in self.methods:

            def draw(method: str = method) -> None:
                maps = self.maps(model, images, labels, method)
                if guard.finite(maps, what=f"the {method} maps", moment=moment):
                    shot.images[f"cnnviz/saliency/{method}"] = self.picture(model, images, maps, method, captions)

            guard.run(f"saliency {method}", draw)
        return shot


class _OutputToLogits:
    """The model, called through ``output_to_logits``; every other attribute is the model's own."""

    def __init__(self, model: nn.Module, output_to_logits: Callable[[Any], Tensor]) -> None:
        self._model, self._output_to_logits = model, output_to_logits

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._output_to_logits(self._model(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
