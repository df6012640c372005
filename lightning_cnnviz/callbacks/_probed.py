"""Private to the callbacks: a monitor drawing on a fixed probe set, fed by the Trainer's one probe service."""

from __future__ import annotations

import contextlib
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, Monitor
from lightning_cnnviz.callbacks._trainer import ranks_of
from lightning_cnnviz.core import Picture, ProbeService, ProbeSet
from lightning_cnnviz.core.checks import check_positive_int
from lightning_cnnviz.core.inputs.batches import NoImages


class ProbedMonitor(Monitor):
    """A monitor with ``probe`` (a :class:`~lightning_cnnviz.core.ProbeSet`, a number of images, or None): it joins
    the Trainer's one probe service, which fills every monitor's fixed probe in one pass over the first validation
    batches (else the first training batches). A picture attached without an example batch at ``setup`` is
    attached again with the first training batch's images, before any training happens."""

    def __init__(self, core: Picture, probe: ProbeSet | int | None, on_error: ErrorPolicy, who: str) -> None:
        super().__init__(core, on_error, who)
        if probe is not None and not isinstance(probe, ProbeSet):
            probe = ProbeSet(who, check_positive_int(who, "probe_size", probe))
        self.probe, self.service = probe, ProbeService()
        self._fed_example = False  # whether the picture was attached with an example batch

    @property
    def probe_images(self) -> Any:
        """The fixed probe set (on the host), once chosen; ``probe_labels``: its labels, when batches carry them."""
        return None if self.probe is None else self.probe.images

    @property
    def probe_labels(self) -> Any:
        return None if self.probe is None else self.probe.labels

    def _feeds(self) -> bool:
        """Whether this monitor feeds the service (the first of the Trainer's probe monitors does, once)."""
        return self.probe is not None and not self.off and self.service.members[0] is self.probe

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.probe is not None:
            self.probe.from_training = not any(trainer.num_val_batches)

    @override
    def on_train_batch_start(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if self.probe is not None and not (self._fed_example or self.off) and batch_idx == 0:
            self._fed_example = True  # attached again with an example, before any training happened
            with contextlib.suppress(NoImages):  # the probe says so, once
                self.fit_core(pl_module, self.service.example(batch, self.probe))
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
