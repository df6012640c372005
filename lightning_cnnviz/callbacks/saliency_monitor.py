"""SaliencyMonitor: saliency maps of a fixed, class-balanced probe set, every N epochs."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import EpochMonitor, ErrorPolicy, check_positive_int
from lightning_cnnviz.callbacks._probe import ProbeSet
from lightning_cnnviz.core import saliency as S
from lightning_cnnviz.core._images import annotate
from lightning_cnnviz.core._model import class_name, evaluating, logits_of, resolve_modules
from lightning_cnnviz.core.activation_sites import find_activation_sites
from lightning_cnnviz.core.render import render_saliency

__all__ = ["SaliencyMonitor"]

DEFAULT_METHODS = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")


class SaliencyMonitor(EpochMonitor):
    """Saliency maps of a fixed probe set, one TensorBoard image per method: ``cnnviz/saliency/<method>``.

    Methods (:mod:`lightning_cnnviz.core.saliency`): ``vanilla_gradient`` (Simonyan et al. 2013), ``smoothgrad``
    (Smilkov et al. 2017), ``guided_backprop`` (Springenberg et al. 2014), ``deconvnet`` and ``occlusion`` (Zeiler
    & Fergus 2013), ``grad_cam`` (Selvaraju et al. 2017). One row per probe image, [image | map | overlay],
    captioned with true and predicted class, normalised per image; the step is the epoch.

    The probe set is chosen once, round-robin over the classes, from the first validation pass (else the first
    training batches). SmoothGrad noise comes from a private generator seeded with ``seed``: the same at every
    epoch, the global RNG untouched. Rank zero computes the maps in its own grad-enabled eval pass.

    Args:
        methods: any of ``vanilla_gradient``, ``smoothgrad``, ``guided_backprop``, ``deconvnet``, ``grad_cam``,
            ``occlusion``.
        num_images: probe images.
        target: ``"true"`` (the label), ``"predicted"``, or a class index.
        every_n_epochs: log every this many epochs (and after the last one).
        smoothgrad_samples: noisy copies per image; ``smoothgrad_sigma``: noise level, a fraction of each
            image's value range.
        occlusion_patch: side of the occluding square (default: a quarter of the image side);
            ``occlusion_stride`` its step (default: a quarter of the patch).
        grad_cam_layer: conv layer for Grad-CAM (default: the last ``nn.Conv2d``).
        class_names: names for the captions (default: class indices).
        seed: seed of the SmoothGrad noise.
        batch_to_images: where the images are in a batch (default: the batch, its first element, or a dict's
            ``image``/``images``/``input``/``inputs``/``x``); uint8 images are taken as floats in [0, 1].
        batch_to_labels: where the labels are (default: a batch's second element or a dict's
            ``label``/``labels``/``target``/``targets``/``y``).
        output_to_logits: function from the model's output to the (N, classes) logits (default: the output, or
            its first tensor when it is a tuple, list, dict or dataclass; a ``logits`` entry first).
        on_error: ``"warn"`` (report once, switch the failing method off) or ``"raise"``.

    Example:
        >>> monitor = SaliencyMonitor(methods=("grad_cam", "occlusion"), num_images=8)
    """

    probe: ProbeSet

    def __init__(
        self,
        methods: Sequence[str] = DEFAULT_METHODS,
        num_images: int = 16,
        target: Literal["true", "predicted"] | int = "true",
        every_n_epochs: int = 1,
        smoothgrad_samples: int = 25,
        smoothgrad_sigma: float = 0.15,
        occlusion_patch: int | None = None,
        occlusion_stride: int | None = None,
        grad_cam_layer: str | None = None,
        class_names: Sequence[str] | None = None,
        seed: int = 0,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        batch_to_labels: Callable[[Any], Tensor | None] | None = None,
        output_to_logits: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        if isinstance(methods, str):
            methods = (methods,)
        unknown = [m for m in methods if m not in S.SALIENCY_METHODS]
        if unknown or not methods:
            raise ValueError(
                f"SaliencyMonitor: unknown method {unknown[0] if unknown else None!r} in `methods`; the methods are "
                f"{', '.join(map(repr, S.SALIENCY_METHODS))}."
            )
        self.methods = tuple(methods)
        probe: dict[str, Any] = {"balanced": True, "require_labels": target == "true"}
        probe.update(batch_to_images=batch_to_images, batch_to_labels=batch_to_labels)
        if output_to_logits is not None and not callable(output_to_logits):
            raise TypeError(
                f"SaliencyMonitor: `output_to_logits` must be a callable or None, got {output_to_logits!r}."
            )
        self.output_to_logits = output_to_logits
        self._kinds: list[str] | None = None
        super().__init__(every_n_epochs, on_error, num_images, "num_images", **probe)
        self.num_images = num_images
        if not (target in ("true", "predicted") or (isinstance(target, int) and not isinstance(target, bool))):
            raise ValueError(f"SaliencyMonitor: `target` can be 'true', 'predicted' or a class index, got {target!r}.")
        self.target = target
        self.smoothgrad_samples = check_positive_int(self._who, "smoothgrad_samples", smoothgrad_samples)
        self.smoothgrad_sigma = float(smoothgrad_sigma)
        self.occlusion_patch = occlusion_patch
        self.occlusion_stride = occlusion_stride
        self.grad_cam_layer = grad_cam_layer
        self.class_names = list(class_names) if class_names is not None else None
        self.seed = seed

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(methods=self.methods, num_images=self.num_images)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        if self.grad_cam_layer is not None:
            resolve_modules(
                pl_module, [self.grad_cam_layer], what="SaliencyMonitor `grad_cam_layer`", kinds=(torch.nn.Conv2d,)
            )

    def _scored(self, pl_module: pl.LightningModule) -> Any:
        """The model as the maps see it: called through ``output_to_logits`` when one is given (without, the
        core takes the logits out of the output with ``logits_of``)."""
        return _OutputToLogits(pl_module, self.output_to_logits) if self.output_to_logits else pl_module

    def compute_maps(self, pl_module: pl.LightningModule, method: str) -> Tensor:
        """The ``method``'s maps of the probe images (on the model's device)."""
        assert self.probe.images is not None
        model = self._scored(pl_module)
        images = self.probe.images.to(pl_module.device)
        target: Tensor | int | None
        if self.target == "true":
            assert self.probe.labels is not None
            target = self.probe.labels.to(pl_module.device)
        else:
            target = None if self.target == "predicted" else int(self.target)
        if method == "smoothgrad":
            generator = torch.Generator(device=images.device).manual_seed(self.seed)
            return S.smoothgrad(
                model,
                images,
                target,
                samples=self.smoothgrad_samples,
                sigma=self.smoothgrad_sigma,
                generator=generator,
            )
        if method == "grad_cam":
            return S.grad_cam(model, images, target, layer=self.grad_cam_layer)
        if method == "occlusion":
            patch = self.occlusion_patch or max(2, min(images.shape[-2:]) // 4)
            stride = self.occlusion_stride or max(1, patch // 4)
            return S.occlusion(model, images, target, patch=patch, stride=stride)
        function: Callable[..., Tensor] = getattr(S, method)
        return function(model, images, target)

    def _captions(self, pl_module: pl.LightningModule) -> list[str]:
        assert self.probe.images is not None
        with evaluating(pl_module):
            logits = logits_of(self._scored(pl_module)(self.probe.images.to(pl_module.device)))
            predicted = logits.argmax(dim=1).cpu().tolist()

        def name(index: int) -> str:
            return class_name(index, self.class_names)

        labels = self.probe.labels.tolist() if self.probe.labels is not None else [None] * len(predicted)
        return [(f"true {name(t)} / " if t is not None else "") + f"pred {name(p)}" for t, p in zip(labels, predicted)]

    def _log(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        sink = self._sink_for(trainer)
        if not sink.active or self.probe.images is None:
            return
        epoch = trainer.current_epoch
        captions = self._run("saliency captions", self._captions, pl_module) or []
        for method in self.methods:

            def draw(method: str = method) -> None:
                assert self.probe.images is not None
                maps = self.compute_maps(pl_module, method)
                if not self.finite(maps, what=f"the {method} maps", trainer=trainer):
                    return
                grid = render_saliency(self.probe.images.to(maps.device), maps)
                shown = list(captions)
                if shown and method in ("guided_backprop", "deconvnet") and self._other_kinds(pl_module):
                    shown[0] += f" | rule on ReLU only; true gradient through {', '.join(self._other_kinds(pl_module))}"
                if shown:
                    rows = grid.shape[-2] // len(shown)
                    grid = annotate(grid, [(1, row * rows, caption) for row, caption in enumerate(shown)])
                sink.image(f"cnnviz/saliency/{method}", grid, epoch)

            self._run(f"saliency {method}", draw)

    def _other_kinds(self, pl_module: pl.LightningModule) -> list[str]:
        """Activation kinds of the model other than ``relu``, through which guided rules pass the true gradient."""
        if self._kinds is None:
            assert self.probe.images is not None
            device = next(pl_module.parameters()).device
            sites = find_activation_sites(pl_module, self.probe.images[:1].to(device))
            self._kinds = sorted({site.function for site in sites} - {"relu"})
        return self._kinds


class _OutputToLogits:
    """The model, called through ``output_to_logits``; every other attribute is the model's own."""

    def __init__(self, model: torch.nn.Module, output_to_logits: Callable[[Any], Tensor]) -> None:
        self._model, self._output_to_logits = model, output_to_logits

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        return self._output_to_logits(self._model(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._model, name)
