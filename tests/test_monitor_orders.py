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
    return (monitor.health.windows, monitor.health.rate_history, monitor.health.distribution_history)


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


def test_one_write_per_tag_and_step(tmp_path: Path, digits_data: Any) -> None:
    """Windows that end with an epoch, alerts at those steps, a final short window: still one image or scalar per
    tag and step (TensorBoard would show the later one only, and the slider a step twice)."""
    from lightning_cnnviz import FeatureVisMonitor

    monitors = every_monitor(activation_steps=2)
    monitors["activation"].health.policy.threshold = 0.0  # alert at every window with a dead channel
    monitors["feature_vis"] = FeatureVisMonitor(every_n_epochs=1, steps=4, probe_size=32, on_error="raise")
    pl.seed_everything(0, verbose=False)
    model = ImageClassifier(channels=(8, 16, 16), num_classes=10, lr=0.5)  # a rate that kills filters
    trainer = make_trainer(tmp_path / "a", list(monitors.values()), max_epochs=2, limit_train_batches=4)
    trainer.fit(model, datamodule=digits_data)
    # a last, short window (3 steps, windows of 2) closed at the end of the fit, at the step of the epoch's end
    late = ActivationMonitor(every_n_steps=2, dead_fraction_threshold=0.0, on_error="raise")
    make_trainer(tmp_path / "b", [late], max_epochs=1, limit_train_batches=3).fit(model, datamodule=digits_data)
    for run in ("a", "b"):
        events = read_events(tmp_path / run)
        for kind in ("images", "scalars"):
            for tag, written in events[kind].items():
                steps = [event.step for event in written]
                assert len(steps) == len(set(steps)), (run, tag, steps)
    maps = read_events(tmp_path / "b")["images"]["cnnviz/activations/dead_map/net.relu1"]
    assert [e.step for e in maps] == [2, 3]  # the short window is drawn: a second column of the map
    assert [len(h) for h in late.health.rate_history.values()] == [2] * len(late.health.rate_history)
    assert maps[-1].encoded_image_string != maps[0].encoded_image_string
