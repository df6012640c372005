"""The saliency methods a :class:`~lightning_cnnviz.core.SaliencyPanel` draws, as variants of one base (as captum's
attribution classes and torchcam's ``_CAM`` are): each is one small class with one verb, ``maps``, returning maps of
one shape, (N, C, H, W), and saying how they are drawn (``signed``). :data:`METHODS` registers them by name; a new
method is one subclass (with a ``name``) and its test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.core.methods.perturbation.occlusion import OcclusionMemo, default_window

__all__ = ["METHODS", "SaliencyMethod", "SaliencySettings"]


@dataclass(frozen=True)
class SaliencySettings:
    """What the methods read besides the model, the images and the target: SmoothGrad's noisy copies, noise level
    and seed; the occluding square's side and step (None: a quarter of the image side, a quarter of the patch);
    Grad-CAM's layer (None: the layer the panel chose, else the last ``nn.Conv2d``); the occluded forwards other
    pictures of the model made at this step (``memo``, set by the panel for one call).

    Example:
        >>> SaliencySettings(smoothgrad_samples=8).smoothgrad_samples
        8
    """

    smoothgrad_samples: int = 25
    smoothgrad_sigma: float = 0.15
    seed: int = 0
    occlusion_patch: int | None = None
    occlusion_stride: int | None = None
    grad_cam_layer: str | None = None
    memo: OcclusionMemo | None = None


class SaliencyMethod:
    """One saliency method. ``maps(model, images, target, settings, cam_layer)`` returns (N, C, H, W) maps on the
    images' device for the ``target`` of each image (:data:`~lightning_cnnviz.core.methods.saliency.Target`): ``signed``
    maps (C = the images' channels) are drawn as ``0.5 + map / (2 max |map|)`` beside their magnitude, the others
    (C = 1) as a heat map over the image. ``change`` says whether the method measures the change of the target
    (occlusion) rather than its gradient.

    Example:
        >>> class InputTimesGradient(SaliencyMethod):  # a variant is one class, registered by its name
        ...     name = "input_x_gradient"
        ...     def maps(self, model, images, target, settings, cam_layer):
        ...         from lightning_cnnviz.core import vanilla_gradient
        ...         return (images.abs().amax(dim=1) * vanilla_gradient(model, images, target))[:, None]
        >>> "input_x_gradient" in METHODS
        True
        >>> del METHODS["input_x_gradient"]
    """

    name: ClassVar[str]
    signed: ClassVar[bool] = True
    change: ClassVar[bool] = False

    def __init_subclass__(cls) -> None:
        super().__init_subclass__()
        METHODS[cls.name] = cls()

    def maps(
        self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings, cam_layer: str | None
    ) -> Tensor:
        raise NotImplementedError


METHODS: dict[str, SaliencyMethod] = {}


class VanillaGradient(SaliencyMethod):
    """The gradient of the target with respect to the image (Simonyan et al. 2013)."""

    name = "vanilla_gradient"
    signed = False  # the largest |gradient| over channels, as the paper draws it

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        return S.vanilla_gradient(model, images, target)[:, None]


class SmoothGrad(SaliencyMethod):
    """The mean gradient over noisy copies (Smilkov et al. 2017), from a private generator seeded with ``seed``."""

    name = "smoothgrad"
    signed = False

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        generator = torch.Generator(device=images.device).manual_seed(settings.seed)
        return S.smoothgrad(model, images, target, samples=settings.smoothgrad_samples,
                            sigma=settings.smoothgrad_sigma, generator=generator)[:, None]  # fmt: skip


class GuidedBackprop(SaliencyMethod):
    """Guided backpropagation (Springenberg et al. 2014)."""

    name = "guided_backprop"

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        return S.guided_backprop(model, images, target)


class Deconvnet(SaliencyMethod):
    """Zeiler & Fergus's deconvnet (2013)."""

    name = "deconvnet"

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        return S.deconvnet(model, images, target)


class GradCam(SaliencyMethod):
    """Grad-CAM (Selvaraju et al. 2017) at ``grad_cam_layer``, else the panel's choice, else the last conv."""

    name = "grad_cam"
    signed = False

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        return S.grad_cam(model, images, target, layer=settings.grad_cam_layer or cam_layer)[:, None]


class Occlusion(SaliencyMethod):
    """The drop of the target when a grey square covers each place (Zeiler & Fergus 2013)."""

    name = "occlusion"
    signed = False
    change = True

    def maps(self, model: nn.Module, images: Tensor, target: S.Target, settings: SaliencySettings,
             cam_layer: str | None) -> Tensor:  # fmt: skip
        patch, stride = default_window(images.shape[-2:], settings.occlusion_patch, settings.occlusion_stride)
        return S.occlusion(model, images, target, patch=patch, stride=stride, memo=settings.memo)[:, None]
