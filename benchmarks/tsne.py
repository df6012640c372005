"""Our torch t-SNE vs openTSNE (n_jobs=2) vs scikit-learn, in one process, on 512-d features.

    python benchmarks/tsne.py                      # CPU, N = 1000 2000 5000 10000
    python benchmarks/tsne.py --device cuda --sizes 5000 10000

Features: a Gaussian mixture in 512 dimensions with 10 classes of 3 sub-clusters each (class centres 4 apart,
sub-clusters 2 apart, unit noise), like penultimate-layer codes of a CNN. For each N: seconds (median over
``--repeats`` runs; ours and openTSNE alternate, scikit-learn runs once), the ratio to openTSNE, and the map
quality: trustworthiness (k=5, scikit-learn's) and the leave-one-out 5-NN accuracy of the classes in 2-D.
All three use their defaults (openTSNE's: perplexity 30, PCA start, 250 + 500 iterations; ours the same).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

import numpy as np
import torch
from openTSNE import TSNE as OpenTSNE
from sklearn.manifold import TSNE as SkTSNE
from sklearn.manifold import trustworthiness

from lightning_cnnviz.core import knn_accuracy, tsne


def features(count: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    classes = rng.normal(size=(10, 512)) * 4 / np.sqrt(2)
    subclusters = classes[:, None, :] + rng.normal(size=(10, 3, 512)) * 2 / np.sqrt(2)
    labels = rng.integers(0, 10, count)
    sub = rng.integers(0, 3, count)
    x = subclusters[labels, sub] + rng.normal(size=(count, 512)) / np.sqrt(512) * 8
    return x.astype(np.float32), labels


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
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    print(f"torch threads {torch.get_num_threads()}, device {args.device}")
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

        times: dict[str, list[float]] = {"ours": [], "openTSNE": []}
        maps: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):
            for name, run in (("ours", ours), ("openTSNE", theirs)):
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
