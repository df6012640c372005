"""FeatureVisMonitor: what each filter wants to see, synthesised, tracked over epochs, beside its top patches."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

from torch import Tensor

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._epoch import Cadence, EpochMonitor
from lightning_cnnviz.core import Budget, FeatureVisPanel, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.methods.feature_vis import DIVERSITY_WEIGHT, ObjectiveFactory
from lightning_cnnviz.core.monitors.selection import Projection

__all__ = ["FeatureVisMonitor"]


class FeatureVisMonitor(EpochMonitor):
    """Images synthesised to excite chosen channels (:func:`~lightning_cnnviz.core.visualize_features`), every N
    epochs, for the same layers and channels as :class:`TopPatchMonitor` (first, middle and last conv layer; up to
    16 channels each):

    * ``cnnviz/feature_vis/<layer>``: one tile per channel, captioned;
    * ``cnnviz/feature_vis_evolution/<layer>``: channels x logged epochs (saved in checkpoints, so a resumed run
      continues it);
    * ``cnnviz/feature_vis_patches/<layer>``: per channel [synthesised image | its top-9 probe patches | their
      projections]: what the filter wants beside what it answers in the data. When another monitor of the same
      Trainer (a TopPatchMonitor) scans the same channels at the same step on a probe at least as large, its scan is
      used, not made again;
    * ``cnnviz/deep_dream``: ``dream_images`` probe images [original | dreamed at the middle layer].

    The Lightning adapter of :class:`~lightning_cnnviz.core.FeatureVisPanel`, which says how the images are made.
    Without ``mean``/``std``/``normalize``, the data module's ``mean`` and ``std`` attributes (the demo data modules
    have them) say how the model's inputs are normalised. Under DDP the channels are split over the ranks and
    gathered; rank zero draws. Parameters' ``.grad``, ``training`` flags and hooks are left as they were.

    Args:
        layers, channels, max_channels, k, method, module: as :class:`~lightning_cnnviz.core.FeatureVisPanel`.
        probe_size: probe images; ``batch_to_images``: where they are in a batch (as :class:`TopPatchMonitor`).
        every_n_epochs, budget, priority, on_error: when it logs and its error policy, as
            :class:`~lightning_cnnviz.EpochMonitor`.
        steps, lr, seed, size, mean, std, normalize, dream_images, objective, diversity, diversity_weight: as
            :class:`~lightning_cnnviz.core.FeatureVisPanel` (``diversity=4``: four different images per channel).
        patches: draw ``cnnviz/feature_vis_patches/<layer>``.

    Example:
        >>> monitor = FeatureVisMonitor(every_n_epochs=5, steps=256)
    """

    _state_fields = ("layers", "steps", "seed")

    def __init__(
        self,
        layers: Sequence[str] | str | None = None,
        channels: Sequence[int] | Mapping[str, Sequence[int]] | None = None,
        every_n_epochs: Cadence = "auto",
        steps: int = 64,
        lr: float = 0.15,
        seed: int = 0,
        size: int | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        normalize: Callable[[Tensor], Tensor] | None = None,
        patches: bool = True,
        dream_images: int = 4,
        k: int = 9,
        probe_size: int = 256,
        method: Projection = "guided_backprop",
        max_channels: int = 16,
        objective: str | ObjectiveFactory = "auto",
        diversity: int = 1,
        diversity_weight: float = DIVERSITY_WEIGHT,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
        module: str | None = None,
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(self).__name__
        probe = ProbeSet(who, check_positive_int(who, "probe_size", probe_size), batch_to_images=batch_to_images)
        self.renderer = FeatureVisPanel(
            layers=layers, channels=channels, steps=steps, lr=lr, seed=seed, size=size, mean=mean, std=std,
            normalize=normalize, dream_images=dream_images, patches=patches, k=k, method=method,
            max_channels=max_channels, module=module, objective=objective, diversity=diversity,
            diversity_weight=diversity_weight, who=who,
        )  # fmt: skip
        super().__init__(self.renderer, probe, every_n_epochs, on_error, budget, priority)
        self.selection, self.history = self.renderer.selection, self.renderer.history
        self.batch_to_images = batch_to_images
        self.layers, self.k, self.method = self.selection.layers, self.selection.k, method
        self.steps, self.seed, self.patches = steps, seed, bool(patches)

    @property
    def last_images(self) -> dict[str, Tensor]:
        """The latest renders per layer (channels, C, H, W) on the host."""
        return self.renderer.last_images
