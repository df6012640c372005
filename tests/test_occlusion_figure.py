"""The whole Zeiler & Fergus occlusion figure: panels (b), (d) and (e) equal a plain loop that occludes one position
at a time and reads the layer with forward hooks (the demo CNN, torchvision's ResNet-18, generated networks); the
forwards shared with SaliencyMonitor's occlusion (run once, in either order, and the map unchanged); what
segmentation, detection and other tasks show; the picture; clear errors; the model left as it was."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
import torchvision
from generated_nets import GeneratedNet, plans
from hypothesis import HealthCheck, given, settings
from torch import Tensor, nn

from conftest import hooks_left
from lightning_cnnviz.core import (
    Context,
    DoesNotApply,
    Moment,
    OcclusionFigure,
    Probe,
    ProbeService,
    SaliencyPanel,
    occlude,
)
from lightning_cnnviz.core.drawing.plots import class_colours
from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.core.monitors.activation_atlas import last_conv_block
from lightning_cnnviz.core.monitors.perturbation.occlusion_figure import Panels
from lightning_cnnviz.demo.models import SmallCNN


def context(step: int = 0, shared: ProbeService | None = None) -> Context:
    return Context(Moment(epoch=step, step=step), shared=shared or ProbeService())


def windows(size: int, patch: int, stride: int) -> list[tuple[int, int]]:
    """Each square's first and last-plus-one pixel along one axis: offsets k * stride, the last clipped."""
    count = math.ceil((size - patch) / stride) + 1 if size > patch else 1
    return [(k * stride, min(k * stride + patch, size)) for k in range(count)]


def loop(model: nn.Module, images: Tensor, layer: str, patch: int, stride: int) -> tuple[Tensor, Tensor, Tensor]:
    """One occluded copy at a time through the model alone, the layer read by a forward hook: per image and
    position, every channel's total, the softmax probabilities; and the unoccluded totals."""
    module = dict(model.named_modules())[layer]
    seen: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, args, out: seen.append(out.detach().clone()))  # before in-place
    totals, probabilities, clean = [], [], []
    model.eval()
    try:
        with torch.no_grad():
            for image in images:
                seen.clear()
                model(image[None])
                clean.append(seen[0].sum(dim=(2, 3))[0])
                mean = image.mean(dim=(1, 2), keepdim=True)
                for top, bottom in windows(image.shape[1], patch, stride):
                    for left, right in windows(image.shape[2], patch, stride):
                        copy = image.clone()
                        copy[:, top:bottom, left:right] = mean.expand(-1, bottom - top, right - left)
                        seen.clear()
                        logits = model(copy[None])
                        totals.append(seen[0].sum(dim=(2, 3))[0])
                        probabilities.append(logits.softmax(dim=1)[0])
    finally:
        handle.remove()
    count = len(images)
    return (torch.stack(totals).view(count, -1, totals[0].shape[0]),
            torch.stack(probabilities).view(count, -1, probabilities[0].shape[0]), torch.stack(clean))  # fmt: skip


def check_panels(panels: Panels, model: nn.Module, images: Tensor, labels: Tensor, layer: str, patch: int,
                 stride: int) -> None:  # fmt: skip
    totals, probabilities, clean = loop(model, images, layer, patch, stride)
    channel = clean.argmax(dim=1)
    assert torch.equal(panels.channel.cpu(), channel)
    b = totals[torch.arange(len(images)), :, channel].float()
    scale = float(b.abs().max())
    torch.testing.assert_close(panels.b.cpu(), b, rtol=0, atol=1e-6 * scale)  # (b) to 1e-6 of scale
    d = probabilities.gather(2, labels[:, None, None].expand(-1, probabilities.shape[1], 1))[..., 0].float()
    torch.testing.assert_close(panels.d.cpu(), d, rtol=0, atol=1e-6)  # (d) to 1e-6
    assert torch.equal(panels.e.cpu(), probabilities.argmax(dim=2))  # (e) exactly


def test_panels_equal_a_plain_loop_over_positions_on_the_demo_cnn() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=3, num_classes=10).double().eval()
    images, labels = torch.rand(3, 3, 20, 20, dtype=torch.float64), torch.tensor([1, 4, 7])
    figure = OcclusionFigure(patch=6, stride=3)
    figure.attach(net, images[:1])
    panels, said = figure.measure(net, images, labels, context(), context().guard)
    assert said == "p(true class)" and figure.chosen == "relu3"  # the last conv's activation
    check_panels(panels, net, images, labels, "relu3", 6, 3)
    named = OcclusionFigure(layer="conv3", patch=6, stride=3)
    panels, _ = named.measure(net, images, labels, context(), context().guard)
    check_panels(panels, net, images, labels, "conv3", 6, 3)  # a layer named: its output


def test_panels_equal_a_plain_loop_on_resnet18_at_its_default_window() -> None:
    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    images, labels = torch.rand(2, 3, 32, 32), torch.tensor([3, 8])
    figure = OcclusionFigure()
    figure.attach(net, images[:1])
    assert figure.window(images) == (8, 2) and figure.chosen == "layer4.1"  # the last block, after its add and ReLU
    panels, _ = figure.measure(net, images, labels, context(), context().guard)
    assert panels.b.shape == (2, 13 * 13)
    check_panels(panels, net, images, labels, "layer4.1", 8, 2)


def test_the_forwards_are_shared_with_saliency_occlusion_in_either_order_and_its_map_is_unchanged() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=5).eval()
    images, labels = torch.rand(4, 1, 16, 16), torch.tensor([0, 1, 2, 3])
    alone = S.occlusion(net, images, labels, patch=4, stride=1)
    for figure_first in (True, False):
        shared = ProbeService()
        figure, panel = OcclusionFigure(), SaliencyPanel(methods=("occlusion",), task="classification")
        figure.attach(net, images[:1])
        figure.share(shared)  # what the adapter does at setup
        first, second = (figure, panel) if figure_first else (panel, figure)
        first.snapshot(net, Probe(images[:2] if figure_first else images, labels), context(7, shared))
        second.snapshot(net, Probe(images, labels), context(7, shared))
        # the figure's two images (a prefix of saliency's four) run once: the second request adds the others
        assert shared.occlusions.runs == (2 if figure_first else 1)
        kept = shared.occlusions.occlude(net, images, patch=4, stride=1)
        assert shared.occlusions.runs == (2 if figure_first else 1) and "relu3" in kept.totals
        torch.testing.assert_close(S.occlusion(net, images, labels, patch=4, stride=1, memo=shared.occlusions),
                                   alone, rtol=0, atol=1e-6)  # fmt: skip
    shared.occlusions.at(8)  # another step: the forwards are run again
    shared.occlusions.occlude(net, images, patch=4, stride=1)
    assert shared.occlusions.runs == 2


def test_the_picture_holds_each_panel_and_the_label_map_in_its_colours() -> None:
    torch.manual_seed(0)
    net = SmallCNN(in_channels=1, num_classes=5).eval()
    images, labels = torch.rand(2, 1, 16, 16), torch.tensor([0, 3])
    figure = OcclusionFigure(min_px=64, class_names=list("abcde"))
    shot = figure.snapshot(net, Probe(images, labels), context())
    picture = shot.images["cnnviz/occlusion/relu3"]
    size, header = 64, 14  # 16 px images enlarged 4 times; a header band of titles
    assert picture.shape == (3, header + 2 + 2 * (size + 2), 2 + 6 * (size + 2))
    panels, _ = figure.measure(net, images, labels, context(), context().guard)
    grid = panels.e[1].view(13, 13)
    # the bottom-right cell of (e) (fifth column) of the second row, away from captions: that cell's class colour
    y, x = header + 2 + (size + 2) + size - 2, 2 + 4 * (size + 2) + size - 2
    torch.testing.assert_close(picture[:, y, x], class_colours(grid[-1, -1].view(1))[:, 0], atol=1 / 255, rtol=0)


def test_segmentation_reads_each_pixel_s_true_class_and_other_tasks_leave_out_d_and_e() -> None:
    torch.manual_seed(0)
    seg = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 3, 1)).eval()
    images = torch.rand(2, 1, 8, 8)
    masks = torch.randint(0, 3, (2, 8, 8))
    figure = OcclusionFigure(layer="0", patch=2, stride=2)
    panels, said = figure.measure(seg, images, masks, context(), context().guard)
    assert said == "mean p(true class of each pixel)"
    expected_d, expected_e = [], []
    with torch.no_grad():
        for image, mask in zip(images, masks):
            for top, bottom in windows(8, 2, 2):
                for left, right in windows(8, 2, 2):
                    copy = image.clone()
                    copy[:, top:bottom, left:right] = image.mean()
                    probabilities = seg(copy[None]).softmax(dim=1)[0]
                    expected_d.append(probabilities.gather(0, mask[None]).mean())
                    counts = torch.bincount(probabilities.argmax(dim=0).flatten(), minlength=3)[1:]
                    expected_e.append(counts.argmax() + 1 if counts.max() > 0 else torch.tensor(0))
    torch.testing.assert_close(panels.d.flatten(), torch.stack(expected_d), rtol=0, atol=1e-6)
    assert torch.equal(panels.e.flatten(), torch.stack(expected_e))

    regression = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 1))
    said_once: list[str] = []
    guard = context().guard
    guard._inform = said_once.append  # type: ignore[method-assign]
    panels, said = OcclusionFigure(patch=2, stride=2).measure(regression, images, None, context(), guard)
    assert said == "" and bool(panels.d.isnan().all()) and bool((panels.e == -1).all())
    assert any("(d) and (e) read class probabilities" in text for text in said_once)
    shot = OcclusionFigure(patch=2, stride=2).snapshot(regression, Probe(images), context())
    assert shot.images["cnnviz/occlusion/1"].shape[-1] == 2 + 3 * (96 + 2)  # [image | (b) | (c)], after the ReLU


def test_bad_arguments_and_networks_without_2d_maps_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="`stride` .* must not exceed `patch`"):
        OcclusionFigure(patch=2, stride=3)
    with pytest.raises(ValueError, match="projection"):
        OcclusionFigure(projection="lrp")  # type: ignore[arg-type]
    net = SmallCNN(in_channels=1)
    with pytest.raises(ValueError, match="conv9"):
        OcclusionFigure(layer="conv9").attach(net)
    with pytest.raises(DoesNotApply, match="2-D images"):
        OcclusionFigure().attach(nn.Sequential(nn.Conv1d(1, 2, 3), nn.Flatten(), nn.Linear(12, 2)))
    with pytest.raises(ValueError, match="not one map per channel"):
        occlude(net, torch.rand(1, 1, 8, 8), patch=2, stride=2, layers=["fc"])


@settings(max_examples=10, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(plan=plans(max_size=4))
def test_on_generated_networks_b_equals_the_loop_and_the_model_is_left_as_it_was(plan: list[Any]) -> None:
    """Whatever the forward (activations spelled every way, containers called twice, residuals), panel (b) of the
    default layer equals the plain loop, the figure draws, and the model's parameters, gradients, modes and hooks
    are as they were."""
    torch.manual_seed(0)
    net = GeneratedNet(plan).double()  # float64: batched and single forwards then agree far below 1e-6
    net.train()
    before = [p.detach().clone() for p in net.parameters()]
    images = torch.rand(2, 1, 8, 8, dtype=torch.float64)
    figure = OcclusionFigure()
    layer = last_conv_block(net, images)
    panels, _ = figure.measure(net, images, None, context(), context().guard)
    totals, _, clean = loop(net, images, layer, 2, 1)
    net.train()
    b = totals[torch.arange(2), :, clean.argmax(dim=1)].float()
    torch.testing.assert_close(panels.b, b, rtol=0, atol=1e-6 * max(float(b.abs().max()), 1e-6))
    shot = figure.snapshot(net, Probe(images), context())
    assert list(shot.images) == [f"cnnviz/occlusion/{layer}"]
    assert net.training and not hooks_left(net) and all(p.grad is None for p in net.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, net.parameters(), strict=True))
