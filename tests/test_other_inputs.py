"""Detectors and 1-D/3-D networks: all seven monitors at their defaults (only cost arguments shrunk) finish the fit on
torchvision's Faster R-CNN (which resizes its input), a Conv1d and a Conv3d network; what cannot apply is said once
as such. On the detector the image monitors work on its backbone (receptive fields exact against input gradients)
and the saliency maps explain the highest-scoring box, as captum does given the same function; the dead sets of the
Conv1d and Conv3d networks equal a brute-force count; Conv1d and Conv3d filters are drawn and scored."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torchvision.ops.misc
from captum.attr import Saliency
from torch import Tensor, nn

from conftest import assert_field_is_gradient_support, fit_listening, make_trainer, read_events
from lightning_cnnviz import (
    ActivationAtlasMonitor,
    ActivationMapMonitor,
    ActivationMonitor,
    ClassModelMonitor,
    EmbeddingMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    InvarianceMonitor,
    InversionMonitor,
    OcclusionMonitor,
    SaliencyMonitor,
    TopPatchMonitor,
)
from lightning_cnnviz.core import SaliencyPanel, TopPatchGallery, filter_smoothness, render_filter_grid
from lightning_cnnviz.core.drawing.filters import render_profiles
from lightning_cnnviz.core.drawing.render import render_saliency
from lightning_cnnviz.core.methods.saliency import vanilla_gradient
from lightning_cnnviz.core.model.trunk import ImageEntry, Trunk
from lightning_cnnviz.demo.tasks import OTHER_INPUTS, TaskModule, boxes, task

SALIENCY = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")
IMAGE_MONITORS = ("SaliencyMonitor", "TopPatchMonitor", "EmbeddingMonitor", "FeatureVisMonitor", "ClassModelMonitor",
                  "InversionMonitor", "ActivationAtlasMonitor", "OcclusionMonitor", "InvarianceMonitor")
WRITTEN = {
    "filter": ["cnnviz/filters/net."],
    "activation": ["cnnviz/activations/dead_fraction/", "cnnviz/activations/sparsity/", "cnnviz/activations/dead_map"],
    "activation_maps": ["cnnviz/activation_maps/net.backbone.", "cnnviz/activation_maps_evolution/net.backbone."],
    "saliency": [f"cnnviz/saliency/{method}" for method in SALIENCY],
    "top_patch": ["cnnviz/top_patches/net.backbone.", "cnnviz/evolution/net.backbone."],
    "embedding": ["cnnviz/embedding/tsne", "cnnviz/embedding/grid"],
    "feature_vis": [
        "cnnviz/feature_vis/net.backbone.", "cnnviz/feature_vis_patches/net.backbone.", "cnnviz/deep_dream"
    ],
    "inversion": ["cnnviz/inversion_evolution", "cnnviz/inversion/psnr/net.backbone."],
    "activation_atlas": ["cnnviz/activation_atlas/net.backbone."],
    "occlusion": ["cnnviz/occlusion/net.backbone."],
    "invariance": ["cnnviz/invariance/translation", "cnnviz/invariance/translation/net.backbone."],
}
KNN = "EmbeddingMonitor: the kNN accuracy does not apply: it needs one integer class per image"


def all_monitors(channels: int = 16) -> dict[str, pl.Callback]:
    """All twelve monitors at their defaults, only the cost arguments (probe sizes, vectors, steps, occlusion stride,
    channels per layer, transformations) shrunk."""
    return {
        "filter": FilterMonitor(),
        "activation": ActivationMonitor(every_n_steps=2),
        "activation_maps": ActivationMapMonitor(),
        "saliency": SaliencyMonitor(num_images=2, smoothgrad_samples=2, occlusion_stride=16),
        "top_patch": TopPatchMonitor(probe_size=8, max_channels=channels),
        "embedding": EmbeddingMonitor(probe_size=8, every_n_epochs=1),
        "feature_vis": FeatureVisMonitor(steps=4, probe_size=8, every_n_epochs=1, max_channels=channels),
        "class_models": ClassModelMonitor(steps=4, probe_size=8),
        "inversion": InversionMonitor(steps=4),
        "activation_atlas": ActivationAtlasMonitor(probe_size=8, vectors=100, grid=4, steps=4),
        "occlusion": OcclusionMonitor(probe_size=2, stride=16),
        "invariance": InvarianceMonitor(probe_size=2, transformations=("translation",)),
    }


def fcos() -> tuple[pl.LightningModule, pl.LightningDataModule]:
    """torchvision's FCOS (ResNet-50 FPN, untrained), resizing the 64-pixel images to 96, on the detection data."""
    from torchvision.models.detection import fcos_resnet50_fpn

    net = fcos_resnet50_fpn(weights=None, weights_backbone=None, num_classes=3, min_size=96, max_size=96)
    detection, data = task("detection")
    return TaskModule(net, detection.loss, detects=True), data


def fit_all(name: str, tmp_path: Path) -> tuple[dict[str, pl.Callback], list[str], list[str], list[str]]:
    """Fit task ``name`` with all seven monitors: (monitors, warnings said, informations told, tags written)."""
    pl.seed_everything(0, verbose=False)
    model, data = fcos() if name == "fcos" else task(name)
    monitors = all_monitors(4 if name == "fcos" else 16)
    trainer = make_trainer(tmp_path, list(monitors.values()), max_epochs=1, limit_train_batches=2)
    said, told = fit_listening(trainer, model, data)
    said = [message for message in said if "are dead at step" not in message]
    events = read_events(tmp_path)
    return monitors, said, told, [*events["images"], *events["scalars"], *events["histograms"]]


@pytest.mark.parametrize("name", [*OTHER_INPUTS, "fcos"])
def test_all_monitors_at_their_defaults_finish_on_detectors_and_1d_3d_networks(name: str, tmp_path: Path) -> None:
    monitors, said, told, tags = fit_all(name, tmp_path)
    assert [m for m in said if "failed with" in m or "switched off" in m] == []
    off = [m for m in said if "does not apply" in m]
    if name in ("detection", "fcos"):
        assert len(off) == 2 and any(m.startswith(KNN) for m in off), off  # boxes, not one class per image
        classless = "ClassModelMonitor: does not apply: it needs class scores, and the task is detection"
        assert any(m.startswith(classless) for m in off), off
        writers = list(WRITTEN)
        chosen = [m for m in told if "so the probe images go directly into 'net.backbone' (its `backbone`)" in m]
        assert sorted(m.split(":")[0] for m in chosen) == ["ActivationAtlasMonitor", "ActivationMapMonitor",
                                                           "EmbeddingMonitor", "FeatureVisMonitor", "InvarianceMonitor",
                                                           "InversionMonitor", "OcclusionMonitor",
                                                           "TopPatchMonitor"]  # fmt: skip
        assert any(m.startswith("OcclusionMonitor: panels (d) and (e) read class probabilities, and the task is "
                                "detection") for m in told), told  # fmt: skip
        assert f"(64, 64) -> {(96, 96) if name == 'fcos' else (320, 320)}" in chosen[0]
        assert any(m.startswith("SaliencyMonitor: task 'detection'") and "highest-scoring box" in m for m in told)
    else:
        kind = "nn.Conv1d" if name == "signal" else "nn.Conv3d"
        expected = [
            f"{who}: does not apply: it needs 2-D images (N, C, H, W) and nn.Conv2d layers, and TaskModule has "
            f"{kind} layers. It stays off; the fit goes on."
            for who in IMAGE_MONITORS
        ]
        assert sorted(off) == sorted(expected)
        writers = ["filter", "activation", "activation_maps"]
        images = ("saliency", "top_patches", "embedding", "feature_vis", "feature_vis_patches", "deep_dream",
                  "class_models", "inversion", "activation_atlas", "occlusion", "invariance")
        assert not [tag for tag in tags if tag.startswith(tuple(f"cnnviz/{kind}" for kind in images))]
    for monitor in writers:
        for prefix in WRITTEN[monitor]:
            if name not in ("detection", "fcos"):
                prefix = prefix.removesuffix("net.backbone.")
            assert any(tag.startswith(prefix) for tag in tags), f"{name}: {monitor} wrote no {prefix}"
    assert all(not m.guard.disabled - {"the kNN accuracy"} for m in monitors.values())  # type: ignore[attr-defined]


def _positive(model: nn.Module) -> nn.Module:
    """Weights > 0 (no ReLU zeros) and squeeze-excitation gates kept in their linear range: every pixel that a
    position depends on gives it a non-zero input gradient."""
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.copy_(parameter.abs() + 0.05)
        for module in model.modules():
            if isinstance(module, torchvision.ops.misc.SqueezeExcitation):
                module.fc2.weight.fill_(1e-9)  # the positive activations grow large: keep the gate unsaturated
                module.fc2.bias.zero_()
    return model.eval()


def test_detector_backbone_receptive_fields_equal_the_support_of_input_gradients() -> None:
    """On the backbone the monitors choose for 64-pixel probe images, measured at 320 pixels: the default layers and
    one before the first squeeze-excitation gate (whose global pooling makes every later position see the image)."""
    model, _ = task("detection")
    model = _positive(model)
    size = 320
    image = torch.rand(1, 3, size, size)
    checked = 0
    for layers in (None, ["net.backbone.body.3.block.0.0"]):
        gallery = TopPatchGallery(layers=layers).selection
        gallery.configure(model)
        part = gallery.fed(model, torch.rand(1, 3, 64, 64))
        assert isinstance(part, Trunk) and part.name == "net.backbone"
        assert gallery.prepare(part, image) and gallery.fields
        modules = dict(part.named_modules())
        for layer, field in gallery.fields.items():
            at = lambda h, w: [(0, 0), (h // 2, w // 3), (h - 1, w - 1)]  # noqa: E731
            checked += assert_field_is_gradient_support(part, modules[layer], field, image, at)
    assert checked >= 3  # fields smaller than the image were compared, not only whole-image ones


def test_detector_saliency_is_captums_for_the_highest_box_score() -> None:
    torch.manual_seed(0)
    model, _ = task("detection")
    model.eval()
    images = torch.stack([image for image, _ in boxes(3, 64, seed=2)])
    panel = SaliencyPanel(methods=("vanilla_gradient",))
    explained = panel.explain(model, images, None)
    assert explained.task == "detection" and explained.target.rule == "highest-scoring box"
    with torch.no_grad():
        output = model(images)
    best = [int(o["scores"].argmax()) for o in output]
    assert explained.captions == [
        f"box {int(o['labels'][b])} {float(o['scores'][b]):.2f} of {len(o['scores'])}" for o, b in zip(output, best)
    ]
    ours = panel.maps(model, images, None, "vanilla_gradient", explained)[:, 0]
    rows = torch.arange(len(images))
    theirs = Saliency(lambda x: explained.target(model(x), x, rows)).attribute(images.clone(), abs=True).amax(dim=1)
    assert float(theirs.amax()) > 0
    torch.testing.assert_close(ours, theirs, atol=1e-5 * float(theirs.abs().amax()), rtol=0)
    direct = vanilla_gradient(model, images, explained.target)
    torch.testing.assert_close(direct, ours)


def test_an_image_without_a_box_is_captioned_so_and_has_an_empty_map() -> None:
    model, _ = task("detection")
    model.net.roi_heads.score_thresh = 2.0  # no score reaches it: no box on any image
    model.eval()
    images = torch.stack([image for image, _ in boxes(2, 64, seed=3)])
    methods = ("vanilla_gradient", "grad_cam", "occlusion")
    panel = SaliencyPanel(methods=methods, occlusion_patch=32, occlusion_stride=32)
    explained = panel.explain(model, images, None)
    assert explained.captions == ["no box", "no box"]
    for method in panel.methods:
        assert float(panel.maps(model, images, None, method, explained).abs().amax()) == 0.0, method


def test_maps_of_any_scale_are_drawn_alike() -> None:
    """A detector's input gradients can be 1e-12 and smaller: the picture of a map does not depend on its scale."""
    images, maps = torch.rand(2, 3, 8, 8), torch.rand(2, 1, 8, 8)
    for scale in (1e-15, 1e-30):
        heat = lambda m: render_saliency(images, m, signed=False)  # noqa: E731
        torch.testing.assert_close(heat(maps * scale), heat(maps))
        signed = maps - 0.5
        torch.testing.assert_close(render_saliency(images, signed * scale), render_saliency(images, signed))


def test_the_entry_is_the_model_unless_it_resizes_and_module_chooses_it() -> None:
    class Resizing(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3))
            self.head = nn.Linear(4, 2)

        def forward(self, x: Tensor) -> Tensor:
            x = nn.functional.interpolate(x, scale_factor=2.0)
            return self.head(self.stem(x).mean(dim=(2, 3)))

    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU())
    example = torch.rand(1, 3, 16, 16)
    assert ImageEntry("Doc").of(plain, example) is plain
    part = ImageEntry("Doc").of(Resizing(), example)
    assert isinstance(part, Trunk) and part.name == "stem"
    assert [name for name, _ in part.named_modules()] == ["stem", "stem.0", "stem.1", "stem.2"]
    assert [name for name, _ in part.named_parameters()] == ["stem.0.weight", "stem.0.bias", "stem.2.weight",
                                                             "stem.2.bias"]  # fmt: skip
    assert ImageEntry("Doc", module="stem.0").of(Resizing(), example).name == "stem.0"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match=r"Doc `module`: no module named 'trunk'.*'stem'"):
        ImageEntry("Doc", module="trunk").check(Resizing())


class Frozen(pl.LightningModule):
    """A frozen (lr = 0) 1-D or 3-D network whose training batches are recorded."""

    def __init__(self, net: nn.Sequential) -> None:
        super().__init__()
        self.net, self.seen = net, []  # type: ignore[var-annotated]

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        self.seen.append(batch[0].detach().clone())
        return nn.functional.cross_entropy(self(batch[0]), batch[1])

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.0)


@pytest.mark.parametrize("name", ["signal", "clip"])
def test_dead_sets_of_conv1d_and_conv3d_networks_equal_brute_force(name: str, tmp_path: Path) -> None:
    torch.manual_seed(1)
    user, data = task(name)
    net: nn.Sequential = user.net  # type: ignore[assignment]
    with torch.no_grad():
        net[0].bias[:3] = -5.0  # dead on every input
        net[2].bias[::2] = -0.05  # dead on some windows only
    model = Frozen(net)
    monitor = ActivationMonitor(every_n_steps=2, on_error="raise")
    make_trainer(tmp_path, [monitor], limit_val_batches=0, limit_train_batches=4).fit(model, datamodule=data)
    windows = [torch.cat(model.seen[i : i + 2]) for i in range(0, len(model.seen), 2)]
    dead_seen = 0
    for index, window in enumerate(windows):
        with torch.no_grad():
            first = torch.relu(net[0](window))
            second = torch.relu(net[2](first))
        for site, act in (("net.1", first), ("net.3", second)):
            expected = [c for c in range(act.shape[1]) if not bool((act[:, c] > 0).any())]
            reported = [c for c, rate in enumerate(monitor.health.rate_history[site][index]) if rate == 0]
            assert reported == expected, (name, index, site)
            dead_seen += len(expected)
    assert dead_seen >= 3 * len(windows)


def test_conv1d_filters_are_line_plots_and_conv3d_filters_temporal_slices() -> None:
    ramp = torch.tensor([[[0.0, 1.0, 2.0, 3.0, 4.0]]])  # one Conv1d filter of one input channel
    tile = render_profiles(ramp, min_tile_px=32)[0]
    height, width = tile.shape[-2:]
    black = (tile.sum(dim=0) == 0).nonzero()
    # the line rises from the bottom-left (value 0: row height - 2) to the top-right (value 4: row 1)
    assert black[black[:, 1] == 0, 0].max().item() == height - 2
    assert black[black[:, 1] == width - 1, 0].tolist() == [1]
    assert black[:, 1].unique().numel() == width
    # a lag-1 ramp: D = 1, V = 2 along the one axis, so 1 - 1 / 4; over t x h x w the 2-D formula generalises
    assert filter_smoothness(ramp).item() == pytest.approx(0.75)
    cube = torch.arange(3.0)[:, None, None].expand(3, 4, 4)[None, None]  # a ramp over time, constant in space
    pairs, differences = 2 * 16 + 3 * 3 * 4 * 2, 2 * 16 * 1.0  # neighbour pairs and squared differences
    variance = torch.arange(3.0).var(unbiased=False).item()
    assert filter_smoothness(cube).item() == pytest.approx(1 - differences / pairs / (2 * variance))
    clip = torch.zeros(2, 3, 3, 5, 5)
    clip[0, 0, 1] = 1.0  # filter 0: red in its middle slice only
    grid = render_filter_grid(clip, min_tile_px=10)
    assert grid.shape[0] == 3
    red = (grid[0] > 0.9) & (grid[1] < 0.1) & (grid[2] < 0.1)
    # filter 0, after the grid's 4-pixel margin: slices of 5 x 5 upscaled to 10 x 10 in a 1-pixel frame, 12 wide
    assert red.any(dim=0).nonzero().flatten().tolist() == list(range(4 + 12 + 1, 4 + 12 + 11))  # the second
    assert red.any(dim=1).nonzero().flatten().tolist() == list(range(4 + 1, 4 + 11))  # of the first filter
