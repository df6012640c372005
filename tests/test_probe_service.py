"""One probe service per Trainer: the probe images are read once for every probe monitor, and FeatureVisMonitor
uses TopPatchMonitor's scan when both log at the same step."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from torch import Tensor

from conftest import make_trainer
from lightning_cnnviz import EmbeddingMonitor, FeatureVisMonitor, SaliencyMonitor, TopPatchMonitor
from lightning_cnnviz.core import ChannelSelection
from lightning_cnnviz.demo.models import ImageClassifier


def test_probe_images_are_read_once_per_fit_and_the_scan_is_shared(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []

    def images(batch: Any) -> Tensor:
        reads.append(str(trainer.state.stage))
        return batch[0]  # type: ignore[no-any-return]

    scans: list[int] = []
    scan = ChannelSelection.scan

    def counted(self: ChannelSelection, *args: Any, **kwargs: Any) -> Any:
        scans.append(id(self))
        return scan(self, *args, **kwargs)

    monkeypatch.setattr(ChannelSelection, "scan", counted)
    monitors = [
        SaliencyMonitor(methods=("grad_cam",), num_images=8, batch_to_images=images, on_error="raise"),
        TopPatchMonitor(probe_size=96, k=2, max_channels=2, every_n_epochs=1, batch_to_images=images,
                        on_error="raise"),
        EmbeddingMonitor(probe_size=96, every_n_epochs=1, projector=False, batch_to_images=images, on_error="raise"),
        FeatureVisMonitor(probe_size=64, k=2, max_channels=2, steps=2, dream_images=0, every_n_epochs=1,
                          batch_to_images=images, on_error="raise"),
    ]  # fmt: skip
    model = ImageClassifier(in_channels=1, num_classes=10)
    trainer = make_trainer(tmp_path, monitors, max_epochs=2, limit_train_batches=3, limit_val_batches=4)
    trainer.fit(model, datamodule=digits_data)
    # one pass over the first validation epoch's 4 batches (the balanced saliency probe takes the whole pass),
    # each batch unpacked once for the four monitors; nothing read in the second epoch. (The first training batch
    # is read once too, for an example image: every monitor checks its layers on it before any training step.)
    assert reads.count("RunningStage.VALIDATING") == 4 and reads.count("RunningStage.TRAINING") == 1
    assert len({id(m.service) for m in monitors}) == 1
    assert [len(m.probe_images) for m in monitors] == [8, 96, 96, 64]
    assert (monitors[3].probe_images == monitors[1].probe_images[:64]).all()
    # two logging epochs: TopPatchMonitor scans each time, FeatureVisMonitor's patches reuse that scan
    assert scans == [id(monitors[1].gallery.selection)] * 2
    assert set(monitors[3].last_images) == set(monitors[1].gallery.selection.chosen_layers)
