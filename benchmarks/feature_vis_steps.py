"""How many optimisation steps a feature visualization needs: the objective each (steps, lr) setting reaches, against
the 256 steps at lr 0.05 the monitor used before the time budget, on torchvision's ResNet-18 trained briefly on
CIFAR-10 (the real data: ``../shared/data/cifar10`` or ``--data``).

    python benchmarks/feature_vis_steps.py                       # 2 epochs of 100 steps, then the table
    python benchmarks/feature_vis_steps.py --picture steps.png   # and the renders side by side

For 16 channels of the first, middle and last conv layer (the monitor's default layers; the first layer with the
central-neuron objective, as the monitor renders it), each row gives the seconds of the render, the median over
channels of the objective its images reach (seen without the random transforms), that median as a fraction of the
256-step one, and how many channels' images excite them more than the best of 1,000 test images.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torchvision
from torch import Tensor

from lightning_cnnviz.core import LayerMap, visualize_features
from lightning_cnnviz.core.methods.feature_vis import color_correlation
from lightning_cnnviz.core.model.modules import evaluating, run_to
from lightning_cnnviz.demo.data import ImageFolderDataModule, find_data

SETTINGS = [(256, 0.05), (128, 0.05), (128, 0.1), (96, 0.1), (64, 0.1), (64, 0.15), (32, 0.15)]
PICTURED = [(256, 0.05), (128, 0.1), (64, 0.15)]  # before the budget, twice the default's steps, the default


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="the CIFAR-10 zip or folder (default: ../shared/data)")
    parser.add_argument("--steps-per-epoch", type=int, default=100)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--picture", default=None, help="save 8 channels' renders (rows: layer x PICTURED) to a PNG")
    args = parser.parse_args()
    root = Path(__file__).resolve().parents[1]
    found = Path(args.data) if args.data else find_data("cifar10", roots=[root.parent / "shared" / "data"])
    if found is None:
        sys.exit("CIFAR-10 not found: pass --data PATH (the cifar10-jpg.zip or an ImageFolder tree)")
    torch.set_num_threads(min(torch.get_num_threads(), 2))
    data = ImageFolderDataModule(str(found), batch_size=64, limit_per_class=640, limit_val=1000)
    data.setup("fit")
    torch.manual_seed(0)
    net = torchvision.models.resnet18(weights=None, num_classes=10)
    optimizer = torch.optim.SGD(net.parameters(), lr=0.02, momentum=0.9)
    net.train()
    for _ in range(args.epochs):
        for step, (x, y) in enumerate(data.train_dataloader()):
            if step == args.steps_per_epoch:
                break
            loss = torch.nn.functional.cross_entropy(net(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    print(f"ResNet-18 trained {args.epochs} x {args.steps_per_epoch} steps on CIFAR-10, last loss {loss.item():.2f}")
    net.eval()
    probe = data._val.tensors[0][:1000]
    mean, std = data.mean.view(1, -1, 1, 1), data.std.view(1, -1, 1, 1)
    colors = color_correlation((probe * std + mean).clamp(0, 1))
    channels = list(range(16))
    rows: list[Tensor] = []
    print("| layer | steps | lr | seconds | median objective | of 256 steps' | channels above the best test image |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for layer in LayerMap.of(net).default_layers():
        neuron = layer == LayerMap.of(net).first

        def score(inputs: Tensor, layer: str = layer, neuron: bool = neuron) -> Tensor:
            out: dict[str, Tensor] = {}
            with evaluating(net), torch.no_grad():
                run_to(net, inputs, [layer], out.__setitem__)
            acts = out[layer][:, channels] if len(inputs) != len(channels) else out[layer][range(16), channels]
            return acts[..., acts.shape[-2] // 2, acts.shape[-1] // 2] if neuron else acts.mean(dim=(-2, -1))

        best = score(probe).max(dim=0).values
        reference = None
        for steps, lr in SETTINGS:
            started = time.perf_counter()
            images = visualize_features(
                net, layer, channels, size=32, steps=steps, lr=lr, colors=colors, mean=data.mean, std=data.std,
                objective="neuron" if neuron else "channel",
            )  # fmt: skip
            took = time.perf_counter() - started
            reached = score((images - mean) / std)
            median = statistics.median(reached.tolist())
            reference = median if reference is None else reference
            above = int((reached > best).sum())
            print(f"| {layer} | {steps} | {lr} | {took:.1f} | {median:.3f} | {median / reference:.2f} | {above}/16 |")
            if (steps, lr) in PICTURED:
                rows.append(images[:8])
    if args.picture:
        grid = torch.nn.functional.interpolate(torch.cat(rows), scale_factor=2, mode="nearest")
        torchvision.utils.save_image(grid, args.picture, nrow=8, padding=2)
        print(f"renders: rows per layer in the order {PICTURED}, saved to {args.picture}")


if __name__ == "__main__":
    main()
