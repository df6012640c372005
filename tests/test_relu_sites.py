"""ReLU-site discovery and tapping: modules, in-place modules and functional calls."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import ROOT, TinyCNN, global_state_clean, hooks_left
from lightning_cnnviz.core import capture, find_relu_sites, tap_relus


def reference_relu_outputs(model: TinyCNN, x: Tensor) -> list[Tensor]:
    """The two ReLU outputs computed by hand from the conv weights (independent of any hook)."""
    a1 = torch.clamp_min(F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1), 0)
    a2 = torch.clamp_min(F.conv2d(a1, model.conv2.weight, model.conv2.bias, padding=1), 0)
    return [a1, a2]


@pytest.mark.parametrize(
    ("style", "names"),
    [
        ("module", ["relu1", "relu2"]),
        ("inplace", ["relu1", "relu2"]),
        ("functional", ["relu", "relu#2"]),
        ("method", ["relu", "relu#2"]),
    ],
)
def test_sites_are_found_and_named(style: str, names: list[str]) -> None:
    torch.manual_seed(0)
    model = TinyCNN(style)
    sites = find_relu_sites(model, torch.randn(2, 1, 8, 8))
    assert [s.name for s in sites] == names
    assert [s.num_channels for s in sites] == [6, 8]
    assert [s.kind for s in sites] == ["function" if style in ("functional", "method") else "module"] * 2
    assert hooks_left(model) == [] and global_state_clean()


class Nested(nn.Module):
    """A module with a functional ReLU inside a child block, and one module ReLU used twice."""

    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Conv2d(1, 4, 3))
        self.inner = Inner()
        self.shared = nn.ReLU()
        self.conv = nn.Conv2d(4, 4, 3)

    def forward(self, x: Tensor) -> Tensor:
        x = self.shared(self.block(x))
        x = self.inner(x)
        return self.shared(self.conv(x))


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        return F.relu6(self.conv(x)) + torch.relu(x)


def test_nested_scopes_and_repeated_module_calls() -> None:
    model = Nested()
    sites = find_relu_sites(model, torch.randn(1, 1, 10, 10))
    assert [s.name for s in sites] == ["shared", "inner.relu6", "inner.relu", "shared#2"]
    assert sites[0].calls_per_forward == 2 and sites[3].call_index == 1


def test_torchvision_resnet_block_relu_called_twice() -> None:
    from lightning_cnnviz.demo.models import resnet18_cifar

    model = resnet18_cifar(3, 10)
    names = [s.name for s in find_relu_sites(model, torch.randn(1, 3, 32, 32))]
    assert names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu#2"]
    assert len(names) == 1 + 8 * 2


@pytest.mark.parametrize("style", ["module", "inplace", "functional", "method"])
def test_tap_sees_exact_activations(style: str) -> None:
    torch.manual_seed(1)
    model = TinyCNN(style)
    x = torch.randn(3, 1, 8, 8)
    sites = find_relu_sites(model, x[:1])
    seen: dict[str, Tensor] = {}
    with tap_relus(model, sites, lambda name, out: seen.__setitem__(name, out.detach().clone())):
        model(x)
        model(x)  # a second forward maps to the same sites
    expected = reference_relu_outputs(model, x)
    assert list(seen) == [s.name for s in sites]
    for got, want in zip(seen.values(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert hooks_left(model) == [] and global_state_clean()


def test_tap_cleans_up_after_forward_error() -> None:
    model = TinyCNN("functional")
    sites = find_relu_sites(model, torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError), tap_relus(model, sites, lambda n, o: None):
        model(torch.randn(1, 2, 8, 8))  # wrong channel count: conv1 raises inside the tapped forward
    assert hooks_left(model) == [] and global_state_clean()


def test_find_relu_sites_restores_training_flags() -> None:
    model = TinyCNN("module")
    model.train()
    model.conv2.eval()
    find_relu_sites(model, torch.randn(1, 1, 8, 8))
    assert model.training and model.conv1.training and not model.conv2.training


def test_capture_is_inplace_safe_and_reports_unknown_names() -> None:
    torch.manual_seed(2)
    model = TinyCNN("inplace")
    x = torch.randn(2, 1, 8, 8)
    with capture(model, ["conv1", "relu1"]) as outputs:
        model(x)
    conv1 = F.conv2d(x, model.conv1.weight, model.conv1.bias, padding=1)
    torch.testing.assert_close(outputs["conv1"], conv1)  # not overwritten by the in-place ReLU
    torch.testing.assert_close(outputs["relu1"], conv1.clamp_min(0))
    assert (outputs["conv1"] < 0).any()
    with pytest.raises(ValueError, match=r"no module named 'nope'.*'conv1'"), capture(model, ["nope"]):
        pass
    assert hooks_left(model) == []


def test_capture_functional_site() -> None:
    torch.manual_seed(3)
    model = TinyCNN("functional")
    x = torch.randn(2, 1, 8, 8)
    sites = find_relu_sites(model, x)
    with capture(model, ["relu#2"], sites=sites) as outputs:
        model(x)
    torch.testing.assert_close(outputs["relu#2"], reference_relu_outputs(model, x)[1])
    assert hooks_left(model) == [] and global_state_clean()


def test_core_imports_without_lightning_or_tensorboard() -> None:
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('lightning', 'pytorch_lightning', 'tensorboard', 'lightning_fabric'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import torch\n"
        "import lightning_cnnviz.core as core\n"
        "net = torch.nn.Sequential(torch.nn.Conv2d(1, 2, 3), torch.nn.ReLU())\n"
        "print([s.name for s in core.find_relu_sites(net, torch.zeros(1, 1, 5, 5))])\n"
        "assert not any(m.split('.')[0] in ('lightning', 'tensorboard') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['1']"
