"""Invariance curves (Zeiler & Fergus Fig. 5): the batched transformations equal torchvision's ``affine`` image by
image, the curves equal a brute-force computation (each transformed image through the network alone, its layers
read by hooks), the areas equal the trapezoid rule by hand, the pictures and scalars of a snapshot, what tasks
without classes show, clear errors, and the model left as it was on generated networks."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
import torchvision
import torchvision.transforms.v2.functional as TF
from generated_nets import GeneratedNet, plans
from hypothesis import HealthCheck, given, settings
from torch import Tensor, nn

from conftest import hooks_left
from lightning_cnnviz.core import Context, InputScale, InvarianceCurves, Moment, Probe, invariance
from lightning_cnnviz.core.methods.perturbation.invariance import (
    TRANSFORMATIONS,
    Invariance,
    distance_between_images,
    transform,
    transformation_values,
)
from lightning_cnnviz.demo.models import SmallCNN


def by_torchvision(image: Tensor, kind: str, value: float) -> Tensor:
    """One image under one transformation, as torchvision makes it (bilinear, zero fill)."""
    angle, translate, scale = 0.0, [0.0, 0.0], 1.0
    if kind == "translation":
        translate = [0.0, value * image.shape[-2]]
    elif kind == "scale":
        scale = value
    else:
        angle = value
    return TF.affine(image, angle=angle, translate=translate, scale=scale, shear=[0.0, 0.0],
                     interpolation=TF.InterpolationMode.BILINEAR)  # fmt: skip


def test_the_batched_transformations_equal_torchvision_s_affine_image_by_image() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 12, 10)
    for kind in TRANSFORMATIONS:
        values = transformation_values(kind)
        ours = transform(images, kind, values)
        for i, image in enumerate(images):
            for t, value in enumerate(values.tolist()):
                torch.testing.assert_close(ours[i, t], by_torchvision(image, kind, value), rtol=0, atol=1e-6)
    assert torch.equal(transformation_values("translation")[[0, 6, -1]], torch.tensor([-0.27, 0.0, 0.27]))
    scale = InputScale(mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3))  # zero pixels, through the normalisation
    fill = scale.to_model(torch.zeros(1, 3, 1, 1)).view(-1)
    ours = transform(scale.to_model(images), "rotation", torch.tensor([30.0]), fill)[:, 0]
    expected = scale.to_model(torch.stack([by_torchvision(image, "rotation", 30.0) for image in images]))
    torch.testing.assert_close(ours, expected, rtol=0, atol=1e-5)


def brute_force(model: nn.Module, images: Tensor, kind: str, layers: list[tuple[str, bool]], classes: Tensor,
                scale: InputScale) -> tuple[dict[str, Tensor], Tensor]:  # fmt: skip
    """Each transformed image (torchvision, in pixels, then normalised) through the model alone, layers read by
    hooks (the input of a classifier): normalised distances and the probability of the class."""
    modules = dict(model.named_modules())
    seen: dict[str, Tensor] = {}
    handles = []

    def keep(name: str, value: Tensor) -> None:  # a hook that returned the value would replace the layer's
        seen.setdefault(name, value.detach().clone().flatten())

    for name, read_input in layers:
        if read_input:
            handles.append(modules[name].register_forward_pre_hook(lambda m, args, name=name: keep(name, args[0])))
        else:
            handles.append(modules[name].register_forward_hook(lambda m, args, out, name=name: keep(name, out)))
    distances: dict[str, list[float]] = {name: [] for name, _ in layers}
    chances = []
    try:
        with torch.no_grad():
            for image, label in zip(images, classes):
                seen.clear()
                model(image[None])
                reference = dict(seen)
                pixels = scale.to_pixels(image[None])[0]
                for value in transformation_values(kind).tolist():
                    seen.clear()
                    moved = scale.to_model(by_torchvision(pixels, kind, value)[None])
                    logits = model(moved)
                    for name in distances:
                        base = reference[name]
                        distances[name].append(float((seen[name] - base).norm() / base.norm()))
                    chances.append(float(logits.softmax(dim=1)[0, label]))
    finally:
        for handle in handles:
            handle.remove()
    steps = len(transformation_values(kind))
    return ({name: torch.tensor(v).view(len(images), steps) for name, v in distances.items()},
            torch.tensor(chances).view(len(images), steps))  # fmt: skip


@pytest.mark.parametrize("network", ["demo", "resnet18"])
def test_the_curves_equal_a_brute_force_computation(network: str) -> None:
    torch.manual_seed(0)
    if network == "demo":
        net: nn.Module = SmallCNN(in_channels=1, num_classes=10).eval()
        scale, pixels = InputScale(mean=(0.3,), std=(0.35,)), torch.rand(2, 1, 28, 28)
    else:
        net = torchvision.models.resnet18(num_classes=10).eval()
        scale, pixels = InputScale(mean=(0.49, 0.48, 0.45), std=(0.25, 0.24, 0.26)), torch.rand(2, 3, 32, 32)
    images, classes = scale.to_model(pixels), torch.tensor([2, 7])
    curves = InvarianceCurves()
    curves.attach(net, images[:1])
    layers = curves.read(net)
    assert layers == ([("conv1", False), ("fc", True)])  # the first conv and the code (the classifier's input)
    fill = scale.to_model(torch.zeros(1, images.shape[1], 1, 1)).view(-1)
    for kind in TRANSFORMATIONS:
        found = invariance(net, images, kind, layers, classes=classes, fill=fill)
        distances, chances = brute_force(net, images, kind, layers, classes, scale)
        for name, _ in layers:
            torch.testing.assert_close(found.distances[name], distances[name], rtol=1e-5, atol=1e-6)
        assert found.probability is not None
        torch.testing.assert_close(found.probability, chances, rtol=1e-5, atol=1e-7)
        assert float(found.distances["conv1"][:, transformation_values(kind).tolist().index(
            0.0 if kind != "scale" else 1.0)].abs().max()) < 1e-5  # the identity moves nothing  # fmt: skip


def test_the_distance_between_images_is_the_mean_over_ordered_pairs_by_hand() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=3).eval()
    images = torch.rand(3, 1, 16, 16)
    seen: list[Tensor] = []  # the code is fc's input: the pooled conv3 features
    with torch.no_grad():
        handle = net.fc.register_forward_pre_hook(lambda m, args: seen.append(args[0].clone()))
        net(images)
        handle.remove()
    code = seen[0]
    pairs = [float((code[i] - code[j]).norm() / code[i].norm()) for i in range(3) for j in range(3) if i != j]
    found = distance_between_images(net, images, [("fc", True)])["fc"]
    assert found == pytest.approx(sum(pairs) / len(pairs), rel=1e-5)


def test_the_area_is_the_trapezoid_rule_over_the_range_scaled_to_one() -> None:
    values = torch.tensor([[0.0, 0.5, 1.0, 0.5], [0.0, 0.3, 0.2, 0.1]])
    found = Invariance(torch.arange(4.0), {"layer": values}, None)
    expected = np.trapezoid(values.mean(dim=0).numpy(), dx=1 / 3)
    assert found.area("layer") == pytest.approx(float(expected), rel=1e-6)


def test_a_snapshot_draws_a_plot_per_transformation_and_an_area_per_layer_and_says_what_it_leaves_out() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=3).eval()
    curves = InvarianceCurves(transformations=("translation", "rotation"), class_names=["a", "b", "c"])
    images, labels = torch.rand(3, 1, 16, 16), torch.tensor([0, 1, 2])
    shot = curves.snapshot(net, Probe(images, labels), Context(Moment(epoch=2, step=20)))
    assert sorted(shot.images) == ["cnnviz/invariance/rotation", "cnnviz/invariance/translation"]
    assert sorted(shot.scalars) == [f"cnnviz/invariance/{kind}/{layer}" for kind in ("rotation", "translation")
                                    for layer in ("conv1", "fc")]  # fmt: skip
    found = invariance(net, images, "translation", curves.read(net), classes=labels)
    assert shot.scalars["cnnviz/invariance/translation/fc"] == pytest.approx(found.area("fc"), rel=1e-5)
    picture = shot.images["cnnviz/invariance/translation"]
    assert picture.shape == (3, 300, 900)  # two distance panels and the probability
    dashed = distance_between_images(net, images, [("fc", True)])["fc"]  # each distance panel's dashed line
    assert curves.between["fc"] == pytest.approx(dashed)

    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    told: list[str] = []
    context = Context(Moment(epoch=0, step=0))
    context.guard._inform = told.append  # type: ignore[method-assign]
    shot = InvarianceCurves(transformations="scale").snapshot(seg, Probe(images), context)
    assert shot.images["cnnviz/invariance/scale"].shape == (3, 300, 600)  # no probability panel
    assert sorted(shot.scalars) == ["cnnviz/invariance/scale/0", "cnnviz/invariance/scale/2"]
    assert any("the task is segmentation" in text for text in told)


def test_the_areas_of_every_call_are_kept_and_a_checkpoint_goes_on_from_them() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=3).eval()
    probe = Probe(torch.rand(2, 1, 12, 12), torch.tensor([0, 1]))
    curves = InvarianceCurves(transformations=("scale",))
    for epoch in range(2):
        shot = curves.snapshot(net, probe, Context(Moment(epoch=epoch, step=10 * epoch)))
    assert [(e, s) for e, s, _ in curves.history] == [(0, 0), (1, 10)] and curves.history[-1][2] == shot.scalars
    resumed = InvarianceCurves(transformations=("scale",))
    resumed.load_state_dict(curves.state_dict())
    resumed.snapshot(net, probe, Context(Moment(epoch=2, step=20)))
    assert [e for e, _, _ in resumed.history] == [0, 1, 2] and resumed.history[:2] == curves.history


def test_bad_arguments_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="unknown transformation 'shear'"):
        InvarianceCurves(transformations=("shear",))
    with pytest.raises(ValueError, match="conv9"):
        InvarianceCurves(layers=["conv9"]).attach(SmallCNN(in_channels=1))
    with pytest.raises(ValueError, match="unknown transformation"):
        transformation_values("flip")


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(max_size=4))
def test_on_generated_networks_the_curves_draw_and_leave_the_model_as_it_was(plan: list[Any]) -> None:
    torch.manual_seed(0)
    net = GeneratedNet(plan)
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    shot = InvarianceCurves(transformations=("scale",)).snapshot(net, Probe(torch.rand(2, 1, 8, 8)),
                                                                 Context(Moment(epoch=0, step=0)))  # fmt: skip
    assert list(shot.images) == ["cnnviz/invariance/scale"] and len(shot.scalars) == 2
    assert all(np.isfinite(v) for v in shot.scalars.values())
    assert net.training and not hooks_left(net) and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
