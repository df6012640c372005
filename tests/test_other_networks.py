"""Every monitor at its defaults on networks whose forwards refuse some input sizes: timm's DLA-34 (up-sampled paths
that add up only at multiples of its stride) and segmentation-models-pytorch's FPN with an EfficientNet encoder
(sides must be multiples of 32). Random weights, 64-px images; nothing may be switched off. A long check:
``CNNVIZ_LONG=1`` runs it (CI does)."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from test_torchvision_matrix import Classifier
from torch.utils.data import DataLoader, TensorDataset

from conftest import global_state_clean, hooks_left, make_trainer, read_events

pytestmark = pytest.mark.skipif(os.environ.get("CNNVIZ_LONG") != "1", reason="a long check: CNNVIZ_LONG=1 runs it")


def network(name: str) -> Classifier:
    """timm's DLA-34, or segmentation-models-pytorch's FPN on an EfficientNet-B0 encoder: 4 classes, random weights."""
    if name == "dla34":
        import timm

        return Classifier(name, timm.create_model("dla34", pretrained=False, num_classes=4))
    import segmentation_models_pytorch as smp

    return Classifier(name, smp.FPN("efficientnet-b0", encoder_weights=None, classes=4))


@pytest.mark.parametrize("name", ["dla34", "fpn_efficientnet_b0"])
def test_every_monitor_draws_on_a_network_that_refuses_some_input_sizes(tmp_path: Path, name: str) -> None:
    from lightning_cnnviz import (
        ActivationMonitor,
        EmbeddingMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        SaliencyMonitor,
        TopPatchMonitor,
    )

    pl.seed_everything(0, verbose=False)
    images = torch.rand(24, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    labels = torch.arange(24) % 4
    if name != "dla34":  # a segmentation network: a class per pixel
        labels = labels[:, None, None].expand(24, 64, 64).clone()
    train = DataLoader(TensorDataset(images[:16], labels[:16]), batch_size=8)
    val = DataLoader(TensorDataset(images, labels), batch_size=8)
    monitors = [FilterMonitor(), ActivationMonitor(every_n_steps=2), SaliencyMonitor(), TopPatchMonitor(),
                EmbeddingMonitor(), FeatureVisMonitor()]  # fmt: skip
    model = network(name)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        make_trainer(tmp_path, monitors, max_epochs=1, limit_val_batches=3).fit(model, train, val)
    failed = [str(w.message) for w in caught if "failed with" in str(w.message)]
    assert not failed, failed
    assert not any(monitor.guard.disabled - {"the kNN accuracy"} for monitor in monitors)  # no masks' kNN only
    assert hooks_left(model) == [] and global_state_clean()
    written = set(read_events(tmp_path)["images"])
    for family, count in (("cnnviz/filters/", 1), ("cnnviz/top_patches/", 3), ("cnnviz/evolution/", 3),
                          ("cnnviz/feature_vis/", 3), ("cnnviz/feature_vis_patches/", 3), ("cnnviz/saliency/", 5),
                          ("cnnviz/embedding/tsne", 1), ("cnnviz/deep_dream", 1)):  # fmt: skip
        assert len([tag for tag in written if tag.startswith(family)]) == count, (family, sorted(written))
