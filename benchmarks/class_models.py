"""Class models batched over the classes against one class at a time in a loop (how Lucent renders: one objective
per call), the same images; in one process.

    python benchmarks/class_models.py               # demo CNN at 32 px, ResNet-18 at 32 and 64 px; 10 classes
    python benchmarks/class_models.py --repeats 5

Each repeat times the batched render and the loop back to back (alternating which goes first), random weights,
64 steps at the monitor's defaults (Fourier parameterisation, transformations, the L2 term); prints the median and
the spread of the loop-over-batched ratios, the per-image cost of each, the mean class logit each reaches, and the
largest pixel difference between the two. Each image has its own seed and objective, so the two compute the same
thing; a batched convolution rounds differently from a single one, and Adam's first steps (about ``lr`` times the
gradient's sign) amplify those differences where a gradient is near zero, so the pixels differ while the logits
reached agree.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
import torchvision
from torch import nn

from lightning_cnnviz.core import render_objective
from lightning_cnnviz.core.methods.objectives import class_logit
from lightning_cnnviz.core.monitors.class_models import L2
from lightning_cnnviz.demo.models import SmallCNN

CLASSES = list(range(10))


def network(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "demo CNN":
        return SmallCNN(in_channels=3, num_classes=10).eval()
    return getattr(torchvision.models, name)(weights=None, num_classes=10).eval()


def batched(model: nn.Module, size: int, steps: int) -> torch.Tensor:
    return render_objective(model, class_logit(CLASSES), len(CLASSES), size=size, steps=steps, lr=0.15,
                            seeds=CLASSES, l2=L2)  # fmt: skip


def looped(model: nn.Module, size: int, steps: int) -> torch.Tensor:
    return torch.cat([render_objective(model, class_logit(c), 1, size=size, steps=steps, lr=0.15, seeds=[c], l2=L2)
                      for c in CLASSES])  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=64)
    args = parser.parse_args()
    print("| model | px | batched (s) | loop (s) | loop / batched, median (spread) | per image: batched, loop | "
          "mean class logit: batched, loop | max pixel difference |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for name, size in (("demo CNN", 32), ("resnet18", 32), ("resnet18", 64)):
        model = network(name)
        batched(model, size, 2)  # warm up
        times: dict[str, list[float]] = {"batched": [], "loop": []}
        images: dict[str, torch.Tensor] = {}
        for repeat in range(args.repeats):
            order = [("batched", batched), ("loop", looped)]
            for label, render in order if repeat % 2 == 0 else order[::-1]:
                started = time.perf_counter()
                images[label] = render(model, size, args.steps)
                times[label].append(time.perf_counter() - started)
        ratios = [loop / fast for loop, fast in zip(times["loop"], times["batched"], strict=True)]
        fast, slow = statistics.median(times["batched"]), statistics.median(times["loop"])
        difference = float((images["batched"] - images["loop"]).abs().max())
        with torch.no_grad():
            reached = [float(model(images[label]).diagonal().mean()) for label in ("batched", "loop")]
        print(f"| {name} | {size} | {fast:.2f} | {slow:.2f} | {statistics.median(ratios):.2f}x "
              f"({min(ratios):.2f}-{max(ratios):.2f}) | {fast / len(CLASSES) * 1000:.0f} ms, "
              f"{slow / len(CLASSES) * 1000:.0f} ms | {reached[0]:.2f}, {reached[1]:.2f} | {difference:.1e} |",
              flush=True)
    print(f"\n{torch.get_num_threads()} threads, {args.steps} steps, {len(CLASSES)} classes")


if __name__ == "__main__":
    main()
