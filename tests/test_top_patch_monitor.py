"""TopPatchMonitor in real fits on digits: images per layer, fixed probe, exact top-k, resume, bad input."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_monitors import SMALL, FailingModel, NoConv, assert_training_undisturbed, small_model

from conftest import global_state_clean, hooks_left, make_trainer, read_events, same_pixels
from lightning_cnnviz import TopPatchMonitor
from lightning_cnnviz.core import LayerMap, top_activations
from lightning_cnnviz.core.monitors.selection import default_channels
from lightning_cnnviz.demo.models import resnet18_cifar

LAYERS = ["net.conv1", "net.conv2", "net.conv3"]


def test_top_patches_and_evolution_per_layer_and_epoch(tmp_path: Path, digits_data: Any) -> None:
    monitor = TopPatchMonitor(every_n_epochs=1, probe_size=100, method="both", on_error="raise")
    model = small_model()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=3, num_sanity_val_steps=1, limit_val_batches=None)
    trainer.fit(model, datamodule=digits_data)
    # the probe: the first 100 validation images, in order (the sanity check does not count)
    assert monitor.probe_images is not None
    assert torch.equal(monitor.probe_images, digits_data._val.tensors[0][:100])
    # what was logged last is the exact top-9 of the final model on the probe
    chosen = monitor.gallery.selection.chosen_channels
    expected = top_activations(model, {name: chosen[name] for name in LAYERS}, monitor.probe_images)
    for name in LAYERS:
        for field in ("images", "ys", "xs"):
            assert torch.equal(getattr(monitor.last_top[name], field), getattr(expected[name], field))
    events = read_events(tmp_path)
    for name in LAYERS:
        assert [e.step for e in events["images"][f"cnnviz/top_patches/{name}"]] == [0, 1, 2]
        evolution = events["images"][f"cnnviz/evolution/{name}"]
        assert [e.step for e in evolution] == [0, 1, 2]
        assert evolution[0].width < evolution[1].width < evolution[2].width  # one column more per epoch
        assert [caption for caption, _ in monitor.history.columns(name)] == ["ep 0", "ep 1", "ep 2"]
    assert monitor.gallery.selection.chosen_channels["net.conv2"] == list(range(16))  # 16 channels: all of them
    assert hooks_left(model) == [] and global_state_clean()


def test_training_is_bit_identical_with_the_top_patch_monitor(tmp_path: Path, digits_data: Any) -> None:
    assert_training_undisturbed(
        tmp_path, digits_data, lambda: [TopPatchMonitor(probe_size=64, method="both", on_error="raise")]
    )


def test_resume_continues_the_evolution(tmp_path: Path, digits_data: Any) -> None:
    first = TopPatchMonitor(every_n_epochs=1, layers="net.conv1", channels=[0, 3], probe_size=32)
    trainer = make_trainer(tmp_path / "one", [first], max_epochs=2)
    trainer.fit(small_model(), datamodule=digits_data)
    checkpoint = tmp_path / "two.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["callbacks"][first.state_key]
    assert [c for _, c, _ in saved["history"]["net.conv1"]["columns"]] == ["ep 0", "ep 1"]
    assert first.probe_images is not None and torch.equal(saved["probe"]["images"], first.probe_images)

    second = TopPatchMonitor(every_n_epochs=1, layers="net.conv1", channels=[0, 3], probe_size=32)
    trainer = make_trainer(tmp_path / "two", [second], max_epochs=4)
    trainer.fit(small_model(), datamodule=digits_data, ckpt_path=str(checkpoint))
    columns = second.history.columns("net.conv1")
    assert [c for c, _ in columns] == ["ep 0", "ep 1", "ep 2", "ep 3"]
    assert all(torch.equal(a[1], b[2]) for a, b in zip(columns, saved["history"]["net.conv1"]["columns"]))
    assert second.probe_images is not None and torch.equal(second.probe_images, first.probe_images)
    assert columns[0][1].dtype == torch.uint8 and columns[0][1].shape == (2, 3, 5, 5)  # conv1: 5x5 fields


def test_evolution_keeps_a_bounded_number_of_columns() -> None:
    monitor = TopPatchMonitor(max_evolution_columns=4)
    kept = []
    for epoch in range(9):
        monitor.history.add("layer", f"ep {epoch}", torch.full((1, 3, 2, 2), epoch / 10))
        kept.append([caption for caption, _ in monitor.history.columns("layer")])
    assert kept[3] == ["ep 0", "ep 1", "ep 2", "ep 3"]
    assert kept[4] == ["ep 0", "ep 2", "ep 4"]  # full: every second epoch
    assert kept[6] == ["ep 0", "ep 2", "ep 4", "ep 6"]
    assert kept[7] == ["ep 0", "ep 4", "ep 7"]  # every fourth, and the latest
    assert kept[8] == ["ep 0", "ep 4", "ep 8"]
    assert monitor.history.columns("layer")[-1][1][0, 0, 0, 0].item() == round(0.8 * 255)


def test_without_validation_data_the_probe_comes_from_the_first_training_batches(tmp_path: Path) -> None:
    images = torch.randn(96, 1, 16, 16, generator=torch.Generator().manual_seed(0))
    data = torch.utils.data.TensorDataset(images, torch.randint(0, 10, (96,)))
    loader = torch.utils.data.DataLoader(data, batch_size=32)
    monitor = TopPatchMonitor(probe_size=40, layers=["net.conv2"], on_error="raise")
    trainer = make_trainer(tmp_path, [monitor], limit_val_batches=0)
    trainer.fit(small_model(), train_dataloaders=loader)
    assert monitor.probe_images is not None and torch.equal(monitor.probe_images, images[:40])
    assert "cnnviz/top_patches/net.conv2" in read_events(tmp_path)["images"]


def test_defaults_pick_layers_across_depth_and_spread_channels() -> None:
    assert LayerMap.of(small_model()).default_layers() == LAYERS
    # ResNet-18: 3x3 convs only (the 1x1 shortcuts are skipped), first, middle and last
    assert LayerMap.of(resnet18_cifar()).default_layers() == ["conv1", "layer2.1.conv2", "layer4.1.conv2"]
    assert default_channels(8) == list(range(8))
    assert default_channels(128, 16) == [0, 8, 17, 25, 34, 42, 51, 59, 68, 76, 85, 93, 102, 110, 119, 127]


@pytest.mark.parametrize(
    ("monitor", "pattern"),
    [
        (TopPatchMonitor(layers=["net.conv9"]), r"no module named 'net.conv9'.*'net.conv1'"),
        (
            TopPatchMonitor(layers=["net.conv1"], channels=[0, 8]),
            r"channel 8 of layer 'net.conv1' is out of range.*0..7",
        ),
        (
            TopPatchMonitor(layers=["net.conv1"], channels={"net.conv2": [0]}),
            r"`channels` names 'net.conv2', which is not a monitored layer",
        ),
        (TopPatchMonitor(layers=["net.fc"]), r"'net.fc' gives \(1, 10\); top patches need a \(N, C, H, W\)"),
    ],
)
def test_bad_configuration_fails_before_training(
    tmp_path: Path, digits_data: Any, monitor: TopPatchMonitor, pattern: str
) -> None:
    trainer = make_trainer(tmp_path, [monitor])
    model = small_model()
    with pytest.raises(ValueError, match=pattern):
        trainer.fit(model, datamodule=digits_data)
    assert trainer.global_step == 0
    assert hooks_left(model) == [] and global_state_clean()


def test_model_without_conv_and_bad_arguments() -> None:
    with pytest.raises(ValueError, match=r"`method` can be \{'deconvnet', 'guided_backprop', 'both'\}, got 'lrp'"):
        TopPatchMonitor(method="lrp")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="`k` must be a positive integer, got 0"):
        TopPatchMonitor(k=0)
    with pytest.raises(ValueError, match="`layers` is empty"):
        TopPatchMonitor(layers=[])


def test_no_conv_model_is_said_once_and_the_fit_goes_on(tmp_path: Path, digits_data: Any) -> None:
    trainer = make_trainer(tmp_path, [TopPatchMonitor()])
    with pytest.warns(UserWarning, match=r"TopPatchMonitor: does not apply: it needs 2-D images \(N, C, H, W\) "
                      "and nn.Conv2d layers, and NoConv has no convolution. It stays off"):  # fmt: skip
        trainer.fit(NoConv(), datamodule=digits_data)
    assert trainer.global_step > 0 and not read_events(tmp_path)["images"]


def test_no_hooks_left_after_an_exception_or_a_failing_projection(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    model = FailingModel(channels=SMALL, activation="functional")
    trainer = make_trainer(tmp_path / "a", [TopPatchMonitor(probe_size=16)])
    with pytest.raises(RuntimeError, match="boom in training_step"):
        trainer.fit(model, datamodule=digits_data)
    assert hooks_left(model) == [] and global_state_clean()

    import lightning_cnnviz.core.monitors.selection as tpm

    def broken(*args: Any, **kwargs: Any) -> torch.Tensor:
        raise FloatingPointError("injected")

    monkeypatch.setattr(tpm, "project_activations", broken)
    model = small_model("functional")
    trainer = make_trainer(tmp_path / "b", [TopPatchMonitor(probe_size=16)], max_epochs=2)
    with pytest.warns(UserWarning, match=r"top patches of net.conv\d failed with FloatingPointError"):
        trainer.fit(model, datamodule=digits_data)
    assert trainer.current_epoch == 2  # training went on
    assert hooks_left(model) == [] and global_state_clean()


class Upsampled(torch.nn.Module):
    """conv1 -> ReLU -> upsample x2 -> conv2 -> ReLU -> conv3: conv2's and conv3's receptive fields are unknown."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.conv3 = torch.nn.Conv2d(4, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.nn.functional.interpolate(torch.relu(self.conv1(x)), scale_factor=2)
        x = self.conv3(torch.relu(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def test_a_layer_whose_field_cannot_be_followed_is_left_out_or_refused_before_training(
    tmp_path: Path, digits_data: Any
) -> None:
    from lightning_cnnviz.demo.models import ImageClassifier

    def model() -> ImageClassifier:
        classifier = ImageClassifier(channels=SMALL)
        classifier.net = Upsampled()
        return classifier

    monitor = TopPatchMonitor(probe_size=16, on_error="raise")
    trainer = make_trainer(tmp_path / "default", [monitor], max_epochs=1, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"leaving out default layer\(s\).*'net.conv2'.*interpolate"):
        trainer.fit(model(), datamodule=digits_data)
    assert monitor.gallery.selection.chosen_layers == ["net.conv1"]
    assert "cnnviz/top_patches/net.conv1" in read_events(tmp_path / "default")["images"]
    named = TopPatchMonitor(layers=["net.conv1", "net.conv3"], probe_size=16, on_error="raise")
    trainer = make_trainer(tmp_path / "named", [named], max_epochs=1, limit_train_batches=2)
    with pytest.raises(ValueError, match=r"receptive field of 'net.conv3': .*interpolate.*Choose other `layers`"):
        trainer.fit(model(), datamodule=digits_data)
    assert trainer.global_step == 0  # refused before any training step


def test_a_plain_loop_writes_the_callbacks_pictures(tmp_path: Path, digits_data: Any) -> None:
    """TopPatchGallery is TopPatchMonitor's logic without a Trainer: on the fitted weights and the monitor's probe,
    a plain SummaryWriter gets the same PNG bytes of the top patches and the evolution as the callback wrote."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.core import TopPatchGallery

    monitor = TopPatchMonitor(probe_size=32, method="both", on_error="raise")
    model = small_model()
    trainer = make_trainer(tmp_path / "fit", [monitor], max_epochs=1, limit_train_batches=5)
    trainer.fit(model, datamodule=digits_data)
    probe = monitor.probe_images
    assert probe is not None
    gallery = TopPatchGallery(method="both")
    gallery.selection.configure(model)
    assert gallery.selection.prepare(model, probe[:1])
    tops = gallery.selection.scan(model, probe, torch.arange(len(probe)))
    writer = SummaryWriter(str(tmp_path / "plain"))
    caption = gallery.history.caption(0, trainer.global_step)
    for name, top in tops.items():
        for tag, picture in gallery.pictures(model, name, top, probe, caption, trainer.global_step).items():
            writer.add_image(tag, picture.float().clamp(0, 1), global_step=0, dataformats="CHW")
    writer.close()
    fitted, plain = read_events(tmp_path / "fit")["images"], read_events(tmp_path / "plain")["images"]
    tags = [tag for tag in fitted if tag.startswith(("cnnviz/top_patches/", "cnnviz/evolution/"))]
    assert len(tags) == 6 and sorted(tags) == sorted(plain)
    for tag in tags:
        assert same_pixels(plain[tag][-1], fitted[tag][-1]), tag
