"""One image's activation maps (ActivationMaps / ActivationMapMonitor): the values drawn equal the layer outputs read
by independent forward hooks (the demo CNN, torchvision's ResNet-18 with its reused ``relu`` modules, generated
networks), the scale is numpy's percentile, a channel forced dead is framed red, listed and black at every epoch,
the health comes from ActivationMonitor's window when it runs, wide layers keep their dead channels, 1-D and 3-D
networks are drawn, and the evolution survives a checkpoint."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import torchvision
from generated_nets import GeneratedNet, plans
from hypothesis import HealthCheck, given, settings
from torch import Tensor, nn

from conftest import TinyCNN, fit_listening, make_trainer, read_events
from lightning_cnnviz import ActivationMapMonitor, ActivationMonitor
from lightning_cnnviz.core import ActivationHealth, ActivationMaps, Context, DoesNotApply, Guard, Moment, Probe
from lightning_cnnviz.core.drawing.maps import FRAME_RGB, MapLayout
from lightning_cnnviz.core.methods.activation_maps import choose_channels, percentile
from lightning_cnnviz.demo.models import SmallCNN

CONTEXT = Context(Moment(epoch=0, step=0))


def hooked_outputs(model: nn.Module, images: Tensor, modules: list[str]) -> dict[str, Tensor]:
    """Every call of the named modules in one eval forward, by module name, ``#k`` for the k-th call: the brute
    force, written without the library."""
    found: dict[str, Tensor] = {}
    handles = []
    for name in modules:
        def hook(module: nn.Module, args: Any, output: Tensor, name: str = name) -> None:
            uses = sum(1 for key in found if key.split("#")[0] == name)
            found[name if uses == 0 else f"{name}#{uses + 1}"] = output.detach().clone()
        handles.append(dict(model.named_modules())[name].register_forward_hook(hook))
    model.eval()
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    return found


def tile_at(picture: Tensor, layout: MapLayout, image: int, position: int) -> Tensor:
    y, x = layout.origin(image, position)
    return picture[:, y : y + layout.tile[0], x : x + layout.tile[1]]


def frame_at(picture: Tensor, layout: MapLayout, image: int, position: int) -> list[float]:
    y, x = layout.origin(image, position)
    return picture[:, y - 1, x - 1].tolist()  # inside the frame, left of and above the tile


@pytest.mark.parametrize("model_name", ["demo", "resnet18"])
def test_the_values_drawn_are_the_layer_outputs_read_by_independent_hooks(model_name: str) -> None:
    torch.manual_seed(0)
    if model_name == "demo":
        net: nn.Module = SmallCNN(in_channels=1, num_classes=10, channels=(8, 16, 32))
        images = torch.rand(4, 1, 28, 28)
        expected_names = ["relu1", "relu2", "relu3"]
    else:
        net = torchvision.models.resnet18(num_classes=10)
        images = torch.rand(4, 3, 32, 32)
        expected_names = ["relu", "layer2.1.relu#2", "layer4.1.relu#2"]  # reused modules: the k-th call is #k
    maps = ActivationMaps()
    maps.attach(net, images[:1])
    shot = maps.snapshot(net, Probe(images), CONTEXT)
    assert [site.name for site in maps.sites or []] == expected_names
    reference = hooked_outputs(net, images, sorted({name.split("#")[0] for name in expected_names}))
    for name in expected_names:
        drawn = maps.last[name]
        torch.testing.assert_close(drawn["values"], reference[name], rtol=0, atol=0)  # exact, before the scale
        flat = reference[name].flatten(1).numpy()
        np.testing.assert_allclose(drawn["scale"].numpy(), np.percentile(flat, 99.5, axis=1), rtol=1e-6)
        # every pixel of every tile: zero black, the image's 99.5th percentile white, enlarged by whole pixels
        expected = (reference[name] / drawn["scale"].view(-1, 1, 1, 1)).clamp(0, 1)
        factor = max(1, -(-maps.min_tile_px // expected.shape[-1]))
        expected = expected.repeat_interleave(factor, -1).repeat_interleave(factor, -2)
        picture, layout = shot.images[f"cnnviz/activation_maps/{name}"], drawn["layout"]
        assert tuple(picture.shape[1:]) == layout.size
        for i in range(len(images)):
            for position, channel in enumerate(drawn["channels"]):
                tile = tile_at(picture, layout, i, position)
                torch.testing.assert_close(tile, expected[i, channel].expand(3, -1, -1), atol=0.5 / 255, rtol=0)
        channels = reference[name].shape[1]
        assert drawn["channels"] == list(range(channels)) if channels <= 64 else len(drawn["channels"]) == 64


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans())
def test_on_generated_networks_every_activation_drawn_is_the_call_it_names(plan: list[Any]) -> None:
    """Whatever way a forward spells its activations (modules, reused or in place, functional calls, loops,
    containers called twice, residuals, checkpoints), the maps of each named site are that call's output."""
    net = GeneratedNet(plan).eval()
    images = torch.rand(3, 1, 8, 8)
    recorder = net.recorder
    recorder.start()
    with torch.no_grad():
        net(images)
    calls = dict(recorder.stop())
    names = [name for name in calls if calls[name].dim() == 4]
    maps = ActivationMaps(layers=names)
    maps.attach(net, images[:1])
    values = maps.activations(net, images)
    assert list(values) == names
    for name in names:
        torch.testing.assert_close(values[name], calls[name], rtol=0, atol=0)
        expected = np.percentile(calls[name].flatten(1).numpy(), 99.5, axis=1)
        np.testing.assert_allclose(percentile(values[name].flatten(1), 99.5).numpy(), expected, rtol=1e-5, atol=1e-6)


def test_percentile_is_numpys_for_any_row_length_and_q() -> None:
    torch.manual_seed(0)
    for length in (1, 2, 7, 1000):
        values = torch.randn(5, length)
        for q in (0.5, 50, 99.5, 100):
            expected = np.percentile(values.numpy(), q, axis=1)
            np.testing.assert_allclose(percentile(values, q).numpy(), expected, rtol=1e-6, atol=1e-7)


def dead_net() -> TinyCNN:
    torch.manual_seed(0)
    net = TinyCNN()
    with torch.no_grad():
        net.conv1.bias[2] = -1e3  # channel 2 of relu1 never fires
    return net


def test_a_channel_forced_dead_is_framed_red_listed_and_black_at_every_epoch() -> None:
    net, images = dead_net(), torch.rand(4, 1, 12, 12)
    maps = ActivationMaps()
    maps.attach(net, images[:1])
    for epoch in range(3):
        shot = maps.snapshot(net, Probe(images), Context(Moment(epoch=epoch, step=10 * epoch)))
        drawn = maps.last["relu1"]
        assert 2 in drawn["health"].dead and drawn["marks"][2] == 2
        picture, layout = shot.images["cnnviz/activation_maps/relu1"], drawn["layout"]
        position, healthy = drawn["channels"].index(2), drawn["marks"].index(0)
        for i in range(4):
            assert tile_at(picture, layout, i, position).abs().max() == 0  # black
            assert frame_at(picture, layout, i, position) == pytest.approx(FRAME_RGB[2], abs=1 / 255)  # red
            assert frame_at(picture, layout, i, healthy) == pytest.approx(FRAME_RGB[0], abs=1 / 255)
        dead = list(drawn["health"].dead)
        assert f"{len(dead)} dead {dead}" in shot.captions["cnnviz/activation_maps/relu1"]
        assert f"dead now: {dead}" in shot.captions["cnnviz/activation_maps_evolution/relu1"]
        with torch.no_grad():  # training goes on: the other channels change, the dead one stays dead
            net.conv1.weight.add_(0.1 * torch.randn_like(net.conv1.weight))
    evolution = shot.images["cnnviz/activation_maps_evolution/relu1"]
    assert evolution.shape[-1] > 3 * 28  # three columns, one per epoch
    assert shot.scalars["cnnviz/activation_maps/sparsity/relu1"] >= 1 / 6  # a sixth of the channels is all zeros


def test_the_frames_come_from_activation_monitors_latest_window_when_it_runs() -> None:
    net, images = dead_net(), torch.rand(4, 1, 12, 12)
    health = ActivationHealth()
    health.discover(net, images)
    with health.watch(net):
        net(torch.rand(8, 1, 12, 12))
    health.step()
    health.close_window()
    context = Context(Moment(epoch=0, step=1))
    context.shared.health = health.marks
    maps = ActivationMaps()
    maps.attach(net, images[:1])
    maps.snapshot(net, Probe(images), context)
    assert maps.last["relu1"]["health"] is health.marks["relu1"]
    assert maps.last["relu1"]["seen"] == "the latest training window (1 steps counted)"
    assert maps.last["relu1"]["marks"][2] == 2
    maps.snapshot(net, Probe(images), CONTEXT)  # without a window: what the probe shows
    assert maps.last["relu1"]["seen"] == "the probe images" and 2 in maps.last["relu1"]["health"].dead


def test_a_wide_layer_shows_its_dead_channels_and_the_most_active_kept_from_epoch_to_epoch() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 100, 3), nn.ReLU(), nn.Flatten(), nn.Linear(100 * 36, 2))
    with torch.no_grad():
        net[0].bias.fill_(1.0)  # every channel fires...
        net[0].bias[[5, 50, 99]] = -1e3  # ...but three
    images = torch.rand(4, 1, 8, 8)
    said: list[str] = []
    context = Context(Moment(epoch=0, step=0), guard=Guard("ActivationMapMonitor", inform=said.append))
    maps = ActivationMaps(max_channels=16)
    maps.attach(net, images[:1])
    maps.snapshot(net, Probe(images), context)
    drawn = maps.last["1"]
    chosen, marks = drawn["channels"], drawn["marks"]
    activity = drawn["values"].transpose(0, 1).flatten(1).mean(1)
    unwell = [c for c in range(100) if marks[c] > 0]
    assert drawn["health"].dead == (5, 50, 99) and unwell == [5, 50, 99]
    healthy = sorted((c for c in range(100) if marks[c] == 0), key=lambda c: -float(activity[c]))
    assert chosen == sorted(unwell + healthy[: 16 - len(unwell)])
    assert len(said) == 1 and "cnnviz/activation_maps/1 shows the" in said[0] and "of 100" in said[0]
    with torch.no_grad():  # a channel not shown dies: it takes the place of the least active healthy one shown
        unshown = next(c for c in healthy if c not in chosen)
        net[0].bias[unshown] = -1e3
    maps.snapshot(net, Probe(images), Context(Moment(epoch=1, step=1)))
    again = maps.last["1"]["channels"]
    assert unshown in again and len(again) == 16 and len(set(again) - set(chosen)) == 1


def test_choose_channels_keeps_the_choice_and_swaps_in_new_dead_ones() -> None:
    activity = torch.arange(10.0)
    chosen, said = choose_channels(activity, [0] * 10, cap=4)
    assert chosen == [6, 7, 8, 9] and "the 4 most active of 10 healthy" in said
    marks = [0] * 10
    marks[1] = 2
    again, _ = choose_channels(activity, marks, cap=4, before=chosen)
    assert again == [1, 7, 8, 9]  # the least active of those shown gave its place
    assert choose_channels(activity, [0] * 3, cap=4) == ([0, 1, 2], "")


def test_1d_networks_draw_lines_and_3d_networks_the_middle_slice_said_once() -> None:
    torch.manual_seed(0)
    signal = nn.Sequential(nn.Conv1d(2, 4, 5), nn.ReLU(), nn.Conv1d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 26, 2))  # fmt: skip
    maps = ActivationMaps()
    maps.attach(signal, torch.rand(1, 2, 32))
    shot = maps.snapshot(signal, Probe(torch.rand(3, 2, 32)), CONTEXT)
    assert sorted(shot.images) == [f"cnnviz/{kind}/{name}" for kind in ("activation_maps", "activation_maps_evolution")
                                   for name in ("1", "3")]  # fmt: skip
    line = maps.last["1"]
    tile = tile_at(shot.images["cnnviz/activation_maps/1"], line["layout"], 0, 0)
    assert (tile == 0).any() and (tile == 1).any()  # a black line on white
    volume = nn.Sequential(nn.Conv3d(1, 4, 3), nn.ReLU(), nn.Conv3d(4, 4, 3), nn.ReLU(), nn.Flatten(),
                           nn.Linear(4 * 64, 2))  # fmt: skip
    said: list[str] = []
    context = Context(Moment(epoch=0, step=0), guard=Guard("ActivationMapMonitor", inform=said.append))
    maps = ActivationMaps(min_tile_px=1)
    maps.attach(volume, torch.rand(1, 1, 8, 8, 8))
    shot = maps.snapshot(volume, Probe(torch.rand(2, 1, 8, 8, 8)), context)
    drawn = maps.last["1"]
    middle = (drawn["values"][:, :, 3] / drawn["scale"].view(-1, 1, 1, 1)).clamp(0, 1)  # depth 6: slice 3
    tile = tile_at(shot.images["cnnviz/activation_maps/1"], drawn["layout"], 1, 2)
    torch.testing.assert_close(tile, middle[1, 2].expand(3, -1, -1), atol=0.5 / 255, rtol=0)
    assert said == ["ActivationMapMonitor: 3-D activations are drawn at the middle slice of their depth."]


def test_what_cannot_be_drawn_is_refused_with_what_is_allowed() -> None:
    mlp = nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 2))
    with pytest.raises(DoesNotApply, match="it draws activations with a map"):
        ActivationMaps().attach(mlp, torch.rand(1, 1, 4, 4))
    with pytest.raises(ValueError, match="no activation of TinyCNN can be named 'conv1'"):
        ActivationMaps(layers=["conv1"]).attach(TinyCNN())
    with pytest.raises(ValueError, match="`percentile`"):
        ActivationMaps(percentile=0)
    with pytest.raises(ValueError, match="`evolution_image`"):
        ActivationMaps(evolution_image=-1)


def test_the_evolution_survives_a_checkpoint() -> None:
    net, images = dead_net(), torch.rand(4, 1, 12, 12)
    maps = ActivationMaps()
    maps.attach(net, images[:1])
    for epoch in range(2):
        maps.snapshot(net, Probe(images), Context(Moment(epoch=epoch, step=epoch)))
    restored = ActivationMaps()
    restored.load_state_dict(maps.state_dict())
    restored.attach(net, images[:1])
    shot = restored.snapshot(net, Probe(images), Context(Moment(epoch=2, step=2)))
    assert [caption for caption, _ in restored.history.columns("relu1")] == ["ep 0", "ep 1", "ep 2"]
    assert shot.images["cnnviz/activation_maps_evolution/relu1"].shape[-1] > 3 * 28


def test_in_a_fit_with_activation_monitor_the_frames_are_its_windows(tmp_path: Path) -> None:
    import lightning.pytorch as pl

    from lightning_cnnviz.demo.data import DigitsDataModule
    from lightning_cnnviz.demo.models import ImageClassifier

    pl.seed_everything(0, verbose=False)
    model, data = ImageClassifier(in_channels=1, num_classes=10, channels=(8, 16, 32)), DigitsDataModule(batch_size=32)
    maps = ActivationMapMonitor(every_n_epochs=1, on_error="raise", class_names=[f"digit {i}" for i in range(10)])
    trainer = make_trainer(tmp_path, [ActivationMonitor(every_n_steps=2), maps], max_epochs=2, limit_train_batches=4)
    said, _ = fit_listening(trainer, model, data)
    assert [m for m in said if "ActivationMapMonitor" in m] == []
    events = read_events(tmp_path)
    for name in ("net.relu1", "net.relu2", "net.relu3"):
        assert len(events["images"][f"cnnviz/activation_maps/{name}"]) == 2  # both epochs
        assert f"cnnviz/activation_maps_evolution/{name}" in events["images"]
        assert f"cnnviz/activation_maps/sparsity/{name}" in events["scalars"]
        assert maps.maps.last[name]["seen"].startswith("the latest training window")
    assert maps.probe_labels.tolist() == [0, 1, 2, 3]  # one image per class first
