"""The typed protocol: every monitor's core object is a ``Picture`` (``attach`` / ``snapshot(model, probe, context)``
/ ``state_dict`` / ``load_state_dict``), drawn by one loop on networks we did not write, and a picture of one's own
becomes a monitor through the generic adapter, or joins the plain loop, unchanged."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from conftest import ROOT, global_state_clean, hooks_left, make_trainer, read_events
from lightning_cnnviz.core import (
    ActivationHealth,
    Context,
    EmbeddingMap,
    FeatureVisPanel,
    FilterPanel,
    InputScale,
    Moment,
    Picture,
    Probe,
    SaliencyPanel,
    Snapshot,
    StepPicture,
    TopPatchGallery,
)


class ConvNorms:
    """A seventh picture, written here: the weight norm of every conv as a scalar, and the first conv's norms per
    filter as a one-row image."""

    def attach(self, model: nn.Module, example: Tensor | None = None) -> None:
        self.convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}

    def snapshot(self, model: nn.Module, probe: Probe | None, context: Context) -> Snapshot:
        norms = {name: conv.weight.detach().norm() for name, conv in self.convs.items()}
        first = next(iter(self.convs.values())).weight.detach().flatten(1).norm(dim=1)
        scalars = {f"cnnviz/conv_norms/{name}": float(value) for name, value in norms.items()}
        return Snapshot(images={"cnnviz/conv_norms": (first / first.max()).expand(3, 1, -1)}, scalars=scalars)

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def six(channels: int = 4) -> list[Picture]:
    """Every monitor's core object, kept small."""
    return [
        ActivationHealth(),
        FilterPanel(),
        SaliencyPanel(smoothgrad_samples=2),
        TopPatchGallery(max_channels=channels, k=3),
        EmbeddingMap(perplexity=5.0, projector=False),
        FeatureVisPanel(steps=4, max_channels=channels, k=3, dream_images=1),
    ]


def networks() -> dict[str, tuple[nn.Module, int, int]]:
    """name -> (network, input channels, side)."""
    from lightning_cnnviz.demo.models import SmallCNN

    torch.manual_seed(0)
    resnet = torchvision.models.resnet18(weights=None, num_classes=4)
    return {"resnet18": (resnet, 3, 32), "demo_cnn": (SmallCNN(in_channels=1, num_classes=4), 1, 16)}


def expected_tags(model: nn.Module, name: str, picture: Picture) -> set[str]:
    """The tags each picture must write (computed here from the model, not read from the pictures)."""
    convs = [n for n, m in model.named_modules() if isinstance(m, nn.Conv2d)]
    if isinstance(picture, ActivationHealth):
        relus = {site.name for site in picture.sites or []}
        return {f"cnnviz/activations/dead_map/{site}" for site in relus}
    if isinstance(picture, FilterPanel):
        return {f"cnnviz/filters/{convs[0]}", f"cnnviz/filters/smoothness/{convs[0]}"}
    if isinstance(picture, SaliencyPanel):
        return {f"cnnviz/saliency/{m}" for m in ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam",
                                                 "occlusion")}  # fmt: skip
    layers = {"resnet18": ["conv1", "layer2.1.conv2", "layer4.1.conv2"], "demo_cnn": ["conv1", "conv2", "conv3"]}[name]
    if isinstance(picture, TopPatchGallery):
        return {f"cnnviz/{kind}/{layer}" for kind in ("top_patches", "evolution") for layer in layers}
    if isinstance(picture, EmbeddingMap):
        return {"cnnviz/embedding/tsne", "cnnviz/embedding/grid", "cnnviz/embedding/neighbours",
                "cnnviz/embedding/knn_accuracy"}  # fmt: skip
    kinds = ("feature_vis", "feature_vis_evolution", "feature_vis_patches")
    return {f"cnnviz/{kind}/{layer}" for kind in kinds for layer in layers} | {"cnnviz/deep_dream"}


@pytest.mark.parametrize("name", ["resnet18", "demo_cnn"])
def test_the_six_core_objects_run_through_one_loop(name: str) -> None:
    model, channels, side = networks()[name]
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand(24, channels, side, side, generator=generator), torch.arange(24) % 4
    probe = Probe(images, labels)
    pictures = six()
    assert all(isinstance(picture, Picture) for picture in pictures)
    for picture in pictures:
        picture.attach(model, images[:2])
    health = pictures[0]
    assert isinstance(health, StepPicture)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    weights = {n: p.detach().clone() for n, p in model.named_parameters()}
    health.follow(model, images[:2], gate=lambda: True)  # first, some training steps observed
    for batch in range(3):
        model.train()
        loss = F.cross_entropy(model(images[batch * 8 : batch * 8 + 8]), labels[batch * 8 : batch * 8 + 8])
        optimizer.zero_grad()
        assert health.tap is not None
        with health.tap.paused():
            loss.backward()
        optimizer.step()
        health.step()
    window, _ = health.end_window(Moment(0, 3), 3)
    health.close()
    assert any(tag.startswith("cnnviz/activations/dead_fraction/") for tag in window.scalars)
    grads = {n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()}
    context = Context(Moment(epoch=0, step=3), scale=InputScale((0.5,) * channels, (0.25,) * channels))
    for picture, fresh in zip(pictures, six()):
        shot = picture.snapshot(model, probe, context)
        assert set(shot.tags()) >= expected_tags(model, name, picture), type(picture).__name__
        state = picture.state_dict()
        fresh.load_state_dict(state)
        assert fresh.state_dict().keys() == state.keys()
    assert all(torch.equal(p.grad, grads[n]) for n, p in model.named_parameters() if p.grad is not None)
    assert any(not torch.equal(p, weights[n]) for n, p in model.named_parameters())  # it trained
    assert hooks_left(model) == [] and global_state_clean()


def test_the_histories_survive_a_state_dict_round_trip() -> None:
    model, probe = networks()["demo_cnn"][0], Probe(torch.rand(16, 1, 16, 16))
    for make in (lambda: TopPatchGallery(max_channels=2, k=2), lambda: FeatureVisPanel(steps=2, max_channels=2, k=2)):
        first = make()
        for step in (1, 2):
            first.snapshot(model, probe, Context(Moment(epoch=step - 1, step=step)))
        second = make()
        assert isinstance(first, (TopPatchGallery, FeatureVisPanel)) and isinstance(second, type(first))
        second.load_state_dict(first.state_dict())
        columns = [[c for c, _ in picture.history.columns("conv3")] for picture in (first, second)]
        assert columns[0] == columns[1] == ["ep 0", "ep 1"]


def test_a_picture_of_ones_own_becomes_a_monitor_and_joins_the_plain_loop(
    tmp_path: Path, digits_data: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    from test_monitors import small_model

    from lightning_cnnviz import EpochMonitor

    model = small_model()
    monitor = EpochMonitor(ConvNorms(), every_n_epochs=1, on_error="raise")
    make_trainer(tmp_path / "fit", [monitor], max_epochs=2).fit(model, datamodule=digits_data)
    events = read_events(tmp_path / "fit")
    norm = float(model.net.conv2.weight.detach().norm())
    assert [e.step for e in events["scalars"]["cnnviz/conv_norms/net.conv2"]] == [0, 1]
    assert events["scalars"]["cnnviz/conv_norms/net.conv2"][-1].value == pytest.approx(norm, rel=1e-6)
    assert [e.step for e in events["images"]["cnnviz/conv_norms"]] == [0, 1]
    assert "cnnviz/cost/ConvNorms/seconds" in events["scalars"]
    assert hooks_left(model) == []

    monkeypatch.syspath_prepend(str(ROOT / "examples"))
    plain = importlib.import_module("plain_pytorch")
    logdir = plain.main(["--epochs", "1", "--steps-per-epoch", "2", "--logdir", str(tmp_path / "plain")],
                        extra=[ConvNorms()])  # fmt: skip
    written = read_events(logdir)
    assert "cnnviz/conv_norms" in written["images"] and "cnnviz/conv_norms/conv1" in written["scalars"]
    assert "cnnviz/filters/conv1" in written["images"]  # beside the eight of the example
    sys.modules.pop("plain_pytorch", None)


def test_the_readme_picture_of_ones_own_runs(tmp_path: Path, digits_data: Any) -> None:
    from test_monitors import small_model

    from conftest import readme_block
    from lightning_cnnviz import EpochMonitor

    namespace: dict[str, Any] = {}
    exec("from torch import nn\nfrom lightning.pytorch import Trainer\n" + readme_block("A picture of your own"),
         namespace)  # fmt: skip
    assert isinstance(namespace["trainer"].callbacks[0], EpochMonitor)
    model = small_model()
    monitor = EpochMonitor(namespace["ConvNorms"](), every_n_epochs=1)
    make_trainer(tmp_path, [monitor]).fit(model, datamodule=digits_data)
    logged = read_events(tmp_path)["scalars"]["cnnviz/conv_norms/net.conv1"]
    assert logged[-1].value == pytest.approx(float(model.net.conv1.weight.detach().norm()), rel=1e-6)


def test_the_layer_map_says_what_each_conv_feeds_and_which_sizes_the_network_takes() -> None:
    """``feeds`` follows the forward (modules and functional calls alike); ``takes``/``size_near`` find a size a
    network that checks its input's side accepts."""
    from lightning_cnnviz.core import LayerMap
    from lightning_cnnviz.demo.models import SmallCNN

    for activation, expected in (("module", ["relu1", "relu2", "relu3"]), ("functional", ["relu", "relu#2", "relu#3"])):
        net = SmallCNN(in_channels=1, num_classes=4, activation=activation)  # type: ignore[arg-type]
        assert LayerMap.of(net).feeds(net, torch.rand(1, 1, 16, 16)) == dict(zip(["conv1", "conv2", "conv3"], expected))

    class MultipleOf8(nn.Sequential):
        def forward(self, x: Tensor) -> Tensor:
            if x.shape[-1] % 8 or x.shape[-2] % 8:
                raise RuntimeError(f"sides must be multiples of 8, got {tuple(x.shape[-2:])}")
            return super().forward(x)

    net = MultipleOf8(nn.Conv2d(3, 4, 3), nn.ReLU())
    layers = LayerMap.of(net)
    assert layers.takes(net, (3, 32, 32)) and not layers.takes(net, (3, 33, 33))
    assert layers.size_near(net, (3, 33, 30)) == (3, 32, 32)
    assert layers.size_near(net, (3, 32, 24), "0") == (3, 32, 24)
