"""How many inputs one batched pass holds: the one static rule that sizes every batched visualization pass (occluded
copies, SmoothGrad's noisy copies, the top-patch scan and its projections, feature visualization). No run-time
autotuning: the size follows from the model's activations, its weights and the device's memory.

A pass holds at least the images asked for (so a method never runs one forward per image), and as many more as fit
the memory bound, divided by the activation bytes of one input's forward. The bound is a quarter of the free memory
on CUDA. On a CPU it is 256 MiB: measured on torchvision's ResNet-18, VGG-11-BN, EfficientNet-B0 and ConvNeXt-T at
64 and 128 px and on the 32-px demo CNN, occlusion and SmoothGrad are fastest with passes of 100 to 600 MiB of
forward activations, and slower both below (convolutions of a few images leave the cores idle, and every pass pays
each layer's fixed cost) and above (a pass of gigabytes is memory-bound): ResNet-18's occlusion at 128 px takes 6.6 s
in passes of 150 MiB, 10.9 s in one pass of 8.5 GB (``benchmarks/README.md``, "Real models"). A model whose weights
outweigh the bound (VGG-11-BN: 531 MB, 480 MB of them in its classifier) gets passes whose activations outweigh its
weights, since every pass reads every weight. No pass exceeds an eighth of the available RAM on a CPU (a quarter of
the free memory on CUDA), counting three times the forward's bytes per input for a gradient pass. Methods split
their inputs into equal passes (:func:`even_passes`).
"""

from __future__ import annotations

import os
import weakref
from typing import Any

import torch
from torch import Tensor, nn

from lightning_cnnviz.core.methods._calls import flat_tensors
from lightning_cnnviz.core.model.modules import evaluating, hooked

__all__ = ["activation_bytes", "memory_bound", "pass_size"]

CPU_FRACTION = 8  # a pass may hold 1/8 of the available RAM
CPU_PASS_BYTES = 256 * 2**20  # and at most this many bytes of activations on a CPU
CUDA_FRACTION = 4  # and 1/4 of the free memory of a CUDA device
GRADIENT_FACTOR = 3  # with gradients: activations, their gradients, the input's


def activation_bytes(model: nn.Module, example: Tensor) -> int:
    """Bytes of every leaf module's outputs for one forward of ``example`` (no gradient): what a batch of such
    inputs holds at most, per input, while it runs. Measured once per model and input shape (one forward), then
    remembered for as long as the model lives.

    Example:
        >>> activation_bytes(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()), torch.zeros(1, 1, 5, 5))
        244
    """
    key = (tuple(example.shape), example.dtype, example.device)
    known = _measured.setdefault(model, {})
    if key not in known:
        known[key] = _measure(model, example)
    return known[key]


_measured: weakref.WeakKeyDictionary[nn.Module, dict[Any, int]] = weakref.WeakKeyDictionary()


def _measure(model: nn.Module, example: Tensor) -> int:
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


def memory_limit(device: torch.device | str) -> int:
    """Bytes of activations one pass may never exceed on ``device``: a quarter of its free memory on CUDA, an
    eighth of the available RAM elsewhere."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0] // CUDA_FRACTION)
    return available_ram() // CPU_FRACTION


def memory_bound(device: torch.device | str) -> int:
    """Bytes of activations one pass holds on ``device``: :func:`memory_limit` on CUDA; on a CPU 256 MiB (where
    the CPU's caches serve it best), within that limit."""
    limit = memory_limit(device)
    return limit if torch.device(device).type == "cuda" else min(CPU_PASS_BYTES, limit)


def pass_size(model: nn.Module, example: Tensor, minimum: int = 1, *, grad: bool = False) -> int:
    """Inputs per pass for ``model`` on inputs like ``example``: at least ``minimum`` (the images of the call), and
    as many as :func:`memory_bound` allows for the :func:`activation_bytes` of one input's forward, or, for a model
    whose weights outweigh that (VGG's 531 MB), as many as make a pass's activations outweigh its weights; never more
    than :func:`memory_limit` holds (three times the forward's bytes per input with ``grad``: the activations kept
    for backward, their gradients, the input's).

    Example:
        >>> net = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU())
        >>> pass_size(net, torch.zeros(1, 1, 5, 5), minimum=4) >= 4
        True
    """
    forward = max(activation_bytes(model, example[:1]), 1)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    fits = max(memory_bound(example.device) // forward, -(-weights // forward))  # every pass reads every weight
    limit = memory_limit(example.device) // (forward * (GRADIENT_FACTOR if grad else 1))
    return max(1, minimum, min(fits, limit))


def even_passes(total: int, size: int) -> int:
    """The pass size that splits ``total`` inputs into as few passes as passes of ``size`` do, all about equal
    (70 in passes of 64: two of 35, not 64 and 6).

    Example:
        >>> even_passes(70, 64), even_passes(64, 64), even_passes(10, 64)
        (35, 64, 10)
    """
    passes = -(-total // max(size, 1))
    return -(-total // max(passes, 1))
