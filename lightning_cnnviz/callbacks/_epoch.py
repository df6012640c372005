"""The one epoch adapter: any :class:`~lightning_cnnviz.core.Picture` becomes a monitor, with the epoch cadence or
the run's time budget, the probe service shared by every monitor of a Trainer, DDP, the sinks and the error policy."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy
from lightning_cnnviz.callbacks._probed import ProbedMonitor
from lightning_cnnviz.callbacks._trainer import last_by_max_epochs, moment_of, ranks_of, saying, service_of
from lightning_cnnviz.core import Budget, Context, InputScale, Moment, Picture, ProbeSet, Ranks, Schedule, Snapshot
from lightning_cnnviz.core.budget import Account

__all__ = ["Cadence", "EpochMonitor"]

Cadence = int | Literal["auto"]


class EpochMonitor(ProbedMonitor):
    """Any :class:`~lightning_cnnviz.core.Picture` as a monitor: ``core`` is attached at ``setup`` (with the module's
    ``example_input_array``) and drawn on the ``probe`` (:class:`ProbedMonitor`; None for a picture of the weights)
    when its :class:`~lightning_cnnviz.core.budget.Schedule` says (``every_n_epochs``: an integer, or ``"auto"``
    within the run's ``budget`` by ``priority``; after the last epoch always; rank zero decides for every rank),
    with a :class:`~lightning_cnnviz.core.Context` whose input scale is the data module's ``mean``/``std``, at the
    epoch; its cost to ``cnnviz/cost/<monitor>/seconds``, ``.../fraction``. ``on_error``: ``"warn"`` or ``"raise"``.

    Example:
        >>> from lightning_cnnviz.core import FilterPanel
        >>> monitor = EpochMonitor(FilterPanel(), every_n_epochs=2)
    """

    _state_fields: tuple[str, ...] = ("picture",)

    def __init__(
        self,
        core: Picture,
        probe: ProbeSet | int | None = None,
        every_n_epochs: Cadence = "auto",
        on_error: ErrorPolicy = "warn",
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        who = type(core).__name__ if type(self) is EpochMonitor else type(self).__name__
        self.schedule = Schedule(who, every_n_epochs, budget, priority)  # checked before anything else
        super().__init__(core, probe, on_error, who)
        self.picture, self.auto, self.every_n_epochs = type(core).__name__, self.schedule.auto, every_n_epochs
        self.scale = InputScale()
        self._last_logged_step: int | None = None
        self.logged_epochs: list[int] = []  # the epochs this monitor logged at, in this process

    @property
    def cost(self) -> Account | None:
        """This monitor's account in the run's time budget (seconds of its logs, their number, the latest's cost)."""
        return self.service.budget.accounts.get(self.schedule.account)

    def fit_to(self, model: Any, data: Any = None) -> None:
        """Attach the picture to ``model`` (with its ``example_input_array``), the input scale from ``data`` (a data
        module with ``mean`` and ``std``, or None), telling the service what it asks: what ``setup`` does."""
        self.scale, example = InputScale.of(data), getattr(model, "example_input_array", None)
        self._fed_example = example is not None
        self.fit_core(model, example)
        if callable(share := getattr(self.core, "share", None)) and not self.off:  # Picture's optional verb
            share(self.service)

    def context(self, moment: Moment, ranks: Ranks) -> Context:
        """What the picture's snapshot reads besides the model and the probe."""
        return Context(moment, self.guard, ranks, self.scale, self.service)

    @override
    def draw(self, model: Any, moment: Moment, ranks: Ranks) -> Snapshot | None:
        """The picture's snapshot of ``model`` on this monitor's probe; None while a probe monitor has none."""
        probe = None if self.probe is None else self.probe.probe
        if self.probe is not None and probe is None:
            return None
        return self.core.snapshot(model, probe, self.context(moment, ranks))

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.service, self._last_logged_step = service_of(trainer), None
        self.fit_to(pl_module, getattr(trainer, "datamodule", None))
        self.schedule.join(self.service, self, opens=not self.off)  # a monitor that does not apply takes no share
        if self.probe is not None and not self.off:
            if stage == "fit":  # chosen once per fit, from that fit's data
                self.probe.reset()
            self.service.join(self.probe)

    def _log_now(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._last_logged_step = trainer.global_step
        if self.off:
            return
        self.logged_epochs.append(trainer.current_epoch)
        budget, account = self.service.budget, self.schedule.account
        moment, what = moment_of(trainer), getattr(self.core, "what", "its pictures")
        with budget.timed(account, pl_module.device), saying(trainer, f"{account} draws {what} (epoch {moment.epoch})"):
            self._draw_and_write(trainer, pl_module, moment)
        costs = {f"cnnviz/cost/{account}/{n}": v for n, v in budget.costs(account).items()}
        self.write(trainer, Snapshot(scalars=costs), moment)

    def _draw_and_write(self, trainer: pl.Trainer, pl_module: pl.LightningModule, moment: Moment) -> None:
        ranks = ranks_of(trainer)
        if self.probe is not None:
            if self.probe.problem is not None:
                self.guard.switch_off("the probe", f"the batches give no images it can use ({self.probe.problem})")
            self.probe.finish(ranks)  # every rank, before any rank-zero-only work: a collective
            if self.probe.probe is None:
                return
        weights = [*pl_module.parameters(), *pl_module.buffers()]
        if self.guard.finite(weights, what="the model's weights", moment=moment):
            self.write(trainer, self.draw(pl_module, moment, ranks), moment)

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if trainer.sanity_checking or self.off:
            return
        due = self.schedule.due(self.service.budget, trainer.current_epoch, last_by_max_epochs(trainer))
        if self.auto and trainer.world_size > 1:  # rank zero's decision: no rank skips a collective the others make
            due = bool(trainer.strategy.broadcast(due, src=0))
        if due:
            self._log_now(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run that stopped between cadence points (max_steps, early stopping) still shows its final state.
        if self._last_logged_step != trainer.global_step:
            self._log_now(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self.service.budget.start(pl_module.device)
        if self.auto and not self.off:
            self.guard.inform(self.service.budget.explain(self.schedule.account))

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.service.budget.stop()
        super().teardown(trainer, pl_module, stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), **self.schedule.state_dict(self.service.budget)}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.schedule.load_state_dict(self.service.budget, state_dict)
        super().load_state_dict(state_dict)
