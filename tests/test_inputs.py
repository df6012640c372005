"""Inputs users have: dict batches of uint8 images, models returning tuples or dicts, batch size 1."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from conftest import every_monitor, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor, EmbeddingMonitor
from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.demo.models import SmallCNN


class DictImages(Dataset[dict[str, Tensor]]):
    """{"inputs": uint8 image, "targets": label}, as many dataset libraries yield them."""

    def __init__(self, count: int) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randint(0, 256, (count, 1, 16, 16), dtype=torch.uint8, generator=generator)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Tensor]:
        return {"inputs": self.images[index], "targets": torch.tensor(index % 4)}


class TupleOutput(pl.LightningModule):
    """Returns (logits, features) or {"features": ..., "scores": logits}; takes uint8 or float images."""

    def __init__(self, output: str) -> None:
        super().__init__()
        self.net = SmallCNN(1, 4, channels=(4, 8, 8))
        self.output = output

    def forward(self, images: Tensor) -> Any:
        if images.dtype == torch.uint8:
            images = images.float() / 255
        logits = self.net(images)
        return (logits, images.mean((1, 2, 3))) if self.output == "tuple" else {"features": images, "scores": logits}

    def training_step(self, batch: dict[str, Tensor], index: int) -> Tensor:
        output = self(batch["inputs"])
        logits = output[0] if self.output == "tuple" else output["scores"]
        return F.cross_entropy(logits, batch["targets"])

    def validation_step(self, batch: dict[str, Tensor], index: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.01)


@pytest.mark.parametrize("output", ["tuple", "dict"])
def test_dict_batches_of_uint8_images_and_tuple_or_dict_outputs(tmp_path: Path, output: str) -> None:
    to_logits = (lambda out: out["scores"]) if output == "dict" else None
    chosen = every_monitor(output_to_logits=to_logits)
    saliency, monitors = chosen["saliency"], list(chosen.values())
    pl.seed_everything(0, verbose=False)
    model = TupleOutput(output)
    train, val = DataLoader(DictImages(32), batch_size=8), DataLoader(DictImages(16), batch_size=8)
    make_trainer(tmp_path, monitors, max_epochs=1).fit(model, train, val)
    events = read_events(tmp_path)
    assert {"cnnviz/saliency/grad_cam", "cnnviz/embedding/tsne", "cnnviz/filters/net.conv1"} <= set(events["images"])
    assert "cnnviz/activations/dead_fraction/net.relu1" in events["scalars"]
    # the probe holds the uint8 images as floats in [0, 1], labels from the dict's "targets"
    assert saliency.probe.images is not None and saliency.probe.labels is not None
    assert saliency.probe.images.dtype == torch.float32 and float(saliency.probe.images.max()) <= 1.0
    assert sorted(saliency.probe.labels.tolist()) == [0, 1, 2, 3]
    # the maps are those of the network's logits
    expected = S.vanilla_gradient(model.net, saliency.probe.images, saliency.probe.labels)
    torch.testing.assert_close(saliency.compute_maps(model, "vanilla_gradient")[:, 0], expected)


def test_a_probe_too_small_for_a_map_is_said_once(tmp_path: Path) -> None:
    from lightning_cnnviz.demo.models import ImageClassifier

    images = torch.rand(8, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(torch.utils.data.TensorDataset(images, torch.arange(8) % 4), batch_size=1)
    monitor = EmbeddingMonitor(probe_size=100, every_n_epochs=1)
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, limit_train_batches=2, limit_val_batches=2)
    with pytest.warns(UserWarning, match=r"the probe holds 2 image\(s\), and a map needs more than 5") as caught:
        trainer.fit(ImageClassifier(channels=(4, 8, 8), num_classes=4), loader, loader)
    assert len([w for w in caught if "the probe holds" in str(w.message)]) == 1
    assert monitor.last_map is None


def test_a_leaky_relu_network_is_watched_for_dormant_channels(tmp_path: Path) -> None:
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 6, 3), torch.nn.LeakyReLU(0.1), torch.nn.Conv2d(6, 8, 3), torch.nn.PReLU(),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(8, 4),
    )  # fmt: skip

    class Leaky(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = net

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def training_step(self, batch: Any, index: int) -> Tensor:
            return F.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    images = torch.rand(16, 1, 12, 12, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(torch.utils.data.TensorDataset(images, torch.arange(16) % 4), batch_size=8)
    monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    make_trainer(tmp_path, [monitor], max_epochs=1).fit(Leaky(), loader)
    assert [(site.name, site.function) for site in monitor.sites or []] == [
        ("net.1", "leaky_relu"),
        ("net.3", "prelu"),
    ]
    events = read_events(tmp_path)
    assert "cnnviz/activations/dormant_fraction/net.1" in events["scalars"]
    assert "cnnviz/activations/dormant_map/net.3" in events["images"]
