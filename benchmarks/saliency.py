"""Our batched saliency core vs captum, in one process, on 16 CIFAR-10 test images and the demo CNN.

    python benchmarks/saliency.py            # CPU
    python benchmarks/saliency.py --device cuda

Cases: SmoothGrad with 50 samples x 16 images, occlusion of 16 32x32 images with an 8x8 patch and stride 2,
guided backprop. For each: median seconds of ours and captum's (runs alternate), the time ratio, and the
largest absolute difference relative to the map's scale (same noise for SmoothGrad). Captum's occlusion is
timed with its default (one occluded batch per window position), with 4 windows per batch and with all window
positions of an image in one batch; ours runs its occluded copies as batches sized by its memory budget. A
second occlusion case upsamples the images to 64x64. Both occlusion maps are also compared with captum's in
float64 (float32 rounding of the probabilities moves either map by a few 1e-5 of its scale on this model).
"""

from __future__ import annotations

import argparse
import copy
import io
import statistics
import time
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from captum.attr import GuidedBackprop, NoiseTunnel, Occlusion, Saliency
from PIL import Image
from torch import Tensor

from lightning_cnnviz.core.methods import saliency as S
from lightning_cnnviz.demo.models import SmallCNN

ROOT = Path(__file__).resolve().parents[1]


def cifar_images(count: int) -> Tensor:
    """The first test image of each class, then the second, ... (normalised per channel)."""
    path = ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"
    with zipfile.ZipFile(path) as archive:
        names = sorted(n for n in archive.namelist() if n.startswith("test/") and n.endswith(".jpg"))
        by_class: dict[str, list[str]] = {}
        for name in names:
            by_class.setdefault(name.split("/")[1], []).append(name)
        chosen = [by_class[c][i] for i in range(count) for c in sorted(by_class)][:count]
        arrays = [np.asarray(Image.open(io.BytesIO(archive.read(n))).convert("RGB")) for n in chosen]
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).float() / 255
    return (images - images.mean(dim=(0, 2, 3), keepdim=True)) / images.std(dim=(0, 2, 3), keepdim=True)


def timed(function: Callable[[], Tensor], device: str) -> tuple[float, Tensor]:
    start = time.perf_counter()
    result = function()
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start, result


def compare(
    name: str,
    ours: Callable[[], Tensor],
    theirs: dict[str, Callable[[], Tensor]],
    device: str,
    repeats: int,
    truth: Tensor | None = None,
) -> None:
    """Times and differences; with ``truth`` (the map in float64) also each map's distance from it."""
    ours()
    for reference in theirs.values():
        reference()
    times: dict[str, list[float]] = {"ours": [], **{k: [] for k in theirs}}
    results: dict[str, Tensor] = {}
    for _ in range(repeats):
        seconds, results["ours"] = timed(ours, device)
        times["ours"].append(seconds)
        for label, reference in theirs.items():
            seconds, results[label] = timed(reference, device)
            times[label].append(seconds)
    mine = statistics.median(times["ours"])
    print(f"{name}: ours {mine:.4f} s")
    if truth is not None:
        scale = truth.abs().max().item()
        gaps = {label: (result.double() - truth).abs().max().item() / scale for label, result in results.items()}
        print("    max |diff| / scale from captum in float64: " + ", ".join(f"{k} {v:.1e}" for k, v in gaps.items()))
    for label in theirs:
        other = statistics.median(times[label])
        scale = results[label].abs().max().item()
        diff = (results["ours"] - results[label]).abs().max().item() / max(scale, 1e-30)
        print(f"    {label}: {other:.4f} s  ->  ours is {other / mine:.2f}x faster; max |diff| / scale = {diff:.1e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    device = args.device
    torch.manual_seed(0)
    model = SmallCNN(3, 10, first_kernel=7).to(device).eval()
    images = cifar_images(16).to(device)
    targets = torch.arange(16, device=device) % 10
    print(f"device={device} torch_threads={torch.get_num_threads()} images={tuple(images.shape)}")

    samples, stdev = 50, 0.15 * float(images.max() - images.min())
    torch.manual_seed(1)
    noise = torch.normal(0, torch.tensor(stdev, device=device).repeat((16 * samples, *images.shape[1:])))

    def captum_smoothgrad() -> Tensor:
        torch.manual_seed(1)
        return (
            NoiseTunnel(Saliency(model))
            .attribute(images, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=targets)
            .amax(dim=1)
        )

    compare(
        "SmoothGrad 50 samples x 16 images",
        lambda: S.smoothgrad(model, images, targets, samples=samples, noise=noise),
        {"captum NoiseTunnel(Saliency)": captum_smoothgrad},
        device,
        args.repeats,
    )

    def probabilities(x: Tensor) -> Tensor:
        return model(x).softmax(dim=1)

    double = copy.deepcopy(model).double()

    def captum_occlusion(
        inputs: Tensor, patch: int, stride: int, per_eval: int, score: Callable[[Tensor], Tensor] = probabilities
    ) -> Callable[[], Tensor]:
        return lambda: Occlusion(score).attribute(
            inputs,
            sliding_window_shapes=(3, patch, patch),
            strides=(3, stride, stride),
            baselines=0.0,
            target=targets,
            perturbations_per_eval=per_eval,
        )[:, 0]

    def ours_occlusion(inputs: Tensor, patch: int, stride: int) -> Callable[[], Tensor]:
        return lambda: S.occlusion(model, inputs, targets, patch=patch, stride=stride, baseline=0.0)

    compare(
        "Occlusion 16 x 32x32, patch 8, stride 2 (169 windows)",
        ours_occlusion(images, 8, 2),
        {
            "captum Occlusion (default, 1 window per pass)": captum_occlusion(images, 8, 2, 1),
            "captum Occlusion (4 windows per pass)": captum_occlusion(images, 8, 2, 4),
            "captum Occlusion (169 windows per pass)": captum_occlusion(images, 8, 2, 169),
        },
        device,
        args.repeats,
        truth=captum_occlusion(images.double(), 8, 2, 4, lambda x: double(x).softmax(dim=1))(),
    )
    large = F.interpolate(images, scale_factor=2.0, mode="bilinear", align_corners=False)
    compare(
        "Occlusion 16 x 64x64 (the same images upsampled), patch 16, stride 4 (169 windows)",
        ours_occlusion(large, 16, 4),
        {"captum Occlusion (default, 1 window per pass)": captum_occlusion(large, 16, 4, 1)},
        device,
        max(1, args.repeats // 2),
        truth=captum_occlusion(large.double(), 16, 4, 4, lambda x: double(x).softmax(dim=1))(),
    )

    compare(
        "Guided backprop 16 images",
        lambda: S.guided_backprop(model, images, targets),
        {"captum GuidedBackprop": lambda: GuidedBackprop(model).attribute(images, target=targets)},
        device,
        args.repeats,
    )


if __name__ == "__main__":
    main()
