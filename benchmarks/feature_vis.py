"""Feature visualization: all channels in one batch (ours) against one channel at a time in a loop (what Lucent
does: one objective per render), the same objective, parameterisation and steps, in one process.

    python benchmarks/feature_vis.py                    # CPU: the demo CNN at 32x32, 16 channels x 256 steps
    python benchmarks/feature_vis.py --device cuda --model resnet50 --size 224 --steps 512

Prints the seconds of each (median of ``--repeats`` runs, alternating) and the ratio loop / batched.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from lightning_cnnviz.core import LayerMap, visualize_features
from lightning_cnnviz.core.monitors.selection import default_channels
from lightning_cnnviz.demo.models import SmallCNN


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--model", default="small_cnn", help="small_cnn or a torchvision classifier name")
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=256)
    parser.add_argument("--channels", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    if args.model == "small_cnn":
        model = SmallCNN(in_channels=3, num_classes=10)
    else:
        import torchvision

        model = getattr(torchvision.models, args.model)(weights=None)
    model = model.to(args.device).eval()
    layer = LayerMap.of(model).default_layers()[-1]
    count = dict(model.named_modules())[layer].out_channels  # type: ignore[union-attr]
    channels = default_channels(count, args.channels)
    options = {"size": args.size, "steps": args.steps, "device": args.device}
    print(f"device={args.device} model={args.model} layer={layer} channels={len(channels)} {options}")

    def batched() -> None:
        visualize_features(model, layer, channels, **options)  # type: ignore[arg-type]

    def looped() -> None:
        for channel in channels:
            visualize_features(model, layer, [channel], **options)  # type: ignore[arg-type]

    def timed(work: object) -> float:
        if args.device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        work()  # type: ignore[operator]
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start

    times: dict[str, list[float]] = {"batched": [], "loop": []}
    for repeat in range(args.repeats):
        for name in ("batched", "loop") if repeat % 2 == 0 else ("loop", "batched"):
            times[name].append(timed(batched if name == "batched" else looped))
            print(f"repeat {repeat} {name:8s} {times[name][-1]:8.2f} s")
    ours, theirs = statistics.median(times["batched"]), statistics.median(times["loop"])
    print(f"median: batched {ours:.2f} s, one channel at a time {theirs:.2f} s, ratio {theirs / ours:.1f}x")


if __name__ == "__main__":
    main()
