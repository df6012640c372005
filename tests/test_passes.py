"""The one rule that sizes batched passes: at least the images of a call, then as many as the device's memory bound
holds for the activations of one input; occlusion, SmoothGrad, the top-patch scan and projections run passes of that
size, and their maps do not depend on it."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

import lightning_cnnviz.core.model.passes as P
from lightning_cnnviz.core import top_activations
from lightning_cnnviz.core.methods import saliency as S


def net() -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 3)]
    return nn.Sequential(*layers)


def batch_sizes(model: nn.Module) -> tuple[list[int], Any]:
    seen: list[int] = []
    handle = model[0].register_forward_pre_hook(lambda module, args: seen.append(len(args[0])))
    return seen, handle


def test_activation_bytes_and_the_rule_by_hand(monkeypatch: pytest.MonkeyPatch) -> None:
    model, image = net(), torch.zeros(1, 3, 8, 8)
    # input 3*8*8, conv and ReLU 4*8*8 each, pool 4, flatten 4, linear 3: float32
    per_input = 4 * (3 * 64 + 2 * 4 * 64 + 4 + 4 + 3)
    assert P.activation_bytes(model, image) == per_input
    monkeypatch.setattr(P, "memory_bound", lambda device: 10 * per_input + 5)
    assert P.pass_size(model, image) == P.pass_size(model, image, grad=True) == 10  # the bound: forward bytes
    assert P.pass_size(model, image, minimum=16) == 16  # never fewer than the images of the call
    monkeypatch.setattr(P, "memory_limit", lambda device: 9 * per_input)  # the limit: 3x the forward with gradients
    assert (P.pass_size(model, image), P.pass_size(model, image, grad=True)) == (9, 3)
    monkeypatch.setattr(P, "memory_bound", lambda device: 0)
    assert P.pass_size(model, image) == 1
    # a model whose weights outweigh the bound: passes whose activations outweigh the weights
    monkeypatch.setattr(P, "memory_limit", lambda device: 10**12)
    heavy = nn.Sequential(nn.Flatten(), nn.Linear(3 * 64, 1000))
    forward, weights = 4 * (2 * 3 * 64 + 1000), 4 * (3 * 64 * 1000 + 1000)
    assert P.activation_bytes(heavy, image) == forward
    assert P.pass_size(heavy, image) == -(-weights // forward) == 140


def test_memory_bound_on_a_cpu_is_256_mib_within_an_eighth_of_available_ram() -> None:
    assert P.memory_bound("cpu") == min(256 * 2**20, P.available_ram() // 8) > 0


@pytest.mark.parametrize("bound", [0, 3, 10**12])
def test_passes_of_any_size_give_the_same_maps(bound: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Occlusion (16 copies per image) and SmoothGrad (5 noisy copies per image) in passes of the images of the call
    (bound 0), of a few copies, or of everything at once."""
    model, images, targets = net(), torch.randn(4, 3, 8, 8), torch.tensor([0, 1, 2, 0])
    reference = S.occlusion(model, images, targets, patch=2, stride=2, memory_budget=10**12)
    noise = 0.1 * torch.randn(20, 3, 8, 8)
    smooth = S.smoothgrad(model, images, targets, samples=5, noise=noise, max_batch=20)
    per_input = P.activation_bytes(model, images[:1])
    monkeypatch.setattr(P, "memory_bound", lambda device: bound * per_input)
    seen, handle = batch_sizes(model)
    try:
        occluded = S.occlusion(model, images, targets, patch=2, stride=2)
    finally:
        handle.remove()
    assert max(seen) == min(64, max(4, bound))  # 64 copies: 4 images x 16 windows
    torch.testing.assert_close(occluded, reference)
    torch.testing.assert_close(S.smoothgrad(model, images, targets, samples=5, noise=noise), smooth)


def test_the_scan_runs_passes_of_the_rule(monkeypatch: pytest.MonkeyPatch) -> None:
    model, images = net(), torch.randn(10, 3, 8, 8)
    everything = top_activations(model, {"1": [0, 1, 2, 3]}, images, k=3)
    per_input = P.activation_bytes(model, images[:1])
    monkeypatch.setattr(P, "memory_bound", lambda device: 3 * per_input)
    seen, handle = batch_sizes(model)
    try:
        scanned = top_activations(model, {"1": [0, 1, 2, 3]}, images, k=3)
    finally:
        handle.remove()
    assert seen == [3, 3, 3, 1]  # one input's activations were measured by the first scan, and remembered
    for field in ("values", "images", "ys", "xs"):
        torch.testing.assert_close(getattr(scanned["1"], field), getattr(everything["1"], field))
