"""torch.compile: every monitor works on a compiled network or LightningModule, with eager mode's statistics."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch

from conftest import every_monitor, global_state_clean, hooks_left, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor
from lightning_cnnviz.demo.models import ImageClassifier


def fit(tmp_path: Path, data: Any, activation: str, compiled: str) -> tuple[ActivationMonitor, Any]:
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(channels=(8, 16, 16), activation=activation)  # type: ignore[arg-type]
    if compiled == "network":
        model.net = torch.compile(model.net)  # type: ignore[assignment]
    monitors = every_monitor(activation_steps=3, top_probe=16)
    monitor = monitors["activation"]
    trainer = make_trainer(tmp_path, list(monitors.values()), max_epochs=1, limit_train_batches=6)
    trainer.fit(torch.compile(model) if compiled == "module" else model, datamodule=data)
    assert hooks_left(model) == [] and global_state_clean()
    return monitor, read_events(tmp_path)


@pytest.mark.parametrize(("activation", "compiled"), [("module", "network"), ("functional", "module")])
def test_compiled_models_equal_eager_statistics_without_recompile_warnings(
    tmp_path: Path, digits_data: Any, activation: str, compiled: str, caplog: pytest.LogCaptureFixture
) -> None:
    eager, _ = fit(tmp_path / "eager", digits_data, activation, "no")
    with caplog.at_level(logging.WARNING, logger="torch._dynamo"):
        monitor, events = fit(tmp_path / "compiled", digits_data, activation, compiled)
    assert not [r for r in caplog.records if "recompile" in r.getMessage()]
    assert monitor.health.rate_history == eager.health.rate_history and monitor.health.windows == 2
    assert monitor.health.distribution_history == eager.health.distribution_history
    for prefix in ("cnnviz/filters/", "cnnviz/top_patches/", "cnnviz/saliency/grad_cam", "cnnviz/embedding/tsne"):
        assert any(tag.startswith(prefix) for tag in events["images"]), prefix
