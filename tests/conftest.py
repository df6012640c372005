"""Shared test helpers: tiny deterministic CNNs, event-file reading, hook-leak checks."""

from __future__ import annotations

import json
import logging
import os
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"  # our CI's real data, beside the checkout (a user's clone has none)


def real_data(name: str) -> Path:
    """Where real data set ``name`` is: ``$CNNVIZ_DATA``, our CI's ``../shared/data``, then (Fashion-MNIST) Debian's
    ``dataset-fashion-mnist``. Skips the test with how to get it when it is nowhere; fails instead under
    ``CI=true``, so that CI never silently loses the tests on real data."""
    from lightning_cnnviz.demo.data import find_data, how_to_get

    found = find_data(name, roots=[SHARED_DATA])
    if found is None:
        message = f"real data needed: {how_to_get(name)}"
        if in_ci():
            pytest.fail(f"{message} (CI=true: CI must provide it)")
        pytest.skip(message)
    return found


def in_ci() -> bool:
    """Whether this is our CI (``CI=true``), where everything a test needs must be there."""
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")

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


# What the monitors say on purpose in the tests' runs (alerts of tiny, fast-changing nets):
# the tests that are about them check them with ``pytest.warns`` or ``monitor.alerts``, so the summary keeps
# only warnings nobody asked for.
DELIBERATE = (
    r"ActivationMonitor. \d+ of \d+ (filters|units)",  # (a colon would end pytest's message field)
    r"ActivationMonitor. the network diverged",
    r"(PNG files under|MLflow) .*histograms",  # a tracker without histograms says so once
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


def readme_block(after: str) -> str:
    """The first ```python block of the README after the text ``after``."""
    text = (ROOT / "README.md").read_text()
    start = text.index("```python\n", text.index(after))
    return text[start + len("```python\n") : text.index("```", start + 10)]


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """``code`` run by this interpreter in a fresh process in ``cwd``, the checkout importable; it must succeed."""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=900,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def read_events(logdir: str | os.PathLike[str]) -> dict[str, Any]:
    """Everything TensorBoard's own reader finds under ``logdir``: image, scalar, histogram and text tags."""
    from lightning_cnnviz.report import read_events as read

    return vars(read(logdir))


def same_pixels(first: Any, second: Any) -> bool:
    """Whether two TensorBoard image events decode to the same pixels (their PNG bytes may differ: the sink encodes
    at zlib's fastest level, ``add_image`` at its default)."""
    import io

    import numpy as np
    from PIL import Image

    decoded = [np.asarray(Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")) for e in (first, second)]
    return decoded[0].shape == decoded[1].shape and bool((decoded[0] == decoded[1]).all())


@pytest.fixture
def digits_data() -> Any:
    from lightning_cnnviz.demo.data import DigitsDataModule

    data = DigitsDataModule(batch_size=64)
    data.setup()
    return data


def assert_field_is_gradient_support(
    model: nn.Module, module: nn.Module, field: Any, image: Tensor, at: Callable[[int, int], list[tuple[int, int]]]
) -> int:
    """For each position ``(y, x)`` of ``module``'s output (``at(height, width)`` chooses them), channel 0, on
    ``image`` (1, C, H, W): the receptive ``field``'s box clipped to the image equals the rows and columns where the
    input gradient is non-zero. Returns how many of the boxes were smaller than the image."""
    captured: list[Tensor] = []
    handle = module.register_forward_hook(lambda m, a, o: captured.append(o))
    x = image.clone().requires_grad_(True)
    model(x)
    handle.remove()
    out, size = captured[0], image.shape[-1]
    smaller = 0
    for y, xx in at(out.shape[-2], out.shape[-1]):
        (grad,) = torch.autograd.grad(out[0, 0, y, xx], x, retain_graph=True)
        rows = grad[0].abs().sum(0).sum(1).nonzero().flatten()
        cols = grad[0].abs().sum(0).sum(0).nonzero().flatten()
        top, left, bottom, right = field.box(y, xx)
        assert (rows.min().item(), rows.max().item()) == (max(top, 0), min(bottom, size - 1)), (y, xx)
        assert (cols.min().item(), cols.max().item()) == (max(left, 0), min(right, size - 1)), (y, xx)
        smaller += int(bottom - top < size - 1)
    return smaller


def fit_listening(trainer: Any, model: Any, data: Any) -> tuple[list[str], list[str]]:
    """``trainer.fit(model, datamodule=data)`` and what the monitors said: the warnings naming a monitor, and what
    Lightning's ``rank_zero_info`` told (the choices a monitor made for the run)."""
    import warnings

    told: list[str] = []

    class Listener(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            told.append(record.getMessage())

    listener, informed = Listener(logging.INFO), logging.getLogger("lightning.pytorch.utilities.rank_zero")
    level = informed.level
    informed.addHandler(listener)
    informed.setLevel(logging.INFO)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            trainer.fit(model, datamodule=data)
    finally:
        informed.removeHandler(listener)
        informed.setLevel(level)
    return [str(w.message) for w in caught if "Monitor" in str(w.message)], told


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


def every_monitor(
    activation_steps: int = 2, top_probe: int = 8, cadence: int | str = "auto", **saliency: Any
) -> dict[str, Any]:
    """Every monitor but FeatureVisMonitor, small probes and few steps, ``on_error="raise"``, by short name, in the
    README's order; ``cadence``: the ``every_n_epochs`` of FilterMonitor, ActivationMapMonitor, SaliencyMonitor,
    TopPatchMonitor, ClassModelMonitor, InversionMonitor, ActivationAtlasMonitor, OcclusionMonitor and
    InvarianceMonitor (EmbeddingMonitor logs every epoch)."""
    from lightning_cnnviz import (
        ActivationAtlasMonitor,
        ActivationMapMonitor,
        ActivationMonitor,
        ClassModelMonitor,
        EmbeddingMonitor,
        FilterMonitor,
        InvarianceMonitor,
        InversionMonitor,
        OcclusionMonitor,
        SaliencyMonitor,
        TopPatchMonitor,
    )

    return {
        "filter": FilterMonitor(every_n_epochs=cadence, on_error="raise"),
        "activation": ActivationMonitor(every_n_steps=activation_steps, on_error="raise"),
        "activation_maps": ActivationMapMonitor(every_n_epochs=cadence, on_error="raise"),
        "saliency": SaliencyMonitor(
            num_images=4, smoothgrad_samples=2, every_n_epochs=cadence, on_error="raise", **saliency
        ),
        "top_patch": TopPatchMonitor(probe_size=top_probe, every_n_epochs=cadence, on_error="raise"),
        "embedding": EmbeddingMonitor(probe_size=24, knn_k=3, every_n_epochs=1, on_error="raise"),
        "class_models": ClassModelMonitor(steps=8, probe_size=16, every_n_epochs=cadence, on_error="raise"),
        "inversion": InversionMonitor(steps=8, every_n_epochs=cadence, on_error="raise"),
        "activation_atlas": ActivationAtlasMonitor(
            probe_size=16, vectors=200, grid=4, steps=4, every_n_epochs=cadence, on_error="raise"
        ),
        "occlusion": OcclusionMonitor(probe_size=2, every_n_epochs=cadence, on_error="raise"),  # saliency's first 2
        "invariance": InvarianceMonitor(
            probe_size=2, transformations=("translation",), every_n_epochs=cadence, on_error="raise"
        ),
    }


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """The README's demo, as its first command runs it (``cnnviz demo``; 2 epochs, or ``CNNVIZ_DEMO_EPOCHS``): the
    runs folder and stdout."""
    logdir = tmp_path_factory.mktemp("demo") / "my runs"  # a space: the printed commands must quote it
    epochs = os.environ.get("CNNVIZ_DEMO_EPOCHS", "2")
    result = subprocess.run(
        [sys.executable, "-m", "lightning_cnnviz.cli", "demo", "--epochs", epochs, "--logdir", str(logdir),
         "--trainer.enable_progress_bar", "false"],
        cwd=logdir.parent, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    return logdir, result.stdout


@pytest.fixture(scope="session")
def demo_report(digits_run: tuple[Path, str], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """The report command the demo printed, run as printed with ``--out``: (checkpoint, report.html, stdout)."""
    _, stdout = digits_run
    printed = [line.strip() for line in stdout.splitlines() if " report " in line][-1]
    checkpoint = Path(shlex.split(printed)[-1])
    out = tmp_path_factory.mktemp("report")
    result = subprocess.run(  # pasted into a shell, as printed, with --out
        ["bash", "-c", f"{printed} --out {shlex.quote(str(out))}"],
        cwd=out, capture_output=True, text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-5000:]
    assert "Warning" not in result.stderr, result.stderr[-3000:]
    return checkpoint, out / "report.html", result.stdout


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read().decode())


def wait_for_tag(server: subprocess.Popen[str] | subprocess.Popen[bytes], url: str, tag: str) -> Any:
    """Poll a TensorBoard tags endpoint (run -> tags) until ``tag`` is served, for up to 90 s; the last answer."""
    deadline, tags = time.monotonic() + 90, {}
    while time.monotonic() < deadline:
        try:
            tags = get_json(url)
            if any(tag in run_tags for run_tags in tags.values()):
                break
        except OSError:
            pass
        assert server.poll() is None, server.stderr.read() if server.stderr else ""
        time.sleep(0.5)
    return tags
