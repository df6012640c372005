"""What a picture's ``snapshot`` is given besides the model and the probe: one :class:`Context`, Trainer-free, with
a public constructor (a notebook builds it as ``Context(Moment(epoch=0, step=0))``)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor

from lightning_cnnviz.core.inputs.probe import ProbeService
from lightning_cnnviz.core.protocol import Guard, Moment, Ranks

__all__ = ["Context", "InputScale"]


@dataclass(frozen=True)
class InputScale:
    """How the model's inputs relate to [0, 1] pixels: ``normalize(pixels)``, else ``(pixels - mean) / std``, else
    the inputs are pixels. What the pictures that synthesise images (feature visualization, DeepDream) read.

    Example:
        >>> scale = InputScale(mean=(0.5,), std=(0.25,))
        >>> scale.to_model(torch.ones(1, 1, 1, 1)).item(), scale.to_pixels(torch.zeros(1, 1, 1, 1)).item()
        (2.0, 0.5)
    """

    mean: Sequence[float] | Tensor | None = None
    std: Sequence[float] | Tensor | None = None
    normalize: Callable[[Tensor], Tensor] | None = None

    def __post_init__(self) -> None:
        if (self.mean is None) != (self.std is None):
            raise ValueError(f"InputScale: pass both `mean` and `std`, or neither (got mean={self.mean}, "
                             f"std={self.std}).")  # fmt: skip

    @classmethod
    def of(cls, data: object) -> InputScale:
        """The scale a data module (or any object) states with ``mean`` and ``std`` attributes; unknown without."""
        mean, std = getattr(data, "mean", None), getattr(data, "std", None)
        return cls(mean, std) if mean is not None and std is not None else cls()

    @property
    def known(self) -> bool:
        """Whether anything says how inputs are normalised."""
        return self.normalize is not None or self.mean is not None

    def _moments(self, like: Tensor) -> tuple[Tensor, Tensor] | None:
        if self.mean is None or self.std is None or self.normalize is not None:
            return None
        shape = (1, -1) + (1,) * (like.dim() - 2)
        return (torch.as_tensor(self.mean).float().view(shape).to(like.device),
                torch.as_tensor(self.std).float().view(shape).to(like.device))  # fmt: skip

    def to_model(self, pixels: Tensor) -> Tensor:
        """[0, 1] pixels as the model takes them."""
        if self.normalize is not None:
            return self.normalize(pixels)
        moments = self._moments(pixels)
        return pixels if moments is None else (pixels - moments[0]) / moments[1]

    def to_pixels(self, inputs: Tensor) -> Tensor:
        """Model inputs back to [0, 1] pixels (clamped as they are when only ``normalize`` is known)."""
        moments = self._moments(inputs)
        return inputs.clamp(0, 1) if moments is None else (inputs * moments[1] + moments[0]).clamp(0, 1)

    def over(self, fallback: InputScale) -> InputScale:
        """This scale where it says something, else ``fallback``."""
        return self if self.known else fallback


@dataclass
class Context:
    """Everything a :class:`~lightning_cnnviz.core.Picture`'s ``snapshot`` reads besides the model and the probe:

    * ``moment``: the epoch and step it is taken at;
    * ``guard``: the error policy (a failing piece is reported once and switched off, or raises);
    * ``ranks``: the processes the work is split over (one by default);
    * ``scale``: how the model's inputs are normalised (:class:`InputScale`);
    * ``shared``: what the pictures of one model share: the probe service, with the time budget and the latest
      top-activation scan of a channel selection, which a second picture at the same step reuses.

    Example:
        >>> context = Context(Moment(epoch=1, step=100))
        >>> context.ranks.world, context.scale.known
        (1, False)
    """

    moment: Moment
    guard: Guard = field(default_factory=lambda: Guard("cnnviz"))
    ranks: Ranks = field(default_factory=Ranks.single)
    scale: InputScale = field(default_factory=InputScale)
    shared: ProbeService = field(default_factory=ProbeService)
