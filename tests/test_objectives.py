"""Objectives that compose (neuron, channel, layer, class logit and probability, direction, their sums and
scalings) against hand computations; the layer objective is DeepDream's step; class models: the paper's plain
variant on a logistic regression is the class's weight image, a batch of classes is each class rendered alone, and
a model without class scores is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from lightning_cnnviz.core import Context, DoesNotApply, Moment, Probe
from lightning_cnnviz.core.methods.feature_vis import evaluate, render_objective, render_pixels
from lightning_cnnviz.core.methods.objectives import (
    OUTPUT,
    channel,
    class_logit,
    class_probability,
    direction,
    layer,
    neuron,
)
from lightning_cnnviz.core.monitors.class_models import ClassModels


def outputs() -> dict[str, Tensor]:
    torch.manual_seed(0)
    return {"conv": torch.randn(3, 4, 5, 6), OUTPUT: torch.randn(3, 7)}


def test_each_objective_is_its_hand_computation() -> None:
    found = outputs()
    act, logits = found["conv"], found[OUTPUT]
    expected_neuron = torch.stack([act[0, 1, 2, 3], act[1, 2, 2, 3], act[2, 3, 2, 3]])  # the centre of 5 x 6
    torch.testing.assert_close(neuron("conv", [1, 2, 3])(found), expected_neuron)
    torch.testing.assert_close(neuron("conv", 0, position=(1, 4))(found), act[:, 0, 1, 4])
    torch.testing.assert_close(channel("conv", 2)(found), act[:, 2].mean(dim=(1, 2)))
    torch.testing.assert_close(layer("conv")(found), (act**2).mean(dim=(1, 2, 3)))
    torch.testing.assert_close(class_logit([6, 0, 3])(found), torch.stack([logits[0, 6], logits[1, 0], logits[2, 3]]))
    probability = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    torch.testing.assert_close(class_probability(5)(found), probability[:, 5])
    vector = torch.randn(4)
    by_hand = torch.stack([sum(act[i, c] * vector[c] for c in range(4)).mean() for i in range(3)])
    torch.testing.assert_close(direction("conv", vector)(found), by_hand)
    vectors = torch.randn(3, 4)
    by_hand = torch.stack([(act[i] * vectors[i][:, None, None]).sum(0).mean() for i in range(3)])
    torch.testing.assert_close(direction("conv", vectors)(found), by_hand)
    combined = 2 * channel("conv", 1) - layer("conv") / 4 + class_logit(2)
    expected = 2 * act[:, 1].mean(dim=(1, 2)) - (act**2).mean(dim=(1, 2, 3)) / 4 + logits[:, 2]
    torch.testing.assert_close(combined(found), expected)
    assert str(combined) == "2 * channel conv:1 - 0.25 * layer conv + class logit 2"
    assert combined.layers == ("conv", OUTPUT) and combined.needs_output


def test_bad_objectives_are_refused_with_what_is_allowed() -> None:
    with pytest.raises(ValueError, match="index is a channel or class number >= 0"):
        channel("conv", -1)
    with pytest.raises(ValueError, match="names 2 indices for 3 images"):
        channel("conv", [0, 1])(outputs())
    with pytest.raises(ValueError, match="a direction is a vector"):
        direction("conv", torch.zeros(1, 2, 3))


def test_evaluate_reads_a_network_as_independent_hooks_do() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.Flatten(), nn.Linear(5 * 16, 6)).eval()
    images = torch.rand(2, 3, 8, 8)
    seen: dict[str, Tensor] = {}
    handle = net[2].register_forward_hook(lambda m, a, out: seen.update(conv=out.detach()))
    with torch.no_grad():
        logits = net(images)
    handle.remove()
    objective = channel("2", [1, 4]) + 0.5 * class_logit([5, 2])
    with torch.no_grad():
        value = evaluate(net, objective, images)
    expected = seen["conv"][[0, 1], [1, 4]].mean(dim=(1, 2)) + 0.5 * logits[[0, 1], [5, 2]]
    torch.testing.assert_close(value, expected)
    with torch.no_grad():  # without the output, the forward stops at the layer (the head never runs)
        torch.testing.assert_close(evaluate(net, channel("2", 3), images), seen["conv"][:, 3].mean(dim=(1, 2)))


def test_the_layer_objective_is_deep_dreams_step() -> None:
    """DeepDream ascends the mean squared activation of the layer over the batch: the gradient of the layer
    objective averaged over the images is that gradient."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3)).eval()
    images = torch.rand(3, 3, 10, 10, requires_grad=True)
    (ours,) = torch.autograd.grad(evaluate(net, layer("2"), images).mean(), images)
    (dream,) = torch.autograd.grad(net(images).pow(2).mean(), images)
    torch.testing.assert_close(ours, dream, rtol=1e-5, atol=1e-9)


def test_the_plain_class_model_of_a_logistic_regression_is_its_weight_image() -> None:
    """Simonyan et al.: for a linear score w_c . x + b the optimum of S_c(x) - lambda ||x||^2 is w_c / (2 lambda).
    The logistic regression is scikit-learn's, fitted on its bundled digits; the class models are rendered from its
    weights and compared with them."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    pixels = (digits.data / 16.0 - 0.5).astype(np.float32)
    fitted = LogisticRegression(max_iter=500).fit(pixels, digits.target)
    linear = nn.Linear(64, 10)
    with torch.no_grad():
        linear.weight.copy_(torch.from_numpy(fitted.coef_).float())
        linear.bias.copy_(torch.from_numpy(fitted.intercept_).float())
    model = nn.Sequential(nn.Flatten(), linear)
    rendered = render_pixels(model, class_logit(list(range(10))), (10, 1, 8, 8), steps=300, lr=0.05, l2=0.5)
    weights = torch.from_numpy(fitted.coef_).float()
    cosine = torch.nn.functional.cosine_similarity(rendered.flatten(1), weights, dim=1)
    assert cosine.min() >= 0.99, cosine
    torch.testing.assert_close(rendered.flatten(1), weights / (2 * 0.5), rtol=0.02, atol=0.02)


def small_classifier() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(),
                         nn.Linear(16, 5)).eval()  # fmt: skip


def test_a_batch_of_class_models_is_each_class_rendered_alone() -> None:
    net = small_classifier()
    together = render_objective(net, class_logit([0, 3, 4]), 3, size=8, steps=6, seeds=[7, 8, 9])
    for row, (cls, seed) in enumerate(zip([0, 3, 4], [7, 8, 9], strict=True)):
        alone = render_objective(net, class_logit(cls), 1, size=8, steps=6, seeds=[seed])
        torch.testing.assert_close(together[row : row + 1], alone, rtol=1e-4, atol=1e-5)


def test_class_models_draw_every_class_and_refuse_a_model_without_classes() -> None:
    net = small_classifier()
    probe = Probe(torch.rand(6, 3, 8, 8), torch.tensor([0, 1, 2, 3, 4, 0]))
    models = ClassModels(steps=4, class_names=["a", "b", "c", "d", "e"])
    shot = models.snapshot(net, probe, Context(Moment(epoch=0, step=0)))
    assert models.chosen == [0, 1, 2, 3, 4] and models.last_images is not None
    assert shot.captions["cnnviz/class_models"].endswith("a, b, c, d, e")
    with pytest.raises(ValueError, match="class 7 is out of range: the model gives 5 class scores"):
        ClassModels(classes=[7]).attach(net, probe.images)
    regression = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(144, 1)).eval()
    with pytest.raises(DoesNotApply, match="it needs class scores, and the task is regression"):
        ClassModels().attach(regression, probe.images)
    with pytest.raises(ValueError, match="`objective`"):
        ClassModels(objective="softmax")
