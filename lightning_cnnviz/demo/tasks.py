"""CNNs for tasks other than single-label classification, as users train them, on generated images: each task's
network, loss and batches (the README's "Tasks" examples and the task tests). Every image holds a bright square
(and a dimmer second one) on noise; each task reads its target off them.

Example:
    >>> model, data = task("regression")
    >>> images, values = next(iter(data.train_dataloader()))
    >>> tuple(model(images).shape), tuple(values.shape)
    ((16, 1), (16, 1))
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "OTHER_INPUTS", "TASKS", "SequenceClassifier", "TaskData", "TaskModule", "UNet", "clips", "signals", "squares",
    "task",
]  # fmt: skip

TASKS = ("simclr", "autoencoder", "multilabel", "regression", "segmentation", "unet")
OTHER_INPUTS = ("detection", "signal", "clip")  # a detector that resizes its input; a Conv1d and a Conv3d network
SIDE = 32


def squares(count: int, side: int = SIDE, seed: int = 0, dim_square: bool = True) -> dict[str, Tensor]:
    """Images (N, 3, side, side) with a bright square each (and a dimmer one, unless not ``dim_square``), and what
    each task learns from them: the bright square's quadrant (class), the quadrants holding any square
    (multi-hot), its brightness (a value), its mask."""
    generator = torch.Generator().manual_seed(seed)
    images = 0.1 * torch.randn(count, 3, side, side, generator=generator)
    masks = torch.zeros(count, side, side, dtype=torch.long)
    multi = torch.zeros(count, 4)
    size = side // 4
    corners = torch.randint(0, side - size, (count, 2, 2), generator=generator)
    brightness = 0.5 + torch.rand(count, generator=generator)
    for i in range(count):
        for j, scale in ((0, 1.0), (1, 0.4))[: 2 if dim_square else 1]:
            y, x = corners[i, j].tolist()
            images[i, :, y : y + size, x : x + size] += scale * brightness[i]
            centre = (y + size // 2 >= side // 2) * 2 + (x + size // 2 >= side // 2)
            multi[i, centre] = 1.0
            if j == 0:
                masks[i, y : y + size, x : x + size] = 1
    first = corners[:, 0] + size // 2
    quadrant = (first[:, 0] >= side // 2).long() * 2 + (first[:, 1] >= side // 2).long()
    return {"images": images, "class": quadrant, "multi": multi, "value": brightness[:, None], "mask": masks}


def signals(count: int, length: int = 128, seed: int = 0) -> dict[str, Tensor]:
    """Signals (N, 1, length): a bump on noise; the class is the quarter it is in."""
    generator = torch.Generator().manual_seed(seed)
    where = torch.randint(4, length - 4, (count,), generator=generator)
    positions = torch.arange(length)
    bumps = torch.exp(-(((positions[None, :] - where[:, None]) / 3.0) ** 2))
    noise = 0.1 * torch.randn(count, 1, length, generator=generator)
    return {"images": bumps[:, None] + noise, "class": where * 4 // length}


def clips(count: int, frames: int = 4, side: int = 16, seed: int = 0) -> dict[str, Tensor]:
    """Clips (N, 3, frames, side, side): a bright square moving right, left, down or up (the class) on noise."""
    generator = torch.Generator().manual_seed(seed)
    data = 0.1 * torch.randn(count, 3, frames, side, side, generator=generator)
    direction = torch.randint(0, 4, (count,), generator=generator)
    start = torch.randint(frames, side - frames - 4, (count, 2), generator=generator)
    steps = torch.tensor([[0, 1], [0, -1], [1, 0], [-1, 0]])
    for i in range(count):
        for t in range(frames):
            y, x = (start[i] + t * steps[direction[i]]).tolist()
            data[i, :, t, y : y + 4, x : x + 4] += 1.0
    return {"images": data, "class": direction}


def boxes(count: int, side: int = 64, seed: int = 0) -> list[tuple[Tensor, dict[str, Tensor]]]:
    """(image, target) pairs as torchvision's detectors take them: :func:`squares` images with the bright square's
    box (x1, y1, x2, y2) and its label (1 in the top half, 2 in the bottom half; 0 is the background)."""
    data = squares(count, side, seed)
    pairs = []
    for image, mask, quadrant in zip(data["images"], data["mask"], data["class"]):
        ys, xs = mask.nonzero(as_tuple=True)
        box = torch.tensor([[xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]], dtype=torch.float32)
        pairs.append((image, {"boxes": box, "labels": torch.tensor([1 + int(quadrant) // 2])}))
    return pairs


def detection_batch(items: list[tuple[Tensor, dict[str, Tensor]]]) -> tuple[Tensor, list[dict[str, Tensor]]]:
    """A stack of images and the list of their target dicts."""
    return torch.stack([image for image, _ in items]), [target for _, target in items]


class Batches(Dataset[Any]):
    """The images alone (``target=None``) or (image, target) pairs of :func:`squares`."""

    def __init__(self, data: dict[str, Tensor], target: str | None) -> None:
        self.data, self.target = data, target

    def __len__(self) -> int:
        return len(self.data["images"])

    def __getitem__(self, index: int) -> Any:
        image = self.data["images"][index]
        return image if self.target is None else (image, self.data[self.target][index])


class TaskData(pl.LightningDataModule):
    """Training and validation batches of :func:`squares` (``count`` each, ``side`` pixels): images alone, or
    with the ``target`` entry; of :func:`signals`, :func:`clips` or :func:`boxes` with ``inputs``."""

    def __init__(
        self,
        target: str | None,
        count: int = 64,
        batch_size: int = 16,
        side: int = SIDE,
        dim_square: bool = True,
        inputs: str = "squares",
    ) -> None:
        super().__init__()
        self.target, self.count, self.batch_size = target, count, batch_size
        self.side, self.dim_square, self.inputs = side, dim_square, inputs

    def _batches(self, seed: int) -> Dataset[Any]:
        if self.inputs == "boxes":
            return boxes(self.count, self.side, seed)  # type: ignore[return-value]
        made = {"signals": lambda: signals(self.count, seed=seed), "clips": lambda: clips(self.count, seed=seed)}
        data = made[self.inputs]() if self.inputs in made else squares(self.count, self.side, seed, self.dim_square)
        return Batches(data, self.target)

    def _loader(self, seed: int, shuffle: bool) -> DataLoader[Any]:
        collate = detection_batch if self.inputs == "boxes" else None
        return DataLoader(self._batches(seed), batch_size=self.batch_size, shuffle=shuffle, collate_fn=collate)

    def train_dataloader(self) -> DataLoader[Any]:
        return self._loader(0, True)

    def val_dataloader(self) -> DataLoader[Any]:
        return self._loader(1, False)


def trunk(width: int = 16) -> nn.Sequential:
    """Three convolutions, the last two of stride 2."""
    return nn.Sequential(
        nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
        nn.Conv2d(width, 2 * width, 3, stride=2, padding=1), nn.BatchNorm2d(2 * width), nn.ReLU(),
        nn.Conv2d(2 * width, 2 * width, 3, stride=2, padding=1), nn.ReLU(),
    )  # fmt: skip


def headed(outputs: int) -> nn.Sequential:
    """:func:`trunk`, pooled, with a linear head of ``outputs``."""
    return nn.Sequential(trunk(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, outputs))


class UNet(nn.Module):
    """Two levels down, two up, each up-step concatenating the skip of its level (Ronneberger et al. 2015)."""

    def __init__(self, classes: int = 2, width: int = 8) -> None:
        super().__init__()

        def block(cin: int, cout: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))

        self.down1, self.down2 = block(3, width), block(width, 2 * width)
        self.bottom = block(2 * width, 4 * width)
        self.up2 = nn.ConvTranspose2d(4 * width, 2 * width, 2, stride=2)
        self.dec2 = block(4 * width, 2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 2, stride=2)
        self.dec1 = block(2 * width, width)
        self.head = nn.Conv2d(width, classes, 1)

    def forward(self, x: Tensor) -> Tensor:
        s1 = self.down1(x)
        s2 = self.down2(F.max_pool2d(s1, 2))
        bottom = self.bottom(F.max_pool2d(s2, 2))
        d2 = self.dec2(torch.cat([self.up2(bottom), s2], dim=1))
        d1 = self.dec1(torch.cat([self.up1(d2), s1], dim=1))
        return self.head(d1)


class AutoEncoder(nn.Module):
    """Two strided convolutions down, two transposed convolutions up: an output of the input's shape."""

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.encoder = nn.Sequential(
            nn.Conv2d(3, width, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, stride=2, padding=1),
            nn.ReLU(),
        )  # fmt: skip
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 2, stride=2), nn.ReLU(), nn.ConvTranspose2d(width, 3, 2, stride=2)
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.encoder(x))


class SimCLR(nn.Module):
    """A backbone and a projection head (Chen et al. 2020): the forward gives the projection."""

    def __init__(self, dim: int = 16) -> None:
        super().__init__()
        self.backbone = nn.Sequential(trunk(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.projector = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, dim))

    def forward(self, x: Tensor) -> Tensor:
        return self.projector(self.backbone(x))


def nt_xent(z: Tensor, temperature: float = 0.5) -> Tensor:
    """The NT-Xent loss of 2N projections, views ``i`` and ``i + N`` positive pairs."""
    z = F.normalize(z, dim=1)
    count = len(z) // 2
    similarity = z @ z.T / temperature
    similarity.fill_diagonal_(float("-inf"))
    positives = torch.cat([torch.arange(count, 2 * count), torch.arange(count)]).to(z.device)
    return F.cross_entropy(similarity, positives)


def segmentation_net() -> nn.Module:
    """torchvision's LRASPP MobileNet-V3 for two classes, untrained: its output is ``{"out": (N, 2, H, W)}``."""
    from torchvision.models.segmentation import lraspp_mobilenet_v3_large

    return lraspp_mobilenet_v3_large(weights=None, weights_backbone=None, num_classes=2)


def detector(classes: int = 3) -> nn.Module:
    """torchvision's Faster R-CNN MobileNet-V3 320 FPN, untrained: it resizes its input to 320 pixels, and gives
    one dict of ``boxes``, ``labels`` and ``scores`` per image in eval mode, its losses in training mode."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    return fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None, num_classes=classes)


def signal_net(classes: int = 4) -> nn.Sequential:
    """A Conv1d classifier of signals (N, 1, L)."""
    return nn.Sequential(
        nn.Conv1d(1, 8, 9, padding=4), nn.ReLU(), nn.Conv1d(8, 16, 9, stride=2, padding=4), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, classes),
    )  # fmt: skip


def clip_net(classes: int = 4) -> nn.Sequential:
    """A Conv3d classifier of clips (N, 3, T, H, W)."""
    return nn.Sequential(
        nn.Conv3d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv3d(8, 16, 3, stride=2, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(16, classes),
    )  # fmt: skip


class TaskModule(pl.LightningModule):
    """A network and its task's loss, as a user's LightningModule. A detector takes the stacked images as a list
    and is validated without a loss (in eval mode it gives boxes, not losses)."""

    def __init__(
        self, net: nn.Module, loss: Callable[[nn.Module, Any], Tensor], lr: float = 0.01, detects: bool = False
    ) -> None:
        super().__init__()
        self.net, self.loss, self.lr, self.detects = net, loss, lr, detects

    def forward(self, x: Tensor, targets: Any = None) -> Any:
        return self.net(list(x), targets) if self.detects else self.net(x)

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self.loss(self, batch)

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        if not self.detects:
            self.log("val_loss", self.loss(self, batch))

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.lr)


class SequenceClassifier(TaskModule):
    """A classifier of signals (``inputs="signals"``: a Conv1d network on (N, 1, 128)) or clips (``"clips"``: a
    Conv3d network on (N, 3, 4, 16, 16)), 4 classes, with arguments a LightningCLI config can give."""

    def __init__(self, inputs: str = "signals", lr: float = 0.01) -> None:
        nets = {"signals": signal_net, "clips": clip_net}
        if inputs not in nets:
            raise ValueError(f"SequenceClassifier: `inputs` can be 'signals' or 'clips', got {inputs!r}.")
        super().__init__(nets[inputs](), _classify, lr)


def _classify(module: nn.Module, batch: Any) -> Tensor:
    return F.cross_entropy(module(batch[0]), batch[1])


def _simclr_loss(module: nn.Module, x: Tensor) -> Tensor:
    views = torch.cat([x + 0.05 * torch.randn_like(x), x.flip(-1) + 0.05 * torch.randn_like(x)])
    return nt_xent(module(views))


def task(name: str) -> tuple[TaskModule, TaskData]:
    """The LightningModule and data of a task of :data:`TASKS` or :data:`OTHER_INPUTS`."""
    if name == "simclr":
        return TaskModule(SimCLR(), _simclr_loss), TaskData(None)
    if name == "autoencoder":
        return TaskModule(AutoEncoder(), lambda m, x: F.mse_loss(m(x), x)), TaskData(None)
    if name == "multilabel":
        return TaskModule(headed(4), lambda m, b: F.binary_cross_entropy_with_logits(m(b[0]), b[1])), TaskData("multi")
    if name == "regression":
        return TaskModule(headed(1), lambda m, b: F.mse_loss(m(b[0]), b[1])), TaskData("value")
    if name == "segmentation":
        return TaskModule(segmentation_net(), lambda m, b: F.cross_entropy(m(b[0])["out"], b[1])), TaskData("mask")
    if name == "unet":
        return TaskModule(UNet(), lambda m, b: F.cross_entropy(m(b[0]), b[1])), TaskData("mask")
    if name == "detection":
        data = TaskData(None, count=8, batch_size=4, side=64, inputs="boxes")
        return TaskModule(detector(), lambda m, b: sum(m(b[0], b[1]).values()), detects=True), data
    if name == "signal":
        return TaskModule(signal_net(), _classify), TaskData("class", inputs="signals")
    if name == "clip":
        return TaskModule(clip_net(), _classify), TaskData("class", inputs="clips")
    raise ValueError(f"unknown task {name!r}; the tasks are {TASKS + OTHER_INPUTS}")
