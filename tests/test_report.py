"""``cnnviz report``: every monitor once on the demo's checkpoint, without training, into event files and one
self-contained HTML file whose pictures are exactly the event files' pictures."""

from __future__ import annotations

import base64
import io
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from conftest import ROOT, read_events
from lightning_cnnviz.demo.models import ImageClassifier
from lightning_cnnviz.report import RunEvents, render_report
from lightning_cnnviz.report import read_events as read_run

EVERY_MONITOR = (
    "cnnviz/filters/net.conv1",
    "cnnviz/activations/dead_map/net.relu3",
    "cnnviz/activations/distribution/net.relu1",
    "cnnviz/activation_maps/net.relu1",
    "cnnviz/activation_maps_evolution/net.relu3",
    *(f"cnnviz/saliency/{m}" for m in ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")),
    "cnnviz/top_patches/net.conv3",
    "cnnviz/evolution/net.conv1",
    "cnnviz/embedding/tsne",
    "cnnviz/embedding/grid",
    "cnnviz/embedding/neighbours",
    "cnnviz/feature_vis/net.conv2",
    "cnnviz/feature_vis_evolution/net.conv1",
    "cnnviz/class_models",
    "cnnviz/class_models_evolution",
    "cnnviz/inversion",
    "cnnviz/inversion_evolution",
    "cnnviz/feature_vis_patches/net.conv3",
    "cnnviz/deep_dream",
    "cnnviz/activation_atlas/net.relu3",
    "cnnviz/occlusion/net.relu3",
    *(f"cnnviz/invariance/{kind}" for kind in ("translation", "scale", "rotation")),
)


#: Pictures drawn from the weights alone: the report's equal the training run's at the checkpoint's epoch.
FROM_THE_WEIGHTS = (
    "cnnviz/filters/net.conv1", "cnnviz/filters/net.conv2", "cnnviz/saliency/grad_cam",
    "cnnviz/saliency/vanilla_gradient", "cnnviz/evolution/net.conv1", "cnnviz/top_patches/net.conv2",
    "cnnviz/feature_vis_evolution/net.conv1", "cnnviz/occlusion/net.relu3", "cnnviz/invariance/rotation",
)  # fmt: skip


def assert_drawn_as_in_training(report: dict[str, Any], trained: dict[str, Any], epoch: int) -> None:
    """Each of :data:`FROM_THE_WEIGHTS` is drawn once by the report, at the epoch, byte for byte the run's last."""
    for tag in FROM_THE_WEIGHTS:
        (drawn,) = report["images"][tag]
        last = trained["images"][tag][-1]
        assert (drawn.step, last.step) == (epoch, epoch), tag
        assert drawn.encoded_image_string == last.encoded_image_string, tag


def embedded_images(page: str) -> dict[str, bytes]:
    found = re.findall(r"<img alt='([^']+)' src='data:image/png;base64,([A-Za-z0-9+/=]+)'", page)
    return {tag: base64.b64decode(data) for tag, data in found}


def test_report_embeds_every_monitors_pictures_in_one_small_file(demo_report: tuple[Path, Path, str]) -> None:
    _, html, stdout = demo_report
    assert f"Report written: {html.resolve()}" in stdout
    page = html.read_text()
    assert html.stat().st_size < 20 * 2**20
    assert not re.search(r"<script|<link|src='(?!data:)|src=\"(?!data:)|url\(", page)  # nothing outside the file
    events = read_run(html.parent)
    images = embedded_images(page)
    assert set(EVERY_MONITOR) <= set(images)
    assert set(images) == set(events.images)
    for tag, data in images.items():  # byte for byte the latest picture of the tag, and it decodes
        latest = events.images[tag][-1]
        assert data == latest.encoded_image_string, tag
        assert Image.open(io.BytesIO(data)).size == (latest.width, latest.height)
    assert "No alert" in page
    assert "FilterMonitor, ActivationMonitor, ActivationMapMonitor, SaliencyMonitor, TopPatchMonitor, Embedding" in page
    assert "<th>lr</th><td>0.05</td>" in page  # the run's hyperparameters
    costs = page.split("<h2>What the monitors cost</h2>")[1].split("<h2>")[0]
    for monitor in ("FilterMonitor", "SaliencyMonitor", "TopPatchMonitor", "EmbeddingMonitor"):
        # seconds of the report's own pictures, and the share of the demo's training time its logs took
        assert re.search(rf"<th>{monitor}</th><td>\d+\.\d\d s for these pictures; [\d.]+% of the training time", costs)


def test_report_runs_on_the_checkpoint_without_training(
    demo_report: tuple[Path, Path, str], digits_run: tuple[Path, str]
) -> None:
    """Pictures computed from the weights alone equal, byte for byte, those the run drew at the checkpoint's epoch;
    the epoch-by-epoch histories come back from the checkpoint and gain no column; the steps are the checkpoint's."""
    checkpoint, html, _ = demo_report
    logdir, _ = digits_run
    trained, report = read_events(logdir), read_events(html.parent)
    epoch, step = map(int, re.fullmatch(r"epoch=(\d+)-step=(\d+)\.ckpt", checkpoint.name).groups())  # type: ignore[union-attr]
    assert_drawn_as_in_training(report, trained, epoch)
    assert [e.step for e in report["images"]["cnnviz/activations/dead_map/net.relu1"]] == [step]
    # the activation statistics come from the report's own batches: a new window on the restored map
    dead_maps = [run["images"]["cnnviz/activations/dead_map/net.relu1"][-1] for run in (report, trained)]
    assert dead_maps[0].encoded_image_string != dead_maps[1].encoded_image_string
    assert [e.step for e in report["scalars"]["cnnviz/activations/dead/net.relu3"]] == [step]
    # the report's page plots the training run's scalars too: every scalar tag of both
    page = html.read_text()
    for tag in {*trained["scalars"], *report["scalars"]}:
        assert f"<figcaption>{tag}</figcaption>" in page, tag
    scalars_only = read_run(logdir, pictures=False)  # how the report reads the training run
    assert not scalars_only.images and not scalars_only.histograms
    assert {t: [e.step for e in v] for t, v in scalars_only.scalars.items()} == {
        t: [e.step for e in v] for t, v in trained["scalars"].items()
    }


def test_render_report_lists_what_each_monitor_cost(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step, value in enumerate([0.5, 0.04]):
        writer.add_scalar("cnnviz/cost/SaliencyMonitor/fraction", value, step)
    writer.close()
    costs_given = {"SaliencyMonitor": 1.234, "FilterMonitor": 0.01}
    page = render_report(RunEvents(), history=read_run(tmp_path), costs=costs_given)
    costs = page.split("<h2>What the monitors cost</h2>")[1].split("<h2>")[0]
    assert "<th>SaliencyMonitor</th><td>1.23 s for these pictures; 4% of the training time in the run</td>" in costs
    assert "<th>FilterMonitor</th><td>0.01 s for these pictures</td>" in costs  # no cost logged in the run


def test_render_report_shows_alerts_escaped_and_plots_scalars(tmp_path: Path) -> None:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(str(tmp_path))
    for step, value in enumerate([0.0, 0.25, 0.5]):
        writer.add_scalar("cnnviz/activations/dead_fraction/net.relu1", value, step)
    writer.add_text("cnnviz/alerts", "net.relu1: 50% of filters <dead>", 2)
    writer.close()
    page = render_report(read_run(tmp_path), title="t")
    assert "net.relu1: 50% of filters &lt;dead&gt;" in page and "No alert" not in page
    health = page.split("<h2>Health</h2>")[1].split("<h2>")[0]
    points = re.search(r"<polyline points='([^']+)'", health).group(1).split()  # type: ignore[union-attr]
    ys = [float(p.split(",")[1]) for p in points]
    assert len(ys) == 3 and ys[0] > ys[1] > ys[2]  # rising values are drawn upwards, evenly
    assert abs((ys[0] - ys[1]) - (ys[1] - ys[2])) < 0.2
    assert "max 0.5" in health and "min 0" in health and "steps 0&#8211;2" in health


def test_report_explains_missing_inputs(tmp_path: Path) -> None:
    from lightning_cnnviz.report import run_report

    with pytest.raises(FileNotFoundError, match="no checkpoint file"):
        run_report(tmp_path / "missing.ckpt")
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    checkpoint = tmp_path / "run" / "checkpoints" / "last.ckpt"
    checkpoint.write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="no --config given and no .*config.yaml"):
        run_report(checkpoint)
    config = tmp_path / "plain.yaml"
    config.write_text(
        "model:\n  class_path: lightning_cnnviz.demo.models.ImageClassifier\n"
        "data:\n  class_path: lightning_cnnviz.demo.data.DigitsDataModule\n"
    )
    with pytest.raises(ValueError, match="configures no lightning_cnnviz monitor"):
        run_report(checkpoint, config)


def test_report_of_a_run_whose_filters_died_lists_its_alerts(tmp_path: Path) -> None:
    """The README's destructive learning rate: the report's Health section names the dead layers, from the alerts
    the checkpoint carries."""
    from lightning_cnnviz.report import run_report

    result = subprocess.run(
        [sys.executable, "-m", "lightning_cnnviz.cli", "demo", "--epochs", "1", "--logdir", str(tmp_path / "runs"),
         "--model.init_args.optimizer", "adam", "--model.init_args.lr", "0.03", "--trainer.enable_progress_bar",
         "false"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").glob("digits/version_0/checkpoints/*.ckpt")
    with pytest.warns(UserWarning, match="are dead"):  # the report's own window finds them dead too
        page = run_report(checkpoint, out=tmp_path / "report").read_text()
    alerts = page.split("<ul class='alerts'>")[1].split("</ul>")[0]
    assert "of layer &#x27;net.relu2&#x27; are dead at step" in alerts
    assert alerts.count("<li>") >= 2


def test_report_replaces_an_earlier_report_and_refuses_a_training_folder(
    demo_report: tuple[Path, Path, str], tmp_path: Path
) -> None:
    from lightning_cnnviz.report import run_report

    checkpoint, html, _ = demo_report
    with pytest.raises(FileExistsError, match="not an earlier report's"):
        run_report(checkpoint, out=checkpoint.parent.parent)  # the training run's own folder: left alone
    earlier = shutil.copytree(html.parent, tmp_path / "report")
    again = run_report(checkpoint, out=earlier)
    assert len(list(earlier.glob("events.out.tfevents.*"))) == 1
    assert {len(events) for events in read_run(again.parent).images.values()} == {1}


class ManuallyOptimized(ImageClassifier):
    """The demo classifier with manual optimization: its training step calls backward and the optimizer itself."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:
        optimizer = self.optimizers()
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(self._step(batch, "train"))
        optimizer.step()  # type: ignore[union-attr]


def test_report_never_runs_the_users_training_step(tmp_path: Path) -> None:
    """A manually optimized model (backward and step inside training_step) is reported on by forwards alone: the
    report runs, every configured monitor draws, and the checkpoint is untouched."""
    import hashlib

    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_cnnviz import ActivationMonitor
    from lightning_cnnviz.demo.data import DigitsDataModule
    from lightning_cnnviz.report import run_report

    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=1, limit_train_batches=6, limit_val_batches=2, logger=TensorBoardLogger(str(tmp_path), name="run"),
        callbacks=[ActivationMonitor(every_n_steps=3)], enable_progress_bar=False, enable_model_summary=False,
    )  # fmt: skip
    trainer.fit(ManuallyOptimized(in_channels=1, num_classes=10), datamodule=DigitsDataModule(batch_size=32))
    (checkpoint,) = (tmp_path / "run" / "version_0" / "checkpoints").glob("*.ckpt")
    config = tmp_path / "run.yaml"
    config.write_text(
        "trainer:\n  callbacks:\n"
        "    - {class_path: lightning_cnnviz.ActivationMonitor, init_args: {every_n_steps: 3}}\n"
        "    - lightning_cnnviz.FilterMonitor\n"
        "model: {class_path: test_report.ManuallyOptimized, init_args: {in_channels: 1, num_classes: 10}}\n"
        "data: {class_path: lightning_cnnviz.demo.data.DigitsDataModule, init_args: {batch_size: 32}}\n"
    )
    before = hashlib.sha256(checkpoint.read_bytes()).hexdigest()
    page = run_report(checkpoint, config, out=tmp_path / "report").read_text()
    assert hashlib.sha256(checkpoint.read_bytes()).hexdigest() == before
    events = read_run(tmp_path / "report")
    assert {"cnnviz/filters/net.conv1", "cnnviz/activations/dead_map/net.relu1"} <= set(events.images)
    assert [e.step for e in events.scalars["cnnviz/activations/dead/net.relu1"]] == [6]  # the checkpoint's step
    assert "ActivationMonitor, FilterMonitor" in page


@pytest.mark.parametrize("inputs", ["signals", "clips"])
def test_report_of_a_conv1d_and_a_conv3d_run(tmp_path: Path, inputs: str) -> None:
    """A LightningCLI run of a Conv1d (signals) and of a Conv3d (clips) network, with every monitor: the report
    draws the filters and the activation statistics of the checkpoint, and the image monitors stay off."""
    import yaml

    from lightning_cnnviz.report import run_report

    monitors = ["FilterMonitor", "ActivationMonitor", "SaliencyMonitor", "TopPatchMonitor", "EmbeddingMonitor"]
    config = {
        "seed_everything": 0,
        "trainer": {"max_epochs": 1, "accelerator": "cpu", "enable_progress_bar": False,
                    "logger": {"class_path": "lightning.pytorch.loggers.TensorBoardLogger",
                               "init_args": {"save_dir": str(tmp_path / "runs"), "name": inputs}},
                    "callbacks": [{"class_path": f"lightning_cnnviz.{name}", "init_args": {"every_n_epochs": 1}}
                                  if name != "ActivationMonitor" else
                                  {"class_path": f"lightning_cnnviz.{name}", "init_args": {"every_n_steps": 2}}
                                  for name in monitors]},
        "model": {"class_path": "lightning_cnnviz.demo.tasks.SequenceClassifier", "init_args": {"inputs": inputs}},
        "data": {"class_path": "lightning_cnnviz.demo.tasks.TaskData",
                 "init_args": {"target": "class", "inputs": inputs, "count": 32}},
    }  # fmt: skip
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(config))
    result = subprocess.run(
        [sys.executable, str(ROOT / "examples" / "train.py"), "fit", "--config", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    (checkpoint,) = (tmp_path / "runs").glob(f"{inputs}/version_0/checkpoints/*.ckpt")
    run_report(checkpoint, out=tmp_path / "report")
    written = read_events(tmp_path / "report")
    assert "cnnviz/filters/net.0" in written["images"]
    assert any(tag.startswith("cnnviz/activations/dead_map/") for tag in written["images"])
    assert any(tag.startswith("cnnviz/activations/dead_fraction/") for tag in written["scalars"])
    assert not [tag for tag in written["images"] if tag.startswith(("cnnviz/saliency", "cnnviz/top_patches"))]


def plain_monitors() -> list[Any]:
    """Every monitor, small and every epoch: what a plain-Trainer user adds to ``Trainer(callbacks=[...])``."""
    from lightning_cnnviz import (
        ActivationAtlasMonitor,
        ActivationMapMonitor,
        ActivationMonitor,
        ClassModelMonitor,
        EmbeddingMonitor,
        FeatureVisMonitor,
        FilterMonitor,
        InvarianceMonitor,
        InversionMonitor,
        OcclusionMonitor,
        SaliencyMonitor,
        TopPatchMonitor,
    )

    return [
        FilterMonitor(layers=["net.conv1", "net.conv2"], every_n_epochs=1), ActivationMonitor(every_n_steps=4),
        ActivationMapMonitor(every_n_epochs=1), SaliencyMonitor(num_images=4, smoothgrad_samples=2, every_n_epochs=1),
        TopPatchMonitor(probe_size=32, every_n_epochs=1), EmbeddingMonitor(probe_size=48, every_n_epochs=1),
        FeatureVisMonitor(steps=8, probe_size=16, max_channels=2, dream_images=1, every_n_epochs=1),
        ClassModelMonitor(steps=8, probe_size=16, every_n_epochs=1), InversionMonitor(steps=8, every_n_epochs=1),
        ActivationAtlasMonitor(probe_size=48, vectors=300, grid=4, steps=8, every_n_epochs=1),
        OcclusionMonitor(every_n_epochs=1), InvarianceMonitor(every_n_epochs=1),
    ]  # fmt: skip


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A fit with a plain Trainer (no LightningCLI, no config file) and every monitor: (its folder, checkpoint)."""
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_cnnviz.demo.data import DigitsDataModule

    folder = tmp_path_factory.mktemp("plain")
    pl.seed_everything(0, verbose=False)
    trainer = pl.Trainer(
        max_epochs=2, limit_train_batches=8, limit_val_batches=2, logger=TensorBoardLogger(str(folder), name="run"),
        callbacks=plain_monitors(), enable_progress_bar=False, enable_model_summary=False, deterministic=True,
    )  # fmt: skip
    trainer.fit(ImageClassifier(in_channels=1, num_classes=10, channels=(8, 16, 16)), datamodule=DigitsDataModule())
    (checkpoint,) = (folder / "run" / "version_0" / "checkpoints").glob("*.ckpt")
    return folder, checkpoint


def test_report_of_a_plain_trainer_run_from_its_objects(plain_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``run_report(checkpoint, model=..., datamodule=..., monitors=...)`` on a run without a config: every monitor's
    pictures on the page, and the pictures the LightningCLI report compares equal the training run's at that epoch,
    byte for byte."""
    from lightning_cnnviz.demo.data import DigitsDataModule
    from lightning_cnnviz.report import run_report

    folder, checkpoint = plain_run
    model = ImageClassifier(in_channels=1, num_classes=10, channels=(8, 16, 16))
    html = run_report(checkpoint, out=tmp_path / "report", model=model, datamodule=DigitsDataModule(),
                      monitors=plain_monitors())  # fmt: skip
    page, report, trained = html.read_text(), read_events(tmp_path / "report"), read_events(folder)
    assert set(EVERY_MONITOR) <= set(embedded_images(page))
    epoch = int(re.match(r"epoch=(\d+)", checkpoint.name)[1])  # type: ignore[index]
    assert_drawn_as_in_training(report, trained, epoch)
    assert "<th>model</th><td>lightning_cnnviz.demo.models.ImageClassifier</td>" in page


def test_cnnviz_report_of_a_plain_run_from_class_paths(plain_run: tuple[Path, Path], tmp_path: Path) -> None:
    """``cnnviz report CHECKPOINT --model pkg.Module --data pkg.DataModule``: the model is built from the
    checkpoint's hyper_parameters (``--model-args`` over them), the monitors from the states the checkpoint holds."""
    _, checkpoint = plain_run
    command = [sys.executable, "-m", "lightning_cnnviz.cli", "report", str(checkpoint), "--out", str(tmp_path / "r"),
               "--model", "lightning_cnnviz.demo.models.ImageClassifier", "--data",
               "lightning_cnnviz.demo.data.DigitsDataModule", "--data-args", '{"batch_size": 32}']  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    page = (tmp_path / "r" / "report.html").read_text()
    listed = ("FilterMonitor, ActivationMonitor, ActivationMapMonitor, SaliencyMonitor, TopPatchMonitor, "
              "EmbeddingMonitor, FeatureVisMonitor, ClassModelMonitor, InversionMonitor, "
              "ActivationAtlasMonitor, OcclusionMonitor, InvarianceMonitor")  # fmt: skip
    assert f"<th>monitors</th><td>{listed}</td>" in page
    assert set(EVERY_MONITOR) <= set(embedded_images(page))
    wrong = subprocess.run([*command[:-2], "--model-args", '{"channels": [4, 4, 4]}'], capture_output=True, text=True,
                           timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)})  # fmt: skip
    assert wrong.returncode != 0 and "size mismatch" in wrong.stderr  # the override was used


class RunsCode:
    """An object whose unpickling runs code: what a hostile checkpoint carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, ...]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(
    plain_run: tuple[Path, Path], tmp_path: Path
) -> None:
    import torch

    from lightning_cnnviz.report import run_report

    _, checkpoint = plain_run
    state = torch.load(checkpoint, weights_only=True)
    marker = tmp_path / "code ran"
    hostile = tmp_path / "hostile.ckpt"
    torch.save({**state, "hyper_parameters": {"channels": RunsCode(marker)}}, hostile)
    model = "lightning_cnnviz.demo.models.ImageClassifier"
    with pytest.raises(ValueError, match=r"only pickle can rebuild \(.*GLOBAL.*\).*--trust-checkpoint"):
        run_report(hostile, out=tmp_path / "r", model=model, datamodule="lightning_cnnviz.demo.data.DigitsDataModule")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_cnnviz.cli", "report", str(hostile), "--model", model, "--data",
         "lightning_cnnviz.demo.data.DigitsDataModule", "--out", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 2 and "--trust-checkpoint" in result.stderr, result.stderr[-2000:]
    assert not marker.exists()  # refused before anything in it ran
    assert not (tmp_path / "r").exists()


def test_the_demo_and_every_monitors_checkpoints_load_without_pickle(
    demo_report: tuple[Path, Path, str], plain_run: tuple[Path, Path]
) -> None:
    """The demo's LightningCLI checkpoint and a checkpoint of every monitor hold tensors and plain values only."""
    import torch

    for checkpoint in (demo_report[0], plain_run[1]):
        state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        held = {key.split("{")[0] for key in state["callbacks"]}
        assert {"FilterMonitor", "ActivationMonitor", "SaliencyMonitor", "TopPatchMonitor", "EmbeddingMonitor",
                "FeatureVisMonitor"} <= held, held  # fmt: skip
