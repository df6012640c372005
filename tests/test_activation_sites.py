"""ReLU-site discovery and tapping: modules, in-place modules and functional calls."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from conftest import ROOT, TinyCNN, global_state_clean, hooks_left
from lightning_cnnviz.core import find_activation_sites, tap_activations
from lightning_cnnviz.core.model.capture import capture


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
    sites = find_activation_sites(model, torch.randn(2, 1, 8, 8))
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
    sites = find_activation_sites(model, torch.randn(1, 1, 10, 10))
    assert [s.name for s in sites] == ["shared", "inner.relu6", "inner.relu", "shared#2"]
    assert sites[0].places == 2 and sites[3].place == 1 and sites[3].scope == ""


def test_torchvision_resnet_block_relu_called_twice() -> None:
    from lightning_cnnviz.demo.models import resnet18_cifar

    model = resnet18_cifar(3, 10)
    names = [s.name for s in find_activation_sites(model, torch.randn(1, 3, 32, 32))]
    assert names[:3] == ["relu", "layer1.0.relu", "layer1.0.relu#2"]
    assert len(names) == 1 + 8 * 2


@pytest.mark.parametrize("style", ["module", "inplace", "functional", "method"])
def test_tap_sees_exact_activations(style: str) -> None:
    torch.manual_seed(1)
    model = TinyCNN(style)
    x = torch.randn(3, 1, 8, 8)
    sites = find_activation_sites(model, x[:1])
    seen: dict[str, Tensor] = {}
    with tap_activations(model, sites, lambda name, out: seen.__setitem__(name, out.detach().clone())):
        model(x)
        model(x)  # a second forward maps to the same sites
    expected = reference_relu_outputs(model, x)
    assert list(seen) == [s.name for s in sites]
    for got, want in zip(seen.values(), expected, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    assert hooks_left(model) == [] and global_state_clean()


def test_tap_cleans_up_after_forward_error() -> None:
    model = TinyCNN("functional")
    sites = find_activation_sites(model, torch.randn(1, 1, 8, 8))
    with pytest.raises(RuntimeError), tap_activations(model, sites, lambda n, o: None):
        model(torch.randn(1, 2, 8, 8))  # wrong channel count: conv1 raises inside the tapped forward
    assert hooks_left(model) == [] and global_state_clean()


def test_find_activation_sites_restores_training_flags() -> None:
    model = TinyCNN("module")
    model.train()
    model.conv2.eval()
    find_activation_sites(model, torch.randn(1, 1, 8, 8))
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
    sites = find_activation_sites(model, x)
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
        "print([s.name for s in core.find_activation_sites(net, torch.zeros(1, 1, 5, 5))])\n"
        "assert not any(m.split('.')[0] in ('lightning', 'tensorboard') for m in sys.modules)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['1']"


class EveryKind(nn.Module):
    """One conv per activation kind, as a module and as a functional call."""

    MODULES = (nn.LeakyReLU(0.1), nn.PReLU(), nn.ELU(), nn.GELU(), nn.SiLU(), nn.Hardswish(), nn.Mish())
    FUNCTIONS = (F.leaky_relu, F.elu, F.gelu, F.silu, F.hardswish, F.mish, F.hardsigmoid, F.relu6, torch.selu)

    def __init__(self) -> None:
        super().__init__()
        count = len(self.MODULES) + len(self.FUNCTIONS)
        self.convs = nn.ModuleList(nn.Conv2d(2, 2, 1) for _ in range(count))
        self.acts = nn.ModuleList(self.MODULES)
        self.head = nn.Linear(2, 3)

    def forward(self, x: Tensor) -> Tensor:
        convs = iter(self.convs)
        for act in self.acts:
            x = act(next(convs)(x))
        for function in self.FUNCTIONS:
            x = function(next(convs)(x))
        return self.head(x.mean((2, 3)))


def test_every_activation_kind_as_module_and_function() -> None:
    sites = find_activation_sites(EveryKind(), torch.randn(1, 2, 4, 4))
    modules = [(s.name, s.function) for s in sites if s.kind == "module"]
    assert modules == [
        ("acts.0", "leaky_relu"),
        ("acts.1", "prelu"),
        ("acts.2", "elu"),
        ("acts.3", "gelu"),
        ("acts.4", "silu"),
        ("acts.5", "hardswish"),
        ("acts.6", "mish"),
    ]
    functions = [s.name for s in sites if s.kind == "function"]
    assert functions == ["leaky_relu", "elu", "gelu", "silu", "hardswish", "mish", "hardsigmoid", "relu6", "selu"]
    assert [s.relu for s in sites].count(True) == 1  # relu6 only
    assert not any(s.on_logits for s in sites)


class LoopNet(nn.Module):
    """A functional ReLU on one line of a loop over layers of the same width, and a ConvNeXt-style block."""

    def __init__(self) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv2d(4 if i else 1, 4, 3, padding=1) for i in range(3))
        self.norm = nn.LayerNorm(4)
        self.pointwise = nn.Linear(4, 8)
        self.act = nn.GELU()
        self.back = nn.Linear(8, 4)
        self.fc1 = nn.Linear(4, 6)
        self.fc2 = nn.Linear(6, 3)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        y = self.back(self.act(self.pointwise(self.norm(x.permute(0, 2, 3, 1))))).permute(0, 3, 1, 2)
        x = F.relu(self.fc1((x + y).mean((2, 3))))
        return F.relu(self.fc2(x))  # a ReLU on the logits


def test_loop_places_units_channels_last_and_logits() -> None:
    torch.manual_seed(4)
    model = LoopNet()
    x = torch.randn(2, 1, 6, 6)
    sites = find_activation_sites(model, x)
    assert [s.name for s in sites] == ["relu", "relu#2", "relu#3", "act", "relu#4", "relu#5"]
    by_name = {s.name: s for s in sites}
    assert by_name["act"].channel_dim == -1 and by_name["act"].num_channels == 8 and not by_name["act"].units
    assert by_name["relu#4"].units and by_name["relu#4"].num_channels == 6
    assert [s.on_logits for s in sites] == [False] * 5 + [True]
    seen: dict[str, Tensor] = {}
    with tap_activations(model, sites, lambda name, out: seen.__setitem__(name, out.detach().clone())):
        model(x)
    a = x
    for index, conv in enumerate(model.convs):
        a = F.relu(conv(a))
        torch.testing.assert_close(seen[sites[index].name], a, rtol=0, atol=0)
    assert seen["act"].shape == (2, 6, 6, 8)


def test_names_survive_forwards_stopped_half_way_and_eval_forwards() -> None:
    """A forward stopped after the first layer (as a probe pass does) cannot shift the next forward's names."""
    from lightning_cnnviz.core.model.modules import run_to

    torch.manual_seed(5)
    model = TinyCNN("functional")
    x = torch.randn(2, 1, 8, 8)
    sites = find_activation_sites(model, x)
    calls: list[tuple[str, int]] = []
    with tap_activations(model, sites, lambda name, out: calls.append((name, out.shape[1]))):
        for _ in range(3):
            run_to(model, x, ["conv1"], lambda name, value: None)  # stops inside forward, before any ReLU ends it
            model(x)
    assert calls == [("relu", 6), ("relu#2", 8)] * 3
    assert hooks_left(model) == [] and global_state_clean()


def test_shared_module_in_a_sequential_is_two_places() -> None:
    act = nn.ReLU()
    model = nn.Sequential(nn.Conv2d(1, 3, 3), act, nn.Conv2d(3, 5, 3), act, nn.Flatten(), nn.Linear(5 * 16, 2))
    x = torch.randn(2, 1, 8, 8)
    sites = find_activation_sites(model, x)
    assert [(s.name, s.num_channels, s.places) for s in sites] == [("1", 3, 2), ("1#2", 5, 2)]
    seen: list[tuple[str, int]] = []
    with tap_activations(model, sites, lambda name, out: seen.append((name, out.shape[1]))):
        model(x)
        model(x[:1])
    assert seen == [("1", 3), ("1#2", 5)] * 2
