"""Private to the callbacks: the epoch cadence, with the probe service shared by every monitor of a Trainer."""

from __future__ import annotations

from typing import Any, Literal

import lightning.pytorch as pl
from typing_extensions import override

from lightning_cnnviz.callbacks._base import ErrorPolicy, Monitor
from lightning_cnnviz.callbacks._trainer import ranks_of, service_of
from lightning_cnnviz.core import Account, Budget, Moment, ProbeService, ProbeSet, Ranks, Snapshot, check_positive_int
from lightning_cnnviz.core.budget import check_budget

Cadence = int | Literal["auto"]


class EpochMonitor(Monitor):
    """A monitor whose core object ``self.core`` draws a :class:`~lightning_cnnviz.core.Snapshot` every
    ``every_n_epochs`` training epochs and once more for the final state (step: the epoch); with
    ``every_n_epochs="auto"``, after the first epoch, at the end, and in between when its share of the run's
    :class:`~lightning_cnnviz.core.Budget` allows (rank zero decides for every rank). Every log is timed and its
    cost written as ``cnnviz/cost/<monitor>/seconds`` and ``.../fraction`` (of the training time so far). With a
    ``probe`` (:class:`~lightning_cnnviz.core.ProbeSet`) it joins the Trainer's one probe service, which fills every
    monitor's probe in one pass over the first validation batches (else the first training batches), and holds the
    budget."""

    def __init__(
        self,
        every_n_epochs: Cadence = "auto",
        on_error: ErrorPolicy = "warn",
        probe: ProbeSet | None = None,
        budget: float | Budget | None = None,
        priority: float = 1.0,
    ) -> None:
        super().__init__(on_error=on_error)
        who = self.guard.who
        self.auto = every_n_epochs == "auto"
        self.every_n_epochs: Cadence = (
            "auto" if self.auto else check_positive_int(who, "every_n_epochs", every_n_epochs)
        )
        if budget is not None and not isinstance(budget, Budget):
            budget = check_budget(who, budget)
        if isinstance(priority, bool) or not isinstance(priority, (int, float)) or not priority > 0:
            raise ValueError(f"{who}: `priority` must be a positive number (a weight in the budget), got {priority!r}.")
        self.budget, self.priority = budget, float(priority)
        self.probe, self.service = probe, ProbeService()
        self._last_logged_step: int | None = None
        self.logged_epochs: list[int] = []  # the epochs this monitor logged at, in this process
        self._account = who  # this monitor's name in the budget (unique per Trainer)
        self._budget_state: dict[str, Any] | None = None  # from a checkpoint, until the budget is joined

    @property
    def probe_images(self) -> Any:
        """The fixed probe set (on the host), once chosen; ``probe_labels``: its labels, when batches carry them."""
        return None if self.probe is None else self.probe.images

    @property
    def probe_labels(self) -> Any:
        return None if self.probe is None else self.probe.labels

    @property
    def cost(self) -> Account | None:
        """This monitor's account in the Trainer's time budget (seconds of all its logs, their number, the latest's
        cost), once the fit has started; None before."""
        return self.service.budget.accounts.get(self._account)

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        self.service = service_of(trainer)
        self._join_budget()
        if self.off:
            return
        if self.probe is not None:
            if stage == "fit":  # chosen once per fit, from that fit's data
                self.probe.reset()
            self.service.join(self.probe)
        self.attach(pl_module, getattr(trainer, "datamodule", None))

    def _join_budget(self) -> None:
        """Give the Trainer's budget this monitor's fraction or object (two monitors giving different ones is a
        configuration error) and open its account."""
        service = self.service
        if isinstance(self.budget, Budget) and service.budget is not self.budget:
            if service.budget_given:
                raise ValueError(f"{self.guard.who}: another monitor of this Trainer set a `budget`: set it once.")
            service.budget = self.budget
        elif isinstance(self.budget, float):
            if service.budget_given and service.budget.fraction != self.budget:
                raise ValueError(
                    f"{self.guard.who}: `budget={self.budget}`, and another monitor of this Trainer set "
                    f"{service.budget.fraction}; the budget is shared, set it once."
                )
            service.budget.fraction = self.budget
        service.budget_given = service.budget_given or self.budget is not None
        if self.off:  # a monitor that does not apply takes no share
            return
        self._account = service.budget.open(self, self.guard.who, self.priority, self.auto)
        if self._budget_state is not None:
            service.budget.load_state_dict(self._account, self._budget_state)
            self._budget_state = None

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
        self.logged_epochs.append(trainer.current_epoch)
        budget = self.service.budget
        with budget.timed(self._account, pl_module.device):
            self._draw_and_write(trainer, pl_module)
        costs = budget.costs(self._account)
        scalars = {f"cnnviz/cost/{self._account}/{name}": value for name, value in costs.items()}
        self._sink_for(trainer).write(Snapshot(scalars=scalars), trainer.current_epoch)

    def _draw_and_write(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
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
        if trainer.sanity_checking or self.off:
            return
        epoch = trainer.current_epoch
        last = trainer.max_epochs is not None and trainer.max_epochs > 0 and epoch + 1 >= trainer.max_epochs
        if isinstance(self.every_n_epochs, int):
            due = (epoch + 1) % self.every_n_epochs == 0
        else:
            due = self.service.budget.account(self._account).logs == 0 or self.service.budget.allows(self._account)
            if trainer.world_size > 1:  # rank zero's decision, so that no rank skips a collective the others make
                due = bool(trainer.strategy.broadcast(due, src=0))
        if due or last:
            self._log_now(trainer, pl_module)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # A run that stopped between cadence points (max_steps, early stopping) still shows its final state.
        if self._last_logged_step != trainer.global_step:
            self._log_now(trainer, pl_module)

    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        budget = self.service.budget
        budget.start(pl_module.device)
        if self.auto and not self.off:
            auto = [a for a in budget.accounts.values() if a.auto]
            share = budget.portion(self._account)
            self.guard.tell(
                f"every_n_epochs='auto': logs after the first epoch, at the end of the fit, and in between whenever "
                f"its share of the visualization budget allows: {100 * share:.3g}% of a budget of "
                f"{100 * (budget.fraction or 0):.3g}% of the training time ({len(auto)} monitor(s) on 'auto'), less "
                f"what monitors on a fixed cadence spend. `budget=` sets the fraction, `priority=` the shares; an "
                f"integer `every_n_epochs` logs on a fixed cadence."
            )
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
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self.service.budget.stop()
        super().teardown(trainer, pl_module, stage)

    @override
    def state_dict(self) -> dict[str, Any]:
        state = {**super().state_dict(), **({"probe": self.probe.state_dict()} if self.probe is not None else {})}
        if self._account in self.service.budget.accounts:
            state["budget"] = self.service.budget.state_dict(self._account)
        return state

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "budget" in state_dict:
            if self._account in self.service.budget.accounts:
                self.service.budget.load_state_dict(self._account, state_dict["budget"])
            else:
                self._budget_state = state_dict["budget"]
        if self.probe is not None:
            self.probe.load_state_dict(state_dict.get("probe", {}))
        super().load_state_dict(state_dict)
