"""Every CNN task, not only single-label classification: all seven monitors at their defaults (only their cost
arguments shrunk) finish the fit on self-supervision, an autoencoder, multi-label, regression, torchvision
segmentation and a U-Net, and write their tags; what cannot apply is said once as such. The saliency targets of
every task equal captum's given the same scalar function."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from captum.attr import LayerAttribution, LayerGradCam, Saliency
from torch import Tensor, nn
from torch.utils.data import DataLoader

from conftest import fit_listening, make_trainer, read_events, readme_block, run_python
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
from lightning_cnnviz.core import (
    Context,
    DoesNotApply,
    EmbeddingMap,
    Guard,
    Moment,
    Probe,
    ProbeService,
    ProbeSet,
    SaliencyPanel,
    select_balanced,
)
from lightning_cnnviz.core.inputs.task import choose_target, decide_task, label_kind
from lightning_cnnviz.core.methods.saliency import grad_cam, vanilla_gradient
from lightning_cnnviz.core.methods.saliency_methods import METHODS
from lightning_cnnviz.demo.tasks import TASKS, AutoEncoder, squares, task

SALIENCY = ("vanilla_gradient", "smoothgrad", "guided_backprop", "grad_cam", "occlusion")
# What every monitor writes on each task: no task here has one class label per image, so no kNN accuracy.
WRITTEN = {
    "filter": ["cnnviz/filters/"],
    "activation": ["cnnviz/activations/dead_fraction/", "cnnviz/activations/"],
    "activation_maps": ["cnnviz/activation_maps/", "cnnviz/activation_maps_evolution/"],
    "saliency": [f"cnnviz/saliency/{method}" for method in SALIENCY],
    "top_patch": ["cnnviz/top_patches/"],
    "embedding": ["cnnviz/embedding/tsne", "cnnviz/embedding/grid", "cnnviz/embedding/neighbours"],
    "feature_vis": ["cnnviz/feature_vis/"],
    "inversion": ["cnnviz/inversion", "cnnviz/inversion_evolution", "cnnviz/inversion/psnr/"],
    "activation_atlas": ["cnnviz/activation_atlas/"],
    "occlusion": ["cnnviz/occlusion/"],
    "invariance": ["cnnviz/invariance/translation"],
}
EXPECTED_TASK = {
    "simclr": "embedding", "autoencoder": "reconstruction", "multilabel": "multilabel", "regression": "regression",
    "segmentation": "segmentation", "unet": "segmentation",
}  # fmt: skip
RULES = {
    "embedding": "embedding norm", "reconstruction": "reconstruction error", "multilabel": "top true class",
    "regression": "output", "segmentation": "predicted class over its pixels",
}  # fmt: skip
NOT_APPLYING = "EmbeddingMonitor: the kNN accuracy does not apply: it needs one integer class per image"


def all_monitors() -> dict[str, pl.Callback]:
    """All twelve monitors at their defaults, only the cost arguments (probe sizes, vectors, steps, transformations)
    shrunk."""
    return {
        "filter": FilterMonitor(),
        "activation": ActivationMonitor(every_n_steps=2),
        "activation_maps": ActivationMapMonitor(),
        "saliency": SaliencyMonitor(num_images=4, smoothgrad_samples=2, occlusion_stride=4),
        "top_patch": TopPatchMonitor(probe_size=16),
        "embedding": EmbeddingMonitor(probe_size=24, every_n_epochs=1),
        "feature_vis": FeatureVisMonitor(steps=4, probe_size=16, every_n_epochs=1),
        "class_models": ClassModelMonitor(steps=4, probe_size=16),
        "inversion": InversionMonitor(steps=4),
        "activation_atlas": ActivationAtlasMonitor(probe_size=16, vectors=200, grid=4, steps=4),
        "occlusion": OcclusionMonitor(probe_size=2),
        "invariance": InvarianceMonitor(probe_size=2, transformations=("translation",)),
    }


@pytest.mark.parametrize("name", TASKS)
def test_all_monitors_at_their_defaults_finish_every_task(name: str, tmp_path: Path) -> None:
    pl.seed_everything(0, verbose=False)
    model, data = task(name)
    monitors = all_monitors()
    trainer = make_trainer(tmp_path, list(monitors.values()), max_epochs=2, limit_train_batches=3)
    said, told = fit_listening(trainer, model, data)
    failed = [message for message in said if "failed with" in message or "switched off" in message]
    assert failed == []
    off = [message for message in said if "does not apply" in message]
    expected = EXPECTED_TASK[name]
    classless = [] if expected == "multilabel" else [f"it needs class scores, and the task is {expected} ("]
    knn, others = [m for m in off if m.startswith(NOT_APPLYING)], [m for m in off if not m.startswith(NOT_APPLYING)]
    assert len(knn) == 1 and len(others) == len(classless), off
    assert all(m.startswith("ClassModelMonitor:") and classless[0] in m for m in others), off
    events = read_events(tmp_path)
    tags = [*events["images"], *events["scalars"], *events["histograms"]]
    written = {**WRITTEN, **({} if classless else {"class_models": ["cnnviz/class_models"]})}
    for monitor, prefixes in written.items():
        for prefix in prefixes:
            assert any(tag.startswith(prefix) for tag in tags), f"{name}: {monitor} wrote no {prefix}"
    assert "cnnviz/embedding/knn_accuracy" not in tags
    chosen = [message for message in told if message.startswith("SaliencyMonitor: task")]
    assert len(chosen) == 1 and f"task {expected!r}" in chosen[0] and f"explain: {RULES[expected]}." in chosen[0]
    allowed = {"the kNN accuracy", "the class-model picture"}
    assert all(not monitor.guard.disabled - allowed for monitor in monitors.values())  # type: ignore[attr-defined]


def test_a_batch_without_images_is_said_once_and_never_ends_the_fit(tmp_path: Path) -> None:
    """Batches the probe cannot read (token ids, not images) switch the probe monitors off with one sentence; the
    per-step monitors go on."""

    class Tokens(pl.LightningDataModule):
        def train_dataloader(self) -> Any:
            return DataLoader([{"image": torch.randn(3, 16, 16), "ids": torch.zeros(5)}] * 12, batch_size=4)

        def val_dataloader(self) -> Any:
            return DataLoader([{"ids": torch.zeros(5, dtype=torch.long)}] * 8, batch_size=4)

    class Model(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())

        def forward(self, x: Tensor) -> Tensor:
            return self.net(x)

        def training_step(self, batch: Any, batch_idx: int) -> Tensor:
            return self(batch["image"]).pow(2).mean()

        def validation_step(self, batch: Any, batch_idx: int) -> None:
            pass

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.01)

    saliency = SaliencyMonitor(num_images=2, smoothgrad_samples=2)
    trainer = make_trainer(tmp_path, [saliency, ActivationMonitor(every_n_steps=1)], max_epochs=1)
    with pytest.warns(UserWarning, match="SaliencyMonitor: the probe does not apply: the batches give no images"):
        trainer.fit(Model(), datamodule=Tokens())
    tags = read_events(tmp_path)["scalars"]
    assert any(tag.startswith("cnnviz/activations/") for tag in tags)


# -- what the task is ------------------------------------------------------------------------------------------


def test_label_kinds_and_task_decision() -> None:
    images = torch.zeros(3, 3, 8, 8)
    cases = [
        (torch.tensor([0, 2, 1]), "class", "classification"),
        (torch.tensor([[0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]), "multilabel", "multilabel"),
        (torch.tensor([[0, 1], [1, 1], [0, 0]]), "multilabel", "multilabel"),
        (torch.rand(3), "value", "regression"),
        (torch.rand(3, 1), "value", "regression"),
        (torch.rand(3, 2) + 2, "value", "regression"),
        (torch.zeros(3, 8, 8, dtype=torch.long), "mask", "segmentation"),
    ]
    for labels, kind, decided in cases:
        assert label_kind(labels, 3) == kind
        assert decide_task("auto", labels, torch.zeros(3, 5), images)[0] == decided
    assert label_kind(torch.zeros(2), 3) is None and label_kind(torch.rand(3, 3, 8, 8), 3) is None
    outputs = [
        (torch.zeros(3, 3, 8, 8), "reconstruction"),
        (torch.zeros(3, 4, 8, 8), "segmentation"),
        ({"out": torch.zeros(3, 4, 4, 4)}, "segmentation"),
        (torch.zeros(3, 1), "regression"),
        (torch.zeros(3, 128), "embedding"),
    ]
    for output, decided in outputs:
        assert decide_task("auto", None, output, images)[0] == decided
    assert decide_task("classification", None, torch.zeros(3, 128), images)[0] == "classification"


def test_targets_that_cannot_apply_say_what_was_found_and_what_to_pass() -> None:
    images, logits = torch.zeros(2, 3, 8, 8), torch.zeros(2, 5)
    with pytest.raises(DoesNotApply, match=r"target='true' needs integer class labels \(N,\).*no labels.*'predicted'"):
        choose_target("classification", "true", logits, images, None)
    with pytest.raises(DoesNotApply, match=r"task='segmentation' explains per-pixel.*output is \(2, 5\)"):
        choose_target("segmentation", "auto", logits, images, None)
    with pytest.raises(DoesNotApply, match=r"task='reconstruction'.*output is \(2, 5\)"):
        choose_target("reconstruction", "auto", logits, images, None)
    with pytest.raises(DoesNotApply, match="target='predicted' chooses between classes, and the task is regression"):
        choose_target("regression", "predicted", logits, images, None)
    said: list[str] = []
    panel = SaliencyPanel(methods=("vanilla_gradient",), target="true")
    net = nn.Sequential(nn.Conv2d(3, 2, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(2, 3))
    for on_error in ("warn", "raise"):  # not a bug: said once under either policy, never raised
        guard = Guard("SaliencyMonitor", on_error=on_error, say=said.append)  # type: ignore[arg-type]
        for _ in range(2):
            context = Context(Moment(0, 0), guard=guard)
            assert panel.snapshot(net, Probe(torch.randn(2, 3, 8, 8)), context).images == {}
    assert len(said) == 2 and all(s.startswith("SaliencyMonitor: saliency does not apply: target='true'") for s in said)
    with pytest.raises(DoesNotApply, match="target='true' needs integer class labels"):
        SaliencyPanel(target="true", task="classification").explain(net, torch.randn(2, 3, 8, 8), None)


# -- the targets against captum ---------------------------------------------------------------------------------


def resnet_with(head: nn.Module) -> nn.Module:
    from torchvision.models import resnet18

    torch.manual_seed(0)
    net = resnet18(weights=None)
    net.fc = head
    return net.eval()


def resnet_autoencoder() -> nn.Module:
    """ResNet-18's trunk and a transposed-convolution head back to the 32-pixel input."""
    trunk = list(resnet_with(nn.Identity()).children())[:-2]
    return nn.Sequential(*trunk, nn.ConvTranspose2d(512, 3, 32, stride=32)).eval()


def segmenter() -> nn.Module:
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    torch.manual_seed(0)
    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=3).eval()


def target_case(rule: str) -> tuple[Any, ...]:
    """(model, Grad-CAM layer, images, labels, task, target) of a rule of ``target="auto"`` (and of a given
    segmentation class): a torchvision model of the task where one exists, else ResNet-18 with the task's head."""
    data = squares(4, side=32)
    images = data["images"]
    resnet = "layer4.1.conv2"
    if rule == "true class":
        return resnet_with(nn.Linear(512, 4)), resnet, images, data["class"], "auto", "auto"
    if rule == "predicted class":
        return resnet_with(nn.Linear(512, 4)), resnet, images, None, "classification", "auto"
    if rule == "top true class":
        return resnet_with(nn.Linear(512, 4)), resnet, images, data["multi"], "auto", "auto"
    if rule == "output":
        return resnet_with(nn.Linear(512, 1)), resnet, images, data["value"], "auto", "auto"
    if rule == "embedding norm":
        head = nn.Sequential(nn.Linear(512, 64), nn.ReLU(), nn.Linear(64, 16))
        return resnet_with(head), resnet, images, None, "auto", "auto"
    if rule == "reconstruction error":
        return resnet_autoencoder(), "7.1.conv2", images, None, "auto", "auto"
    if rule == "predicted class over its pixels":
        return segmenter(), "classifier.high_classifier", images, data["mask"], "auto", "auto"
    return segmenter(), "backbone.16.0", images, None, "segmentation", predicted_class(images)


RULES_OF_AUTO = ["true class", "predicted class", "top true class", "output", "embedding norm",
                 "reconstruction error", "predicted class over its pixels", "class"]  # fmt: skip


def predicted_class(images: Tensor) -> int:
    """The class the untrained segmenter predicts on most pixels: a given class with pixels to explain."""
    with torch.no_grad():
        return int(segmenter()(images)["out"].argmax(dim=1).flatten().mode().values)


@pytest.mark.parametrize("rule", RULES_OF_AUTO)
def test_every_target_rule_equals_captum_given_the_same_scalar_function(rule: str) -> None:
    model, layer, images, labels, task_name, target = target_case(rule)
    panel = SaliencyPanel(methods=("vanilla_gradient", "grad_cam"), task=task_name, target=target,
                          grad_cam_layer=layer)  # fmt: skip
    explained = panel.explain(model, images, labels)
    assert explained.target.rule.startswith(rule)
    rows = torch.arange(len(images))

    def scalar(x: Tensor) -> Tensor:  # the same target, as a forward captum differentiates
        return explained.target(model(x), x, rows)

    expected = Saliency(scalar).attribute(images, abs=True).amax(dim=1)
    ours = panel.maps(model, images, labels, "vanilla_gradient", explained)[:, 0]
    scale = expected.abs().max()
    assert scale > 0
    torch.testing.assert_close(ours / scale, expected / scale, rtol=0, atol=1e-5)
    module = dict(model.named_modules())[layer]
    cam = LayerGradCam(scalar, module).attribute(images, relu_attributions=True)
    expected_cam = LayerAttribution.interpolate(cam, tuple(images.shape[-2:]), "bilinear").squeeze(1)
    ours_cam = panel.maps(model, images, labels, "grad_cam", explained)[:, 0]
    scale = expected_cam.abs().max().clamp_min(1e-12)
    torch.testing.assert_close(ours_cam / scale, expected_cam / scale, rtol=0, atol=1e-5)


def test_a_callable_target_is_used_as_given_by_every_method() -> None:
    model = resnet_with(nn.Linear(512, 4))
    data = squares(3, side=32)

    def second_minus_first(output: Tensor, batch: Any) -> Tensor:
        return output[:, 1] - output[:, 0]

    panel = SaliencyPanel(target=second_minus_first, smoothgrad_samples=2, occlusion_stride=4)
    explained = panel.explain(model, data["images"], data["class"])
    assert explained.target.rule == "second_minus_first target"
    logits_model = _Difference(model)
    expected = vanilla_gradient(logits_model, data["images"], 0)
    torch.testing.assert_close(panel.maps(model, data["images"], None, "vanilla_gradient", explained)[:, 0], expected)
    torch.testing.assert_close(
        panel.maps(model, data["images"], None, "grad_cam", explained)[:, 0], grad_cam(logits_model, data["images"], 0)
    )
    shot = panel.snapshot(model, Probe(data["images"], data["class"]), Context(Moment(0, 0), guard=Guard("S")))
    assert sorted(shot.images) == sorted(f"cnnviz/saliency/{m}" for m in SALIENCY)


class _Difference(nn.Module):
    """The model with one output, logit 1 minus logit 0: what the callable target scores, as a class score."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: Tensor) -> Tensor:
        out = self.model(x)
        return (out[:, 1] - out[:, 0])[:, None]


def test_occlusion_measures_the_drop_of_the_target() -> None:
    """For a reconstruction, occlusion's map is the mean drop of the per-image error, computed here by hand."""
    model = AutoEncoder().eval()
    images = squares(2, side=16)["images"]
    panel = SaliencyPanel(methods=("occlusion",), occlusion_patch=8, occlusion_stride=8)
    explained = panel.explain(model, images, None)
    ours = panel.maps(model, images, None, "occlusion", explained)[:, 0]
    with torch.no_grad():
        clean = (model(images) - images).pow(2).flatten(1).mean(1)
        expected = torch.zeros(2, 16, 16)
        for y in (0, 8):
            for x in (0, 8):
                occluded = images.clone()
                occluded[:, :, y : y + 8, x : x + 8] = images.mean(dim=(2, 3), keepdim=True)
                drop = clean - (model(occluded) - occluded).pow(2).flatten(1).mean(1)
                expected[:, y : y + 8, x : x + 8] = drop[:, None, None]
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-7)


def test_captions_say_what_each_batch_holds() -> None:
    data = squares(2, side=32)
    net = resnet_with(nn.Linear(512, 4))
    multi = SaliencyPanel(class_names=["tl", "tr", "bl", "br"]).explain(net, data["images"], data["multi"])
    names = ["tl", "tr", "bl", "br"]
    positives = [",".join(names[i] for i in row.nonzero().flatten().tolist()) for row in data["multi"]]
    assert [caption.split(" / ")[0] for caption in multi.captions] == [f"true {p}" for p in positives]
    value = SaliencyPanel().explain(resnet_with(nn.Linear(512, 1)), data["images"], data["value"])
    assert value.captions[0].startswith(f"true {data['value'][0, 0].item():.3g} / pred ")
    seg = SaliencyPanel().explain(segmenter(), data["images"], data["mask"])
    assert seg.masks is not None and seg.masks.shape == (2, 32, 32)
    assert all(caption.startswith("class ") and "% of pixels, true " in caption for caption in seg.captions)
    norm = SaliencyPanel().explain(resnet_with(nn.Linear(512, 8)), data["images"], None)
    assert norm.captions[0].startswith("embedding norm ")
    cam = SaliencyPanel(methods=("grad_cam",))
    picture = cam.snapshot(segmenter(), Probe(data["images"], data["mask"]), Context(Moment(0, 0))).images
    plain = cam.snapshot(net, Probe(data["images"], data["class"]), Context(Moment(0, 0))).images
    picture, plain = picture["cnnviz/saliency/grad_cam"], plain["cnnviz/saliency/grad_cam"]
    assert picture.shape[-1] > plain.shape[-1] * 1.25  # [image | mask | map | overlay] against three panels


# -- labels of every kind -----------------------------------------------------------------------------------------


def test_probes_are_balanced_over_classes_and_plain_otherwise() -> None:
    data = squares(32, seed=3)
    for key, balanced in (("class", True), ("multi", False), ("value", False), ("mask", False)):
        probe = ProbeSet("P", 8, balanced=True)
        service = ProbeService()
        service.join(probe)
        for start in range(0, 32, 8):
            service.offer((data["images"][start : start + 8], data[key][start : start + 8]))
        service.finish()
        assert probe.labels is not None and probe.labels.dtype == data[key].dtype
        if balanced:
            assert probe.labels.tolist() == data["class"][select_balanced(data["class"], 8)].tolist()
        else:
            torch.testing.assert_close(probe.labels, data[key][:8])


def test_embedding_colours_and_knn_follow_the_labels() -> None:
    data = squares(24, seed=2)
    net = resnet_with(nn.Linear(512, 4))
    embedding_map = EmbeddingMap(perplexity=5.0)
    kind, colours = embedding_map.colours(data["value"])
    assert kind == "value" and colours is not None and torch.equal(colours, data["value"][:, 0])
    kind, colours = embedding_map.colours(data["multi"])
    first = torch.tensor([row.nonzero()[0, 0].item() for row in data["multi"]])
    assert kind == "class" and colours is not None and torch.equal(colours, first)
    assert embedding_map.colours(data["mask"]) == (None, None) and embedding_map.colours(None) == (None, None)
    assert EmbeddingMap(task="regression").colours(data["class"])[0] == "value"
    said: list[str] = []
    for labels, knn in ((data["class"], True), (data["value"], False), (None, False)):
        context = Context(Moment(0, 0), guard=Guard("E", say=said.append))
        shot = EmbeddingMap(perplexity=5.0).snapshot(net, Probe(data["images"], labels), context)
        assert ("cnnviz/embedding/knn_accuracy" in shot.scalars) == knn
        assert "cnnviz/embedding/tsne" in shot.images
        metadata = shot.embeddings["cnnviz/embedding"].metadata
        assert (metadata is None) == (labels is None)
    assert len(said) == 2 and all("the kNN accuracy does not apply" in s for s in said)


# -- segmentation: the maps look at the object ------------------------------------------------------------------


def trained_segmenter(side: int = 64, steps: int = 60) -> nn.Module:
    """An LRASPP trained for a few steps on images whose mask is their one bright square (the foreground class
    weighted for its 6% of pixels), its batch-norm statistics then measured afresh for the final weights
    (MobileNetV3's momentum of 0.01 would keep them near their start)."""
    torch.manual_seed(0)
    model = segmenter()
    model.classifier.low_classifier = nn.Conv2d(40, 2, 1)
    model.classifier.high_classifier = nn.Conv2d(128, 2, 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for step in range(steps):
        data = squares(16, side=side, seed=10 + step, dim_square=False)
        loss = F.cross_entropy(model(data["images"])["out"], data["mask"], weight=torch.tensor([1.0, 8.0]))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_running_stats()
                module.momentum = None
        for step in range(8):
            model(squares(16, side=side, seed=200 + step, dim_square=False)["images"])
    return model.eval()


def test_segmentation_maps_are_larger_inside_the_square(capsys: pytest.CaptureFixture[str]) -> None:
    """On the trained LRASPP, per pixel, the maps of the gradient methods and occlusion are larger inside the
    square than outside (the ratios are printed, Grad-CAM's too: on its 4x4 grid of 1/16 resolution a 16-pixel
    square is one cell, and its globally averaged weights do not single it out)."""
    model = trained_segmenter()
    data = squares(4, side=64, seed=99, dim_square=False)
    methods = ("vanilla_gradient", "smoothgrad", "guided_backprop", "occlusion", "grad_cam")
    panel = SaliencyPanel(methods=methods, smoothgrad_samples=8, occlusion_patch=16, occlusion_stride=8)
    explained = panel.explain(model, data["images"], data["mask"])
    assert explained.task == "segmentation" and explained.target.rule == "predicted class over its pixels"
    assert explained.cam_layer == "classifier.cbr.0"
    predicted = explained.masks
    assert predicted is not None
    overlap = ((predicted == 1) & (data["mask"] == 1)).sum() / ((predicted == 1) | (data["mask"] == 1)).sum()
    assert overlap > 0.5  # it learned the square
    inside = data["mask"].bool()
    ratios = {}
    for method in panel.methods:
        maps = panel.maps(model, data["images"], data["mask"], method, explained)
        maps = (maps.abs().amax(dim=1) if METHODS[method].signed else maps[:, 0]).clamp_min(0)
        ratios[method] = float(maps[inside].mean() / maps[~inside].mean().clamp_min(1e-12))
    with capsys.disabled():
        print(f"\nsegmentation maps, mean per pixel inside / outside the square (IoU {float(overlap):.2f}):",
              {method: round(ratio, 2) for method, ratio in ratios.items()})  # fmt: skip
    assert all(ratios[method] > 1 for method in methods[:4]), ratios


def test_the_readme_task_examples_run_as_written(tmp_path: Path) -> None:
    """The README's "Tasks" block, executed as it stands (fewer batches, smaller probes): each fit writes the
    pictures it promises."""
    code = readme_block("## Tasks")
    assert code.count("Trainer(max_epochs=2, ") == 6
    code = code.replace("Trainer(max_epochs=2, ", "Trainer(max_epochs=2, limit_train_batches=2, limit_val_batches=1, "
                        "enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False, ")
    code = code.replace("SaliencyMonitor(", "SaliencyMonitor(num_images=4, smoothgrad_samples=2, occlusion_stride=4, ")
    code = code.replace("EmbeddingMonitor(", "EmbeddingMonitor(probe_size=24, ")
    result = run_python(code, tmp_path)
    assert "failed with" not in result.stderr
    runs = [read_events(tmp_path / "lightning_logs" / f"version_{index}") for index in range(6)]
    for index, events in enumerate(runs):
        assert {f"cnnviz/saliency/{method}" for method in SALIENCY} <= set(events["images"]), index
    for index in (0, 2, 3):
        assert "cnnviz/embedding/tsne" in runs[index]["images"]
    said = result.stderr
    for chosen in ("embedding norm", "reconstruction error", "top true class", "output", "predicted class over its "
                   "pixels", "<lambda> target"):  # fmt: skip
        assert f"so the maps explain: {chosen}." in said, chosen


@pytest.mark.parametrize("labelled", [True, False])
def test_an_auxiliary_head_registered_last_is_not_grad_cams_layer(labelled: bool) -> None:
    """torchvision's FCN registers its auxiliary classifier after the main one, and its output is not in "out":
    Grad-CAM takes the last conv the target depends on (for segmentation, the last of features), so every method
    draws and none is switched off."""
    from torchvision.models.segmentation import fcn_resnet50

    torch.manual_seed(0)
    net = fcn_resnet50(weights=None, weights_backbone=None, num_classes=2, aux_loss=True).eval()
    data = squares(2, side=32)
    labels = data["mask"] if labelled else None
    said: list[str] = []
    panel = SaliencyPanel(smoothgrad_samples=2, occlusion_stride=8)
    explained = panel.explain(net, data["images"], labels)
    assert explained.task == "segmentation"  # from the masks, or from the output (N, 2, H, W) without them
    assert explained.cam_layer == "classifier.0"  # not aux_classifier.*, not the 1x1 class-score conv
    guard = Guard("SaliencyMonitor", on_error="raise", say=said.append)
    shot = panel.snapshot(net, Probe(data["images"], labels), Context(Moment(0, 0), guard=guard))
    assert sorted(shot.images) == sorted(f"cnnviz/saliency/{method}" for method in SALIENCY) and said == []


def test_a_classifier_whose_last_conv_feeds_an_unused_branch_keeps_a_grad_cam() -> None:
    class Branches(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = nn.Conv2d(3, 4, 3)
            self.head = nn.Linear(4, 3)
            self.side = nn.Conv2d(4, 2, 1)  # registered last, computed, not used by the logits

        def forward(self, x: Tensor) -> Tensor:
            features = self.features(x).relu()
            self.side_output = self.side(features)
            return self.head(features.mean(dim=(2, 3)))

    net, images = Branches().eval(), torch.randn(2, 3, 8, 8)
    panel = SaliencyPanel(methods=("grad_cam",), task="classification")
    explained = panel.explain(net, images, None)
    assert explained.cam_layer == "features"
    torch.testing.assert_close(panel.maps(net, images, None, "grad_cam", explained)[:, 0],
                               grad_cam(net, images, explained.target.classes, layer="features"))  # fmt: skip
    assert SaliencyPanel(methods=("grad_cam",)).explain(nn.Sequential(net.features, nn.AdaptiveAvgPool2d(1),
                                                                      nn.Flatten()), images, None).cam_layer is None
