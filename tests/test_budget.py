"""The suite's time budget: ``every_n_epochs="auto"`` logs exactly when the budget allows (a fake clock, no wall
time asserted), the cost scalars equal the injected costs, and a resumed fit goes on from the saved budget."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

from conftest import TinyCNN, fit_listening, make_trainer, read_events
from lightning_cnnviz import FilterMonitor, SaliencyMonitor
from lightning_cnnviz.core import Budget, Snapshot

STEP, COST = 1.0, 1.0  # fake seconds per training step and per log


class Module(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.net = TinyCNN()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        images, labels = batch
        return torch.nn.functional.cross_entropy(self(images), labels)

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01)

    def train_dataloader(self) -> DataLoader:
        generator = torch.Generator().manual_seed(0)
        images, labels = torch.rand(40, 1, 16, 16, generator=generator), torch.randint(0, 3, (40,), generator=generator)
        return DataLoader(TensorDataset(images, labels), batch_size=4)  # 10 steps: 10 fake seconds an epoch


class FakeTime(Callback):
    """The clock: STEP seconds per training step; each monitor's log adds COST seconds (see ``costly``)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def on_train_batch_end(self, *args: Any) -> None:
        self.now += STEP


def costly(monitor: Any, clock: FakeTime, cost: float = COST) -> Any:
    """``monitor`` whose every log takes ``cost`` fake seconds and draws nothing."""

    def draw(model: Any, moment: Any, ranks: Any) -> Snapshot:
        clock.now += cost
        return Snapshot()

    monitor.draw = draw
    return monitor


def fit(tmp_path: Path, monitors: list[Any], clock: FakeTime, epochs: int, **options: Any) -> list[str]:
    """Fit ``epochs`` with the fake clock; what the monitors told."""
    ckpt_path = options.pop("ckpt_path", None)
    trainer = make_trainer(tmp_path, [clock, *monitors], max_epochs=epochs, limit_val_batches=0, **options)
    if ckpt_path is not None:
        trainer.fit(Module(), ckpt_path=ckpt_path)
        return []
    return fit_listening(trainer, Module(), None)[1]


def expected_epochs(epochs: int, fraction: float, share: float = 1.0, steps: int = 10) -> list[int]:
    """The epochs a monitor on "auto" logs at, by the rule written out: the first, the last, and each epoch where
    its spending plus one more log fits its share of ``fraction`` of the training time."""
    spent, logged = 0.0, []
    for epoch in range(epochs):
        trained = (epoch + 1) * steps * STEP
        if not logged or epoch == epochs - 1 or spent + COST <= fraction * trained * share:
            logged.append(epoch)
            spent += COST
    return logged


def test_auto_logs_exactly_when_the_budget_allows_and_the_cost_scalars_are_the_injected_costs(tmp_path: Path) -> None:
    clock = FakeTime()
    monitor = costly(FilterMonitor(budget=Budget(0.05, clock=clock)), clock)
    told = fit(tmp_path, [monitor], clock, epochs=10)
    assert (
        "FilterMonitor: every_n_epochs='auto': logs after the first epoch, at the end of the fit, and in between "
        "whenever its share of the visualization budget allows: 100% of a budget of 5% of the training time (1 "
        "monitor(s) on 'auto')" in " ".join(told)
    )
    assert monitor.logged_epochs == expected_epochs(10, 0.05) == [0, 3, 5, 7, 9]
    assert monitor.cost is not None  # the public view of its account: 5 logs of COST seconds
    cost = monitor.cost
    assert (cost.logs, cost.spent, cost.last) == (5, pytest.approx(5 * COST), pytest.approx(COST))
    scalars = read_events(tmp_path)["scalars"]
    seconds = scalars["cnnviz/cost/FilterMonitor/seconds"]
    fraction = scalars["cnnviz/cost/FilterMonitor/fraction"]
    assert [event.step for event in seconds] == [0, 3, 5, 7, 9]
    assert [event.value for event in seconds] == pytest.approx([COST] * 5)
    # all logs so far over the training time so far: 1/10, 2/40, 3/60, 4/80, 5/100
    assert [event.value for event in fraction] == pytest.approx([0.1, 0.05, 0.05, 0.05, 0.05])


def test_the_budget_is_shared_by_priority_and_fixed_cadences_spend_from_it(tmp_path: Path) -> None:
    clock = FakeTime()
    budget = Budget(0.2, clock=clock)
    fixed = costly(FilterMonitor(every_n_epochs=1, budget=budget), clock)  # 1 s every epoch: 10% of 10 s
    low = costly(SaliencyMonitor(num_images=2, priority=1.0), clock)
    high = costly(SaliencyMonitor(num_images=3, priority=3.0), clock)  # another state key
    fit(tmp_path, [fixed, low, high], clock, epochs=12)
    assert fixed.logged_epochs == list(range(12))
    # the pool is 20% of the training time less the fixed monitor's 10%: 10%, split 1:3
    assert low.logged_epochs == expected_epochs(12, 0.1, share=0.25)
    assert high.logged_epochs == expected_epochs(12, 0.1, share=0.75)
    assert len(high.logged_epochs) > len(low.logged_epochs) >= 2
    tags = read_events(tmp_path)["scalars"]
    assert {"cnnviz/cost/SaliencyMonitor/seconds", "cnnviz/cost/SaliencyMonitor 2/seconds"} <= set(tags)


def test_a_resumed_fit_goes_on_from_the_saved_budget(tmp_path: Path) -> None:
    clock = FakeTime()
    whole = costly(FilterMonitor(budget=Budget(0.05, clock=clock)), clock)
    fit(tmp_path / "whole", [whole], clock, epochs=12)

    clock = FakeTime()
    first = costly(FilterMonitor(budget=Budget(0.05, clock=clock)), clock)
    checkpoint = ModelCheckpoint(dirpath=tmp_path / "checkpoints", save_last=True)
    fit(tmp_path / "first", [first, checkpoint], clock, epochs=7, enable_checkpointing=True)
    assert whole.logged_epochs == [0, 3, 5, 7, 9, 11]
    assert first.logged_epochs == [0, 3, 5, 6]  # 6: the last epoch of this fit

    resumed_budget = Budget(0.05, clock=clock)
    resumed = costly(FilterMonitor(budget=resumed_budget), clock)
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    fit(tmp_path / "resumed", [resumed], clock, epochs=12, enable_checkpointing=True, ckpt_path=ckpt)
    account = resumed_budget.account("FilterMonitor")
    # the budget went on from 4 logs in 70 s of training: the next log is due when 5 s fit 5% (epoch 9)
    assert resumed.logged_epochs == [9, 11]
    assert account.logs == 6 and account.spent == pytest.approx(6 * COST)
    assert resumed_budget.trained() == pytest.approx(120 * STEP)


def test_bad_budgets_and_priorities_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match=r"FilterMonitor: `budget` must be a fraction of training time in \(0, 1\]"):
        FilterMonitor(budget=0.0)
    with pytest.raises(ValueError, match="SaliencyMonitor: `priority` must be a positive number"):
        SaliencyMonitor(priority=-1)
    with pytest.raises(ValueError, match="every_n_epochs"):
        FilterMonitor(every_n_epochs="sometimes")  # type: ignore[arg-type]


def test_two_monitors_setting_different_budgets_is_a_configuration_error(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, [FilterMonitor(budget=0.1), SaliencyMonitor(budget=0.2)], limit_val_batches=0)
    with pytest.raises(ValueError, match=r"`budget=0.2`, and another monitor of this Trainer set 0.1"):
        trainer.fit(Module())
