"""What a user's clone meets: a README that speaks to them and whose pictures exist, a demo that finds its data or
says how to get it, and a clear word when the ``[demo]`` extra is missing."""

from __future__ import annotations

import gzip
import re
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import ROOT, read_events
from lightning_cnnviz import cli
from lightning_cnnviz.demo import data as data_module

README = (ROOT / "README.md").read_text()


def test_every_image_the_readme_shows_exists() -> None:
    links = re.findall(r"!\[[^\]]*\]\(([^)\s]+)\)", README)
    assert len(links) >= 20
    missing = [link for link in links if not (ROOT / link).is_file()]
    assert missing == []


def test_the_readme_never_points_at_our_ci_folder() -> None:
    assert "../shared" not in README and "shared/data" not in README


def write_fashion_idx(root: Path, train: int = 64, test: int = 32) -> Path:
    """The four Fashion-MNIST IDX files, of random 28x28 images with every class present."""
    rng = np.random.default_rng(0)
    root.mkdir(parents=True)
    for split, count in (("train", train), ("t10k", test)):
        arrays = {"images-idx3": rng.integers(0, 256, (count, 28, 28)), "labels-idx1": np.arange(count) % 10}
        for stem, array in arrays.items():
            header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
            with gzip.open(root / f"{split}-{stem}-ubyte.gz", "wb") as handle:
                handle.write(header + array.astype(np.uint8).tobytes())
    return root


def test_demo_without_fashion_mnist_says_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.delenv("CNNVIZ_DATA", raising=False)
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", tmp_path / "not-installed")
    assert cli.main(["demo", "--data", "fashion-mnist"]) == 2
    said = capsys.readouterr().err
    assert "apt-get install dataset-fashion-mnist" in said and "CNNVIZ_DATA" in said and "--download" in said
    assert cli.main(["demo", "--data", "cifar10"]) == 2
    assert "an ImageFolder folder or zip" in capsys.readouterr().err


def test_demo_finds_fashion_mnist_by_itself(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """No --root: Debian's package folder (here a stand-in with the same four files) is found and used."""
    monkeypatch.delenv("CNNVIZ_DATA", raising=False)
    debian = write_fashion_idx(tmp_path / "usr-share-datasets-fashion-mnist")
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setattr(sys, "argv", ["cnnviz"])
    logdir = tmp_path / "runs"
    short = "--epochs 1 --trainer.limit_train_batches 2 --trainer.enable_progress_bar false"
    short += " --trainer.enable_model_summary false --data.init_args.batch_size 16 --trainer.accelerator cpu"
    status = cli.main(["demo", "--data", "fashion-mnist", "--logdir", str(logdir), *short.split()])
    assert status == 0
    assert f"fashion-mnist from {debian}" in capsys.readouterr().err
    assert any(tag.startswith("cnnviz/filters/") for tag in read_events(logdir)["images"])


BLOCK_DEMO_EXTRA = (
    "import sys\n"
    "class Block:\n"
    "    def find_spec(self, name, path=None, target=None):\n"
    "        if name.split('.')[0] in ('jsonargparse', 'sklearn'):\n"
    "            raise ImportError('not installed: ' + name)\n"
    "sys.meta_path.insert(0, Block())\n"
    "import importlib.util\n"
    "importlib.util.find_spec = lambda name, *a: None if name in ('jsonargparse', 'sklearn') else _find(name, *a)\n"
)


@pytest.mark.parametrize("command", [["demo"], ["report", "missing.ckpt"]])
def test_missing_demo_extra_is_named_without_a_traceback(command: list[str]) -> None:
    code = (
        "import importlib.util\n_find = importlib.util.find_spec\n"
        + BLOCK_DEMO_EXTRA
        + f"from lightning_cnnviz.cli import main\nsys.exit(main({command!r}))\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    assert f"cnnviz {command[0]} needs the [demo] extra" in result.stderr
    assert "pip install 'lightning_cnnviz[demo]'" in result.stderr
    assert "jsonargparse" in result.stderr and "scikit-learn" in result.stderr
