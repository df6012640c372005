"""The README's demo command (``cnnviz demo``), end to end: LightningCLI fit on digits, event files, a checkpoint,
and a real TensorBoard server started by the command the demo prints."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import urllib.parse
import urllib.request
from pathlib import Path

import torch

from conftest import ROOT, free_port, get_json, read_events, readme_block, run_python, wait_for_tag
from lightning_cnnviz.core import find_activation_sites
from lightning_cnnviz.demo.models import ImageClassifier


def demo_relu_names() -> list[str]:
    model = ImageClassifier(in_channels=1, num_classes=10)
    return [site.name for site in find_activation_sites(model, torch.zeros(1, 1, 16, 16))]


def test_two_epoch_digits_run_writes_every_monitor_tag(digits_run: tuple[Path, str]) -> None:
    logdir, stdout = digits_run
    assert f"tensorboard {shlex.quote(str(logdir.resolve()))}" in stdout
    assert len(list(logdir.glob("digits/version_0/checkpoints/*.ckpt"))) == 1  # what `cnnviz report` reads
    assert (logdir / "digits/version_0/config.yaml").is_file()
    events = read_events(logdir)
    for layer in ("net.conv1", "net.conv2"):
        assert [e.step for e in events["images"][f"cnnviz/filters/{layer}"]] == [0, 1]
        assert len(events["scalars"][f"cnnviz/filters/smoothness/{layer}"]) == 2
    names = demo_relu_names()
    assert names == ["net.relu1", "net.relu2", "net.relu3"]
    for name in names:
        for quantity in ("sparsity", "dead", "dead_fraction"):
            assert len(events["scalars"][f"cnnviz/activations/{quantity}/{name}"]) >= 4
        assert f"cnnviz/activations/dead_map/{name}" in events["images"]
        assert f"cnnviz/activations/firing_rate/{name}" in events["histograms"]
    for method in ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion"):
        assert [e.step for e in events["images"][f"cnnviz/saliency/{method}"]] == [1]  # every 2 epochs
    for tag in ("cnnviz/embedding/tsne", "cnnviz/embedding/grid"):
        assert [e.step for e in events["images"][tag]] == [1]
    assert [e.step for e in events["scalars"]["cnnviz/embedding/knn_accuracy"]] == [1]
    for layer in ("net.conv1", "net.conv2", "net.conv3"):
        assert [e.step for e in events["images"][f"cnnviz/top_patches/{layer}"]] == [1]
        assert [e.step for e in events["images"][f"cnnviz/evolution/{layer}"]] == [1]
        for kind in ("feature_vis", "feature_vis_evolution", "feature_vis_patches"):  # every 4 epochs, and at the end
            assert [e.step for e in events["images"][f"cnnviz/{kind}/{layer}"]] == [1]
    assert [e.step for e in events["images"]["cnnviz/deep_dream"]] == [1]
    assert [e.step for e in events["images"]["cnnviz/embedding/neighbours"]] == [1]
    assert "val_acc" in events["scalars"]  # the run trained and validated as usual
    assert max(image.height for written in events["images"].values() for image in written) <= 2000


def test_real_tensorboard_server_serves_our_tags(digits_run: tuple[Path, str]) -> None:
    logdir, _ = digits_run
    port = free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tensorboard.main",
            "--logdir",
            str(logdir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--reload_interval",
            "1",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        scalars = wait_for_tag(server, f"{base}/data/plugin/scalars/tags", "cnnviz/activations/sparsity/net.relu1")
        scalar_tags = {tag for tags in scalars.values() for tag in tags}
        assert {"cnnviz/activations/dead/net.relu3", "cnnviz/filters/smoothness/net.conv1"} <= scalar_tags
        images = get_json(f"{base}/data/plugin/images/tags")
        image_tags = {tag for tags in images.values() for tag in tags}
        assert {
            "cnnviz/filters/net.conv1",
            "cnnviz/activations/dead_map/net.relu1",
            "cnnviz/top_patches/net.conv3",
            "cnnviz/evolution/net.conv1",
            "cnnviz/embedding/tsne",
        } <= image_tags
        # the Projector plugin serves the codes of the probe set (300 images x the 128-d input of net.fc)
        runs = get_json(f"{base}/data/plugin/projector/runs")
        assert runs
        info = get_json(f"{base}/data/plugin/projector/info?run={urllib.parse.quote(runs[0])}")
        assert [e["tensorShape"] for e in info["embeddings"]] == [[300, 128]]
        assert info["embeddings"][0]["sprite"]["singleImageDim"] == [16, 16]
        layout = get_json(f"{base}/data/plugin/custom_scalars/layout")
        titles = [chart["title"] for category in layout["category"] for chart in category["chart"]]
        assert "dead filters (count)" in titles
        health = layout["category"][0]  # the first category the Custom Scalars tab shows: is the network healthy?
        assert health["title"] == "cnnviz health"
        assert health["chart"][0]["multiline"]["tag"] == [
            r"cnnviz/activations/dead_fraction/.*",
            r"cnnviz/activations/dormant_fraction/.*",
        ]
        costs = {chart["title"]: chart["multiline"]["tag"] for chart in health["chart"][-2:]}
        assert costs == {
            "visualization cost (fraction of training time so far)": [r"cnnviz/cost/.*/fraction"],
            "visualization cost (seconds per log)": [r"cnnviz/cost/.*/seconds"],
        }
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_the_readme_snippet_runs_as_written(tmp_path: Path) -> None:
    """The README's "add the monitors to your own Trainer" block, executed as it stands (fewer epochs)."""
    code = readme_block("## Add the monitors to your own Trainer")
    assert code.startswith("from lightning.pytorch import Trainer") and "max_epochs=5" in code
    code = code.replace("max_epochs=5", "max_epochs=1, limit_train_batches=3, enable_progress_bar=False")
    run_python(code, tmp_path)
    events = read_events(tmp_path / "lightning_logs")
    assert {"cnnviz/filters/net.conv1", "cnnviz/feature_vis/net.conv3", "cnnviz/embedding/tsne"} <= set(
        events["images"]
    )


def test_cnnviz_demo_prints_a_tensorboard_command_that_works_as_printed(digits_run: tuple[Path, str]) -> None:
    """``cnnviz demo`` trains with every monitor and prints a command that starts a real TensorBoard on the run."""
    logdir, stdout = digits_run
    printed = [line.strip() for line in stdout.splitlines() if " tensorboard " in line][-1]
    assert shlex.split(printed)[-2:] == ["tensorboard", str(logdir.resolve())]
    port = free_port()
    server = subprocess.Popen(  # pasted into a shell (exec: terminating the shell stops TensorBoard)
        ["bash", "-c", f"exec {printed} --port {port} --host 127.0.0.1"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    try:
        tags = wait_for_tag(server, f"http://127.0.0.1:{port}/data/plugin/images/tags", "cnnviz/feature_vis/net.conv1")
        assert any("cnnviz/feature_vis/net.conv1" in t for t in tags.values()), tags
    finally:
        server.terminate()
        out, _ = server.communicate(timeout=30)
    assert f"http://127.0.0.1:{port}/#custom_scalars" in out  # where the health chart is, said on start


def test_cnnviz_tensorboard_keeps_every_step_of_a_tag(tmp_path: Path) -> None:
    """TensorBoard keeps 10 sampled images of a tag by default; started the way ``cnnviz tensorboard`` starts it, a
    real server returns all 30 steps of a tag logged 30 times."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.core import Snapshot
    from lightning_cnnviz.sinks import TensorBoardSink

    writer = SummaryWriter(str(tmp_path / "run"))
    sink = TensorBoardSink(writer)
    for epoch in range(30):
        sink.write(Snapshot(images={"cnnviz/filters/conv1": torch.full((3, 8, 8), epoch / 30)}), epoch)
    writer.close()
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "lightning_cnnviz.cli", "tensorboard", str(tmp_path), "--port", str(port),
         "--host", "127.0.0.1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    base = f"http://127.0.0.1:{port}/data/plugin/images"
    try:
        tags = wait_for_tag(server, f"{base}/tags", "cnnviz/filters/conv1")
        (run,) = tags
        query = urllib.parse.urlencode({"run": run, "tag": "cnnviz/filters/conv1", "sample": 0})
        assert [entry["step"] for entry in get_json(f"{base}/images?{query}")] == list(range(30))
    finally:
        server.terminate()
        server.wait(timeout=30)
