"""Our torch t-SNE vs openTSNE (n_jobs=2) vs scikit-learn, in one process, on 512-d features.

    python benchmarks/tsne.py                      # CPU, N = 1000 2000 5000 10000
    python benchmarks/tsne.py --busy               # the same beside a competing CPU-bound process
    python benchmarks/tsne.py --device cuda --sizes 5000 10000
    python benchmarks/tsne.py --busy --fixed-threads  # also ours with every thread throughout (no switch)

``--fixed-threads`` adds ``ours-fixed``: our t-SNE with the one-or-all thread choice switched off (all of torch's
threads throughout), alternating with the others, to measure what the process-wide thread switch gains.
``--busy`` starts one CPU-bound process (a Python busy loop) before the runs and stops it after, so both
implementations share the machine with it, as inside a training run with data-loader workers.

Features: Fashion-MNIST test images (``../shared/data``) through a fixed Gaussian random projection to 512
dimensions (distances kept, real-image structure), standing in for 512-d CNN codes. (On isotropic Gaussian
mixtures in 512-d, openTSNE's perplexity search stops at perplexities of 30 to 70 for many points instead of
30, so its maps there are not the same t-SNE; ours calibrates every point.) For each N: seconds (median over
``--repeats`` runs; ours and openTSNE alternate, scikit-learn runs once), the ratio to openTSNE, and the map
quality: trustworthiness (k=5, scikit-learn's) and the leave-one-out 5-NN accuracy of the classes in 2-D.
All three use their defaults (openTSNE's: perplexity 30, PCA start, 250 + 500 iterations; ours the same).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from openTSNE import TSNE as OpenTSNE
from sklearn.manifold import TSNE as SkTSNE
from sklearn.manifold import trustworthiness

from lightning_cnnviz.core import knn_accuracy, tsne
from lightning_cnnviz.core.methods import embedding as embedding_module
from lightning_cnnviz.demo.data import IDXDataModule

ROOT = Path(__file__).resolve().parents[1]


def features(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """The first ``count`` Fashion-MNIST test images through a fixed Gaussian random projection to 512-d."""
    data = IDXDataModule(str(ROOT.parent / "shared" / "data" / "fashion-mnist"), limit_val=count)
    data.setup()
    images, labels = data._val.tensors  # type: ignore[attr-defined]
    flat = images.reshape(len(images), -1).numpy()
    projection = np.random.default_rng(seed).normal(size=(flat.shape[1], 512)).astype(np.float32) / np.sqrt(512)
    return (flat @ projection).astype(np.float32), labels.numpy()


def quality(x: np.ndarray, embedding: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    trust = float(trustworthiness(x, embedding, n_neighbors=5))
    return trust, knn_accuracy(torch.from_numpy(np.ascontiguousarray(embedding)), torch.from_numpy(labels))


def timed(run) -> tuple[float, np.ndarray]:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    result = run()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 5000, 10000])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-sklearn", action="store_true")
    parser.add_argument("--busy", action="store_true", help="run beside a competing CPU-bound process")
    parser.add_argument("--fixed-threads", action="store_true", help="also time ours without the thread switch")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.busy else None
    try:
        run(args)
    finally:
        if competitor is not None:
            competitor.kill()


def run(args: argparse.Namespace) -> None:
    load = "beside one competing CPU-bound process" if args.busy else "on a quiet machine"
    print(f"torch threads {torch.get_num_threads()}, device {args.device}, {load}")
    header = f"{'N':>6} {'method':>10} {'seconds':>9} {'vs openTSNE':>12} {'trust(5)':>9} {'5-NN acc':>9}"
    print(header)
    for count in args.sizes:
        x, labels = features(count)
        on_device = torch.from_numpy(x).to(args.device)

        def ours(on_device: torch.Tensor = on_device) -> np.ndarray:
            embedding = tsne(on_device)
            if args.device == "cuda":
                torch.cuda.synchronize()
            return embedding.cpu().numpy()

        def theirs(x: np.ndarray = x) -> np.ndarray:
            return np.asarray(OpenTSNE(n_jobs=2, random_state=0).fit(x))

        def ours_fixed() -> np.ndarray:
            choice = embedding_module._ThreadChoice
            original = choice.__init__

            def fixed(self: Any, *rest: Any, **options: Any) -> None:
                original(self, *rest, **options)
                self.enabled = False

            choice.__init__ = fixed  # type: ignore[method-assign]
            try:
                return ours()
            finally:
                choice.__init__ = original  # type: ignore[method-assign]

        runs = [("ours", ours), ("openTSNE", theirs)] + ([("ours-fixed", ours_fixed)] if args.fixed_threads else [])
        times: dict[str, list[float]] = {name: [] for name, _ in runs}
        maps: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in runs:
                seconds, maps[name] = timed(run)
                times[name].append(seconds)
        if not args.no_sklearn:
            seconds, maps["sklearn"] = timed(lambda x=x: SkTSNE(random_state=0, n_jobs=2).fit_transform(x))
            times["sklearn"] = [seconds]
        reference = statistics.median(times["openTSNE"])
        for name, embedding in maps.items():
            median = statistics.median(times[name])
            trust, accuracy = quality(x, embedding, labels)
            print(f"{count:>6} {name:>10} {median:9.2f} {median / reference:12.2f} {trust:9.4f} {accuracy:9.4f}")
        print(f"{'':>6} {'ours runs':>10} {[round(t, 2) for t in times['ours']]}", flush=True)


if __name__ == "__main__":
    main()
