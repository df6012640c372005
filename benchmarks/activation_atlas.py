"""What a log of the activation atlas costs against a log of EmbeddingMonitor on the same number of vectors, in one
process, as paired repeats (embedding, atlas, atlas, embedding, ...).

    python benchmarks/activation_atlas.py                     # demo CNN 32 px, ResNet-18 32 and 64 px, 3 pairs
    python benchmarks/activation_atlas.py --pairs 5 --models "demo CNN@32"

Each model sees a fixed probe of 2,000 generated images (a bright square whose place is the class, on noise): the
EmbeddingMonitor log (EmbeddingMap at its defaults: the codes of the 2,000 images, their t-SNE map aligned to the
previous one, the scatter, grid, neighbours and Projector data) against the ActivationAtlasMonitor log
(ActivationAtlas at its defaults: 2,000 vectors of the last conv block's activation over the same images, their
t-SNE layout, 8 x 8 cells, one batch of renders of 64 steps, the picture). Both warm-start from their previous map
after the first call, as in training, so the first call of each is left out. Printed: the seconds of each log, the
atlas's split (layout, renders, the rest), and the ratio atlas / embedding per pair, with the median and spread.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable
from typing import Any

import torch
import torchvision
from torch import nn

from lightning_cnnviz.core import ActivationAtlas, Context, EmbeddingMap, Moment, Probe
from lightning_cnnviz.demo.models import SmallCNN


def images(count: int, size: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 10, (count,), generator=generator)
    x = torch.randn(count, 3, size, size, generator=generator) * 0.5
    side = size // 4
    for c in range(10):
        top, left = (c * (size - side)) // 9, ((9 - c) * (size - side)) // 9
        x[labels == c, :, top : top + side, left : left + side] += 2.0
    return x, labels


def network(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "demo CNN":
        return SmallCNN(in_channels=3, num_classes=10).eval()
    return getattr(torchvision.models, name)(weights=None, num_classes=10).eval()


def timed(function: Callable[[], Any]) -> float:
    started = time.perf_counter()
    function()
    return time.perf_counter() - started


def row(name: str, size: int, vectors: int, pairs: int) -> str:
    """One model's row: its embedding and atlas logs, paired."""
    model = network(name)
    x, labels = images(vectors, size)
    probe = Probe(x, labels)
    embedding, atlas = EmbeddingMap(), ActivationAtlas(vectors=vectors)
    split = {"layout": 0.0, "renders": 0.0}
    for method, key in (("lay_out", "layout"), ("render", "renders")):
        original = getattr(atlas, method)

        def wrapped(*a: Any, _original: Any = original, _key: str = key) -> Any:
            started = time.perf_counter()
            try:
                return _original(*a)
            finally:
                split[_key] += time.perf_counter() - started

        setattr(atlas, method, wrapped)
    embedding.snapshot(model, probe, Context(Moment(epoch=0, step=0)))  # the first maps: cold starts
    atlas.snapshot(model, probe, Context(Moment(epoch=0, step=0)))
    logs: dict[str, list[float]] = {"embedding": [], "atlas": []}
    splits: list[tuple[float, float, float]] = []
    order = [kind for pair in range(pairs) for kind in (("embedding", "atlas"), ("atlas", "embedding"))[pair % 2]]
    for epoch, kind in enumerate(order, start=1):
        context = Context(Moment(epoch=epoch, step=epoch))
        picture: Any = embedding if kind == "embedding" else atlas
        split.update(layout=0.0, renders=0.0)
        took = timed(lambda: picture.snapshot(model, probe, context))  # noqa: B023 (called at once)
        logs[kind].append(took)
        if kind == "atlas":
            splits.append((split["layout"], split["renders"], took - split["layout"] - split["renders"]))
    ratios = [a / e for a, e in zip(logs["atlas"], logs["embedding"], strict=True)]
    parts = " / ".join(f"{statistics.median(part):.2f}" for part in zip(*splits, strict=True))
    count = 0 if atlas.last_vectors is None else len(atlas.last_vectors)
    cells = 0 if atlas.last_cells is None else len(atlas.last_cells.filled)
    return (f"| {name} at {size} px ({atlas.layer_name}, {count} vectors, {cells} cells) | "
            f"{statistics.median(logs['embedding']):.2f} | {statistics.median(logs['atlas']):.2f} | {parts} | "
            f"{statistics.median(ratios):.2f}x (pairs {', '.join(f'{r:.2f}' for r in ratios)}) |")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="demo CNN@32,resnet18@32,resnet18@64")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--vectors", type=int, default=2000)
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print("| model | embedding log (s) | atlas log (s) | atlas: layout / renders / rest (s) | atlas / embedding |")
    print("| --- | --- | --- | --- | --- |")
    for spec in args.models.split(","):
        name, size = spec.split("@")
        print(row(name, int(size), args.vectors, args.pairs), flush=True)
    print(f"\n{torch.get_num_threads()} threads")


if __name__ == "__main__":
    main()
