"""Cost of the per-step activation statistics (tap + ``ActivationStats.update``) on torchvision models.

One training step (forward, cross-entropy, backward inside ``tap.paused()``, SGD) with and without the tap, in
paired, interleaved repeats in one process (order alternating), after one untimed warm-up step of each. Prints
the median of the per-repeat ratios and their spread (min to max).

ResNet-18 calls each BasicBlock's ``nn.ReLU`` twice: every module's forward is followed (the sites need their
place). EfficientNet-B0 uses each ``nn.SiLU`` module once: one hook per activation module. The ``functional``
network calls ``F.relu``: the calls of the forwards that make them are intercepted.

    python benchmarks/activation_tap.py                         # CPU, 64 px, batch 32, 9 repeats
    python benchmarks/activation_tap.py --size 224 --device cuda
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
import torchvision
from torch import Tensor, nn

from lightning_cnnviz.core import ActivationStats, find_activation_sites, tap_activations


class FunctionalCNN(nn.Module):
    """Six 3x3 convs, each followed by ``F.relu`` in this forward (no activation modules)."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        widths = [3, 32, 32, 64, 64, 128, 128]
        pairs = enumerate(itertools.pairwise(widths))
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, stride=1 + i % 2) for i, (a, b) in pairs)
        self.fc = nn.Linear(widths[-1], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        for conv in self.convs:
            x = F.relu(conv(x))
        return self.fc(x.mean((2, 3)))


MODELS: dict[str, Callable[[], nn.Module]] = {
    "resnet18": lambda: torchvision.models.resnet18(num_classes=10),
    "efficientnet_b0": lambda: torchvision.models.efficientnet_b0(num_classes=10),
    "functional": FunctionalCNN,
}


def step_time(model: nn.Module, images: Tensor, labels: Tensor, tapped: bool, sites: list) -> float:
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    stats = ActivationStats({site.name: site.spec for site in sites}, device=images.device)

    def step() -> None:
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    def synchronize() -> None:
        if images.device.type == "cuda":
            torch.cuda.synchronize()

    if not tapped:
        synchronize()
        start = time.perf_counter()
        step()
        synchronize()
        return time.perf_counter() - start
    with tap_activations(model, sites, stats.update) as tap:
        synchronize()
        start = time.perf_counter()
        loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        with tap.paused():
            loss.backward()
        optimizer.step()
        stats.step()
        synchronize()
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=9)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--models", nargs="+", default=list(MODELS))
    args = parser.parse_args()
    print(f"{'model':16} {'sites':>5} {'without':>9} {'with':>9} {'ratio':>6}  spread")
    for name in args.models:
        torch.manual_seed(0)
        model = MODELS[name]().to(args.device).train()
        images = torch.randn(args.batch, 3, args.size, args.size, device=args.device)
        labels = torch.randint(0, 10, (args.batch,), device=args.device)
        sites = [site for site in find_activation_sites(model, images[:2]) if not site.on_logits]
        for tapped in (False, True):  # warm-up
            step_time(model, images, labels, tapped, sites)
        times: dict[bool, list[float]] = {False: [], True: []}
        for repeat in range(args.repeats):
            for tapped in (False, True) if repeat % 2 == 0 else (True, False):
                times[tapped].append(step_time(model, images, labels, tapped, sites))
        ratios = [with_ / without for with_, without in zip(times[True], times[False])]
        print(
            f"{name:16} {len(sites):5d} {statistics.median(times[False]) * 1e3:7.1f}ms "
            f"{statistics.median(times[True]) * 1e3:7.1f}ms {statistics.median(ratios):6.3f}  "
            f"{min(ratios):.3f}-{max(ratios):.3f}"
        )


if __name__ == "__main__":
    main()
