"""Streaming top-k against a brute-force sort; projections against captum and a value computed by hand."""

from __future__ import annotations

import pytest
import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop
from torch import Tensor, nn

from conftest import global_state_clean, hooks_left
from lightning_cnnviz.core.methods.top_patches import (
    StreamingTopK,
    TopActivations,
    crop_patches,
    merge_top_activations,
    project_activations,
    top_activations,
)
from lightning_cnnviz.core.model.receptive_field import receptive_fields
from lightning_cnnviz.demo.models import SmallCNN, resnet18_cifar

STYLES = ["module", "inplace", "functional"]


def brute_force(activations: Tensor, channels: list[int], k: int) -> list[list[tuple[int, int, int]]]:
    """Per channel: every activation sorted by value, then walked keeping the first one of each image."""
    result = []
    _, _, h, w = activations.shape
    for channel in channels:
        values = activations[:, channel].flatten()
        order = torch.argsort(values, descending=True, stable=True).tolist()
        picked: list[tuple[int, int, int]] = []
        seen: set[int] = set()
        for flat in order:
            image, rest = divmod(flat, h * w)
            if image in seen:
                continue
            seen.add(image)
            picked.append((image, rest // w, rest % w))
            if len(picked) == k:
                break
        result.append(picked)
    return result


def as_triples(top: TopActivations) -> list[list[tuple[int, int, int]]]:
    return [
        [(int(i), int(y), int(x)) for i, y, x, ok in zip(*rows, strict=True) if ok]
        for rows in zip(top.images, top.ys, top.xs, top.valid, strict=True)
    ]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_k_equals_brute_force_on_random_models_and_data(seed: int) -> None:
    torch.manual_seed(seed)
    model = SmallCNN(in_channels=3, channels=(6, 8, 10)).eval()
    images = torch.randn(37, 3, 20, 20)
    channels = {"conv1": [0, 3, 5], "conv2": list(range(8)), "conv3": [9, 2]}
    tops = top_activations(model, channels, images, k=5, max_batch=6)
    captured: dict[str, Tensor] = {}
    handles = [
        dict(model.named_modules())[name].register_forward_hook(
            lambda m, a, o, name=name: captured.__setitem__(name, o.clone())
        )
        for name in channels
    ]
    with torch.no_grad():
        model(images)
    for handle in handles:
        handle.remove()
    for name, chosen in channels.items():
        assert as_triples(tops[name]) == brute_force(captured[name], chosen, 5)
        expected = torch.stack(
            [
                captured[name][i, chosen[c], y, x]
                for c, row in enumerate(brute_force(captured[name], chosen, 5))
                for i, y, x in row
            ]
        ).view(len(chosen), 5)
        torch.testing.assert_close(tops[name].values, expected)
    assert hooks_left(model) == [] and global_state_clean()


def test_fewer_images_than_k_leave_empty_slots_and_ties_go_to_the_lower_image() -> None:
    top = StreamingTopK([0, 1], k=4)
    activations = torch.zeros(3, 2, 2, 2)
    activations[:, 1] = torch.tensor([[1.0, 1.0], [1.0, 1.0]])  # ties everywhere: lower image, first position
    top.update(activations[2:], torch.tensor([2]))
    top.update(activations[:2], torch.tensor([0, 1]))
    result = top.result()
    assert result.images.tolist() == [[0, 1, 2, -1], [0, 1, 2, -1]]
    assert result.ys[1, :3].tolist() == [0, 0, 0] and result.xs[1, :3].tolist() == [0, 0, 0]
    assert result.valid.sum().item() == 6 and torch.isinf(result.values[:, 3]).all()


def test_shards_merge_into_the_single_pass_result() -> None:
    torch.manual_seed(3)
    model = SmallCNN(in_channels=1, channels=(4, 6, 6)).eval()
    images = torch.randn(41, 1, 16, 16)
    layers = {"conv2": [0, 2, 5], "conv3": [1]}
    single = top_activations(model, layers, images, k=9)
    parts = [
        top_activations(model, layers, images[r::3], k=9, image_indices=torch.arange(r, 41, 3), max_batch=5)
        for r in range(3)
    ]
    for name in layers:
        merged = merge_top_activations([p[name] for p in parts[::-1]])  # the order of the parts does not matter
        for field in ("images", "ys", "xs"):
            assert torch.equal(getattr(merged, field), getattr(single[name], field))
        torch.testing.assert_close(merged.values, single[name].values)


def twin(style: str) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    reference = SmallCNN(in_channels=3, channels=(6, 8, 8), activation="module").eval()
    ours = SmallCNN(in_channels=3, channels=(6, 8, 8), activation=style).eval()  # type: ignore[arg-type]
    ours.load_state_dict(reference.state_dict())
    return ours, reference


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(
    ("rule", "captum_cls"), [("deconvnet", NeuronDeconvolution), ("guided_backprop", NeuronGuidedBackprop)]
)
def test_projections_match_captum_per_neuron(style: str, rule: str, captum_cls) -> None:  # type: ignore[no-untyped-def]
    ours, reference = twin(style)
    images = torch.randn(6, 3, 16, 16, generator=torch.Generator().manual_seed(5))
    # conv3 sits above two ReLUs and two max-pools: the switches and the ReLU rule both matter
    for layer, ref_layer in (("conv3", reference.conv3), ("conv2", reference.conv2)):
        top = top_activations(ours, {layer: [0, 3, 7]}, images, k=2)[layer]
        rows = top.valid.flatten()
        channels = top.channels.repeat_interleave(2)[rows]
        picked = top.images.flatten()[rows]
        ys, xs = top.ys.flatten()[rows], top.xs.flatten()[rows]
        field = receptive_fields(ours, [layer], images[:1])[layer]
        whole = project_activations(ours, layer, images[picked], channels, ys, xs, rules=(rule,), max_batch=4)[rule]
        cropped = project_activations(ours, layer, images[picked], channels, ys, xs, rules=(rule,), field=field)
        cropped = cropped[rule]
        expected = torch.cat(
            [
                captum_cls(reference, ref_layer).attribute(images[i : i + 1], neuron_selector=(int(c), int(y), int(x)))
                for i, c, y, x in zip(picked, channels, ys, xs, strict=True)
            ]
        )
        scale = expected.abs().max().item()
        assert scale > 0
        for projections in (whole, cropped):
            assert (projections - expected).abs().max().item() <= 1e-5 * scale
    assert hooks_left(ours) == [] and global_state_clean()


@pytest.mark.parametrize(
    ("make", "layer"),
    [
        (lambda: SmallCNN(in_channels=3, first_kernel=7), "conv3"),
        (lambda: SmallCNN(in_channels=3, first_kernel=7, activation="inplace"), "conv2"),
        (lambda: resnet18_cifar(num_classes=4), "layer2.0"),
    ],
)
def test_receptive_field_crops_give_the_whole_image_projection_at_every_position(make, layer: str) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = make().double().eval()  # float64: no rounding-level flips of ReLU masks between the two paths
    image = torch.randn(1, 3, 32, 32, dtype=torch.float64)
    field = receptive_fields(model, [layer], image)[layer]
    captured: dict[str, Tensor] = {}
    handle = dict(model.named_modules())[layer].register_forward_hook(lambda m, a, o: captured.__setitem__("o", o))
    model(image)
    handle.remove()
    height, width = captured["o"].shape[-2:]
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    if height * width > 100:  # the edges (where crops are clipped and shifted) and the middle
        ys, xs = (torch.tensor([0, 1, n // 2, n - 2, n - 1]) for n in (height, width))
        ys, xs = torch.meshgrid(ys, xs, indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    channels = torch.arange(len(ys)) % captured["o"].shape[1]
    images = image.expand(len(ys), -1, -1, -1)
    whole = project_activations(model, layer, images, channels, ys, xs)
    cropped = project_activations(model, layer, images, channels, ys, xs, field=field, max_batch=16)
    for rule in ("deconvnet", "guided_backprop"):
        scale = whole[rule].flatten(1).abs().amax(1).clamp_min(1e-300)
        error = (cropped[rule] - whole[rule]).flatten(1).abs().amax(1) / scale
        assert error.max().item() < 1e-10, rule
        # nothing outside the receptive field box
        for row in (0, len(ys) // 2, len(ys) - 1):
            top, left, bottom, right = field.box(int(ys[row]), int(xs[row]))
            outside = cropped[rule][row].clone()
            outside[:, max(top, 0) : bottom + 1, max(left, 0) : right + 1] = 0
            assert outside.abs().max().item() == 0


class _CoordNet(nn.Module):
    """Adds a horizontal ramp: not translation-equivariant, so crops would change the activations."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 4, 3, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        ramp = torch.linspace(-3, 3, x.shape[-1], device=x.device)
        return self.conv2(torch.relu(self.conv1(x) + ramp))


def test_rows_whose_crop_changes_the_activation_are_redone_on_the_whole_image() -> None:
    torch.manual_seed(0)
    model = _CoordNet().eval()
    images = torch.randn(6, 1, 16, 16)
    field = receptive_fields(model, ["conv2"], images[:1])["conv2"]
    assert field.size == (5, 5)  # the tracker cannot see the ramp
    where = (torch.tensor([0, 1, 2, 3, 0, 1]), torch.tensor([8, 8, 3, 12, 0, 15]), torch.tensor([8, 2, 12, 5, 15, 0]))
    whole = project_activations(model, "conv2", images, *where, rules=("guided_backprop",))["guided_backprop"]
    cropped = project_activations(model, "conv2", images, *where, rules=("guided_backprop",), field=field)
    cropped = cropped["guided_backprop"]
    torch.testing.assert_close(cropped, whole, rtol=0, atol=0)


def test_projection_of_a_tiny_net_equals_the_value_computed_by_hand() -> None:
    net = nn.Sequential(nn.Conv2d(1, 1, 2, bias=False), nn.ReLU(), nn.Conv2d(1, 1, 2, bias=False))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, -2.0], [3.0, -1.0]]).view(1, 1, 2, 2))
        net[2].weight.copy_(torch.tensor([[1.0, 2.0], [3.0, -2.0]]).view(1, 1, 2, 2))
    x = torch.tensor([[1.0, 2.0, 0.0], [0.0, 1.0, 1.0], [1.0, 0.0, 2.0]]).view(1, 1, 3, 3)
    # hidden pre-activations: [[-4, 4], [1, -3]]; d out / d hidden = v = [[1, 2], [3, -2]]
    # deconvnet: ReLU(v) = [[1, 2], [3, 0]] spread back through w
    deconv = torch.tensor([[1.0, 0.0, -4.0], [6.0, -1.0, -2.0], [9.0, -3.0, 0.0]])
    # guided backprop: ReLU(v) where the hidden unit was positive = [[0, 2], [3, 0]]
    guided = torch.tensor([[0.0, 2.0, -4.0], [3.0, 0.0, -2.0], [9.0, -3.0, 0.0]])
    zero = torch.zeros(1, dtype=torch.long)
    for rule, expected in (("deconvnet", deconv), ("guided_backprop", guided)):
        result = project_activations(net, "2", x, zero, zero, zero, rules=(rule,))[rule]  # type: ignore[arg-type]
        assert torch.equal(result[0, 0], expected)


def test_projection_leaves_grads_flags_and_hooks_as_they_were() -> None:
    model = resnet18_cifar(num_classes=4)
    model.train()
    model.layer1.eval()
    for p in model.parameters():
        p.grad = torch.randn_like(p)
    before = [p.grad.clone() for p in model.parameters()]  # type: ignore[union-attr]
    flags = [m.training for m in model.modules()]
    images = torch.randn(3, 3, 32, 32)
    index = torch.tensor([0, 5, 9])
    with torch.inference_mode():
        ys, xs = torch.tensor([1, 2, 3]), torch.tensor([0, 4, 15])
        out = project_activations(model, "layer2.0", images, index, ys, xs, rules=("deconvnet",))["deconvnet"]
    assert out.shape == images.shape and out.abs().sum() > 0
    assert all(torch.equal(p.grad, b) for p, b in zip(model.parameters(), before, strict=True))  # type: ignore[arg-type]
    assert [m.training for m in model.modules()] == flags
    assert hooks_left(model) == [] and global_state_clean()


def test_crop_patches_cut_the_receptive_field_boxes() -> None:
    model = SmallCNN(in_channels=1, channels=(2, 2, 2))
    field = receptive_fields(model, ["conv2"], torch.zeros(1, 1, 16, 16))["conv2"]  # 10 px, stride 2, -4
    images = torch.arange(2 * 16 * 16, dtype=torch.float32).view(2, 1, 16, 16)
    patches = crop_patches(images, field, torch.tensor([3, 0]), torch.tensor([7, 1]))
    assert patches.shape == (2, 1, 10, 10)
    # box rows 2..11, cols -4+14=10..19 -> shifted into the image: cols 6..15
    assert torch.equal(patches[0, 0], images[0, 0, 2:12, 6:16])
    # box rows -4..5 and cols -2..7 -> rows 0..9, cols 0..9
    assert torch.equal(patches[1, 0], images[1, 0, 0:10, 0:10])


def test_bad_layers_and_shapes_are_clear_errors() -> None:
    model = SmallCNN(in_channels=1, channels=(2, 2, 2))
    with pytest.raises(ValueError, match="Valid names"):
        top_activations(model, {"nope": [0]}, torch.zeros(2, 1, 8, 8))
    with pytest.raises(ValueError, match=r"fc.*\(N, C, H, W\)"):
        top_activations(model, {"fc": [0]}, torch.zeros(2, 1, 8, 8))
    with pytest.raises(TypeError, match="floating tensor"):
        top_activations(model, {"conv1": [0]}, torch.zeros(2, 8, 8))
    assert hooks_left(model) == [] and global_state_clean()


def test_a_gallery_snapshot_chooses_its_layers_itself_and_draws_what_a_configured_one_draws() -> None:
    """The README's plain loop: ``TopPatchGallery(...).snapshot(model, probe, context)`` without ``attach``."""
    from lightning_cnnviz.core import Context, Moment, Probe, TopPatchGallery

    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 4, 3), nn.ReLU())
    probe = Probe(torch.randn(6, 1, 12, 12))
    configured = TopPatchGallery(layers=["2"], k=2)
    configured.attach(net)
    ours = TopPatchGallery(layers=["2"], k=2).snapshot(net, probe, Context(Moment(epoch=0, step=0)))
    theirs = configured.snapshot(net, probe, Context(Moment(epoch=0, step=0)))
    assert sorted(ours.images) == ["cnnviz/evolution/2", "cnnviz/top_patches/2"]
    assert all(torch.equal(ours.images[tag], theirs.images[tag]) for tag in ours.images)
