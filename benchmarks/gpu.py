"""The suite on a GPU, in one script (under 8 minutes on one GPU): prints one table.

    python benchmarks/gpu.py                 # on CUDA
    python benchmarks/gpu.py --quick --device cpu   # a smoke run of every row, small (CPU figures mean nothing)

Rows:

* whole-suite overhead: torchvision ResNet-50 (``weights=None``, 10 classes) trained on synthetic 224x224
  images (batch 64, AdamW, 1,024 validation images) for ``--steps`` steps per epoch over 2 epochs, with all
  five monitors at their defaults against no monitors, and with ActivationMonitor alone collecting on every
  step; wall-time ratio (runs alternate, median of ``--repeats`` pairs);
* t-SNE: ours on the GPU against openTSNE (``n_jobs`` = all CPU cores) on the CPU, N = 5,000 and 10,000
  512-d codes (scikit-learn's digits through a fixed random projection, with noise), with trustworthiness;
* SmoothGrad (50 samples) and occlusion (16x16 patch, stride 8) of 16 ResNet-50 images at 224x224 against
  captum's NoiseTunnel(Saliency) and Occlusion (its default, and 64 windows per pass), with the largest
  difference relative to the map's scale.
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from lightning_cnnviz import ActivationMonitor, EmbeddingMonitor, FilterMonitor, SaliencyMonitor, TopPatchMonitor
from lightning_cnnviz.core import occlusion, smoothgrad, tsne

ROWS: list[tuple[str, str, str]] = []


def row(case: str, ours: str, ratio: str) -> None:
    ROWS.append((case, ours, ratio))
    print(f"{case:<62} {ours:>16} {ratio:>28}", flush=True)


class ResNet50(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        from torchvision.models import resnet50

        self.net = resnet50(weights=None, num_classes=10)

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, labels = batch
        return F.cross_entropy(self(images), labels)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        images, labels = batch
        self.log("val_loss", F.cross_entropy(self(images), labels))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(self.parameters(), lr=1e-3)


def synchronize(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def synthetic(count: int, side: int, seed: int) -> TensorDataset:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    images = torch.randn(count, 3, side, side, generator=generator) * 0.5 + labels.view(-1, 1, 1, 1) * 0.05
    return TensorDataset(images, labels)


def fit_seconds(callbacks: list[pl.Callback], data: tuple[TensorDataset, TensorDataset], args: Any) -> float:
    pl.seed_everything(0, verbose=False)
    model = ResNet50()
    with tempfile.TemporaryDirectory() as logdir:
        trainer = pl.Trainer(
            accelerator="gpu" if args.device == "cuda" else "cpu", devices=1, max_epochs=2,
            limit_train_batches=args.steps, callbacks=callbacks, logger=pl.loggers.TensorBoardLogger(logdir),
            enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False,
            num_sanity_val_steps=0, log_every_n_steps=50,
        )  # fmt: skip
        loaders = (DataLoader(data[0], batch_size=64, shuffle=True), DataLoader(data[1], batch_size=128))
        synchronize(args.device)
        start = time.perf_counter()
        trainer.fit(model, *loaders)
        synchronize(args.device)
        return time.perf_counter() - start


def overhead(args: argparse.Namespace) -> None:
    data = synthetic(64 * args.steps, args.size, 0), synthetic(args.val, args.size, 1)
    configurations: dict[str, Callable[[], list[pl.Callback]]] = {
        "all five monitors at their defaults": lambda: [
            FilterMonitor(),
            ActivationMonitor(),
            SaliencyMonitor(),
            TopPatchMonitor(),
            EmbeddingMonitor(),
        ],
        "ActivationMonitor, statistics on every step": lambda: [ActivationMonitor(collect_every_n_steps=1)],
    }
    fit_seconds([], data, argparse.Namespace(**{**vars(args), "steps": 2}))  # warm-up: cuDNN autotuning, allocator
    for name, make in configurations.items():
        ratios, times = [], []
        for repeat in range(args.repeats):
            order = [False, True] if repeat % 2 == 0 else [True, False]
            seconds = {on: fit_seconds(make() if on else [], data, args) for on in order}
            ratios.append(seconds[True] / seconds[False])
            times.append(seconds[True])
        median, ratio = statistics.median(times), statistics.median(ratios)
        case = f"ResNet-50 {args.size}x{args.size}, {2 * args.steps} steps: {name}"
        row(case, f"{median:.1f} s", f"{ratio:.3f} x time")


def codes(count: int) -> np.ndarray:
    from sklearn.datasets import load_digits

    digits, _ = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    base = digits[rng.integers(0, len(digits), count)] @ rng.normal(size=(64, 512)) / 8
    return (base + rng.normal(scale=2.0, size=base.shape)).astype(np.float32)


def tsne_rows(args: argparse.Namespace) -> None:
    from openTSNE import TSNE
    from sklearn.manifold import trustworthiness

    for count in args.tsne_sizes:
        x = codes(count)
        on_device = torch.from_numpy(x).to(args.device)
        tsne(on_device[:300])  # warm-up
        synchronize(args.device)
        start = time.perf_counter()
        ours = tsne(on_device).cpu().numpy()
        mine = time.perf_counter() - start
        start = time.perf_counter()
        theirs = np.asarray(TSNE(n_jobs=os.cpu_count() or 1, random_state=0).fit(x))
        other = time.perf_counter() - start
        trust = [trustworthiness(x, e, n_neighbors=5) for e in (ours, theirs)]
        row(
            f"t-SNE {count} x 512 (ours {args.device}, openTSNE {os.cpu_count()} CPU threads)",
            f"{mine:.2f} s",
            f"{mine / other:.3f} x openTSNE; trust {trust[0]:.4f}/{trust[1]:.4f}",
        )


def saliency_rows(args: argparse.Namespace) -> None:
    from captum.attr import NoiseTunnel, Occlusion, Saliency
    from torchvision.models import resnet50

    def timed(function: Callable[[], Tensor]) -> tuple[float, Tensor]:
        function()
        synchronize(args.device)
        start = time.perf_counter()
        result = function()
        synchronize(args.device)
        return time.perf_counter() - start, result

    torch.manual_seed(0)
    device, side, count = args.device, args.size, args.saliency_images
    model = resnet50(weights=None, num_classes=10).to(device).eval()
    images = torch.randn(count, 3, side, side, device=device)
    targets = torch.arange(count, device=device) % 10
    samples, stdev = 50, 0.15 * float(images.max() - images.min())
    torch.manual_seed(1)  # the noise captum draws after the same seed: torch.normal(0, stdev) of this shape
    noise = torch.normal(0, torch.tensor(stdev, device=device).repeat((count * samples, 3, side, side)))

    def captum_smoothgrad() -> Tensor:
        torch.manual_seed(1)
        nt = NoiseTunnel(Saliency(model))
        return nt.attribute(images, nt_type="smoothgrad", nt_samples=samples, stdevs=stdev, target=targets).amax(1)

    mine, ours = timed(lambda: smoothgrad(model, images, targets, samples=samples, noise=noise))
    other, theirs = timed(captum_smoothgrad)
    gap = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
    row(f"SmoothGrad, 50 samples x {count} ResNet-50 images", f"{mine:.2f} s", f"{other / mine:.2f}x; diff {gap:.1e}")

    def probabilities(x: Tensor) -> Tensor:
        return model(x).softmax(dim=1)

    patch, stride = side // 14, side // 28
    mine, ours = timed(lambda: occlusion(model, images, targets, patch=patch, stride=stride, baseline=0.0))
    for per_eval in (1, 64):
        other, theirs = timed(
            lambda per_eval=per_eval: Occlusion(probabilities).attribute(
                images, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride), baselines=0.0,
                target=targets, perturbations_per_eval=per_eval,
            )[:, 0]
        )  # fmt: skip
        gap = float((ours - theirs).abs().max() / theirs.abs().max().clamp_min(1e-30))
        row(
            f"occlusion {count} x {side}x{side}, {patch}x{patch} patch, stride {stride} (captum {per_eval}/pass)",
            f"{mine:.2f} s",
            f"{other / mine:.2f}x faster; map diff {gap:.1e}",
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--steps", type=int, default=60, help="training steps per epoch")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=224, help="image side")
    parser.add_argument("--quick", action="store_true", help="2 steps, 1 repeat, 28x28, small t-SNE and saliency")
    args = parser.parse_args()
    args.val, args.tsne_sizes, args.saliency_images = 1024, (5000, 10000), 16
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("benchmarks/gpu.py: no CUDA device (pass --device cpu for a smoke run)")
    if args.quick:
        args.steps, args.repeats, args.size, args.val, args.tsne_sizes, args.saliency_images = 2, 1, 28, 64, (400,), 2
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    torch.backends.cudnn.benchmark = True
    print(f"{torch.cuda.get_device_name() if args.device == 'cuda' else 'CPU'}, torch {torch.__version__}")
    print(f"{'case':<62} {'ours':>16} {'ratio':>28}")
    overhead(args)
    tsne_rows(args)
    saliency_rows(args)
    print("\n| case | ours | ratio |\n| --- | --- | --- |")
    for case, ours, ratio in ROWS:
        print(f"| {case} | {ours} | {ratio} |")


if __name__ == "__main__":
    main()
