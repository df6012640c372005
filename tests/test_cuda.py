"""On a CUDA device: the same numbers as on the CPU, and no host sync where the monitors promise none.

Skipped where no CUDA device is present (``pytest -m cuda`` runs only these)."""

from __future__ import annotations

import functools

import pytest
import torch

from conftest import TinyCNN
from lightning_cnnviz.core import ActivationStats, find_activation_sites, occlusion, smoothgrad, tap_activations, tsne

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@pytest.mark.parametrize("style", ["module", "inplace", "functional"])
def test_statistics_on_the_gpu_need_no_host_sync_and_equal_the_cpu_counts(style: str) -> None:
    torch.manual_seed(0)
    model = TinyCNN(style, in_channels=3, num_classes=4)
    x = torch.randn(8, 3, 12, 12)
    sites = find_activation_sites(model, x)
    counts = {}
    for device in ("cpu", "cuda"):
        model.to(device)
        stats = ActivationStats({s.name: s.spec for s in sites}, device=device)
        with tap_activations(model, sites, functools.partial(stats.update, distribution=True)):
            model(x.to(device))  # first call: allocations
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")  # any host sync in the training forward now raises
            try:
                for _ in range(3):
                    model(x.to(device, non_blocking=True))
                    stats.step()
            finally:
                torch.cuda.set_sync_debug_mode("default")
        summary = stats.summary()
        counts[device] = {
            name: (layer.firing.tolist(), layer.distribution.tolist()) for name, layer in summary.layers.items()
        }
    assert counts["cpu"] == counts["cuda"]


def test_saliency_on_the_gpu_equals_the_cpu() -> None:
    torch.manual_seed(0)
    model = TinyCNN("functional", in_channels=3, num_classes=4).double().eval()
    x = torch.randn(4, 3, 12, 12, dtype=torch.float64)
    targets = torch.tensor([0, 1, 2, 3])
    noise = torch.randn(4 * 5, 3, 12, 12, dtype=torch.float64)
    cpu = smoothgrad(model, x, targets, samples=5, noise=noise), occlusion(model, x, targets, patch=4, stride=2)
    model.cuda()
    gpu = (
        smoothgrad(model, x.cuda(), targets.cuda(), samples=5, noise=noise.cuda()),
        occlusion(model, x.cuda(), targets.cuda(), patch=4, stride=2),
    )
    for ours, reference in zip(gpu, cpu):
        torch.testing.assert_close(ours.cpu(), reference, rtol=1e-9, atol=1e-12)


def test_tsne_on_the_gpu_matches_the_cpu_map_quality() -> None:
    from sklearn.datasets import load_digits
    from sklearn.manifold import trustworthiness

    x = torch.from_numpy(load_digits().data[:800]).float()
    maps = [tsne(x.to(device)).cpu().numpy() for device in ("cpu", "cuda")]
    trust = [trustworthiness(x.numpy(), m, n_neighbors=5) for m in maps]
    assert abs(trust[0] - trust[1]) < 0.01
