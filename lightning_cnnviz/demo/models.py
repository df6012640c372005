"""Demo CNNs and a LightningModule classifier for examples, tests and benchmarks."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import lightning.pytorch as pl
import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["ImageClassifier", "SmallCNN", "resnet18_cifar", "resnet18_imagenet"]

ActivationStyle = Literal["module", "inplace", "functional"]
Nonlinearity = Literal["relu", "silu", "gelu"]
_MODULES: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "silu": nn.SiLU, "gelu": nn.GELU}


class SmallCNN(nn.Module):
    """Three conv layers and a two-layer head; the first layer has big kernels so its filters are easy to see.

    ``conv1`` (``channels[0]`` filters, ``first_kernel`` x ``first_kernel``) -> ReLU -> max-pool ->
    ``conv2`` 3x3 -> ReLU -> max-pool -> ``conv3`` 3x3 -> ReLU -> global average pool -> ``fc``. The input
    of ``fc`` (the pooled ``conv3`` features) is the penultimate code. There is no hidden fully connected
    ReLU layer on purpose: its inputs (pooled ReLU outputs) are all positive, so at initialisation a large
    share of such units never fire on any input, which would look like dead filters in a healthy network.
    Works for any input size of at least 4x4.

    Args:
        in_channels: 1 for grayscale, 3 for RGB.
        num_classes: outputs of the last layer.
        channels: filters of the three conv layers.
        first_kernel: kernel size of ``conv1`` (odd).
        activation: ``"module"`` (``nn.ReLU`` modules), ``"inplace"`` (``nn.ReLU(inplace=True)``) or
            ``"functional"`` (``F.relu`` called in ``forward``: no ReLU modules at all).
        nonlinearity: ``"relu"`` (modules ``relu1`` to ``relu3``), ``"silu"`` or ``"gelu"`` (modules ``act1`` to
            ``act3``; ``"inplace"`` applies to SiLU only).

    Example:
        >>> SmallCNN(in_channels=1, num_classes=10)(torch.zeros(2, 1, 28, 28)).shape
        torch.Size([2, 10])
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 10,
        channels: tuple[int, int, int] = (32, 64, 128),
        first_kernel: int = 5,
        activation: ActivationStyle = "module",
        nonlinearity: Nonlinearity = "relu",
    ) -> None:
        super().__init__()
        if activation not in ("module", "inplace", "functional"):
            raise ValueError(f"activation can be 'module', 'inplace' or 'functional', got {activation!r}")
        if nonlinearity not in _MODULES:
            raise ValueError(f"nonlinearity can be 'relu', 'silu' or 'gelu', got {nonlinearity!r}")
        self.activation = activation
        self.nonlinearity = nonlinearity
        self._prefix = "relu" if nonlinearity == "relu" else "act"
        c1, c2, c3 = channels
        self.conv1 = nn.Conv2d(in_channels, c1, first_kernel, padding=first_kernel // 2)
        self.conv2 = nn.Conv2d(c1, c2, 3, padding=1)
        self.conv3 = nn.Conv2d(c2, c3, 3, padding=1)
        self.fc = nn.Linear(c3, num_classes)
        if activation != "functional":
            options = {"inplace": activation == "inplace"} if nonlinearity != "gelu" else {}
            for index in (1, 2, 3):
                setattr(self, f"{self._prefix}{index}", _MODULES[nonlinearity](**options))

    def _act(self, index: int, x: Tensor) -> Tensor:
        if self.activation == "functional":
            functions: dict[str, Callable[..., Tensor]] = {"relu": F.relu, "silu": F.silu, "gelu": F.gelu}
            return functions[self.nonlinearity](x)
        module: nn.Module = getattr(self, f"{self._prefix}{index}")
        return module(x)

    def forward(self, x: Tensor) -> Tensor:
        x = F.max_pool2d(self._act(1, self.conv1(x)), 2)
        x = F.max_pool2d(self._act(2, self.conv2(x)), 2)
        x = self._act(3, self.conv3(x))
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return self.fc(x)


def resnet18_cifar(in_channels: int = 3, num_classes: int = 10) -> nn.Module:
    """torchvision's ResNet-18 shaped for 32x32 inputs: a 3x3 stride-1 stem and no stem max-pool.

    Its ``BasicBlock`` calls one ``nn.ReLU(inplace=True)`` module twice per forward, so the activations are
    named ``layer1.0.relu`` and ``layer1.0.relu#2``.
    """
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


def resnet18_imagenet(in_channels: int = 3, num_classes: int = 1000) -> nn.Module:
    """torchvision's ResNet-18 as it is (a 7x7 stride-2 stem and a max-pool: for images of 64 px and more),
    untrained, with ``in_channels`` input channels."""
    from torchvision.models import resnet18

    model = resnet18(weights=None, num_classes=num_classes)
    if in_channels != 3:
        model.conv1 = nn.Conv2d(in_channels, 64, kernel_size=7, stride=2, padding=3, bias=False)
    return model


class ImageClassifier(pl.LightningModule):
    """Cross-entropy image classifier around a demo CNN.

    Args:
        arch: ``"small_cnn"``, ``"resnet18"`` (:func:`resnet18_cifar`, for 32 px images) or
            ``"resnet18_imagenet"`` (torchvision's ResNet-18 as it is, for 64 px and more).
        in_channels: image channels.
        num_classes: classes.
        lr: learning rate.
        optimizer: ``"sgd"`` (momentum 0.9, the default) or ``"adam"``. (Adam at 1e-3 kills a good share of
            the last conv layer's filters of the demo CNN, which ActivationMonitor duly reports.)
        weight_decay: L2 penalty.
        activation: activation style of ``small_cnn`` (see :class:`SmallCNN`).
        nonlinearity: ``"relu"``, ``"silu"`` or ``"gelu"`` in ``small_cnn``.
        first_kernel: kernel size of ``small_cnn``'s first layer.
        channels: filters of ``small_cnn``'s conv layers.

    Example:
        >>> ImageClassifier(in_channels=1, num_classes=10)(torch.zeros(1, 1, 16, 16)).shape
        torch.Size([1, 10])
    """

    def __init__(
        self,
        arch: Literal["small_cnn", "resnet18", "resnet18_imagenet"] = "small_cnn",
        in_channels: int = 1,
        num_classes: int = 10,
        lr: float = 0.05,
        optimizer: Literal["adam", "sgd"] = "sgd",
        weight_decay: float = 0.0,
        activation: ActivationStyle = "module",
        first_kernel: int = 5,
        channels: tuple[int, int, int] = (32, 64, 128),
        nonlinearity: Nonlinearity = "relu",
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        if arch == "small_cnn":
            self.net: nn.Module = SmallCNN(
                *(in_channels, num_classes, channels, first_kernel, activation, nonlinearity)
            )
        elif arch == "resnet18":
            self.net = resnet18_cifar(in_channels, num_classes)
        elif arch == "resnet18_imagenet":
            self.net = resnet18_imagenet(in_channels, num_classes)
        else:
            raise ValueError(f"arch can be 'small_cnn', 'resnet18' or 'resnet18_imagenet', got {arch!r}")
        if optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer can be 'adam' or 'sgd', got {optimizer!r}")
        self.lr = lr
        self.optimizer_name = optimizer
        self.weight_decay = weight_decay

    def forward(self, images: Tensor) -> Tensor:
        return self.net(images)

    def _step(self, batch: Any, stage: str) -> Tensor:
        images, labels = batch
        logits = self(images)
        loss = F.cross_entropy(logits, labels)
        accuracy = (logits.argmax(dim=1) == labels).float().mean()
        self.log(f"{stage}_loss", loss, prog_bar=stage == "val", sync_dist=stage != "train")
        self.log(f"{stage}_acc", accuracy, prog_bar=True, sync_dist=stage != "train")
        return loss

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "val")

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        return self._step(batch, "test")

    def predict_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Tensor:
        """Class probabilities of the batch's images (a batch of images, or of (images, labels))."""
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        return self(images).softmax(dim=1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        if self.optimizer_name == "sgd":
            return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=self.weight_decay)
        return torch.optim.Adam(self.parameters(), lr=self.lr, weight_decay=self.weight_decay)
