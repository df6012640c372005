"""Private to the callbacks: the epoch cadence, with the probe service shared by every monitor of a Trainer."""

from __future__ import annotations

from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, Monitor
from lightning_cnnviz.callbacks._trainer import ranks_of, service_of
from lightning_cnnviz.core import Moment, ProbeService, ProbeSet, Ranks, Snapshot, check_positive_int


class EpochMonitor(Monitor):
    """A monitor whose core object ``self.core`` draws a :class:`~lightning_cnnviz.core.Snapshot` every
    ``every_n_epochs`` training epochs and once more for the final state (step: the epoch). With a ``probe``
    (:class:`~lightning_cnnviz.core.ProbeSet`) it joins the Trainer's one probe service, which fills every
    monitor's probe in one pass over the first validation batches (else the first training batches)."""

    def __init__(self, every_n_epochs: int = 1, on_error: ErrorPolicy = "warn", probe: ProbeSet | None = None) -> None:
        super().__init__(on_error=on_error)
        self.every_n_epochs = check_positive_int(self.guard.who, "every_n_epochs", every_n_epochs)
        self.probe, self.service = probe, ProbeService()
        self._last_logged_step: int | None = None

    @property
    def probe_images(self) -> Any:
        """The fixed probe set (on the host), once chosen; ``probe_labels``: its labels, when batches carry them."""
        return None if self.probe is None else self.probe.images

    @property
    def probe_labels(self) -> Any:
        return None if self.probe is None else self.probe.labels

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.service = service_of(trainer)
        if self.off:
            return
        if self.probe is not None:
            if stage == "fit":  # chosen once per fit, from that fit's data
                self.probe.reset()
            self.service.join(self.probe)
        self.attach(pl_module, getattr(trainer, "datamodule", None))

    def attach(self, model: Any, data: Any = None) -> None:
        """Fit the core object to ``model`` (and ``data``, a data module or None) before anything is drawn: what
        ``setup`` does without a Trainer, and ``cnnviz report`` calls. A wrong configuration raises here."""

    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_fit_start(trainer, pl_module)
        self._last_logged_step = None

    def options(self) -> dict[str, Any]:
        """What the core object's ``snapshot`` takes beyond the protocol's arguments."""
        return {}

    def draw(self, model: Any, moment: Moment, ranks: Ranks) -> Snapshot | None:
        """The core object's snapshot of ``model`` on this monitor's probe; None while a probe monitor has none."""
        probe = None if self.probe is None else self.probe.probe
        if self.probe is not None and probe is None:
            return None
        shot: Snapshot = self.core.snapshot(model, probe, moment, guard=self.guard, ranks=ranks, **self.options())
        return shot

    def _log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = trainer.global_step
        if self.off:
            return
        moment, ranks = Moment(trainer.current_epoch, trainer.global_step), ranks_of(trainer)
        if self.probe is not None:
            if self.probe.problem is not None:
                self.guard.skip("the probe", f"the batches give no images it can use ({self.probe.problem})")
            self.probe.finish(ranks)  # every rank, before any rank-zero-only work: a collective
            if self.probe.probe is None:
                return
        weights = [*pl_module.parameters(), *pl_module.buffers()]
        if self.guard.finite(weights, what="the model's weights", moment=moment):
            self._sink_for(trainer).write(self.draw(pl_module, moment, ranks) or Snapshot(), moment.epoch)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        if (epoch + 1) % self.every_n_epochs == 0 or last:
            self._log_now(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run that stopped between cadence points (max_steps, early stopping) still shows its final state.
        if self._last_logged_step != trainer.global_step:
            self._log_now(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self.probe.from_training = not any(trainer.num_val_batches)

    def _feeds(self) -> bool:
        """Whether this monitor feeds the service (the first of the Trainer's probe monitors does, once)."""
        return self.probe is not None and not self.off and self.service.members[0] is self.probe

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self._feeds() and self.probe is not None and self.probe.from_training:
            self.service.offer(batch, trainer.world_size)

    @override
    def on_validation_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        if self._feeds() and not trainer.sanity_checking and dataloader_idx == 0:
            self.service.offer(batch, trainer.world_size)

    @override
    def on_validation_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None and not self.off and not trainer.sanity_checking and trainer.state.fn == "fit":
            self.probe.finish(ranks_of(trainer))

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **({"probe": self.probe.state_dict()} if self.probe is not None else {})}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self.probe is not None:
            self.probe.load_state_dict(state_dict.get("probe", {}))
        super().load_state_dict(state_dict)
