"""The pictures in the tracker a user already has, really written: W&B (offline, read back from the run's files),
MLflow (a local SQLite store, read back through ``MlflowClient``), beside TensorBoard in the same fit; a logger
with no registered sink is named and the fit goes on; a tracker that fails never stops the fit."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import every_monitor, make_trainer, read_events
from lightning_cnnviz import FeatureVisMonitor, register_sink
from lightning_cnnviz.demo.models import ImageClassifier

SMALL = (8, 16, 16)


def every_picture() -> list[Any]:
    """All six monitors, every one logging every epoch."""
    vis = FeatureVisMonitor(every_n_epochs=1, steps=8, probe_size=16, max_channels=2, dream_images=1, on_error="raise")
    return [*every_monitor(cadence=1).values(), vis]


def fit(tmp_path: Path, digits_data: Any, loggers: list[Any], epochs: int = 2) -> Any:
    torch.manual_seed(0)
    trainer = make_trainer(tmp_path, every_picture(), logger=loggers, max_epochs=epochs, limit_train_batches=6)
    trainer.fit(ImageClassifier(channels=SMALL), datamodule=digits_data)
    return trainer


def tensorboard_steps(logdir: Path) -> tuple[Counter[str], set[str], set[str]]:
    """Per image tag its number of steps, the scalar tags and the histogram tags of the TensorBoard run (ours)."""
    events = read_events(logdir)
    images = Counter({tag: len({e.step for e in found}) for tag, found in events["images"].items()})
    return images, {t for t in events["scalars"] if t.startswith("cnnviz/")}, set(events["histograms"])


def test_wandb_offline_gets_every_picture_scalar_and_histogram_beside_tensorboard(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """TensorBoard and W&B in one fit: the offline run folder holds, per image tag, at least as many image files
    as TensorBoard has steps of it (read from the files, no network); its summary holds every scalar and
    histogram tag; the Projector data is a table."""
    wandb = pytest.importorskip("wandb")
    from lightning.pytorch.loggers import TensorBoardLogger, WandbLogger

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path))
    board = TensorBoardLogger(str(tmp_path), name="tb")
    weights = WandbLogger(offline=True, save_dir=str(tmp_path), project="cnnviz")
    try:
        fit(tmp_path, digits_data, [board, weights])
        folder = Path(weights.experiment.dir)
    finally:
        wandb.finish()
    images, scalars, histograms = tensorboard_steps(tmp_path / "tb")
    assert len(images) >= 10, images
    media = folder / "media" / "images"
    written = Counter(re.sub(r"_\d+_[0-9a-f]+\.png$", "", str(p.relative_to(media))) for p in media.rglob("*.png"))
    short = {tag: (steps, written[tag]) for tag, steps in images.items() if written[tag] < steps}
    assert not short, f"W&B has fewer image files than TensorBoard steps: {short}"
    history = wandb_history(next(folder.parent.glob("run-*.wandb")))
    assert scalars - set(history) == set(), sorted(scalars - set(history))[:5]
    assert all(set(history[f"{tag}/_type"]) == {"histogram"} for tag in histograms), histograms
    assert set(history["cnnviz/embedding/_type"]) == {"table-file"}
    assert list((folder / "media" / "table" / "cnnviz").glob("embedding_*.table.json"))
    assert set(history["epoch"]) == {0, 1}
    captions = history["cnnviz/filters/net.conv1/caption"]
    about = f"net.conv1: {SMALL[0]} filters (per_filter scale)"
    assert captions == [f"{about}, ep {e} (step {6 * (e + 1)})" for e in (0, 1)], captions


def wandb_history(path: Path) -> dict[str, list[Any]]:
    """Every history entry of an offline W&B run, by key (media entries by ``<tag>/<field>``), read from its
    ``.wandb`` file: W&B's LevelDB-style log (a 7-byte header, 32 KiB blocks of records, each a 7-byte header of
    checksum, length and type: full, first, middle or last) of ``Record`` protobufs."""
    import struct

    from wandb.proto import wandb_internal_pb2

    data, history, block, position, parts = path.read_bytes(), {}, 32768, 7, b""
    assert data[:4] == b":W&B", data[:7]
    while position + 7 <= len(data):
        left = block - position % block
        _, length, kind = struct.unpack("<IHB", data[position : position + 7]) if left >= 7 else (0, 0, 0)
        if left < 7 or (length, kind) == (0, 0):
            position += left
            continue
        parts, position = parts + data[position + 7 : position + 7 + length], position + 7 + length
        if kind in (1, 4):  # a full record, or the last part of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            parts = b""
            for item in record.history.item if record.WhichOneof("record_type") == "history" else ():
                history.setdefault(item.key or "/".join(item.nested_key), []).append(json.loads(item.value_json))
    return history


#: MLflow's image file names: ``<key, / as ~>+step+<step>+timestamp+<ms>+<uuid>.png`` (3.x), formerly with ``%``
#: as the separator and ``#`` for ``/``.
MLFLOW_IMAGE = re.compile(r"^(?P<key>.+?)([+%])step\2(?P<step>\d+)\2timestamp\2\d+\2[0-9a-f-]+\.png$")


def mlflow_image(name: str) -> tuple[str, int] | None:
    """(tag, step) of an MLflow image file name in either format; None for other files (the compressed copies)."""
    found = MLFLOW_IMAGE.match(name)
    if found is None:
        return None
    return found["key"].replace("~", "/").replace("#", "/"), int(found["step"])


def test_mlflow_image_names_are_read_in_both_formats() -> None:
    uuid, tag = "0b7e9f2c-8a51-4c2e-9a07-1d6f3c2b9e10", ("cnnviz/filters/conv1", 12)
    assert mlflow_image(f"cnnviz~filters~conv1+step+12+timestamp+1700000000000+{uuid}.png") == tag
    assert mlflow_image(f"cnnviz#filters#conv1%step%12%timestamp%1700000000000%{uuid}.png") == tag
    assert mlflow_image(f"cnnviz~filters~conv1+step+12+timestamp+1700000000000+{uuid}+compressed.webp") is None


def test_mlflow_on_sqlite_gets_every_picture_with_its_step_and_every_scalar(tmp_path: Path, digits_data: Any) -> None:
    """TensorBoard and MLflow in one fit, MLflow on a local SQLite store: every image tag is found through
    ``MlflowClient`` at as many global steps as TensorBoard has steps of it, every scalar tag is a metric of the run
    with its history."""
    pytest.importorskip("mlflow")
    from lightning.pytorch.loggers import MLFlowLogger, TensorBoardLogger
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    board = TensorBoardLogger(str(tmp_path), name="tb")
    flow = MLFlowLogger(experiment_name="cnnviz", tracking_uri=uri, artifact_location=str(tmp_path / "artifacts"))
    trainer = fit(tmp_path, digits_data, [board, flow])
    images, scalars, _ = tensorboard_steps(tmp_path / "tb")
    client = MlflowClient(tracking_uri=uri)
    found: dict[str, set[int]] = {}
    for entry in client.list_artifacts(flow.run_id, "images"):
        parsed = mlflow_image(Path(entry.path).name)
        if parsed is not None:
            found.setdefault(parsed[0], set()).add(parsed[1])
    assert set(images) == set(found), set(images) ^ set(found)
    for tag, steps in images.items():
        assert len(found[tag]) == steps and max(found[tag]) <= trainer.global_step, (tag, found[tag])
    metrics = client.get_run(flow.run_id).data.metrics
    assert scalars - set(metrics) == set(), sorted(scalars - set(metrics))[:5]
    knn = client.get_metric_history(flow.run_id, "cnnviz/embedding/knn_accuracy")
    assert [m.step for m in knn] == sorted({m.step for m in knn}) and len(knn) == 2


class NotebookLogger:
    """A logger of someone's own, which the registry does not know (Lightning's Logger interface)."""


def make_notebook_logger(tmp_path: Path) -> Any:
    from lightning.pytorch.loggers import Logger

    class Notebook(Logger):
        name, version, log_dir = "notebook", 0, str(tmp_path / "notebook")

        def log_metrics(self, metrics: dict[str, float], step: int | None = None) -> None:
            self.seen = {**getattr(self, "seen", {}), **metrics}

        def log_hyperparams(self, params: Any, *args: Any, **kwargs: Any) -> None:
            pass

    return Notebook()


def test_a_logger_without_a_sink_is_named_and_its_pictures_go_to_files_then_register_sink_serves_it(
    tmp_path: Path, digits_data: Any
) -> None:
    from lightning_cnnviz import FilterMonitor
    from lightning_cnnviz.sinks import FileSink

    logger = make_notebook_logger(tmp_path)
    trainer = make_trainer(tmp_path, [FilterMonitor(every_n_epochs=1)], logger=logger, limit_train_batches=2)
    with pytest.warns(UserWarning, match=r"no sink is registered for the logger Notebook .*register_sink.*PNG files"):
        trainer.fit(ImageClassifier(channels=SMALL), datamodule=digits_data)
    assert list((tmp_path / "notebook" / "cnnviz" / "filters").rglob("*.png"))

    class Scalars(FileSink):  # a sink of one's own: the scalars to the logger, the pictures as files
        def __init__(self, logger: Any) -> None:
            super().__init__(tmp_path / "own", metrics=logger)

    register_sink(type(logger), Scalars)
    trainer = make_trainer(tmp_path, [FilterMonitor(every_n_epochs=1)], logger=logger, limit_train_batches=2)
    trainer.fit(ImageClassifier(channels=SMALL), datamodule=digits_data)
    assert "cnnviz/filters/smoothness/net.conv1" in logger.seen
    assert list((tmp_path / "own" / "cnnviz" / "filters").rglob("*.png"))
    with pytest.raises(TypeError, match=r"register_sink\(logger_type, factory\)"):
        register_sink(type(logger), "not a factory")  # type: ignore[arg-type]


def test_a_tracker_that_fails_is_said_once_and_the_fit_and_the_other_trackers_go_on(
    tmp_path: Path, digits_data: Any
) -> None:
    from lightning.pytorch.loggers import TensorBoardLogger

    from lightning_cnnviz import ActivationMonitor, FilterMonitor

    class Broken:
        where = "a broken tracker"

        def write(self, *args: Any, **kwargs: Any) -> None:
            raise ConnectionError("the tracker's server is down")

        def flush(self) -> None:
            pass

        def close(self) -> None:
            pass

    logger = make_notebook_logger(tmp_path)
    register_sink(type(logger), lambda _: Broken())
    monitors = [FilterMonitor(every_n_epochs=1), ActivationMonitor(every_n_steps=2)]
    trainer = make_trainer(tmp_path, monitors, logger=[TensorBoardLogger(str(tmp_path), name="tb"), logger],
                           max_epochs=2, limit_train_batches=4)  # fmt: skip
    with pytest.warns(UserWarning, match=r"writing to a broken tracker failed with ConnectionError") as said:
        trainer.fit(ImageClassifier(channels=SMALL), datamodule=digits_data)
    assert trainer.global_step == 8
    assert len([w for w in said if "broken tracker" in str(w.message)]) == 2  # once per monitor
    events = read_events(tmp_path / "tb")
    assert [e.step for e in events["images"]["cnnviz/filters/net.conv1"]] == [0, 1]
    assert len(events["scalars"]["cnnviz/activations/sparsity/net.relu1"]) == 4


def test_nothing_imports_wandb_or_mlflow_unless_such_a_logger_is_in_use(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger\n"
        "import lightning_cnnviz as v\n"
        f"sinks = v.sink_for([TensorBoardLogger({str(tmp_path)!r}), CSVLogger({str(tmp_path)!r})], root='.')\n"
        "assert [type(s).__name__ for s in sinks.sinks] == ['TensorBoardSink', 'FileSink']\n"
        "print(sorted(m for m in ('wandb', 'mlflow') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
