"""Feature inversion (Mahendran and Vedaldi 2015): the TV prior and PSNR against hand computations, the objective's
gradient against the paper's formula written out, an invertible layer inverted exactly, a batch of images and
layers equal to each one alone, the picture's layout and numbers, and on generated networks: every site's code
distance lowered, nothing of the model's left changed."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from generated_nets import GeneratedNet, plans
from hypothesis import HealthCheck, given, settings
from torch import nn

from conftest import TinyCNN, hooks_left
from lightning_cnnviz.core import Context, DoesNotApply, InputScale, Moment, Probe
from lightning_cnnviz.core.methods.inversion import CodeSite, code_distances, codes, invert, psnr, total_variation
from lightning_cnnviz.core.monitors.inversion import FeatureInversion


def test_total_variation_and_psnr_are_their_hand_sums() -> None:
    torch.manual_seed(0)
    images = torch.rand(2, 3, 5, 6)
    array = images.double().numpy()
    for beta in (2.0, 1.0, 3.0):
        expected = np.zeros(2)
        for n in range(2):
            total = 0.0
            for c in range(3):
                for y in range(4):
                    for x in range(5):
                        dx = array[n, c, y, x + 1] - array[n, c, y, x]
                        dy = array[n, c, y + 1, x] - array[n, c, y, x]
                        total += (dx * dx + dy * dy) ** (beta / 2)
            expected[n] = total / (3 * 4 * 5)
        np.testing.assert_allclose(total_variation(images, beta).numpy(), expected, rtol=1e-4)
    reference = torch.rand(2, 3, 5, 6)
    mse = ((images - reference) ** 2).mean(dim=(1, 2, 3))
    torch.testing.assert_close(psnr(images, reference), 10 * torch.log10(1 / mse))


def test_one_step_follows_the_papers_objective() -> None:
    """Adam's first step moves each pixel against the sign of the gradient of ||phi(x) - phi0||^2 / ||phi0||^2 +
    tv * TV(x), written out here by hand."""
    torch.manual_seed(0)
    net = TinyCNN(in_channels=3).eval()
    images = torch.rand(2, 3, 8, 8)
    sites = [CodeSite("conv1"), CodeSite("fc", True)]
    start = invert(net, images, sites, steps=0)  # the starting noise
    after = invert(net, images, sites, steps=1, lr=1e-3, tv=0.3)
    x = start.flatten(0, 1).clone().requires_grad_(True)
    with torch.no_grad():
        target1, code0 = net.conv1(images), net.relu2(net.conv2(net.relu1(net.conv1(images)))).mean(dim=(2, 3))
    mine1 = net.conv1(x[:2])
    mine2 = net.relu2(net.conv2(net.relu1(net.conv1(x[2:])))).mean(dim=(2, 3))
    loss = ((mine1 - target1) ** 2).sum(dim=(1, 2, 3)) / (target1**2).sum(dim=(1, 2, 3))
    loss2 = ((mine2 - code0) ** 2).sum(dim=1) / (code0**2).sum(dim=1)
    dx, dy = x[..., :-1, 1:] - x[..., :-1, :-1], x[..., 1:, :-1] - x[..., :-1, :-1]
    total = loss.sum() + loss2.sum() + 0.3 * (dx**2 + dy**2).mean(dim=(1, 2, 3)).sum()
    (grad,) = torch.autograd.grad(total, x)
    moved = (after - start).flatten(0, 1)
    strong = grad.abs() > 1e-4
    assert bool(strong.any())
    assert torch.equal(torch.sign(moved[strong]), -torch.sign(grad[strong]))


def test_an_invertible_layer_is_inverted_and_the_code_is_nearest() -> None:
    """A 1x1 conv with an invertible weight keeps everything: its inversion without prior is the image."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 3), nn.Flatten(), nn.Linear(4 * 36, 3)).eval()
    images = torch.rand(4, 3, 8, 8)
    rebuilt = invert(net, images, [CodeSite("0")], steps=300, lr=0.05, tv=0.0)[0]
    assert float(psnr(rebuilt, images).min()) > 40
    distances = code_distances(net, rebuilt, images, CodeSite("0"))  # (reconstructions, originals)
    assert torch.equal(distances.argmin(dim=1), torch.arange(4))


def test_a_batch_of_images_and_layers_is_each_one_alone() -> None:
    torch.manual_seed(0)
    net = TinyCNN(in_channels=3).eval()
    images = torch.rand(3, 3, 8, 8)
    sites = [CodeSite("conv1"), CodeSite("conv2"), CodeSite("fc", True)]
    together = invert(net, images, sites, steps=20)
    for index, site in enumerate(sites):
        alone = invert(net, images[1:2], [site], steps=20)
        torch.testing.assert_close(together[index, 1:2], alone[0], atol=2e-5, rtol=0)


def test_the_picture_shows_each_reconstruction_with_its_psnr() -> None:
    torch.manual_seed(0)
    net = TinyCNN(in_channels=3)
    net.train()
    inversion = FeatureInversion(steps=12, images=3)
    probe = Probe(torch.rand(5, 3, 8, 8), torch.tensor([0, 1, 2, 0, 1]))
    context = Context(Moment(epoch=2, step=40), scale=InputScale([0.5, 0.5, 0.5], [0.25, 0.25, 0.25]))
    shot = inversion.snapshot(net, probe, context)
    assert net.training and not hooks_left(net) and all(p.grad is None for p in net.parameters())
    assert [str(site) for site in inversion.sites] == ["conv1", "conv2", "fc (input)"]
    assert inversion.last_images is not None and tuple(inversion.last_images.shape) == (3, 3, 3, 8, 8)
    originals = (probe.images[:3] * 0.25 + 0.5).clamp(0, 1)
    for index, name in enumerate(["conv1", "conv2", "fc"]):
        expected = float(psnr(inversion.last_images[index], originals).mean())
        assert shot.scalars[f"cnnviz/inversion/psnr/{name}"] == pytest.approx(expected, rel=1e-5)
        assert shot.scalars[f"cnnviz/inversion/code_error/{name}"] >= 0
    picture = shot.images["cnnviz/inversion"]
    # 3 rows of 4 tiles (original and 3 layers), each 96 px plus its 12 px caption band, 2 px apart
    assert tuple(picture.shape) == (3, 2 + 3 * (96 + 12 + 2), 2 + 4 * (96 + 2))
    tile = picture[:, 2 + 12 : 2 + 12 + 96, 2 : 2 + 96]  # the first original, upscaled 12x (its top row under
    torch.testing.assert_close(tile[:, 12::12, ::12], originals[0, :, 1:], atol=1 / 255, rtol=0)  # the caption)
    assert "PSNR per layer conv1" in shot.captions["cnnviz/inversion"]
    evolution = shot.images["cnnviz/inversion_evolution"]
    inversion.snapshot(net, probe, Context(Moment(epoch=3, step=60)))
    assert inversion.history.stacked("inversion")[0].shape[:2] == (4, 2)  # original and 3 layers x 2 calls
    assert evolution.shape[0] == 3


def test_without_a_known_scale_the_box_is_the_probes_range_and_errors_are_clear() -> None:
    torch.manual_seed(0)
    net = TinyCNN(in_channels=3).eval()
    inputs = torch.rand(2, 3, 8, 8) * 5 - 2
    inversion = FeatureInversion(steps=30, layers=["conv1"])
    shot = inversion.snapshot(net, Probe(inputs), Context(Moment(epoch=0, step=0)))
    assert shot.scalars["cnnviz/inversion/psnr/conv1"] > 15
    with pytest.raises(ValueError, match="layer.*'conv9'.*conv1"):
        FeatureInversion(layers=["conv9"]).attach(net, inputs[:1])
    with pytest.raises(DoesNotApply, match="2-D images"):
        FeatureInversion().attach(nn.Sequential(nn.Conv1d(1, 2, 3)), torch.rand(1, 1, 8))
    with pytest.raises(ValueError, match="tv.*>= 0"):
        FeatureInversion(tv=-1)
    with pytest.raises(ValueError, match="images.*N, C, H, W"):
        invert(net, torch.rand(3, 8, 8), [CodeSite("conv1")])
    with pytest.raises(ValueError, match="read once, by its output or by its input"):
        codes(net, inputs, [CodeSite("fc"), CodeSite("fc", True)])


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(max_size=4))
def test_on_generated_networks_every_layer_gets_closer_and_the_model_is_left_as_it_was(plan: list[Any]) -> None:
    """Whatever the forward (activations spelled every way, containers called twice, residuals, checkpoints), the
    reconstruction from each conv's output has a code nearer the original's than the noise it started from, and
    the model's parameters, gradients, modes and hooks are as they were."""
    torch.manual_seed(0)
    net = GeneratedNet(plan)
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    images = torch.rand(2, 1, 8, 8)
    sites = [CodeSite(name) for name, m in net.named_modules() if isinstance(m, nn.Conv2d)]
    start = invert(net, images, sites, steps=0)
    rebuilt = invert(net, images, sites, steps=25, lr=0.05, tv=0.0)
    assert net.training and not hooks_left(net) and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
    with torch.no_grad():
        targets = codes(net.eval(), images, sites)
    for index, site in enumerate(sites):
        near = code_distances(net, rebuilt[index], images, site).diagonal()
        far = code_distances(net, start[index], images, site).diagonal()
        live = targets[index].flatten(1).norm(dim=1) > 0
        assert bool((near[live] < far[live] + 1e-6).all()), (site, near, far)
