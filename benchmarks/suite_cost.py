"""What the monitors cost a fit: each monitor alone, all of them, against the same fit without monitors, in one
process.

    python benchmarks/suite_cost.py                 # demo CNN and torchvision ResNet-18, 32 px, 2 epochs of 32 steps
    python benchmarks/suite_cost.py --realistic     # ResNet-18, 32 px, 10 epochs of 200 steps: none against all
    python benchmarks/suite_cost.py --realistic --pairs 2   # none, all, all, none: the drift cancels
    python benchmarks/suite_cost.py --short --pairs 2       # the same, 4 epochs of 100 steps
    python benchmarks/suite_cost.py --device cuda   # ResNet-50 at 224 px, none against all, 2 minutes each

Generated 3x32x32 images of 10 classes (a bright square whose place is the class, on noise), batch 64, SGD, CPU
unless ``--device``. Each row is a fresh model and Trainer with the same seed; "none" runs first and again last
(the machine's drift shows between the two). The monitors run at their defaults (``every_n_epochs="auto"``: the
first epoch, the last, and in between within the time budget), and the short runs also with the former fixed
cadences (every epoch for FilterMonitor, SaliencyMonitor and TopPatchMonitor, every 5 for EmbeddingMonitor and
FeatureVisMonitor). Each row prints the fit time, the steps done, the ratio of its time per step to the first
"none"'s, and how many times each epoch monitor logged, with the seconds of those logs.
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
import warnings
from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torchvision
from lightning.pytorch.loggers import TensorBoardLogger
from torch import Tensor, nn
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lightning_cnnviz import (
    ActivationAtlasMonitor,
    ActivationMapMonitor,
    ActivationMonitor,
    ClassModelMonitor,
    EmbeddingMonitor,
    FeatureVisMonitor,
    FilterMonitor,
    InvarianceMonitor,
    InversionMonitor,
    OcclusionMonitor,
    SaliencyMonitor,
    TopPatchMonitor,
)
from lightning_cnnviz.demo.models import SmallCNN

MONITORS: dict[str, Callable[..., Any]] = {
    "FilterMonitor": FilterMonitor,
    "ActivationMonitor": ActivationMonitor,
    "ActivationMapMonitor": ActivationMapMonitor,
    "SaliencyMonitor": SaliencyMonitor,
    "TopPatchMonitor": TopPatchMonitor,
    "EmbeddingMonitor": EmbeddingMonitor,
    "FeatureVisMonitor": FeatureVisMonitor,
    "ClassModelMonitor": ClassModelMonitor,
    "InversionMonitor": InversionMonitor,
    "ActivationAtlasMonitor": ActivationAtlasMonitor,
    "OcclusionMonitor": OcclusionMonitor,
    "InvarianceMonitor": InvarianceMonitor,
}
FIXED = {"FilterMonitor": 1, "ActivationMapMonitor": 1, "SaliencyMonitor": 1, "TopPatchMonitor": 1,
         "EmbeddingMonitor": 5, "FeatureVisMonitor": 5, "ClassModelMonitor": 5, "InversionMonitor": 5,
         "ActivationAtlasMonitor": 5, "OcclusionMonitor": 1, "InvarianceMonitor": 1}  # fmt: skip


def images(count: int, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """Noise with a bright square whose place (one of 10 along a diagonal band) is the class."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    x = torch.randn(count, 3, size, size, generator=generator) * 0.5
    side = size // 4
    for c in range(10):
        where = labels == c
        top, left = (c * (size - side)) // 9, ((9 - c) * (size - side)) // 9
        x[where, :, top : top + side, left : left + side] += 2.0
    return x, labels


class Classifier(pl.LightningModule):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        x, y = batch
        self.log("val_loss", F.cross_entropy(self(x), y))

    def configure_optimizers(self) -> Any:
        return torch.optim.SGD(self.parameters(), lr=0.01, momentum=0.9)


class Data(pl.LightningDataModule):
    def __init__(self, steps: int, size: int, batch: int = 64) -> None:
        super().__init__()
        self.train_set = TensorDataset(*images(steps * batch, size, seed=0))
        self.val_set = TensorDataset(*images(2048, size, seed=1))  # the probes come from here
        self.batch = batch

    def train_dataloader(self) -> DataLoader:
        return DataLoader(self.train_set, batch_size=self.batch, shuffle=True, drop_last=True,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip

    def val_dataloader(self) -> DataLoader:
        return DataLoader(self.val_set, batch_size=256)


def network(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "demo CNN":
        return SmallCNN(in_channels=3, num_classes=10)
    return getattr(torchvision.models, name)(weights=None, num_classes=10)


def fit(model_name: str, monitors: list[str], epochs: int, steps: int, size: int, device: str,
        fixed: bool = False, seconds: float | None = None,
        ) -> tuple[float, int, dict[str, int], dict[str, float]]:  # fmt: skip
    """Seconds of one fit, its steps, how many times each epoch monitor logged, and the seconds of its logs (as its
    budget account counted them)."""
    callbacks = [MONITORS[m](**({"every_n_epochs": FIXED[m]} if fixed and m in FIXED else {})) for m in monitors]
    with tempfile.TemporaryDirectory() as root:
        trainer = pl.Trainer(
            max_epochs=epochs, max_time=None if seconds is None else {"seconds": seconds}, accelerator=device,
            devices=1, logger=TensorBoardLogger(root, name="run"), callbacks=callbacks, enable_progress_bar=False,
            enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0, limit_val_batches=4,
        )  # fmt: skip
        model, data = Classifier(network(model_name)), Data(steps, size)
        started = time.perf_counter()
        trainer.fit(model, datamodule=data)
        if device == "cuda":
            torch.cuda.synchronize()
        took = time.perf_counter() - started
    logs = {type(c).__name__: len(c.logged_epochs) for c in callbacks if hasattr(c, "logged_epochs")}
    spent = {type(c).__name__: c.cost.spent for c in callbacks if getattr(c, "cost", None) is not None}
    return took, trainer.global_step, logs, spent


def table(model_name: str, rows: list[tuple[str, list[str], bool]], epochs: int, steps: int, size: int,
          device: str, seconds: float | None = None) -> dict[str, list[float]]:  # fmt: skip
    """Fit each row, print it, and return the seconds per step of each label's fits (labels may repeat)."""
    print(f"\n{model_name}, {size} px, {epochs} epochs of {steps} steps, batch 64, {device}")
    print("| monitors | fit (s) | steps | ratio to none (time per step) | logs (seconds of them) |")
    print("| --- | --- | --- | --- | --- |")
    reference: float | None = None
    per_step: dict[str, list[float]] = {}
    for label, monitors, fixed in rows:
        took, done, logs, spent = fit(model_name, monitors, epochs, steps, size, device, fixed, seconds)
        reference = reference or took / done
        per_step.setdefault(label, []).append(took / done)
        shown = ", ".join(f"{name.removesuffix('Monitor')} {count} ({spent.get(name, 0):.1f} s)"
                          for name, count in logs.items())  # fmt: skip
        share = f"; logs {sum(spent.values()):.1f} s = {sum(spent.values()) / took:.1%} of the fit" if spent else ""
        print(f"| {label} | {took:.1f} | {done} | {took / done / reference:.2f} | {shown}{share} |", flush=True)
    return per_step


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--realistic", action="store_true", help="ResNet-18, 10 epochs of 200 steps: none, all")
    parser.add_argument("--short", action="store_true", help="ResNet-18, 4 epochs of 100 steps: none, all")
    parser.add_argument("--models", default="demo CNN,resnet18")
    parser.add_argument("--pairs", type=int, default=1, help="--realistic, --short: pairs of fits (none / all)")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    every = list(MONITORS)
    started = time.perf_counter()
    if args.device == "cuda":
        # a fixed time each (the steps done give the ratio); 20 steps an epoch keep the images in host memory
        table("resnet50", [("none", [], False), ("all", every, False)], 1000, 20, 224, "cuda", seconds=120)
    elif args.realistic or args.short:
        # pairs in the order none, all, all, none, ...: a drift of the machine over the run cancels
        rows = [("none", [], False), ("all", every, False)]
        order = [row for pair in range(args.pairs) for row in (rows if pair % 2 == 0 else rows[::-1])]
        epochs, steps = (10, 200) if args.realistic else (4, 100)
        per_step = table("resnet18", order, epochs, steps, 32, "cpu")
        none, all_ = per_step["none"], per_step["all"]
        pairs = ", ".join(f"{a / b:.2f}x" for a, b in zip(all_, none, strict=True))
        print(f"\nall over none: {sum(all_) / sum(none):.3f}x over {args.pairs} pair(s) (each pair: {pairs})")
    else:
        rows = [("none", [], False), *[(m, [m], False) for m in every], ("all", every, False),
                ("all, fixed cadences", every, True), ("none, again", [], False)]  # fmt: skip
        for model_name in args.models.split(","):
            table(model_name, rows, 2, 32, 32, "cpu")
    print(f"\ntotal {time.perf_counter() - started:.0f} s, {torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
