"""Every monitor at its defaults (probe sizes shrunk) on torchvision's classifiers: each logs what it should."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch.utils.data import DataLoader, TensorDataset

from conftest import every_monitor, global_state_clean, hooks_left, make_trainer, read_events


class Classifier(pl.LightningModule):
    """``net`` (by default torchvision's network ``name``, 4 classes, random weights) trained with cross-entropy."""

    def __init__(self, name: str, net: torch.nn.Module | None = None) -> None:
        super().__init__()
        self.net = net if net is not None else getattr(torchvision.models, name)(weights=None, num_classes=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: Any, index: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def validation_step(self, batch: Any, index: int) -> torch.Tensor:
        return F.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


# model -> (input side, activation kinds, fully connected units watched, the logits activation left out)
MODELS = {
    "resnet18": (32, {"relu"}, [], None),
    "vgg11_bn": (32, {"relu"}, ["net.classifier.1", "net.classifier.4"], None),
    "mobilenet_v3_small": (32, {"relu", "hardswish", "hardsigmoid"}, ["net.classifier.1"], None),
    "densenet121": (32, {"relu"}, [], None),
    "convnext_tiny": (32, {"gelu"}, [], None),
    "efficientnet_b0": (32, {"silu"}, [], None),
    "squeezenet1_1": (64, {"relu"}, [], "net.classifier.2"),
    "regnet_x_400mf": (32, {"relu"}, [], None),
    "shufflenet_v2_x0_5": (32, {"relu"}, [], None),
}


@pytest.mark.parametrize("name", list(MODELS))
def test_every_monitor_logs_on_torchvision_classifier(tmp_path: Path, name: str) -> None:
    side, kinds, units, logits_activation = MODELS[name]
    pl.seed_everything(0, verbose=False)
    images = torch.rand(24, 3, side, side, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 4
    train = DataLoader(TensorDataset(images[:16], labels[:16]), batch_size=8)
    val = DataLoader(TensorDataset(images, labels), batch_size=8)
    monitors = every_monitor()
    activation = monitors["activation"]
    model = Classifier(name)
    make_trainer(tmp_path, list(monitors.values()), max_epochs=1, limit_val_batches=3).fit(model, train, val)
    assert hooks_left(model) == [] and global_state_clean()

    sites = activation.sites or []
    assert {site.function for site in sites} == kinds
    assert [site.name for site in sites if site.units] == units
    assert logits_activation is None or logits_activation not in [site.name for site in sites]
    events = read_events(tmp_path)
    images_logged, scalars = set(events["images"]), set(events["scalars"])
    first = sites[0].name
    assert f"cnnviz/activations/dormant_fraction/{first}" in scalars
    assert f"cnnviz/activations/nonfinite/{first}" in scalars
    assert f"cnnviz/activations/distribution/{first}" in images_logged
    relu = [site.name for site in sites if site.relu]
    assert all(f"cnnviz/activations/dead_fraction/{n}" in scalars for n in relu)
    assert not any(f"cnnviz/activations/dead_fraction/{s.name}" in scalars for s in sites if not s.relu)
    assert any(tag.startswith("cnnviz/filters/") for tag in images_logged)
    assert len([tag for tag in images_logged if tag.startswith("cnnviz/top_patches/")]) == 3
    expected = {f"cnnviz/saliency/{m}" for m in ("vanilla_gradient", "smoothgrad", "guided_backprop")}
    expected |= {
        "cnnviz/saliency/grad_cam",
        "cnnviz/saliency/occlusion",
        "cnnviz/embedding/tsne",
        "cnnviz/embedding/grid",
    }
    assert expected <= images_logged
    assert "cnnviz/embedding/knn_accuracy" in scalars
    assert len([tag for tag in images_logged if tag.startswith("cnnviz/occlusion/")]) == 1
    assert "cnnviz/invariance/translation" in images_logged
    assert len([tag for tag in scalars if tag.startswith("cnnviz/invariance/translation/")]) == 2  # conv1, code
    tallest = max((image.height, tag) for tag, written in events["images"].items() for image in written)
    assert tallest[0] <= 2000, tallest  # every picture within a screen, also for 1,024-channel layers
