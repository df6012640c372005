"""FeatureVisMonitor in real fits: what it logs, what it leaves alone, and how it fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_monitors import FailingModel, assert_training_undisturbed, small_model

from conftest import global_state_clean, hooks_left, make_trainer, read_events, same_pixels
from lightning_cnnviz import FeatureVisMonitor
from lightning_cnnviz.core import visualize_features
from lightning_cnnviz.core.methods.feature_vis import color_correlation

LAYERS = ["net.conv1", "net.conv2", "net.conv3"]


def monitor(**options: Any) -> FeatureVisMonitor:
    return FeatureVisMonitor(**{"every_n_epochs": 1, "steps": 16, "probe_size": 64, "on_error": "raise", **options})


def test_feature_vis_evolution_patches_and_dream_per_layer_and_epoch(tmp_path: Path, digits_data: Any) -> None:
    vis = monitor()
    model = small_model()
    trainer = make_trainer(tmp_path, [vis], max_epochs=2, limit_train_batches=4)
    trainer.fit(model, datamodule=digits_data)
    events = read_events(tmp_path)
    for name in LAYERS:
        for kind in ("feature_vis", "feature_vis_evolution", "feature_vis_patches"):
            assert [e.step for e in events["images"][f"cnnviz/{kind}/{name}"]] == [0, 1], (kind, name)
        evolution = events["images"][f"cnnviz/feature_vis_evolution/{name}"]
        assert evolution[0].width < evolution[1].width  # one column more per epoch
        assert [caption for caption, _ in vis.history.columns(name)] == ["ep 0", "ep 1"]
    assert [e.step for e in events["images"]["cnnviz/deep_dream"]] == [0, 1]
    # the last images are the core's render of the final model, normalised as the data module normalises
    assert vis.probe_images is not None
    pixels = (vis.probe_images * digits_data.std.view(1, -1, 1, 1) + digits_data.mean.view(1, -1, 1, 1)).clamp(0, 1)
    expected = visualize_features(
        model, "net.conv2", vis.selection.chosen_channels["net.conv2"], size=16, in_channels=1, steps=16,
        lr=vis.renderer.lr, colors=color_correlation(pixels), mean=digits_data.mean, std=digits_data.std,
    )  # fmt: skip
    torch.testing.assert_close(vis.last_images["net.conv2"], expected, rtol=0, atol=1e-5)
    assert hooks_left(model) == [] and global_state_clean()


def test_gradients_untouched_and_hooks_gone_after_an_exception_and_an_error(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert_training_undisturbed(tmp_path / "grads", digits_data, lambda: [monitor(steps=4)])
    model = FailingModel(channels=(8, 16, 16))
    with pytest.raises(RuntimeError, match="boom in training_step"):
        make_trainer(tmp_path / "boom", [monitor()]).fit(model, datamodule=digits_data)
    assert hooks_left(model) == [] and global_state_clean()

    def broken(*args: Any, **kwargs: Any) -> Any:
        raise ArithmeticError("injected failure in the render")

    monkeypatch.setattr("lightning_cnnviz.core.monitors.feature_vis_panel.visualize_features", broken)
    model = small_model()
    failing = monitor(on_error="warn")
    trainer = make_trainer(tmp_path / "warn", [failing], max_epochs=2, limit_train_batches=4)
    with pytest.warns(UserWarning, match=r"feature vis of net.conv\d failed with ArithmeticError.*switched off"):
        trainer.fit(model, datamodule=digits_data)
    assert trainer.global_step == 8  # training went on
    assert hooks_left(model) == [] and global_state_clean()


def test_bad_layers_and_channels_fail_at_setup(tmp_path: Path, digits_data: Any) -> None:
    with pytest.raises(ValueError, match=r"no module named 'net.nope'.*'net.conv1'"):
        make_trainer(tmp_path, [monitor(layers=["net.nope"])]).fit(small_model(), datamodule=digits_data)
    trainer = make_trainer(tmp_path, [monitor(layers=["net.conv1"], channels=[0, 99])])
    with pytest.raises(ValueError, match=r"channel 99 of layer 'net.conv1' is out of range.*0\.\.7"):
        trainer.fit(small_model(), datamodule=digits_data)
    assert trainer.global_step == 0
    with pytest.raises(ValueError, match="`steps` must be a positive integer"):
        FeatureVisMonitor(steps=0)
    with pytest.raises(ValueError, match="pass both `mean` and `std`"):
        FeatureVisMonitor(mean=[0.5])


def test_resume_continues_the_feature_vis_evolution(tmp_path: Path, digits_data: Any) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    options: dict[str, Any] = {"enable_checkpointing": True, "limit_train_batches": 4}
    make_trainer(tmp_path / "one", [monitor(), checkpoint], max_epochs=1, **options).fit(
        small_model(), datamodule=digits_data
    )
    resumed = monitor()
    trainer = make_trainer(tmp_path / "two", [resumed, checkpoint], max_epochs=2, **options)
    trainer.fit(small_model(), datamodule=digits_data, ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    assert [caption for caption, _ in resumed.history.columns("net.conv1")] == ["ep 0", "ep 1"]


def test_a_plain_loop_writes_the_callbacks_pictures(tmp_path: Path, digits_data: Any) -> None:
    """FeatureVisPanel and TopPatchGallery are FeatureVisMonitor's logic without a Trainer: on the fitted weights and
    the monitor's probe, a plain SummaryWriter gets the same PNG bytes of every picture as the callback wrote."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.core import ChannelSelection, FeatureVisPanel

    vis = FeatureVisMonitor(steps=8, probe_size=32, max_channels=4, dream_images=2, on_error="raise")
    model = small_model()
    trainer = make_trainer(tmp_path / "fit", [vis], max_epochs=1, limit_train_batches=5)
    trainer.fit(model, datamodule=digits_data)
    probe = vis.probe_images
    assert probe is not None
    gallery = ChannelSelection(max_channels=4)
    gallery.configure(model)
    assert gallery.prepare(model, probe[:1])
    # the data module's mean and std: what the callback gives the panel as the context's input scale
    panel = FeatureVisPanel(steps=8, dream_images=2, mean=digits_data.mean, std=digits_data.std)
    colors, tops = panel.colors(probe), gallery.scan(model, probe, torch.arange(len(probe)))
    caption = panel.history.caption(0, trainer.global_step)
    writer = SummaryWriter(str(tmp_path / "plain"))
    for layer in gallery.chosen_layers:
        channels = gallery.chosen_channels[layer]
        images = panel.render(model, layer, channels, probe, colors)
        panels = gallery.layer_panels(model, layer, tops[layer], probe, ("guided_backprop",))
        pictures = panel.pictures(layer, images, channels, caption, trainer.global_step, panels, tops[layer].valid)
        for tag, picture in pictures.items():
            writer.add_image(tag, picture.float().clamp(0, 1), global_step=0, dataformats="CHW")
    middle = gallery.chosen_layers[len(gallery.chosen_layers) // 2]
    writer.add_image("cnnviz/deep_dream", panel.dream(model, middle, probe), global_step=0, dataformats="CHW")
    writer.close()
    fitted, plain = read_events(tmp_path / "fit")["images"], read_events(tmp_path / "plain")["images"]
    assert len(plain) == 3 * 3 + 1 and sorted(plain) == sorted(fitted)
    for tag in plain:
        assert same_pixels(plain[tag][-1], fitted[tag][-1]), tag
