"""Real scenario on real data: the demo CNN on Fashion-MNIST (../shared/data), destructive vs sane learning rate."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
from conftest import SHARED_DATA, make_trainer

from lightning_cnnviz import ActivationMonitor
from lightning_cnnviz.data import IDXDataModule
from lightning_cnnviz.models import ImageClassifier

STEPS = 150


@pytest.fixture(scope="module")
def fashion() -> IDXDataModule:
    root = SHARED_DATA / "fashion-mnist"
    assert root.is_dir(), f"the shared real data must be beside the project: {root} is missing"
    data = IDXDataModule(str(root), batch_size=128, limit_train=STEPS * 128, limit_val=512)
    data.setup()
    return data


def train(tmp_path: Path, data: IDXDataModule, optimizer: str, lr: float) -> tuple[ActivationMonitor, Any]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(in_channels=1, num_classes=10, optimizer=optimizer, lr=lr)  # type: ignore[arg-type]
    monitor = ActivationMonitor(every_n_steps=25)
    trainer = make_trainer(tmp_path, [monitor], max_steps=STEPS, deterministic=False)
    trainer.fit(model, datamodule=data)
    return monitor, trainer


def last_dead_counts(monitor: ActivationMonitor) -> dict[str, int]:
    return {name: sum(1 for rate in history[-1] if rate == 0) for name, history in monitor._rate_history.items()}


def test_destructive_learning_rate_alerts_and_sane_one_does_not(tmp_path: Path, fashion: IDXDataModule) -> None:
    sane, sane_trainer = train(tmp_path / "sane", fashion, "sgd", 0.05)
    broken, broken_trainer = train(tmp_path / "broken", fashion, "adam", 0.03)
    sane_dead, broken_dead = last_dead_counts(sane), last_dead_counts(broken)
    print(
        f"\nsane (SGD lr=0.05): dead per layer {sane_dead}, alerts {len(sane.alerts)}, "
        f"val_acc {float(sane_trainer.callback_metrics['val_acc']):.3f}"
    )
    print(
        f"destructive (Adam lr=0.03): dead per layer {broken_dead}, alerts {len(broken.alerts)}, "
        f"val_acc {float(broken_trainer.callback_metrics['val_acc']):.3f}"
    )
    assert sane.alerts == []
    assert sum(sane_dead.values()) == 0
    assert broken.alerts, "the destructive learning rate should kill filters and alert"
    assert sum(broken_dead.values()) >= 32
    assert all("learning rate: 0.03" in alert["message"] for alert in broken.alerts)
    sane_acc = float(sane_trainer.callback_metrics["val_acc"])
    assert sane_acc > 0.6 and sane_acc > float(broken_trainer.callback_metrics["val_acc"]) + 0.3
