"""ActivationMonitor: sparsity, dead and dormant channels, value distributions and divergence, with alerts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_warn
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import Monitor, check_positive_int
from lightning_cnnviz.core._images import images_from_batch
from lightning_cnnviz.core.activation_health import ActivationHealth
from lightning_cnnviz.core.activation_sites import ActivationSite
from lightning_cnnviz.core.alerts import DeadFilterEvent
from lightning_cnnviz.core.stats import ActivationSummary

__all__ = ["ActivationMonitor"]

DeadPolicy = Literal["warn", "stop"] | Callable[["DeadFilterEvent"], Any]


class ActivationMonitor(Monitor):
    """Watches every elementwise activation of the live network on training batches; alerts when channels die or
    go dormant and when the network diverges.

    The thin Lightning adapter of :class:`~lightning_cnnviz.core.ActivationHealth`, which says what is measured,
    drawn and alerted on, and how layers are named. Statistics come from the training forwards only (not the
    backward, nor the eval-mode forwards of other monitors), are summed over DDP ranks, and are written at the end
    of every window of ``every_n_steps`` batches (step: the global step); the maps at epoch ends, alerts and the
    end of training. Layers are found on the first training batch (or at ``setup`` from ``example_input_array``).
    Each alert is a rank-zero warning and a ``cnnviz/alerts`` entry, then ``on_dead``: ``"warn"``, ``"stop"``
    (``trainer.should_stop`` on every rank) or a callable taking the :class:`DeadFilterEvent` (on rank zero).

    Args:
        every_n_steps: window length in training batches (a last, shorter window closes at the end of training).
        collect_every_n_steps: collect statistics on every this-many-th training batch only (1 = all).
        on_dead: ``"warn"``, ``"stop"`` or a callable taking a :class:`DeadFilterEvent`.
        batch_to_images: function from a training batch to its image tensor (N, C, H, W); by default the
            batch itself, its first element, or its ``"image"`` key.
        on_error: ``"warn"`` (report once, switch the failing piece off, keep training) or ``"raise"``.
        layers, dead_fraction_threshold, dormant_threshold, alert_on_growth, log_histograms, max_map_windows:
            as :class:`~lightning_cnnviz.core.ActivationHealth`.

    Example:
        >>> from lightning.pytorch import Trainer
        >>> monitor = ActivationMonitor(every_n_steps=50, on_dead="warn")
        >>> trainer = Trainer(callbacks=[monitor], logger=False, enable_progress_bar=False)
    """

    def __init__(
        self,
        every_n_steps: int = 50,
        layers: Sequence[str] | None = None,
        collect_every_n_steps: int = 1,
        dead_fraction_threshold: float = 0.1,
        dormant_threshold: float = 0.1,
        alert_on_growth: bool = True,
        on_dead: DeadPolicy = "warn",
        log_histograms: bool = True,
        max_map_windows: int = 100,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: Literal["warn", "raise"] = "warn",
    ) -> None:
        super().__init__(on_error=on_error)
        who = self._who
        self.every_n_steps = check_positive_int(who, "every_n_steps", every_n_steps)
        self.collect_every_n_steps = check_positive_int(who, "collect_every_n_steps", collect_every_n_steps)
        self.health = ActivationHealth(
            layers,
            *(dead_fraction_threshold, dormant_threshold, alert_on_growth, log_histograms, max_map_windows),
        )
        self.layers = self.health.layers
        if not (on_dead in ("warn", "stop") or callable(on_dead)):
            raise ValueError(
                f"{who}: `on_dead` can be 'warn', 'stop' or a callable taking a DeadFilterEvent, got {on_dead!r}."
            )
        self.on_dead = on_dead
        if batch_to_images is not None and not callable(batch_to_images):
            raise TypeError(f"{who}: `batch_to_images` must be a callable or None, got {batch_to_images!r}.")
        self.batch_to_images = batch_to_images
        self._module: torch.nn.Module | None = None
        self._tap: Any = None
        self._collecting = False
        self._batches_in_window = 0
        self._batch_counter = 0
        self._maps_drawn: tuple[int, int] | None = None  # (global step, windows) of the last maps written

    @property
    @override
    def state_key(self) -> str:
        return self._generate_state_key(layers=self.layers, every_n_steps=self.every_n_steps)

    @override
    def state_dict(self) -> dict[str, Any]:
        return self.health.state_dict()

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.health.load_state_dict(state_dict)

    @property
    def sites(self) -> list[ActivationSite] | None:
        """The activations watched, once found."""
        return self.health.sites

    @property
    def alerts(self) -> list[dict[str, Any]]:
        """Every alert so far (as dicts of :class:`DeadFilterEvent` fields), oldest first."""
        return list(self.health.alerts)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._check_model(pl_module)
        self.health.reset_sites()  # a monitor reused for another fit finds the (other) model's activations afresh
        if self.layers is not None:
            self.health.check_names(pl_module)
        example = getattr(pl_module, "example_input_array", None)
        if isinstance(example, Tensor):
            self.health.discover(pl_module, example.to(pl_module.device))

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._sink_for(trainer)
        self._batches_in_window = 0
        self._batch_counter = 0

    def _start(self, pl_module: pl.LightningModule, batch: Any) -> None:
        images = images_from_batch(batch, who=self._who, batch_to_images=self.batch_to_images)
        if self.health.sites is None:
            self.health.discover(pl_module, images)
        self._module = pl_module
        self._tap = self.health.watch(pl_module, images.device, observe=self._on_activation)
        self._tap.__enter__()

    def _on_activation(self, name: str, output: Tensor) -> None:
        # Runs inside the user's forward: an error here must not reach their training step.
        if not self._collecting or self._module is None or not self._module.training:
            return  # only training forwards count: other monitors' probe forwards run in eval mode
        try:
            self.health.observe(name, output)
        except Exception:
            self._collecting = False
            self._run("statistics", _reraise)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._tap is None:
            self._start(pl_module, batch)
        self._collecting = "statistics" not in self._disabled and (
            self._batch_counter % self.collect_every_n_steps == 0
        )

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        if self._tap is not None:  # a checkpointed block recomputes its activations in backward: not a forward
            self._tap.enabled = False

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._tap is not None:
            self._tap.enabled = True

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._collecting:
            self.health.step()
        self._collecting = False
        self._batch_counter += 1
        self._batches_in_window += 1
        if self._batches_in_window >= self.every_n_steps:
            self._end_window(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches_in_window > 0 and _last_epoch(trainer):
            return  # the fit ends here: on_train_end closes the short window and draws the maps once, at this step
        self._run("dead map", self._log_dead_maps, trainer)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches_in_window > 0:
            self._end_window(trainer)
            self._run("dead map", self._log_dead_maps, trainer)
        self._cleanup()

    @override
    def _cleanup(self) -> None:
        if self._tap is not None:
            self._tap.close()
        self._tap = None
        self._collecting = False

    def _end_window(self, trainer: pl.Trainer) -> None:
        self._batches_in_window = 0
        # Every rank reaches this collective, also one whose statistics were switched off after an error
        # (it contributes what it has): windows are counted in training batches on every rank alike.
        summary = self.health.close_window()
        if summary is None or "statistics" in self._disabled:
            return
        if self.health.silent_now:
            rank_zero_warn(self.health.silent_message(self.every_n_steps, trainer.global_step))
        self._run("activation scalars", self._log_window, trainer, summary)
        epoch, lr = trainer.current_epoch, _learning_rate(trainer)
        check = self.health.check_alerts
        events = self._run("dead-filter alerts", lambda: check(summary, global_step=trainer.global_step, epoch=epoch,
                                                               learning_rate=lr)) or []  # fmt: skip
        if events:
            self._run("dead map", self._log_dead_maps, trainer)
            self._act_on(trainer, events)

    def _log_window(self, trainer: pl.Trainer, summary: ActivationSummary) -> None:
        sink = self._sink_for(trainer)
        if not sink.active:
            return
        scalars, histograms = self.health.scalars(summary)
        for tag, values in histograms.items():
            sink.histogram(tag, values, trainer.global_step)
        sink.scalars(scalars, trainer.global_step)

    def _log_dead_maps(self, trainer: pl.Trainer) -> None:
        sink = self._sink_for(trainer)
        drawn = (trainer.global_step, self.health.windows)
        if not sink.active or drawn == self._maps_drawn:
            return  # one write per tag and step: an alert at an epoch's last window already drew these maps
        self._maps_drawn = drawn
        for tag, picture in self.health.snapshot().items():
            sink.image(tag, picture, trainer.global_step)

    def _act_on(self, trainer: pl.Trainer, events: list[DeadFilterEvent]) -> None:
        sink = self._sink_for(trainer)
        for event in events:
            rank_zero_warn(event.message)
            sink.text("cnnviz/alerts", event.message, trainer.global_step)
            if callable(self.on_dead) and trainer.is_global_zero:
                self.on_dead(event)
        sink.flush()
        if self.on_dead == "stop":
            trainer.should_stop = True


def _reraise() -> None:
    """Re-raise the exception being handled, inside ``_run`` so the ``on_error`` policy applies to it."""
    raise


def _learning_rate(trainer: pl.Trainer) -> float | None:
    try:
        return float(trainer.optimizers[0].param_groups[0]["lr"])
    except (IndexError, KeyError, AttributeError, TypeError):
        return None


def _last_epoch(trainer: pl.Trainer) -> bool:
    """Whether the fit stops after the epoch now ending (max_epochs, max_steps or a stop request)."""
    steps_done = trainer.max_steps is not None and 0 <= trainer.max_steps <= trainer.global_step
    epochs_done = trainer.max_epochs is not None and 0 <= trainer.max_epochs <= trainer.current_epoch + 1
    return bool(trainer.should_stop or steps_done or epochs_done)
