"""Monitors never see each other: every monitor logs in any order, and the activation statistics equal
ActivationMonitor's alone, exactly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest

from conftest import every_monitor, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor
from lightning_cnnviz.demo.models import ImageClassifier

NAMES = ("filter", "activation", "top_patch", "saliency", "embedding")
# Every rotation of the five and its reverse: each monitor at each position, each pair in both orders.
ORDERS = [NAMES[i:] + NAMES[:i] for i in range(5)]
ORDERS += [tuple(reversed(order)) for order in ORDERS]


def monitors() -> dict[str, pl.Callback]:
    return every_monitor(top_probe=16)


def fit(tmp_path: Path, data: Any, arch: str, order: tuple[str, ...]) -> ActivationMonitor:
    pl.seed_everything(0, verbose=False)
    options = {"channels": (8, 16, 16), "activation": "functional"} if arch == "small_cnn" else {}
    model = ImageClassifier(arch=arch, in_channels=1, num_classes=10, lr=0.05, **options)  # type: ignore[arg-type]
    chosen = monitors()
    trainer = make_trainer(tmp_path, [chosen[name] for name in order], max_epochs=2, limit_train_batches=4)
    trainer.fit(model, datamodule=data)
    monitor = chosen["activation"]
    assert isinstance(monitor, ActivationMonitor)
    return monitor


def statistics(monitor: ActivationMonitor) -> tuple[Any, ...]:
    return (monitor._windows, monitor._rate_history, monitor._distribution_history)


EXPECTED_PREFIXES = {
    "filter": "cnnviz/filters/",
    "activation": "cnnviz/activations/dead_fraction/",
    "top_patch": "cnnviz/top_patches/",
    "saliency": "cnnviz/saliency/",
    "embedding": "cnnviz/embedding/tsne",
}


@pytest.mark.parametrize("arch", ["small_cnn", "resnet18"])
def test_every_order_logs_everything_and_equal_statistics(tmp_path: Path, digits_data: Any, arch: str) -> None:
    alone_monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    pl.seed_everything(0, verbose=False)
    options = {"channels": (8, 16, 16), "activation": "functional"} if arch == "small_cnn" else {}
    model = ImageClassifier(arch=arch, in_channels=1, num_classes=10, lr=0.05, **options)  # type: ignore[arg-type]
    make_trainer(tmp_path / "alone", [alone_monitor], max_epochs=2, limit_train_batches=4).fit(
        model, datamodule=digits_data
    )
    alone = statistics(alone_monitor)
    assert alone[0] == 4 and all(len(history) == 4 for history in alone[1].values())
    # the small CNN: all ten orders; ResNet-18 (slower): both directions of every pair, and the README's order
    readme = ("filter", "activation", "saliency", "top_patch", "embedding")
    orders = ORDERS if arch == "small_cnn" else [ORDERS[0], ORDERS[5], readme]
    for index, order in enumerate(orders):
        monitor = fit(tmp_path / str(index), digits_data, arch, order)
        assert statistics(monitor) == alone, f"order {order}"
        events = read_events(tmp_path / str(index))
        tags = [*events["images"], *events["scalars"]]
        for name, prefix in EXPECTED_PREFIXES.items():
            assert any(tag.startswith(prefix) for tag in tags), f"{name} logged nothing in order {order}"
