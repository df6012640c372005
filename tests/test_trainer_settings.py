"""All five monitors under the Trainer settings users train with, on the demo CNN: each logs, none breaks."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
from torch.utils.data import DataLoader, TensorDataset

from conftest import every_monitor, global_state_clean, hooks_left, make_trainer, read_events
from lightning_cnnviz import ActivationMonitor, EmbeddingMonitor, TopPatchMonitor
from lightning_cnnviz.demo.models import ImageClassifier


def monitors() -> list[pl.Callback]:
    return list(every_monitor().values())


def loader(count: int, batch: int, shape: tuple[int, int, int] = (1, 16, 16), seed: int = 0) -> DataLoader:
    images = torch.rand(count, *shape, generator=torch.Generator().manual_seed(seed))
    return DataLoader(TensorDataset(images, torch.arange(count) % 4), batch_size=batch)


class Manual(ImageClassifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.automatic_optimization = False

    def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        optimizer = self.optimizers()
        loss = F.cross_entropy(self(batch[0]), batch[1])
        optimizer.zero_grad()  # type: ignore[union-attr]
        self.manual_backward(loss)
        optimizer.step()  # type: ignore[union-attr]


class ReturnsNone(ImageClassifier):
    def training_step(self, batch: Any, batch_idx: int) -> None:  # type: ignore[override]
        return None


class ChannelsLast(ImageClassifier):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images.contiguous(memory_format=torch.channels_last))


MODEL: dict[str, Any] = {"channels": (8, 16, 16), "num_classes": 4}
# setting -> (trainer options, model class and options, train loader, validation loaders or None)
SETTINGS: dict[str, tuple[dict[str, Any], Any, dict[str, Any], Any, Any]] = {
    "bf16-mixed": ({"precision": "bf16-mixed"}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "16-mixed": ({"precision": "16-mixed"}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "gradient accumulation": ({"accumulate_grad_batches": 2}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "clipping": ({"gradient_clip_val": 0.5}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "two validation loaders": ({}, ImageClassifier, {}, loader(32, 8), [loader(16, 8), loader(16, 8, seed=1)]),
    "no validation": ({"limit_val_batches": 0}, ImageClassifier, {}, loader(32, 8), None),
    "manual optimization": ({}, Manual, {}, loader(32, 8), loader(16, 8)),
    "training_step returns None": ({}, ReturnsNone, {}, loader(32, 8), loader(16, 8)),
    "RGB non-square": ({}, ImageClassifier, {"in_channels": 3}, loader(32, 8, (3, 12, 20)), loader(16, 8, (3, 12, 20))),
    "batch size 1": ({"limit_val_batches": 20}, ImageClassifier, {}, loader(6, 1), loader(20, 1)),
    "channels-last": ({}, ChannelsLast, {"in_channels": 3}, loader(32, 8, (3, 16, 16)), loader(16, 8, (3, 16, 16))),
    "fast_dev_run": ({"fast_dev_run": 2}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "logger=False": ({"logger": False}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "CSV logger only": ({"logger": "csv"}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
    "two loggers": ({"logger": "both"}, ImageClassifier, {}, loader(32, 8), loader(16, 8)),
}


def written_files(root: Path) -> set[str]:
    """The tags of the pictures written as ``.../cnnviz/<tag>/<step>.png`` and of the scalars in a metrics.csv."""
    import csv

    tags = set()
    for picture in root.rglob("*.png"):
        parts = picture.relative_to(root).parts
        if "cnnviz" in parts:
            tags.add("/".join(parts[parts.index("cnnviz") : -1]))
    for metrics in root.rglob("metrics.csv"):
        rows = list(csv.DictReader(metrics.open()))
        if rows and "tag" in rows[0]:  # ours, without a logger: a row per value
            tags.update(row["tag"] for row in rows)
        elif rows:  # a CSVLogger's: a column per tag
            tags.update(rows[0])
    return tags


@pytest.mark.parametrize("setting", list(SETTINGS))
def test_monitors_log_under_trainer_setting(tmp_path: Path, setting: str) -> None:
    options, model_class, model_options, train, val = SETTINGS[setting]
    pl.seed_everything(0, verbose=False)
    model = model_class(**MODEL, **model_options)
    options = dict(options, default_root_dir=str(tmp_path))
    if options.get("logger") in ("csv", "both"):
        csv = CSVLogger(str(tmp_path / "csv"))
        options["logger"] = [csv, TensorBoardLogger(str(tmp_path), name="run")] if options["logger"] == "both" else csv
    trainer = make_trainer(tmp_path, monitors(), max_epochs=1, **options)
    trainer.fit(model, train, val)
    assert hooks_left(model) == [] and global_state_clean()
    events = read_events(tmp_path)  # the run's TensorBoard folder; without one, the PNG files and metrics.csv
    tags = {*events["images"], *events["scalars"], *written_files(tmp_path)}
    expected = ("cnnviz/filters/", "cnnviz/top_patches/")
    if setting != "training_step returns None":
        expected += ("cnnviz/activations/dead_fraction/",)
    for prefix in expected:
        assert any(tag.startswith(prefix) for tag in tags), prefix
    if setting != "training_step returns None":
        assert {"cnnviz/saliency/grad_cam", "cnnviz/embedding/tsne"} <= tags
    else:  # no forward ran in training: no window of statistics, and no alert blaming dead filters
        assert not any(tag.startswith("cnnviz/activations/") for tag in tags) and "cnnviz/alerts" not in events["text"]


def test_validate_test_predict_after_fit_and_a_resume_continue_every_history(tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    pl.seed_everything(0, verbose=False)
    first = monitors()
    checkpoint = ModelCheckpoint(dirpath=str(tmp_path / "ckpt"), save_last=True)
    options: dict[str, Any] = {"enable_checkpointing": True, "limit_train_batches": 4}
    trainer = make_trainer(tmp_path / "one", [*first, checkpoint], max_epochs=1, **options)
    model = ImageClassifier(**MODEL)
    trainer.fit(model, loader(32, 8), loader(16, 8))
    trainer.validate(model, loader(16, 8))
    trainer.test(model, loader(16, 8))
    predictions = trainer.predict(model, loader(16, 8))
    assert predictions is not None and len(predictions) == 2
    assert hooks_left(model) == [] and global_state_clean()

    second = monitors()
    trainer = make_trainer(tmp_path / "two", [*second, checkpoint], max_epochs=2, **options)
    trainer.fit(ImageClassifier(**MODEL), loader(32, 8), loader(16, 8), ckpt_path=str(tmp_path / "ckpt" / "last.ckpt"))
    events = read_events(tmp_path / "two")
    steps = [e.step for e in events["scalars"]["cnnviz/activations/dead_fraction/net.relu1"]]
    assert steps == [6, 8]  # the resumed run goes on from step 4
    activation, top, embedding = (next(m for m in second if type(m) is kind)
                                  for kind in (ActivationMonitor, TopPatchMonitor, EmbeddingMonitor))  # fmt: skip
    assert isinstance(activation, ActivationMonitor) and len(activation.health.rate_history["net.relu1"]) == 4
    assert isinstance(top, TopPatchMonitor)
    assert [caption for caption, _ in top.history.columns("net.conv1")] == ["ep 0", "ep 1"]
    assert isinstance(embedding, EmbeddingMonitor) and embedding.last_map is not None
