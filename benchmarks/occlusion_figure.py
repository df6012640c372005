"""What a log of the whole occlusion figure costs against SaliencyMonitor's occlusion map alone, and what it adds
when both log at one step (their forwards shared), in one process, as paired repeats in alternating order.

    python benchmarks/occlusion_figure.py                      # ResNet-18 at 64 px, 4 images, 5 pairs
    python benchmarks/occlusion_figure.py --pairs 7 --models "resnet18@64,resnet18@32,demo CNN@32"

Each model sees 4 generated images (a bright square whose place is the class, on noise) at the default window (a
square of a quarter of the side, moved by a quarter of that: 13 x 13 positions). Timed, each on a fresh
:class:`~lightning_cnnviz.core.ProbeService` (nothing kept from another call): the occlusion saliency picture
(``SaliencyPanel(methods=("occlusion",))``: its explanation forward, the occluded forwards, the map and the
picture); the occlusion figure alone (``OcclusionFigure()``: a clean forward, the occluded forwards with the last
conv's totals, the projection of (c), the picture); and both at one step, saliency first (the figure then reuses the
forwards). Printed: seconds of each, the figure / saliency ratio per pair with the median and spread (the target:
at most 1.3x), and what the figure adds to a saliency log at the same step.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import torch
from activation_atlas import images, network, timed  # the same generated images, networks and clock

from lightning_cnnviz.core import Context, Moment, OcclusionFigure, Probe, ProbeService, SaliencyPanel


def row(name: str, size: int, count: int, pairs: int) -> str:
    model = network(name)
    x, labels = images(count, size)
    probe = Probe(x, labels)
    figure = OcclusionFigure()
    figure.attach(model, x[:1])
    panel = SaliencyPanel(methods=("occlusion",), task="classification")

    def saliency() -> None:
        panel.snapshot(model, probe, Context(Moment(epoch=0, step=0), shared=ProbeService()))

    def alone() -> None:
        figure.snapshot(model, probe, Context(Moment(epoch=0, step=0), shared=ProbeService()))

    def both() -> None:
        shared = ProbeService()
        figure.share(shared)  # what the adapter does at setup
        panel.snapshot(model, probe, Context(Moment(epoch=0, step=0), shared=shared))
        figure.snapshot(model, probe, Context(Moment(epoch=0, step=0), shared=shared))
        assert shared.occlusions.runs == 1

    saliency(), alone(), both()  # warm-up
    ratios, added, seconds = [], [], {"saliency": [], "figure": [], "both": []}
    for pair in range(pairs):
        order = [("saliency", saliency), ("figure", alone), ("both", both)]
        for label, work in order if pair % 2 == 0 else order[::-1]:
            seconds[label].append(timed(work))
        ratios.append(seconds["figure"][-1] / seconds["saliency"][-1])
        added.append(seconds["both"][-1] / seconds["saliency"][-1])
    spread = f"{min(ratios):.2f}-{max(ratios):.2f}"
    return (
        f"{name} {size} px, {count} images: saliency occlusion {statistics.median(seconds['saliency']):.2f} s, "
        f"figure alone {statistics.median(seconds['figure']):.2f} s, both at one step "
        f"{statistics.median(seconds['both']):.2f} s; figure / saliency median {statistics.median(ratios):.2f}x "
        f"({spread}, pairs {', '.join(f'{r:.2f}' for r in ratios)}); both / saliency "
        f"{statistics.median(added):.2f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="resnet18@64", help="comma-separated name@size")
    parser.add_argument("--images", type=int, default=4)
    parser.add_argument("--pairs", type=int, default=5)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    for spec in args.models.split(","):
        name, size = spec.rsplit("@", 1)
        print(row(name, int(size), args.images, args.pairs), flush=True)


if __name__ == "__main__":
    main()
