"""Golden outputs: every picture, scalar and text two fixed runs write, recorded once and compared after changes.

The runs: the demo (digits, 3 epochs, every monitor of ``configs/every_monitor.yaml`` at an integer cadence of 1)
and ``examples/plain_pytorch.py`` (3 epochs). What a run costs (``cnnviz/cost/*``) is left out: it is a time.

    python tests/golden.py record     # writes tests/golden/<run>.npz (only when the behaviour is meant to change)
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "tests" / "golden"
RUNS = ("demo", "plain")
LEFT_OUT = ("cnnviz/cost/",)


def demo_config(logdir: Path) -> Path:
    """``configs/every_monitor.yaml`` for 3 epochs, every monitor on ``every_n_epochs: 1``, logging to ``logdir``."""
    import yaml

    config = yaml.safe_load((ROOT / "configs" / "every_monitor.yaml").read_text())
    trainer = config["trainer"]
    trainer.update(max_epochs=3, accelerator="cpu", enable_progress_bar=False, enable_checkpointing=False)
    trainer["logger"]["init_args"].update(save_dir=str(logdir), name="demo", version=0)
    for callback in trainer["callbacks"]:
        if "every_n_epochs" in callback["init_args"]:
            callback["init_args"]["every_n_epochs"] = 1
    path = logdir / "demo.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def run(name: str, logdir: Path) -> Path:
    """Run ``name`` ("demo" or "plain") in a fresh process, writing its events under ``logdir``."""
    logdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    if name == "demo":
        command = [sys.executable, str(ROOT / "examples" / "train.py"), "fit", "--config", str(demo_config(logdir))]
    else:
        command = [sys.executable, str(ROOT / "examples" / "plain_pytorch.py"), "--epochs", "3", "--logdir",
                   str(logdir / "plain")]  # fmt: skip
    subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True, text=True)
    return logdir


def summary(logdir: Path) -> dict[str, Any]:
    """What the event files under ``logdir`` hold, by kind and tag (images decoded to uint8 arrays), every step."""
    from PIL import Image

    sys.path.insert(0, str(ROOT))
    from lightning_cnnviz.report import read_events

    events = read_events(logdir)
    kept = lambda tag: not tag.startswith(LEFT_OUT)  # noqa: E731
    found: dict[str, Any] = {}
    for tag, items in events.images.items():
        if kept(tag):
            for e in items:
                picture = Image.open(io.BytesIO(e.encoded_image_string)).convert("RGB")
                found[f"image|{tag}|{e.step}"] = np.asarray(picture)
    for tag, items in events.scalars.items():
        if kept(tag):
            found[f"scalar|{tag}"] = np.array([[e.step, e.value] for e in items], dtype=np.float64)
    for tag, texts in events.text.items():
        if kept(tag):
            found[f"text|{tag}"] = np.array(texts)
    return found


def record() -> None:
    STORE.mkdir(exist_ok=True)
    for name in RUNS:
        with tempfile.TemporaryDirectory() as folder:
            found = summary(run(name, Path(folder)))
        np.savez_compressed(STORE / f"{name}.npz", **{key.replace("/", "::"): v for key, v in found.items()})
        print(f"{name}: {len(found)} entries")


def stored(name: str) -> dict[str, Any]:
    with np.load(STORE / f"{name}.npz") as data:
        return {key.replace("::", "/"): data[key] for key in data.files}


def differences(expected: dict[str, Any], found: dict[str, Any]) -> list[str]:
    """Where ``found`` departs from ``expected``: a tag missing or new, an image whose pixels differ by more than
    2/255 on more than 0.1% of its values, a scalar off by more than rtol 1e-4, a text that changed."""
    problems = [f"missing {key}" for key in sorted(set(expected) - set(found))]
    problems += [f"new {key}" for key in sorted(set(found) - set(expected))]
    for key in sorted(set(expected) & set(found)):
        want, got = expected[key], found[key]
        kind = key.split("|", 1)[0]
        if kind == "image":
            if want.shape != got.shape:
                problems.append(f"{key}: shape {got.shape}, expected {want.shape}")
                continue
            off = (np.abs(want.astype(int) - got.astype(int)) > 2).mean()
            if off > 0.001:
                problems.append(f"{key}: {off:.2%} of the pixels differ by more than 2/255")
        elif kind == "scalar":
            if want.shape != got.shape or not np.array_equal(want[:, 0], got[:, 0]):
                problems.append(f"{key}: steps {got[:, 0].tolist()}, expected {want[:, 0].tolist()}")
            elif not np.allclose(got[:, 1], want[:, 1], rtol=1e-4, atol=1e-7, equal_nan=True):
                problems.append(f"{key}: {got[:, 1].tolist()}, expected {want[:, 1].tolist()}")
        elif list(want) != list(got):
            problems.append(f"{key}: {list(got)}, expected {list(want)}")
    return problems


if __name__ == "__main__":
    if sys.argv[1:] != ["record"]:
        sys.exit(__doc__)
    record()
