"""ActivationMonitor: sparsity, dead and dormant channels, value distributions and divergence, with alerts."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

import lightning.pytorch as pl
from torch import Tensor
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, Monitor
from lightning_cnnviz.callbacks._trainer import last_epoch, learning_rate, moment_of, service_of
from lightning_cnnviz.core import ActivationHealth, ActivationSite, DeadFilterEvent, Moment, Snapshot, inputs_from_batch
from lightning_cnnviz.core.checks import check_callable, check_positive_int
from lightning_cnnviz.sinks import Sinks

__all__ = ["ActivationMonitor"]


class ActivationMonitor(Monitor):
    """Watches every elementwise activation of the live network on training batches; alerts when channels die or
    go dormant and when the network diverges. The adapter of :class:`~lightning_cnnviz.core.ActivationHealth`.

    Statistics come from training forwards only (not backward, nor other monitors' eval forwards), summed over DDP
    ranks, written after every ``every_n_steps`` batches (step: the global step); the maps at epoch ends, alerts
    and the end of training. An alert is said, written to ``cnnviz/alerts``, then ``on_dead``: ``"warn"``,
    ``"stop"`` (``trainer.should_stop``) or a callable of the :class:`DeadFilterEvent`.

    Args:
        every_n_steps: window length in training batches (a last, shorter window closes at the end of training).
        collect_every_n_steps: collect statistics on every this-many-th training batch only (1 = all).
        batch_to_images: where the network's input is in a training batch (as
            :func:`~lightning_cnnviz.core.inputs_from_batch`); ``on_error``: as :class:`~lightning_cnnviz.EpochMonitor`.
        layers, dead_fraction_threshold, dormant_threshold, alert_on_growth, log_histograms, max_map_windows:
            as :class:`~lightning_cnnviz.core.ActivationHealth`.

    Example:
        >>> monitor = ActivationMonitor(every_n_steps=50, on_dead="warn")
    """

    _state_fields = ("layers", "every_n_steps")

    def __init__(
        self,
        every_n_steps: int = 50,
        layers: Sequence[str] | None = None,
        collect_every_n_steps: int = 1,
        dead_fraction_threshold: float = 0.1,
        dormant_threshold: float = 0.1,
        alert_on_growth: bool = True,
        on_dead: Literal["warn", "stop"] | Callable[[DeadFilterEvent], Any] = "warn",
        log_histograms: bool = True,
        max_map_windows: int = 100,
        batch_to_images: Callable[[Any], Tensor] | None = None,
        on_error: ErrorPolicy = "warn",
    ) -> None:
        self.health = ActivationHealth(
            layers=layers, dead_fraction_threshold=dead_fraction_threshold, dormant_threshold=dormant_threshold,
            alert_on_growth=alert_on_growth, log_histograms=log_histograms, max_map_windows=max_map_windows,
            who=type(self).__name__,
        )  # fmt: skip
        super().__init__(self.health, on_error)
        who, self.layers = self.guard.who, self.health.layers
        self.every_n_steps = check_positive_int(who, "every_n_steps", every_n_steps)
        self.collect_every_n_steps = check_positive_int(who, "collect_every_n_steps", collect_every_n_steps)
        if not (on_dead in ("warn", "stop") or callable(on_dead)):
            raise ValueError(f"{who}: `on_dead` can be 'warn', 'stop' or a callable of a DeadFilterEvent: {on_dead!r}")
        self.on_dead, self.batch_to_images = on_dead, check_callable(who, "batch_to_images", batch_to_images)
        self._collecting, self._batches = False, 0
        self._maps_drawn: tuple[int, int] | None = None  # (global step, windows) of the last maps written

    @property
    def sites(self) -> list[ActivationSite] | None:  # the activations watched, once found; `alerts`: every alert
        return self.health.sites

    alerts = property(lambda self: list(self.health.alerts), doc="Every alert so far (dicts of event fields).")

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.health.attach(pl_module, getattr(pl_module, "example_input_array", None))
        self._batches, service_of(trainer).health = 0, self.health.marks  # windows end at multiples; health shared

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.health.tap is None:  # a batch without an input tensor: said once, and nothing is watched
            read = lambda: inputs_from_batch(batch, who=self.guard.who, batch_to_inputs=self.batch_to_images)  # noqa: E731
            if (images := self.guard.run("activation statistics", read)) is not None:
                self.health.follow(pl_module, images, gate=lambda: self._collecting, guard=self.guard)
        self._collecting = self._batches % self.collect_every_n_steps == 0

    @override
    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Tensor) -> None:
        self.health.count_forwards(False)  # a checkpointed block recomputes its activations in backward

    @override
    def on_after_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self.health.count_forwards(True)

    @override
    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self._collecting:
            self.health.step()
        self._collecting, self._batches = False, self._batches + 1
        if self._batches % self.every_n_steps == 0:
            self._end_window(trainer)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not (self._batches % self.every_n_steps and last_epoch(trainer)):  # else on_train_end closes and draws
            self.draw_maps(self._sink_for(trainer), moment_of(trainer))

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._batches % self.every_n_steps:  # a last, shorter window
            self._end_window(trainer)
            self.draw_maps(self._sink_for(trainer), moment_of(trainer))
        self._cleanup()

    def write_window(self, moment: Moment, steps: int, sink: Sinks, rate: float | None = None) -> list[DeadFilterEvent]:
        """Close a window of ``steps`` batches: its scalars, histograms, alerts (and maps on one) go to ``sink``."""
        shot, events = self.health.end_window(moment, steps, learning_rate=rate, guard=self.guard)
        sink.write(shot, moment, per_step=True, guard=self.guard)  # with the alerts' texts
        if events:
            self.draw_maps(sink, moment)
        return events

    def _end_window(self, trainer: pl.Trainer) -> None:
        # Every rank reaches this collective, also one whose statistics were switched off after an error.
        moment, sink = moment_of(trainer), self._sink_for(trainer)
        events = self.write_window(moment, self.every_n_steps, sink, learning_rate(trainer))
        for event in events if callable(self.on_dead) and trainer.is_global_zero else ():
            self.on_dead(event)  # type: ignore[operator]
        trainer.should_stop = trainer.should_stop or bool(events and self.on_dead == "stop")
        sink.flush()

    @override
    def draw(self, model: Any, moment: Moment, ranks: Any = None) -> Snapshot | None:
        """The channels x windows maps, once per step and windows (an alert may have drawn them); None after."""
        if (moment.step, self.health.windows) == self._maps_drawn:
            return None
        self._maps_drawn = (moment.step, self.health.windows)
        return self.guard.run("dead map", self.health.maps)

    def draw_maps(self, sink: Sinks, moment: Moment) -> None:
        sink.write(self.draw(None, moment) or Snapshot(), moment, per_step=True, guard=self.guard)
