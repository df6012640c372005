"""What every docstring example of the package may use: ``torch``, ``nn``, a tiny CNN ``net`` and ``images``."""

from typing import Any

import pytest
import torch
from torch import nn


@pytest.fixture(autouse=True)
def _doctest_names(doctest_namespace: dict[str, Any]) -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    net.append(nn.Linear(4, 2))
    doctest_namespace.update(torch=torch, nn=nn, net=net.eval(), images=torch.rand(2, 3, 8, 8))
