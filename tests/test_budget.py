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


def expected_epochs(
    epochs: int, fraction: float, shares: tuple[float, ...] = (1.0,), fixed: float = 0.0, steps: int = 10
) -> list[list[int]]:
    """The epochs each monitor on "auto" logs at (in callback order, sharing the pool by ``shares``), by the rule
    written out: the last epoch; before it, the first log when what the "auto" monitors spent and the final logs they
    owe fit the pool (``fraction`` of the training time less the ``fixed`` seconds a fixed-cadence monitor, first in
    order, spends each epoch), later ones when the monitor's spending plus two more logs fit its share of the pool."""
    spent, logged = [0.0] * len(shares), [[] for _ in shares]  # type: list[float], list[list[int]]
    for epoch in range(epochs):
        pool = fraction * (epoch + 1) * steps * STEP - fixed * (epoch + 1)
        for i, share in enumerate(shares):
            owed = sum(s + (COST if s else 0.0) for s in spent)
            if epoch == epochs - 1 or (spent[i] + 2 * COST <= pool * share if logged[i] else owed <= pool):
                logged[i].append(epoch)
                spent[i] += COST
    return logged


def test_auto_logs_exactly_when_the_budget_allows_and_the_cost_scalars_are_the_injected_costs(tmp_path: Path) -> None:
    clock = FakeTime()
    monitor = costly(FilterMonitor(budget=Budget(0.05, clock=clock)), clock)
    told = fit(tmp_path, [monitor], clock, epochs=10)
    assert (
        "FilterMonitor: every_n_epochs='auto': logs at the end of the fit, and before it whenever its share of the "
        "visualization budget allows one more log and still its final one: 100% of a budget of 5% of the training "
        "time (1 monitor(s) on 'auto')" in " ".join(told)
    )
    assert [monitor.logged_epochs] == expected_epochs(10, 0.05) == [[0, 5, 7, 9]]
    assert monitor.cost is not None  # the public view of its account: 4 logs of COST seconds
    cost = monitor.cost
    assert (cost.logs, cost.spent, cost.last) == (4, pytest.approx(4 * COST), pytest.approx(COST))
    scalars = read_events(tmp_path)["scalars"]
    seconds = scalars["cnnviz/cost/FilterMonitor/seconds"]
    fraction = scalars["cnnviz/cost/FilterMonitor/fraction"]
    assert [event.step for event in seconds] == [0, 5, 7, 9]
    assert [event.value for event in seconds] == pytest.approx([COST] * 4)
    # all logs so far over the training time so far: 1/10, 2/60, 3/80, 4/100
    assert [event.value for event in fraction] == pytest.approx([0.1, 2 / 60, 3 / 80, 0.04])


def test_the_budget_is_shared_by_priority_and_fixed_cadences_spend_from_it(tmp_path: Path) -> None:
    clock = FakeTime()
    budget = Budget(0.2, clock=clock)
    fixed = costly(FilterMonitor(every_n_epochs=1, budget=budget), clock)  # 1 s every epoch: 10% of 10 s
    low = costly(SaliencyMonitor(num_images=2, priority=1.0), clock)
    high = costly(SaliencyMonitor(num_images=3, priority=3.0), clock)  # another state key
    fit(tmp_path, [fixed, low, high], clock, epochs=12)
    assert fixed.logged_epochs == list(range(12))
    # the pool is 20% of the training time less the fixed monitor's 10%: 1 s an epoch, split 1:3; after the first
    # epoch it holds the low monitor's first log; the high one's waits an epoch for the final log the low one owes
    assert [low.logged_epochs, high.logged_epochs] == expected_epochs(12, 0.2, (0.25, 0.75), fixed=COST)
    assert low.logged_epochs == [0, 11] and high.logged_epochs == [1, 3, 5, 6, 7, 9, 10, 11]
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
    assert [whole.logged_epochs] == expected_epochs(12, 0.05) == [[0, 5, 7, 9, 11]]
    assert first.logged_epochs == [0, 5, 6]  # 6: the last epoch of this fit

    resumed_budget = Budget(0.05, clock=clock)
    resumed = costly(FilterMonitor(budget=resumed_budget), clock)
    ckpt = str(tmp_path / "checkpoints" / "last.ckpt")
    fit(tmp_path / "resumed", [resumed], clock, epochs=12, enable_checkpointing=True, ckpt_path=ckpt)
    account = resumed_budget.account("FilterMonitor")
    # the budget went on from 3 logs in 70 s of training: the next is due when 3 + 2 s fit 5% (epoch 9)
    assert resumed.logged_epochs == [9, 11]
    assert account.logs == 5 and account.spent == pytest.approx(5 * COST)
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
