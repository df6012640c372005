"""Top-9 patches with both projections: our batched core vs a per-neuron captum loop, in one process.

    python benchmarks/top_patches.py                 # CPU
    python benchmarks/top_patches.py --device cuda

The issue's case: a probe of 2,048 CIFAR-10 test images, the demo CNN (7x7 RGB first layer), 3 layers x 16
channels, top-9 per channel, deconvnet and guided backprop projections.

* ours: one streaming top-k scan of the probe (forwards stop at the deepest layer), then per layer one
  batched forward of all 16 x 9 (image, activation) pairs on receptive-field crops and one backward per
  method;
* reference: the same top-k found by a plain scan (full forwards, every activation kept, sorted), then a
  captum ``NeuronDeconvolution`` / ``NeuronGuidedBackprop`` call per neuron (per image, channel, position).

Prints the seconds of each, the ratios (end to end and projections alone), the largest difference between the
two sets of projections relative to their scale, and the seconds per logged epoch that ``TopPatchMonitor``
adds (scan, projections, rendering and writing the TensorBoard images).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from captum.attr import NeuronDeconvolution, NeuronGuidedBackprop
from torch import Tensor, nn

from lightning_cnnviz import TensorBoardSink, TopPatchMonitor
from lightning_cnnviz.core import receptive_fields, top_activations
from lightning_cnnviz.core.methods.top_patches import project_activations
from lightning_cnnviz.core.monitors.selection import default_channels
from lightning_cnnviz.demo.data import ImageFolderDataModule
from lightning_cnnviz.demo.models import ImageClassifier

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["net.conv1", "net.conv2", "net.conv3"]
RULES = {"deconvnet": NeuronDeconvolution, "guided_backprop": NeuronGuidedBackprop}


def probe_images(count: int) -> Tensor:
    data = ImageFolderDataModule(str(ROOT.parent / "shared" / "data" / "cifar10" / "cifar10-jpg.zip"), limit_val=count)
    data.setup()
    return data._val.tensors[0]  # type: ignore[attr-defined,no-any-return]


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def ours(model: nn.Module, probe: Tensor, channels: dict[str, list[int]]) -> tuple[float, float, dict[str, Any]]:
    start = time.perf_counter()
    tops = top_activations(model, channels, probe, k=9)
    fields = receptive_fields(model, list(channels), probe[:1])
    scanned = time.perf_counter()
    projections = {}
    for name, top in tops.items():
        rows = top.valid.flatten()
        images = probe[top.images.flatten()[rows]]
        where = [top.channels.repeat_interleave(9)[rows], top.ys.flatten()[rows], top.xs.flatten()[rows]]
        both = project_activations(
            model,
            name,
            images,
            *where,
            rules=tuple(RULES),
            field=fields[name],
            expected=top.values.flatten()[rows],  # type: ignore[arg-type]
        )
        for rule in RULES:
            projections[name, rule] = both[rule]
    sync(str(probe.device))
    done = time.perf_counter()
    return done - start, done - scanned, {"tops": tops, "projections": projections}


def reference(model: nn.Module, probe: Tensor, channels: dict[str, list[int]]) -> tuple[float, float, dict[str, Any]]:
    start = time.perf_counter()
    modules = dict(model.named_modules())
    kept: dict[str, list[Tensor]] = {name: [] for name in channels}
    handles = [
        modules[name].register_forward_hook(lambda m, a, o, name=name: kept[name].append(o.detach().clone()))
        for name in channels
    ]
    with torch.no_grad():
        for chunk in probe.split(256):
            model(chunk)
    for handle in handles:
        handle.remove()
    picks: dict[str, list[tuple[int, int, int, int]]] = {}
    for name, chosen in channels.items():
        activations = torch.cat(kept[name])
        width = activations.shape[-1]
        best, where = activations[:, chosen].flatten(2).max(dim=2)  # (N, C): one per image
        order = best.argsort(dim=0, descending=True)[:9]  # (9, C)
        picks[name] = [
            (int(order[j, c]), chosen[c], int(where[order[j, c], c]) // width, int(where[order[j, c], c]) % width)
            for c in range(len(chosen))
            for j in range(9)
        ]
    scanned = time.perf_counter()
    projections = {}
    for name, neurons in picks.items():
        for rule, method in RULES.items():
            attribution = method(model, modules[name])
            projections[name, rule] = torch.cat(
                [attribution.attribute(probe[i : i + 1], neuron_selector=(c, y, x)) for i, c, y, x in neurons]
            )
    sync(str(probe.device))
    done = time.perf_counter()
    return done - start, done - scanned, {"projections": projections}


def monitor_seconds(model: nn.Module, probe: Tensor, repeats: int) -> float:
    """What ``TopPatchMonitor`` adds at one logged epoch: its ``_log`` on a fixed probe set."""
    from torch.utils.tensorboard import SummaryWriter

    monitor = TopPatchMonitor(layers=LAYERS, probe_size=len(probe), method="both", on_error="raise")
    trainer: Any = SimpleNamespace(global_rank=0, world_size=1, current_epoch=0, global_step=0)
    times = []
    with tempfile.TemporaryDirectory() as directory:
        monitor._sink = TensorBoardSink(SummaryWriter(directory))
        monitor.setup(trainer, model, "fit")  # type: ignore[arg-type]
        monitor.probe.images = probe.cpu()
        for epoch in range(repeats):
            trainer.current_epoch = trainer.global_step = epoch
            start = time.perf_counter()
            monitor._log(trainer, model)  # type: ignore[arg-type]
            monitor._sink.flush()
            times.append(time.perf_counter() - start)
        monitor._sink.writer.close()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--probe", type=int, default=2048)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    model = ImageClassifier(in_channels=3, first_kernel=7).to(args.device).eval()
    probe = probe_images(args.probe).to(args.device)
    modules = dict(model.named_modules())
    channels = {name: default_channels(modules[name].out_channels, 16) for name in LAYERS}
    print(f"probe {tuple(probe.shape)} on {args.device}, threads {torch.get_num_threads()}, layers {LAYERS}, 16 ch")

    runs: dict[str, list[tuple[float, float]]] = {"ours": [], "captum": []}
    for _ in range(args.repeats):  # alternate, so drifts of the machine hit both
        total, projecting, mine = ours(model, probe, channels)
        runs["ours"].append((total, projecting))
        total, projecting, theirs = reference(model, probe, channels)
        runs["captum"].append((total, projecting))
    difference = max(
        (mine["projections"][key] - theirs["projections"][key]).abs().max().item()
        / theirs["projections"][key].abs().max().item()
        for key in theirs["projections"]
    )
    o_total = statistics.median(t for t, _ in runs["ours"])
    o_proj = statistics.median(p for _, p in runs["ours"])
    r_total = statistics.median(t for t, _ in runs["captum"])
    r_proj = statistics.median(p for _, p in runs["captum"])
    neurons = sum(len(c) for c in channels.values()) * 9 * len(RULES)
    print(f"{'':28}{'ours s':>10}{'captum loop s':>15}{'ratio':>9}")
    print(f"{'scan + projections':28}{o_total:10.3f}{r_total:15.3f}{r_total / o_total:9.1f}x")
    print(f"{'projections only':28}{o_proj:10.3f}{r_proj:15.3f}{r_proj / o_proj:9.1f}x   ({neurons} projections)")
    print(f"max |ours - captum| / scale over all projections: {difference:.2e}")
    seconds = monitor_seconds(model, probe, args.repeats)
    print(f"TopPatchMonitor per logged epoch (scan, projections, rendering, writing): {seconds:.2f} s")


if __name__ == "__main__":
    main()
