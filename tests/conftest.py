"""Shared test helpers: tiny deterministic CNNs, event-file reading, hook-leak checks."""

from __future__ import annotations

import glob
import logging
import os
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

logging.getLogger("lightning.pytorch.utilities.rank_zero").setLevel(logging.WARNING)


# Lightning's own notes about the tests' tiny configurations, and its internal deprecations: not ours to act on.
# (Filters set at import time would be undone after collection, so they go into pytest's configuration.)
LIGHTNING_NOISE = (
    r".*does not have many workers",
    r".*LitLogger",
    r".*isinstance\(treespec, LeafSpec\)` is deprecated",
    r".*is smaller than the logging interval",
    r".*You passed in a `val_dataloader` but have no `validation_step`",
    r".*Checkpoint directory .* exists and is not empty",
    r".*callbacks used to create the checkpoint need to be provided",
    r".*You passed `Trainer\(accelerator='cpu', precision='16-mixed'\)`",
    r".*You defined a `validation_step` but have no `val_dataloader`",
    r".*`training_step` returned `None`",
    # captum's notes when the tests compare with it
    r"Input Tensor 0 did not already require gradients",
    r"Setting backward hooks on ReLU activations",
)


# What the monitors say on purpose in the tests' runs (alerts of tiny, fast-changing nets; the fallback writer):
# the tests that are about them check them with ``pytest.warns`` or ``monitor.alerts``, so the summary keeps
# only warnings nobody asked for.
DELIBERATE = (
    r"ActivationMonitor. \d+ of \d+ (filters|units)",  # (a colon would end pytest's message field)
    r"ActivationMonitor. the network diverged",
    r"\w+Monitor. the Trainer has no TensorBoardLogger",
)


def pytest_configure(config: pytest.Config) -> None:
    for pattern in LIGHTNING_NOISE + DELIBERATE:
        config.addinivalue_line("filterwarnings", f"ignore:{pattern}")


class TinyCNN(nn.Module):
    """conv(1->6, 3x3) -> relu -> conv(6->8, 3x3) -> relu -> pool -> linear. ``style`` picks the ReLU spelling."""

    def __init__(self, style: str = "module", in_channels: int = 1, num_classes: int = 3) -> None:
        super().__init__()
        self.style = style
        self.conv1 = nn.Conv2d(in_channels, 6, 3, padding=1)
        self.conv2 = nn.Conv2d(6, 8, 3, padding=1)
        self.fc = nn.Linear(8, num_classes)
        if style in ("module", "inplace"):
            self.relu1 = nn.ReLU(inplace=style == "inplace")
            self.relu2 = nn.ReLU(inplace=style == "inplace")

    def forward(self, x: Tensor) -> Tensor:
        if self.style == "functional":
            x = F.relu(self.conv1(x))
            x = torch.relu_(self.conv2(x))
        elif self.style == "method":
            x = self.conv1(x).relu()
            x = self.conv2(x).relu_()
        else:
            x = self.relu2(self.conv2(self.relu1(self.conv1(x))))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def hooks_left(module: nn.Module) -> list[str]:
    """Names of modules that still carry any forward/backward hook."""
    left = []
    for name, sub in module.named_modules():
        if sub._forward_hooks or sub._forward_pre_hooks or sub._backward_hooks or sub._backward_pre_hooks:
            left.append(name or "<root>")
    return left


def global_state_clean() -> bool:
    """No torch function mode left on the stack and no global module hooks left registered."""
    from torch.nn.modules import module as module_mod

    return (
        torch._C._len_torch_function_stack() == 0
        and not module_mod._global_forward_hooks
        and not module_mod._global_forward_pre_hooks
    )


def read_events(logdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything TensorBoard's own reader finds under ``logdir``: image, scalar, histogram and text tags."""
    from tensorboard.backend.event_processing.event_accumulator import (
        HISTOGRAMS,
        IMAGES,
        SCALARS,
        TENSORS,
        EventAccumulator,
    )

    found: dict[str, Any] = {"images": {}, "scalars": {}, "histograms": {}, "text": {}, "event_files": []}
    files = sorted(glob.glob(os.path.join(str(logdir), "**", "events.out.tfevents.*"), recursive=True))
    found["event_files"] = files
    for directory in sorted({os.path.dirname(f) for f in files}):
        acc = EventAccumulator(directory, size_guidance={IMAGES: 0, SCALARS: 0, HISTOGRAMS: 0, TENSORS: 0})
        acc.Reload()
        tags = acc.Tags()
        for tag in tags.get("images", []):
            found["images"].setdefault(tag, []).extend(acc.Images(tag))
        for tag in tags.get("scalars", []):
            found["scalars"].setdefault(tag, []).extend(acc.Scalars(tag))
        for tag in tags.get("histograms", []):
            found["histograms"].setdefault(tag, []).extend(acc.Histograms(tag))
        for tag in tags.get("tensors", []):
            if tag.endswith("text_summary"):
                texts = [
                    t.tensor_proto.string_val[0].decode() if t.tensor_proto.string_val else "" for t in acc.Tensors(tag)
                ]
                found["text"].setdefault(tag.rsplit("/text_summary", 1)[0], []).extend(texts)
    return found


@pytest.fixture
def digits_data() -> Any:
    from lightning_cnnviz.demo.data import DigitsDataModule

    data = DigitsDataModule(batch_size=64)
    data.setup()
    return data


def make_trainer(tmp_path: Path, callbacks: list[Any], **kwargs: Any) -> Any:
    import lightning.pytorch as pl
    from lightning.pytorch.loggers import TensorBoardLogger

    options: dict[str, Any] = {
        "max_epochs": 1,
        "accelerator": "cpu",
        "devices": 1,
        "logger": TensorBoardLogger(str(tmp_path), name="run"),
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "enable_checkpointing": False,
        "num_sanity_val_steps": 0,
        "limit_val_batches": 2,
        "log_every_n_steps": 5,
        "deterministic": True,
    }
    options.update(kwargs)
    return pl.Trainer(callbacks=callbacks, **options)


def every_monitor(activation_steps: int = 2, top_probe: int = 8, **saliency: Any) -> dict[str, Any]:
    """All five monitors, small probes, ``on_error="raise"``, by short name, in the README's order."""
    from lightning_cnnviz import ActivationMonitor, EmbeddingMonitor, FilterMonitor, SaliencyMonitor, TopPatchMonitor

    return {
        "filter": FilterMonitor(on_error="raise"),
        "activation": ActivationMonitor(every_n_steps=activation_steps, on_error="raise"),
        "saliency": SaliencyMonitor(num_images=4, smoothgrad_samples=2, on_error="raise", **saliency),
        "top_patch": TopPatchMonitor(probe_size=top_probe, on_error="raise"),
        "embedding": EmbeddingMonitor(probe_size=24, knn_k=3, every_n_epochs=1, on_error="raise"),
    }
