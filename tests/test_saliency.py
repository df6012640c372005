"""Saliency maps against captum on the same model and inputs, for nn.ReLU, in-place ReLU and F.relu models."""

from __future__ import annotations

import pytest
import torch
from captum.attr import (
    Deconvolution,
    GuidedBackprop,
    LayerAttribution,
    LayerGradCam,
    NoiseTunnel,
    Occlusion,
    Saliency,
)
from torch import Tensor, nn

from conftest import TinyCNN, global_state_clean, hooks_left
from lightning_cnnviz.core import LayerMap
from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.core.model.passes import activation_bytes

STYLES = ["module", "inplace", "functional"]


def twin(style: str, seed: int = 0) -> tuple[nn.Module, nn.Module]:
    """Our model in ``style`` and the nn.ReLU-module reference (captum handles only nn.ReLU modules)."""
    torch.manual_seed(seed)
    reference = TinyCNN("module", in_channels=3, num_classes=4).eval()
    ours = TinyCNN(style, in_channels=3, num_classes=4).eval()
    ours.load_state_dict(reference.state_dict())
    return ours, reference


def images(count: int = 5, seed: int = 1) -> Tensor:
    return torch.randn(count, 3, 12, 12, generator=torch.Generator().manual_seed(seed))


def assert_agree(ours: Tensor, reference: Tensor) -> None:
    assert ours.shape == reference.shape
    scale = reference.abs().max().item()
    assert scale > 0
    assert (ours - reference).abs().max().item() <= 1e-5 * scale


TARGETS = torch.tensor([0, 1, 2, 3, 1])


@pytest.mark.parametrize("style", STYLES)
def test_vanilla_gradient_matches_captum_saliency(style: str) -> None:
    ours_model, reference = twin(style)
    x = images()
    expected = Saliency(reference).attribute(x, target=TARGETS, abs=True).amax(dim=1)
    assert_agree(S.vanilla_gradient(ours_model, x, TARGETS), expected)


def assert_smoothgrad_agrees(
    ours_model: nn.Module, reference: nn.Module, x: Tensor, targets: Tensor, samples: int, max_batch: int
) -> None:
    """Ours in batches of ``max_batch`` copies against captum's one batch of all, on the same noise."""
    torch.manual_seed(7)  # captum draws torch.normal(0, stdev) of shape (N * samples, C, H, W)
    noise = torch.normal(0, torch.tensor(0.3).repeat((x.shape[0] * samples, *x.shape[1:])))
    torch.manual_seed(7)
    expected = NoiseTunnel(Saliency(reference)).attribute(
        x, nt_type="smoothgrad", nt_samples=samples, stdevs=0.3, target=targets
    )
    ours = S.smoothgrad(ours_model, x, targets, samples=samples, noise=noise, max_batch=max_batch)
    assert_agree(ours, expected.amax(dim=1))


@pytest.mark.parametrize("style", STYLES)
def test_smoothgrad_matches_captum_noise_tunnel_with_the_same_noise(style: str) -> None:
    ours_model, reference = twin(style)
    assert_smoothgrad_agrees(ours_model, reference, images(), TARGETS, samples=12, max_batch=16)


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("ours_fn", "captum_cls"), [(S.guided_backprop, GuidedBackprop), (S.deconvnet, Deconvolution)])
def test_guided_backprop_and_deconvnet_match_captum(style: str, ours_fn, captum_cls) -> None:  # type: ignore[no-untyped-def]
    ours_model, reference = twin(style)
    x = images()
    expected = captum_cls(reference).attribute(x, target=TARGETS)
    ours = ours_fn(ours_model, x, TARGETS)
    assert_agree(ours, expected)
    assert not torch.allclose(ours, Saliency(reference).attribute(x, target=TARGETS, abs=False))  # rule took effect
    assert hooks_left(ours_model) == [] and global_state_clean()


@pytest.mark.parametrize("style", STYLES)
def test_grad_cam_matches_captum_layer_grad_cam(style: str) -> None:
    ours_model, reference = twin(style)
    x = images()
    cam = LayerGradCam(reference, reference.conv2).attribute(x, target=TARGETS, relu_attributions=True)
    expected = LayerAttribution.interpolate(cam, (12, 12), "bilinear").squeeze(1)
    ours = S.grad_cam(ours_model, x, TARGETS)
    assert_agree(ours, expected)
    assert hooks_left(ours_model) == []


def captum_occlusion(model: nn.Module, x: Tensor, patch: int, stride: int) -> Tensor:
    def probabilities(inputs: Tensor) -> Tensor:
        return model(inputs).softmax(dim=1)

    expected = Occlusion(probabilities).attribute(
        x,
        sliding_window_shapes=(3, patch, patch),
        strides=(3, stride, stride),
        baselines=0.25,
        target=TARGETS,
        perturbations_per_eval=64,
    )
    assert torch.equal(expected[:, 0], expected[:, 2])  # the window spans all channels
    return expected[:, 0]


@pytest.mark.parametrize("style", STYLES)
@pytest.mark.parametrize(("patch", "stride"), [(4, 2), (5, 3)])
@pytest.mark.parametrize("memory_budget", [None, 1])
def test_occlusion_matches_captum(style: str, patch: int, stride: int, memory_budget: int | None) -> None:
    """In float64: on this untrained model the map is about 2e-3, so float32 rounding of the probabilities
    alone moves captum's own map by 2.5e-5 of its scale (captum float32 vs captum float64); float64 leaves the
    1e-5 bound to the algorithms (they agree to about 5e-8)."""
    ours_model, reference = twin(style)
    x = images().double()
    expected = captum_occlusion(reference.double(), x, patch, stride)
    ours = S.occlusion(
        ours_model.double(),
        x,
        TARGETS,
        patch=patch,
        stride=stride,
        baseline=0.25,
        max_batch=50,
        memory_budget=memory_budget,
    )
    assert_agree(ours, expected)


@pytest.mark.parametrize(("patch", "stride"), [(4, 2), (5, 3)])
def test_occlusion_matches_captum_in_float32_where_the_map_is_above_rounding(patch: int, stride: int) -> None:
    """The same model with a stronger last layer: occlusion moves the probabilities by a few percent."""
    ours_model, reference = twin("inplace")
    with torch.no_grad():
        for model in (ours_model, reference):
            model.conv2.weight.mul_(2)
            model.fc.weight.mul_(8)
    x = images()
    expected = captum_occlusion(reference, x, patch, stride)
    assert expected.abs().max() > 0.03
    assert_agree(S.occlusion(ours_model, x, TARGETS, patch=patch, stride=stride, baseline=0.25), expected)


def test_hand_computed_gradient_on_a_linear_model() -> None:
    """score = w . x for a conv-free linear map: vanilla gradient is |w| (max over channels)."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(2 * 2 * 2, 2, bias=False))
    with torch.no_grad():
        model[1].weight.copy_(torch.arange(16.0).view(2, 8) - 7)
    grad = S.vanilla_gradient(model, torch.zeros(1, 2, 2, 2), 1)
    expected = (torch.arange(8.0, 16.0) - 7).abs().view(2, 2, 2).amax(dim=0)
    assert torch.equal(grad[0], expected)


def test_guided_backprop_hand_computed_on_a_tiny_net() -> None:
    """x -> relu(a x) -> b * h: guided backprop is b * a where both the forward input and b are positive."""
    model = nn.Sequential(nn.Conv2d(1, 1, 1, bias=False), nn.ReLU(), nn.Flatten(), nn.Linear(4, 1, bias=False))
    with torch.no_grad():
        model[0].weight.fill_(2.0)
        model[3].weight.copy_(torch.tensor([[1.0, -1.0, 3.0, 0.5]]))
    x = torch.tensor([[[[1.0, 1.0], [-1.0, 2.0]]]])
    guided = S.guided_backprop(model, x, 0)
    # positions: (+in, +w) -> 2*1; (+in, -w) -> 0 (negative signal stopped); (-in) -> 0; (+in, +w) -> 2*0.5
    assert guided.flatten().tolist() == [2.0, 0.0, 0.0, 1.0]
    deconv = S.deconvnet(model, x, 0)
    # deconvnet ignores the forward sign: relu of the signal: [1, 0, 3, 0.5] * 2
    assert deconv.flatten().tolist() == [2.0, 0.0, 6.0, 1.0]


def test_parameter_grads_untouched_and_modes_restored_even_after_errors() -> None:
    model, _ = twin("functional")
    model.train()
    for p in model.parameters():
        p.grad = torch.full_like(p, 0.5)
    x = images()
    for method in (S.vanilla_gradient, S.guided_backprop, S.grad_cam):
        method(model, x, TARGETS)
    S.smoothgrad(model, x, TARGETS, samples=3)
    S.occlusion(model, x, TARGETS, patch=6, stride=3)
    assert all(torch.equal(p.grad, torch.full_like(p, 0.5)) for p in model.parameters())
    assert model.training and model.conv1.training

    broken = TinyCNN("functional", in_channels=3)
    with pytest.raises(RuntimeError):
        S.guided_backprop(broken, torch.randn(2, 2, 8, 8), 0)  # wrong channel count raises inside the forward
    with pytest.raises(RuntimeError):
        S.grad_cam(broken, torch.randn(2, 2, 8, 8), 0)
    assert hooks_left(broken) == [] and global_state_clean() and broken.training


def test_works_under_inference_mode() -> None:
    model, reference = twin("inplace")
    x = images()
    with torch.inference_mode():
        ours = S.vanilla_gradient(model, x, TARGETS)
    assert_agree(ours, Saliency(reference).attribute(x, target=TARGETS, abs=True).amax(dim=1))


def test_targets_default_to_the_prediction_and_are_checked() -> None:
    model, _ = twin("module")
    x = images()
    predicted = model(x).argmax(dim=1)
    torch.testing.assert_close(S.vanilla_gradient(model, x), S.vanilla_gradient(model, x, predicted))
    with pytest.raises(ValueError, match=r"target must have shape \(5,\)"):
        S.vanilla_gradient(model, x, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="grad_cam layer: no module named 'conv9'"):
        S.grad_cam(model, x, layer="conv9")


def test_vanilla_gradient_on_the_demo_resnet_equals_plain_autograd() -> None:
    from lightning_cnnviz.demo.models import resnet18_cifar

    torch.manual_seed(0)
    model = resnet18_cifar().eval()
    x = torch.randn(2, 3, 32, 32)
    targets = torch.tensor([3, 7])
    ours = S.vanilla_gradient(model, x, targets)
    inputs = x.clone().requires_grad_(True)
    (reference,) = torch.autograd.grad(model(inputs).gather(1, targets[:, None]).sum(), inputs)
    torch.testing.assert_close(ours, reference.abs().amax(dim=1), rtol=1e-4, atol=1e-5 * reference.abs().max().item())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
def test_the_model_runs_in_the_layout_it_was_given(layout: torch.memory_format) -> None:
    """No pass switches the input's memory format (it changes float32 rounding, so maps would drift from the
    model's own)."""
    model, _ = twin("module")
    seen: list[bool] = []
    handle = model.register_forward_pre_hook(lambda m, args: seen.append(args[0].is_contiguous(memory_format=layout)))
    x = images().contiguous(memory_format=layout)
    try:
        for method in (S.vanilla_gradient, S.smoothgrad, S.guided_backprop, S.grad_cam):
            method(model, x, TARGETS)
        S.occlusion(model, x, TARGETS, patch=4, stride=4)
    finally:
        handle.remove()
    assert seen and all(seen)


def test_occlusion_passes_sized_by_the_memory_budget_give_the_same_map() -> None:
    model, _ = twin("functional")
    model = model.double()
    x = images().double()
    one_pass = S.occlusion(model, x, TARGETS, patch=4, stride=2, memory_budget=2**40)
    per_image = activation_bytes(model, x[:1])  # the input and every leaf module's output, counted by hand
    assert per_image == 8 * (x[0].numel() + sum(o.numel() for o in _leaf_outputs(model, x[:1])))
    # 7 copies per pass: passes that end inside an image's windows
    small_passes = S.occlusion(model, x, TARGETS, patch=4, stride=2, memory_budget=7 * per_image, max_batch=2)
    torch.testing.assert_close(small_passes, one_pass, rtol=0, atol=1e-12)


def _leaf_outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    outputs: list[torch.Tensor] = []
    leaves = [m for m in model.modules() if not list(m.children())]
    handles = [m.register_forward_hook(lambda m, a, out: outputs.append(out)) for m in leaves]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return outputs


@pytest.mark.parametrize("name", ["densenet121", "vgg11_bn", "mobilenet_v3_small"])
def test_smoothgrad_matches_captum_on_torchvision_models(name: str) -> None:
    """Deep float32 models, where any change of layout or rounding flips ReLUs in some noisy copies."""
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=10).eval()
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(2))
    assert_smoothgrad_agrees(model, model, x, torch.tensor([3, 7]), samples=4, max_batch=3)


@pytest.mark.parametrize("name", ["efficientnet_b0", "convnext_tiny"])
def test_every_method_matches_captum_on_silu_and_gelu_networks(name: str) -> None:
    """SiLU (EfficientNet) and GELU in channels-last blocks (ConvNeXt): vanilla gradient, SmoothGrad, Grad-CAM and
    occlusion to 1e-5 of scale; guided backprop leaves these activations' true gradient, as captum does."""
    import torchvision

    from lightning_cnnviz.callbacks.saliency_monitor import SaliencyMonitor

    torch.manual_seed(0)
    model = getattr(torchvision.models, name)(weights=None, num_classes=5).eval()
    x = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    expected = Saliency(model).attribute(x, target=TARGETS, abs=True).amax(dim=1)
    assert_agree(S.vanilla_gradient(model, x, TARGETS), expected)
    assert_smoothgrad_agrees(model, model, x[:2], TARGETS[:2], samples=3, max_batch=4)
    layer = LayerMap.of(model).last
    module = dict(model.named_modules())[layer]
    cam = LayerGradCam(model, module).attribute(x, target=TARGETS, relu_attributions=True)
    assert_agree(S.grad_cam(model, x, TARGETS), LayerAttribution.interpolate(cam, (32, 32), "bilinear").squeeze(1))
    guided = GuidedBackprop(model).attribute(x, target=TARGETS)
    assert_agree(S.guided_backprop(model, x, TARGETS), guided)
    double = model.double()
    ours = S.occlusion(double, x.double(), TARGETS, patch=8, stride=8, baseline=0.25)
    assert_agree(ours, captum_occlusion(double, x.double(), 8, 8))
    monitor = SaliencyMonitor(methods=("guided_backprop",), num_images=2)
    assert monitor.panel.other_kinds(model, x[:2].double()) == (["silu"] if name == "efficientnet_b0" else ["gelu"])
    assert hooks_left(model) == [] and global_state_clean()
