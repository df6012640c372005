"""EmbeddingMonitor in real fits on digits: maps, kNN accuracy, Projector data, resume, bad input."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
import torch
from test_monitors import NoConv, small_model
from torch import nn

from conftest import global_state_clean, hooks_left, make_trainer, read_events, same_pixels
from lightning_cnnviz import EmbeddingMonitor
from lightning_cnnviz.core import LayerMap, knn_accuracy
from lightning_cnnviz.core.methods.embedding import procrustes_align


def test_maps_accuracy_and_projector_per_epoch(tmp_path: Path, digits_data: Any) -> None:
    monitor = EmbeddingMonitor(probe_size=300, every_n_epochs=1, on_error="raise")
    model = small_model()
    trainer = make_trainer(tmp_path, [monitor], max_epochs=2, limit_val_batches=None)
    trainer.fit(model, datamodule=digits_data)
    val_images, val_labels = digits_data._val.tensors
    assert monitor.probe_images is not None and torch.equal(monitor.probe_images, val_images[:300])
    assert monitor.probe_labels is not None and torch.equal(monitor.probe_labels, val_labels[:300])
    # the codes are the input of the classifier, net.fc
    captured: list[torch.Tensor] = []
    handle = model.net.fc.register_forward_pre_hook(lambda m, args: captured.append(args[0]))
    model.eval()
    with torch.no_grad():
        model(val_images[:300])
    handle.remove()
    assert torch.allclose(monitor.codes(model, val_images[:300]), captured[0], atol=1e-6)
    expected = knn_accuracy(captured[0], val_labels[:300], k=5)
    events = read_events(tmp_path)
    accuracies = events["scalars"]["cnnviz/embedding/knn_accuracy"]
    assert [e.step for e in accuracies] == [0, 1]
    assert accuracies[-1].value == pytest.approx(expected, abs=1e-6)
    for tag in ("cnnviz/embedding/tsne", "cnnviz/embedding/grid"):
        assert [e.step for e in events["images"][tag]] == [0, 1]
    assert events["images"]["cnnviz/embedding/grid"][0].width == 17 * 33 + 1  # 17x17 cells of 32 px (sqrt 300)
    # nearest neighbours in code space: 8 class-balanced queries, each beside its 8 nearest other probe images, and
    # below each, its 8 nearest in pixel space
    neighbours = events["images"]["cnnviz/embedding/neighbours"]
    assert [e.step for e in neighbours] == [0, 1] and neighbours[0].width == 9 * (48 + 2) + 2
    assert neighbours[0].height == 16 * (48 + 2) + 2
    queries, found = monitor.map.neighbours(captured[0], monitor.probe_labels)
    assert sorted(val_labels[:300][queries].tolist()) == list(range(8))  # one query per class (the first 8)
    distances = torch.cdist(captured[0].double(), captured[0].double())
    for query, row in zip(queries.tolist(), found.tolist(), strict=True):
        others = [j for j in range(300) if j != query]  # brute force, the query itself excluded
        nearest = sorted(others, key=lambda j: float(distances[query, j]))[:8]
        assert row == nearest
    pixels = val_images[:300].flatten(1).double()
    between = torch.cdist(pixels, pixels)
    near = monitor.map.pixel_neighbours(val_images[:300], queries)
    for query, row in zip(queries.tolist(), near.tolist(), strict=True):
        others = [j for j in range(300) if j != query]  # brute-force pixel-distance kNN
        assert row == sorted(others, key=lambda j: float(between[query, j]))[:8]
    assert monitor.last_map is not None and monitor.last_map.shape == (300, 2)
    # Projector: config, tensors, labels and a sprite within TensorBoard's 8192 px
    run = Path(events["event_files"][0]).parent
    config = (run / "projector_config.pbtxt").read_text()
    assert config.count("tensor_path") == 2 and "sprite" in config and "metadata_path" in config
    assert config.index("00001") < config.index("00000")  # the Projector opens on the latest codes
    step_dir = run / "00001" / "cnnviz%2fembedding"  # the Projector quotes the tag
    assert (step_dir / "tensors.tsv").read_text().count("\n") == 300
    from PIL import Image

    sprite = Image.open(step_dir / "sprite.png")
    assert max(sprite.size) <= 8192 and sprite.size[0] == 18 * 16  # ceil(sqrt(300)) = 18 thumbnails of 16 px
    assert hooks_left(model) == [] and global_state_clean()


def test_successive_maps_are_aligned_and_resume_continues(tmp_path: Path, digits_data: Any) -> None:
    first = EmbeddingMonitor(probe_size=200, every_n_epochs=1)
    trainer = make_trainer(tmp_path / "one", [first], max_epochs=2, limit_val_batches=None)
    model = small_model()
    trainer.fit(model, datamodule=digits_data)
    checkpoint = tmp_path / "one.ckpt"
    trainer.save_checkpoint(checkpoint)
    saved = torch.load(checkpoint, weights_only=False)["callbacks"][first.state_key]["previous"]
    assert torch.equal(saved, first.last_map)

    second = EmbeddingMonitor(probe_size=200, every_n_epochs=1)
    trainer = make_trainer(tmp_path / "two", [second], max_epochs=3, limit_val_batches=None)
    trainer.fit(small_model(), datamodule=digits_data, ckpt_path=str(checkpoint))
    assert second.last_map is not None
    # the resumed run's map was aligned to the saved one: Procrustes has nothing left to turn
    assert torch.allclose(procrustes_align(second.last_map, saved), second.last_map, atol=1e-3 * float(saved.std()))
    moved = (second.last_map - saved).norm(dim=1).mean()
    turned = (second.last_map @ torch.tensor([[0.0, 1.0], [1.0, 0.0]]) - saved).norm(dim=1).mean()
    assert moved < 0.5 * turned


def test_the_code_layer_and_layer_override(digits_data: Any) -> None:
    model = small_model()
    assert LayerMap.of(model).code == ("net.fc", True)
    squeeze = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Conv2d(8, 3, 1), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    assert LayerMap.of(squeeze).code == ("2", True)  # a 1x1 classifier conv: its input is the code
    assert LayerMap.of(NoLinear()).code == ("conv", False)
    monitor = EmbeddingMonitor()
    monitor.setup(None, squeeze, "fit")  # type: ignore[arg-type]
    images = digits_data._val.tensors[0][:10]
    expected = torch.relu(squeeze[0](images)).mean(dim=(2, 3))
    torch.testing.assert_close(monitor.codes(squeeze, images), expected)
    monitor = EmbeddingMonitor(layer="net.conv3")
    monitor.setup(None, model, "fit")  # type: ignore[arg-type]
    codes = monitor.codes(model, digits_data._val.tensors[0][:10])
    assert codes.shape == (10, 16)  # conv3's 16 channels, averaged over positions
    assert hooks_left(model) == []


class NoLinear(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x).mean(dim=(2, 3))


def test_bad_configuration(tmp_path: Path, digits_data: Any) -> None:
    with pytest.raises(ValueError, match="has neither an nn.Linear nor an nn.Conv2d.*pass `layer=`"):
        _ = LayerMap.of(nn.Sequential(nn.Flatten())).code
    trainer = make_trainer(tmp_path, [EmbeddingMonitor(layer="net.nope")])
    with pytest.raises(ValueError, match=r"no module named 'net.nope'.*'net.conv1'"):
        trainer.fit(small_model(), datamodule=digits_data)
    with pytest.raises(ValueError, match="`perplexity` must be a positive number"):
        EmbeddingMonitor(perplexity=0)
    with pytest.raises(ValueError, match="`probe_size` must be a positive integer"):
        EmbeddingMonitor(probe_size=0)
    trainer = make_trainer(tmp_path / "noconv", [EmbeddingMonitor()])
    with pytest.warns(UserWarning, match="EmbeddingMonitor: does not apply: it needs 2-D images"):
        trainer.fit(NoConv(), datamodule=digits_data)
    assert trainer.global_step > 0
    assert not os.path.exists(tmp_path / "never")


def test_grid_assignment_is_the_optimal_one_to_one_placement() -> None:
    import itertools

    from lightning_cnnviz.core.drawing.render import grid_assignment

    points = torch.tensor([[0.1, 0.9], [0.8, 0.85], [0.2, 0.1], [0.95, 0.2], [0.5, 0.5]])
    chosen = grid_assignment(points, 2, 2).tolist()
    unit = (points - points.min(0).values) / (points.max(0).values - points.min(0).values)
    cells = torch.tensor([[0.25, 0.75], [0.75, 0.75], [0.25, 0.25], [0.75, 0.25]])  # row 0 is the top row

    def cost(order: tuple[int, ...]) -> float:
        return float(sum(((cells[c] - unit[p]) ** 2).sum() for c, p in enumerate(order)))

    best = min(itertools.permutations(range(5), 4), key=cost)
    assert cost(tuple(chosen)) == pytest.approx(cost(best))
    assert len(set(chosen)) == 4  # one point per cell


def test_a_plain_loop_writes_the_callbacks_pictures(tmp_path: Path, digits_data: Any) -> None:
    """EmbeddingMap is EmbeddingMonitor's logic without a Trainer: on the fitted weights and the monitor's probe,
    a plain SummaryWriter gets the same PNG bytes and kNN accuracy as the callback wrote."""
    from torch.utils.tensorboard import SummaryWriter

    from lightning_cnnviz.core import EmbeddingMap

    monitor = EmbeddingMonitor(probe_size=64, every_n_epochs=1, knn_k=3, on_error="raise")
    model = small_model()
    make_trainer(tmp_path / "fit", [monitor], max_epochs=1, limit_train_batches=5).fit(model, datamodule=digits_data)
    images, labels = monitor.probe_images, monitor.probe_labels
    assert images is not None and labels is not None
    embedding_map = EmbeddingMap(knn_k=3)
    codes = embedding_map.codes(model, images)
    writer = SummaryWriter(str(tmp_path / "plain"))
    writer.add_scalar("cnnviz/embedding/knn_accuracy", embedding_map.knn(codes, labels), global_step=0)
    for tag, picture in embedding_map.pictures(embedding_map.embed(codes), codes, images, labels, epoch=0).items():
        writer.add_image(tag, picture.float().clamp(0, 1), global_step=0, dataformats="CHW")
    writer.close()
    fitted, plain = read_events(tmp_path / "fit"), read_events(tmp_path / "plain")
    for tag in ("cnnviz/embedding/tsne", "cnnviz/embedding/grid", "cnnviz/embedding/neighbours"):
        assert same_pixels(plain["images"][tag][-1], fitted["images"][tag][-1]), tag
    accuracy = "cnnviz/embedding/knn_accuracy"
    assert plain["scalars"][accuracy][-1].value == fitted["scalars"][accuracy][-1].value
