"""Data modules read real formats correctly: IDX (Fashion-MNIST as shipped), ImageFolder trees as folders and zips;
the real data is found where a user or CI keeps it."""

from __future__ import annotations

import gzip
import struct
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import real_data
from lightning_cnnviz.demo.data import DigitsDataModule, IDXDataModule, ImageFolderDataModule, read_idx


def write_idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(">" + "I" * array.ndim, *array.shape)
    with gzip.open(path, "wb") as handle:
        handle.write(header + array.astype(np.uint8).tobytes())


def test_read_idx_round_trip(tmp_path: Path) -> None:
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    write_idx(tmp_path / "x.gz", array)
    assert np.array_equal(read_idx(tmp_path / "x.gz"), array)


def test_read_idx_reads_real_fashion_mnist() -> None:
    labels = read_idx(real_data("fashion-mnist") / "t10k-labels-idx1-ubyte.gz")
    assert labels.shape == (10000,) and np.bincount(labels).tolist() == [1000] * 10


def test_real_data_is_found_in_order_or_skipped_with_how_to_get_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CNNVIZ_DATA first, then the given roots, then Debian's package (Fashion-MNIST); how to get it otherwise."""
    from lightning_cnnviz.demo import data as data_module

    first, second = tmp_path / "first", tmp_path / "second"
    for root in (first, second):
        (root / "fashion-mnist").mkdir(parents=True)
        (root / "fashion-mnist" / "train-images-idx3-ubyte.gz").touch()
    (second / "cifar10").mkdir()
    (second / "cifar10" / "cifar10-jpg.zip").touch()
    debian = tmp_path / "debian"
    debian.mkdir()
    (debian / "train-images-idx3-ubyte.gz").touch()
    monkeypatch.setattr(data_module, "DEBIAN_FASHION_MNIST", debian)
    monkeypatch.setenv("CNNVIZ_DATA", str(first))
    assert data_module.find_data("fashion-mnist", roots=[second]) == first / "fashion-mnist"
    assert data_module.find_data("cifar10", roots=[second]) == second / "cifar10" / "cifar10-jpg.zip"
    monkeypatch.delenv("CNNVIZ_DATA")
    assert data_module.find_data("fashion-mnist", roots=[second]) == second / "fashion-mnist"
    assert data_module.find_data("fashion-mnist", roots=[tmp_path / "none"]) == debian
    assert data_module.find_data("mnist", roots=[second]) is None
    assert "apt-get install dataset-fashion-mnist" in data_module.how_to_get("fashion-mnist")
    assert "CNNVIZ_DATA" in data_module.how_to_get("cifar10")
    with pytest.raises(ValueError, match=r"name can be \('mnist', 'fashion-mnist', 'cifar10'\), got 'svhn'"):
        data_module.find_data("svhn")


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
