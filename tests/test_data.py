"""Data modules read real formats correctly: IDX (as in ../shared/data), ImageFolder trees as folders and zips."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import SHARED_DATA
from lightning_cnnviz.demo.data import DigitsDataModule, IDXDataModule, ImageFolderDataModule, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip_and_shared_fashion_mnist(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)
    labels = read_idx(SHARED_DATA / "fashion-mnist" / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


def test_idx_data_module_normalises_with_training_statistics(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for split, count in (("train", 40), ("t10k", 10)):
        write_idx(tmp_path / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 6, 6)))
        write_idx(tmp_path / f"{split}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    data = IDXDataModule(str(tmp_path), batch_size=8)
    data.setup()
    images, labels = data._train.tensors
    assert images.shape == (40, 1, 6, 6) and labels.dtype == torch.long
    assert abs(images.mean().item()) < 1e-5 and images.std().item() == pytest.approx(1.0, abs=1e-3)
    assert len(data._val) == 10 and data.num_classes == 10


def test_image_folder_as_folder_and_zip_give_the_same_data(tmp_path: Path) -> None:
    colours = {"cat": (255, 0, 0), "ant": (0, 255, 0), "bee": (0, 0, 255)}
    root = tmp_path / "tree"
    for split in ("train", "test"):
        for name, colour in colours.items():
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (4, 4), colour).save(folder / f"{i}.png")
    with zipfile.ZipFile(tmp_path / "tree.zip", "w") as archive:
        for file in sorted(root.rglob("*.png")):
            archive.write(file, file.relative_to(root).as_posix())
    loaded = []
    for source in (root, tmp_path / "tree.zip"):
        data = ImageFolderDataModule(str(source), batch_size=2)
        data.setup()
        assert data.class_names == ["ant", "bee", "cat"]  # alphabetical, as torchvision's ImageFolder
        loaded.append(data._train.tensors)
        images, labels = data._train.tensors
        # the dominant channel of every image is its class's colour: ant green, bee blue, cat red
        dominant = images.mean(dim=(2, 3)).argmax(dim=1)
        assert dominant.tolist() == [{0: 1, 1: 2, 2: 0}[int(label)] for label in labels]
    assert torch.equal(loaded[0][0], loaded[1][0]) and torch.equal(loaded[0][1], loaded[1][1])


def test_digits_split_is_stratified_and_fixed() -> None:
    first, second = DigitsDataModule(), DigitsDataModule()
    first.setup()
    second.setup()
    assert torch.equal(first._val.tensors[0], second._val.tensors[0])
    counts = torch.bincount(first._val.tensors[1])
    assert counts.min() >= 35 and counts.max() <= 37  # 20% of ~180 per class
    assert first._train.tensors[0].shape[1:] == (1, 16, 16)
