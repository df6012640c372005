"""Nothing of ours keeps a user's network alive: after a fit with every monitor, dropping the trainer, the callbacks
and the model frees the model (its parameters, and on a GPU their memory), as it does without monitors."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path

import torch
from torch import nn

from conftest import every_monitor, make_trainer
from lightning_cnnviz import FeatureVisMonitor
from lightning_cnnviz.core import LayerMap
from lightning_cnnviz.demo.data import DigitsDataModule
from lightning_cnnviz.demo.models import ImageClassifier


def test_the_layer_map_cache_does_not_keep_its_model() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 36, 2))
    assert LayerMap.of(net).takes(net, (3, 8, 8))
    alive = weakref.ref(net)
    del net
    gc.collect()
    assert alive() is None


def test_a_fit_with_every_monitor_frees_the_model(tmp_path: Path) -> None:
    """(Before, the layer map's cache kept every model it had mapped.) The data module keeps its trainer, so it goes
    too."""
    torch.manual_seed(0)
    model, data = ImageClassifier(channels=(4, 8, 8)), DigitsDataModule(batch_size=64)
    monitors = [*every_monitor(cadence=1).values(), FeatureVisMonitor(steps=2, probe_size=16, max_channels=2)]
    trainer = make_trainer(tmp_path, monitors, max_epochs=1, limit_train_batches=3)
    trainer.fit(model, datamodule=data)
    alive, net_alive = weakref.ref(model), weakref.ref(model.net)
    del trainer, monitors, model, data
    gc.collect()
    assert alive() is None and net_alive() is None
