"""Demo data modules: scikit-learn digits (embedded), IDX folders (MNIST, Fashion-MNIST), image folders or zips
(CIFAR-10), and torchvision datasets. Everything is decoded once into in-memory tensors.

Validation data is the dataset's test split where it has one (a fixed, seeded split of digits otherwise),
so the monitors' probe sets are the same in every run.
"""

from __future__ import annotations

import gzip
import io
import os
import struct
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = [
    "DATA_ENV",
    "DEBIAN_FASHION_MNIST",
    "DigitsDataModule",
    "IDXDataModule",
    "ImageFolderDataModule",
    "TensorDataModule",
    "TorchvisionDataModule",
    "find_data",
    "how_to_get",
    "read_idx",
]

#: A folder of data sets laid out as ``mnist/``, ``fashion-mnist/`` (IDX files) and ``cifar10/`` (the ImageFolder
#: zip ``cifar10-jpg.zip``, or a folder with ``train/<class>/`` and ``test/<class>/``).
DATA_ENV = "CNNVIZ_DATA"
#: Where Debian's ``dataset-fashion-mnist`` package puts the four Fashion-MNIST IDX files.
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DATASETS = ("mnist", "fashion-mnist", "cifar10")


def _usable(name: str, path: Path) -> Path | None:
    """``path`` (or the CIFAR-10 zip inside it) when it holds data set ``name``, else None."""
    if name == "cifar10":
        for candidate in (path / "cifar10-jpg.zip", path):
            if candidate.is_file() or (candidate.is_dir() and (candidate / "train").is_dir()):
                return candidate
        return None
    try:
        _find(path, "train-images-idx3-ubyte")  # where IDXDataModule looks: .gz or not, or under raw/
    except FileNotFoundError:
        return None
    return path


def find_data(name: str, roots: Sequence[str | os.PathLike[str]] = ()) -> Path | None:
    """Where data set ``name`` (``"mnist"``, ``"fashion-mnist"`` or ``"cifar10"``) lies on this machine, or None.

    Looks in ``$CNNVIZ_DATA/<name>``, then in ``<root>/<name>`` for each of ``roots``, then, for Fashion-MNIST,
    where Debian's ``dataset-fashion-mnist`` package installs it (``/usr/share/datasets/fashion-mnist``). For
    CIFAR-10 the answer is the zip ``cifar10-jpg.zip`` inside the folder when there is one, else the folder.

    Example:
        >>> import tempfile
        >>> root = Path(tempfile.mkdtemp())
        >>> (root / "mnist").mkdir()
        >>> (root / "mnist" / "train-images-idx3-ubyte.gz").touch()
        >>> find_data("mnist", roots=[root]) == root / "mnist" or DATA_ENV in os.environ
        True
    """
    if name not in DATASETS:
        raise ValueError(f"find_data: name can be {DATASETS}, got {name!r}")
    folders = [Path(os.environ[DATA_ENV]) / name] if os.environ.get(DATA_ENV) else []
    folders += [Path(root) / name for root in roots]
    if name == "fashion-mnist":
        folders.append(DEBIAN_FASHION_MNIST)
    for folder in folders:
        found = _usable(name, folder)
        if found is not None:
            return found
    return None


def how_to_get(name: str) -> str:
    """A sentence that says how to get data set ``name`` onto this machine."""
    layout = {
        "mnist": "the four MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
        "fashion-mnist": "the four Fashion-MNIST IDX files (train-images-idx3-ubyte.gz, ...)",
        "cifar10": "cifar10-jpg.zip or a folder with train/<class>/*.jpg and test/<class>/*.jpg",
    }[name]
    ways = [f"set {DATA_ENV} to a folder whose {name}/ holds {layout}"]
    if name == "fashion-mnist":
        ways.insert(0, f"on Debian or Ubuntu, `apt-get install dataset-fashion-mnist` (into {DEBIAN_FASHION_MNIST})")
    return f"{name} was not found: " + "; or ".join(ways) + "."


class TensorDataModule(pl.LightningDataModule):
    """Images and labels held as tensors: uint8 or float images (N, C, H, W) normalised per channel.

    Subclasses take these arguments too (as keyword arguments; LightningCLI lists them).

    Args:
        batch_size: training and validation batch size.
        num_workers: DataLoader workers (0 is fastest for in-memory tensors).
        limit_train: use only the first this-many training images (None: all).
        limit_val: use only the first this-many validation images (None: all).
        seed: seed of the training shuffle.
    """

    def __init__(
        self,
        batch_size: int = 64,
        num_workers: int = 0,
        limit_train: int | None = None,
        limit_val: int | None = None,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.limit_train = limit_train
        self.limit_val = limit_val
        self.seed = seed
        self.class_names: list[str] = []
        self._train: TensorDataset | None = None
        self._val: TensorDataset | None = None

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Return (train images, train labels, val images, val labels); images uint8 or float (N, C, H, W)."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self._train is not None:
            return
        x_train, y_train, x_val, y_val = self.load()
        x_train, y_train = self._subset(x_train, y_train, self.limit_train)
        x_val, y_val = self._subset(x_val, y_val, self.limit_val)
        train = _to_float(x_train)
        mean = train.mean(dim=(0, 2, 3), keepdim=True)
        std = train.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self.mean, self.std = mean.flatten(), std.flatten()
        self._train = TensorDataset((train - mean) / std, y_train.long())
        self._val = TensorDataset((_to_float(x_val) - mean) / std, y_val.long())

    def _subset(self, images: Tensor, labels: Tensor, limit: int | None) -> tuple[Tensor, Tensor]:
        """A seeded random subset (kept in dataset order), so a limit never keeps only the first classes."""
        if limit is None or limit >= len(labels):
            return images, labels
        keep = torch.randperm(len(labels), generator=torch.Generator().manual_seed(self.seed))[:limit].sort().values
        return images[keep], labels[keep]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def train_dataloader(self) -> DataLoader:
        assert self._train is not None, "call setup() first"
        generator = torch.Generator().manual_seed(self.seed)
        return DataLoader(
            self._train,
            batch_size=self.batch_size,
            shuffle=True,
            num_workers=self.num_workers,
            generator=generator,
            drop_last=True,
        )

    def val_dataloader(self) -> DataLoader:
        assert self._val is not None, "call setup() first"
        return DataLoader(self._val, batch_size=self.batch_size, shuffle=False, num_workers=self.num_workers)


def _to_float(images: Tensor) -> Tensor:
    return images.float() / 255.0 if images.dtype == torch.uint8 else images.float()


class DigitsDataModule(TensorDataModule):
    """scikit-learn's bundled handwritten digits (1,797 real 8x8 images, 10 classes): no file, no network.

    Images are upscaled (bilinear) to ``image_size`` so a 5x5 first layer has room; 20% (seeded, stratified)
    is the validation split.
    """

    def __init__(self, image_size: int = 16, val_fraction: float = 0.2, batch_size: int = 64, **kwargs: Any) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.image_size = image_size
        self.val_fraction = val_fraction
        self.class_names = [str(i) for i in range(10)]

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        digits = load_digits()
        images = torch.from_numpy(digits.images.astype(np.float32) / 16.0).unsqueeze(1)
        if self.image_size != 8:
            images = F.interpolate(
                images, size=(self.image_size, self.image_size), mode="bilinear", align_corners=False
            )
        labels = torch.from_numpy(digits.target)
        train_idx, val_idx = train_test_split(
            np.arange(len(labels)), test_size=self.val_fraction, random_state=0, stratify=digits.target
        )
        return images[train_idx], labels[train_idx], images[val_idx], labels[val_idx]


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an IDX file (MNIST format), gzip-compressed or not, into a NumPy array."""
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "rb") as handle:
        data = handle.read()
    zero, dtype_code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or dtype_code != 0x08:
        raise ValueError(f"{path}: not an unsigned-byte IDX file (header {data[:4]!r})")
    shape = struct.unpack(">" + "I" * ndim, data[4 : 4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def _find(root: Path, stem: str) -> Path:
    for candidate in (root / f"{stem}.gz", root / stem, root / "raw" / f"{stem}.gz", root / "raw" / stem):
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"no {stem}[.gz] in {root} (nor in {root / 'raw'})")


class IDXDataModule(TensorDataModule):
    """MNIST-format folders (``train-images-idx3-ubyte[.gz]`` and the three other standard files).

    Works for MNIST and Fashion-MNIST as shipped (for example Debian's ``/usr/share/datasets/fashion-mnist``); the
    test split is the validation data.
    """

    FASHION_CLASSES: tuple[str, ...] = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt")
    FASHION_CLASSES += ("Sneaker", "Bag", "Ankle boot")

    def __init__(
        self, root: str, class_names: Sequence[str] | None = None, batch_size: int = 128, **kwargs: Any
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        self.root = Path(root)
        if class_names is None:
            fashion = "fashion" in str(self.root).lower()
            class_names = self.FASHION_CLASSES if fashion else [str(i) for i in range(10)]
        self.class_names = list(class_names)

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        if not self.root.is_dir():
            raise FileNotFoundError(f"IDXDataModule: root {str(self.root)!r} is not a directory")
        stems = ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1")
        arrays = [read_idx(_find(self.root, f"{stem}-ubyte")).copy() for stem in stems]
        x_train, y_train, x_val, y_val = (torch.from_numpy(a) for a in arrays)
        return x_train.unsqueeze(1), y_train, x_val.unsqueeze(1), y_val


class ImageFolderDataModule(TensorDataModule):
    """An ImageFolder-layout tree, as a folder or a zip: ``train/<class>/*.jpg`` and ``test/<class>/*`` (or
    ``val/``). Classes sort alphabetically. Reads a zip in place (``cifar10-jpg.zip``, CIFAR-10 as JPEGs).

    Args:
        root: folder or ``.zip``.
        limit_per_class: keep at most this many training images per class (None: all).
        image_size: resize every image to this square size (bilinear; needed when the images' sizes differ);
            None keeps them as they are.
    """

    def __init__(
        self,
        root: str,
        limit_per_class: int | None = None,
        image_size: int | None = None,
        batch_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        if image_size is not None and image_size < 1:
            raise ValueError(f"ImageFolderDataModule: image_size must be >= 1 or None, got {image_size}")
        self.root = Path(root)
        self.limit_per_class = limit_per_class
        self.image_size = image_size

    def _entries(self) -> tuple[list[str], dict[str, list[tuple[str, int]]], zipfile.ZipFile | None]:
        archive = zipfile.ZipFile(self.root) if self.root.suffix == ".zip" else None
        if archive is not None:
            names = [n for n in archive.namelist() if not n.endswith("/")]
        elif self.root.is_dir():
            names = [str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()]
        else:
            raise FileNotFoundError(f"ImageFolderDataModule: {str(self.root)!r} is neither a folder nor a .zip")
        parts = [n.replace("\\", "/").split("/") for n in names]
        splits: dict[str, list[tuple[str, str]]] = {}
        for name, part in zip(names, parts):
            if len(part) >= 3 and part[-1].lower().endswith((".jpg", ".jpeg", ".png", ".bmp")):
                splits.setdefault(part[-3], []).append((part[-2], name))
        train_key = "train"
        val_key = next((k for k in ("test", "val", "valid") if k in splits), None)
        if train_key not in splits or val_key is None:
            raise ValueError(
                f"ImageFolderDataModule: {str(self.root)!r} must hold train/<class>/<image> and "
                f"test/<class>/<image> (or val/); found top-level folders {sorted(splits)}"
            )
        classes = sorted({c for c, _ in splits[train_key]})
        index = {c: i for i, c in enumerate(classes)}
        out: dict[str, list[tuple[str, int]]] = {}
        for key, target in ((train_key, "train"), (val_key, "val")):
            items = sorted(splits[key], key=lambda item: item[1])
            out[target] = [(name, index[c]) for c, name in items if c in index]
        if self.limit_per_class is not None:
            kept: list[tuple[str, int]] = []
            counts: dict[int, int] = {}
            for name, label in out["train"]:
                if counts.get(label, 0) < self.limit_per_class:
                    kept.append((name, label))
                    counts[label] = counts.get(label, 0) + 1
            out["train"] = kept
        return classes, out, archive

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        from PIL import Image

        classes, entries, archive = self._entries()
        self.class_names = classes

        def decode(items: list[tuple[str, int]]) -> tuple[Tensor, Tensor]:
            arrays = []
            for name, _ in items:
                raw = archive.read(name) if archive is not None else (self.root / name).read_bytes()
                with Image.open(io.BytesIO(raw)) as image:
                    rgb = image.convert("RGB")
                    if self.image_size is not None:
                        rgb = rgb.resize((self.image_size, self.image_size), Image.Resampling.BILINEAR)
                    arrays.append(np.asarray(rgb))
            stacked = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
            return stacked, torch.tensor([label for _, label in items])

        try:
            x_train, y_train = decode(entries["train"])
            x_val, y_val = decode(entries["val"])
        finally:
            if archive is not None:
                archive.close()
        return x_train, y_train, x_val, y_val


class TorchvisionDataModule(TensorDataModule):
    """``MNIST``, ``FashionMNIST`` or ``CIFAR10`` from torchvision (downloads into ``root`` where a network exists)."""

    def __init__(
        self,
        name: str = "FashionMNIST",
        root: str = "data",
        download: bool = True,
        batch_size: int = 128,
        **kwargs: Any,
    ) -> None:
        super().__init__(batch_size=batch_size, **kwargs)
        allowed = ("MNIST", "FashionMNIST", "CIFAR10")
        if name not in allowed:
            raise ValueError(f"TorchvisionDataModule: name can be {allowed}, got {name!r}")
        self.dataset = name
        self.root = root
        self.download = download

    def load(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        import torchvision

        cls = getattr(torchvision.datasets, self.dataset)
        train = cls(self.root, train=True, download=self.download)
        test = cls(self.root, train=False, download=self.download)
        self.class_names = list(train.classes)

        def tensors(dataset: object) -> tuple[Tensor, Tensor]:
            data = dataset.data  # type: ignore[attr-defined]
            images = torch.as_tensor(np.asarray(data))
            images = images.unsqueeze(1) if images.dim() == 3 else images.permute(0, 3, 1, 2)
            return images.contiguous(), torch.as_tensor(np.asarray(dataset.targets))  # type: ignore[attr-defined]

        x_train, y_train = tensors(train)
        x_val, y_val = tensors(test)
        return x_train, y_train, x_val, y_val
