"""SaliencyMonitor in real fits on digits: images per method, balanced probe, training undisturbed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_monitors import assert_training_undisturbed, small_model

from conftest import global_state_clean, hooks_left, make_trainer, read_events, same_pixels
from lightning_cnnviz import SaliencyMonitor
from lightning_cnnviz.core import Context, Moment, Probe, select_balanced
from lightning_cnnviz.core.methods.saliency_methods import METHODS

SALIENCY_METHODS = tuple(METHODS)


def test_every_method_is_logged_per_epoch_on_a_balanced_probe(tmp_path: Path, digits_data: Any) -> None:
    monitor = SaliencyMonitor(methods=SALIENCY_METHODS, num_images=10, smoothgrad_samples=4, on_error="raise")
    model = small_model()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, num_sanity_val_steps=1)
    trainer.fit(model, datamodule=digits_data)
    assert monitor.probe_labels is not None and monitor.probe_labels.tolist() == list(range(10))
    val_images = digits_data._val.tensors[0]
    first_of_each = [int((digits_data._val.tensors[1] == c).nonzero()[0]) for c in range(10)]
    assert torch.equal(monitor.probe_images, val_images[first_of_each])  # fixed, from the validation data
    events = read_events(tmp_path)
    for method in SALIENCY_METHODS:
        logged = events["images"][f"cnnviz/saliency/{method}"]
        assert [e.step for e in logged] == [0, 1]
        assert logged[0].height == 10 * (64 + 2)  # one row per probe image, 16 px upscaled to 64
    assert hooks_left(model) == [] and global_state_clean()


def test_training_is_bit_identical_with_the_saliency_monitor(tmp_path: Path, digits_data: Any) -> None:
    assert_training_undisturbed(
        tmp_path, digits_data, lambda: [SaliencyMonitor(num_images=6, smoothgrad_samples=3, on_error="raise")]
    )


def test_a_failing_method_is_switched_off_and_the_others_go_on(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lightning_cnnviz.core.methods.saliency as S

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise FloatingPointError("injected")

    monkeypatch.setattr(S, "grad_cam", broken)
    model = small_model()
    trainer = make_trainer(tmp_path, [SaliencyMonitor(methods=("grad_cam", "vanilla_gradient"), num_images=4)])
    with pytest.warns(UserWarning, match="saliency grad_cam failed with FloatingPointError"):
        trainer.fit(model, datamodule=digits_data)
    images = read_events(tmp_path)["images"]
    assert "cnnviz/saliency/vanilla_gradient" in images and "cnnviz/saliency/grad_cam" not in images
    assert hooks_left(model) == [] and global_state_clean()


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown method 'lime'.*'vanilla_gradient', 'smoothgrad'"):
        SaliencyMonitor(methods=("grad_cam", "lime"))
    with pytest.raises(ValueError, match="`target` can be 'auto', 'true', 'predicted', a class index or a callable"):
        SaliencyMonitor(target="best")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`task`.*'classification'.*'segmentation'"):
        SaliencyMonitor(task="pose")  # type: ignore[arg-type]


def test_select_balanced_is_round_robin() -> None:
    labels = torch.tensor([2, 2, 0, 1, 0, 2, 1])
    assert select_balanced(labels, 5) == [2, 3, 0, 4, 6]
    assert select_balanced(labels, 10) == [2, 3, 0, 4, 6, 1, 5]


def test_without_validation_data_the_probe_comes_from_the_first_training_batches(tmp_path: Path) -> None:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.randn(64, 1, 16, 16, generator=generator), torch.arange(64) % 4
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, labels), batch_size=16)
    monitor = SaliencyMonitor(methods=("grad_cam",), num_images=8, on_error="raise")
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=0)
    trainer.fit(small_model(), train_dataloaders=loader)
    assert monitor.probe_labels is not None and monitor.probe_labels.tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    assert torch.equal(monitor.probe_images, images[:8])  # balanced from the first batch, no more copied
    assert [e.step for e in read_events(tmp_path)["images"]["cnnviz/saliency/grad_cam"]] == [0]


def test_a_plain_loop_writes_the_callbacks_pictures(tmp_path: Path, digits_data: Any) -> None:
    """SaliencyPanel is SaliencyMonitor's logic without a Trainer: on the fitted weights and the monitor's probe,
    a plain SummaryWriter gets the same PNG bytes, method by method, as the callback wrote at the last epoch."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.core import SaliencyPanel

    methods = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")
    monitor = SaliencyMonitor(methods=methods, num_images=6, smoothgrad_samples=3, on_error="raise")
    model = small_model()
    make_trainer(tmp_path / "fit", [monitor], max_epochs=1, limit_train_batches=5).fit(model, datamodule=digits_data)
    panel = SaliencyPanel(methods=methods, smoothgrad_samples=3)
    assert monitor.probe_images is not None
    writer = SummaryWriter(str(tmp_path / "plain"))
    probe = Probe(monitor.probe_images, monitor.probe_labels)
    for tag, picture in panel.snapshot(model, probe, Context(Moment(epoch=0, step=0))).images.items():
        writer.add_image(tag, picture.float().clamp(0, 1), global_step=0, dataformats="CHW")
    writer.close()
    fitted, plain = read_events(tmp_path / "fit")["images"], read_events(tmp_path / "plain")["images"]
    for method in methods:
        tag = f"cnnviz/saliency/{method}"
        assert same_pixels(plain[tag][-1], fitted[tag][-1]), method
