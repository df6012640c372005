"""How many inputs one batched pass holds: the one static rule that sizes every batched visualization pass (occluded
copies, SmoothGrad's noisy copies, the top-patch scan and its projections, feature visualization). No run-time
autotuning: the size follows from the model's activations and the device's memory.

A pass holds at least the images asked for (so a method never runs one forward per image), and as many more as fit
the memory bound, divided by the activation bytes of one input's forward (three times that with gradients: the
activations kept for backward, their gradients, and the input's). The bound is a quarter of the free memory on
CUDA. On a CPU it is 256 MiB of activations (and at most an eighth of the available RAM): measured on torchvision's
ResNet-18, VGG-11-BN and EfficientNet-B0 at 64 and 128 px and on the 32-px demo CNN, occlusion is fastest with
passes of 100 to 500 MiB, and slower both below (convolutions of a few images leave the cores idle) and above (a
pass of gigabytes is memory-bound): ResNet-18 at 128 px takes 6.6 s in passes of 150 MiB, 10.9 s in one pass of
8.5 GB (``benchmarks/README.md``, "Real models").
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core._calls import flat_tensors
from lightning_cnnviz.core.model import evaluating, hooked

__all__ = ["activation_bytes", "memory_bound", "pass_size"]

CPU_FRACTION = 8  # a pass may hold 1/8 of the available RAM
CPU_PASS_BYTES = 256 * 2**20  # and at most this many bytes of activations on a CPU
CUDA_FRACTION = 4  # and 1/4 of the free memory of a CUDA device
GRADIENT_FACTOR = 3  # with gradients: activations, their gradients, the input's


def activation_bytes(model: nn.Module, example: Tensor) -> int:
    """Bytes of every leaf module's outputs for one forward of ``example`` (no gradient): what a batch of such
    inputs holds at most, per input, while it runs.

    Example:
        >>> activation_bytes(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.zeros(1, 1, 5, 5))
        244
    """
    total = example.numel() * example.element_size()

    def add(module: nn.Module, args: Any, output: Any) -> None:
        nonlocal total
        total += sum(t.numel() * t.element_size() for t in flat_tensors(output))

    leaves = [(m, add) for m in model.modules() if next(m.children(), None) is None]
    with hooked(leaves), evaluating(model):
        model(example)
    return total


def available_ram() -> int:
    """Bytes of RAM available to a new allocation: ``MemAvailable`` on Linux, else the free pages."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def memory_bound(device: torch.device | str) -> int:
    """Bytes of activations one pass may hold on ``device``: a quarter of the free memory on CUDA; 256 MiB, and at
    most an eighth of the available RAM, elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // CUDA_FRACTION)
    return min(CPU_PASS_BYTES, available_ram() // CPU_FRACTION)


def pass_size(model: nn.Module, example: Tensor, minimum: int = 1, *, grad: bool = False) -> int:
    """Inputs per pass for ``model`` on inputs like ``example``: at least ``minimum`` (the images of the call), and
    as many as :func:`memory_bound` allows for :func:`activation_bytes` per input (times 3 with ``grad``).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> pass_size(net, torch.zeros(1, 1, 5, 5), minimum=4) >= 4
        True
    """
    per_input = activation_bytes(model, example[:1]) * (GRADIENT_FACTOR if grad else 1)
    return max(1, minimum, memory_bound(example.device) // max(per_input, 1))
