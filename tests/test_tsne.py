"""The torch t-SNE against openTSNE (affinities, map quality) and against its own exact gradient."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from openTSNE import TSNE
from openTSNE.affinity import PerplexityBasedNN
from sklearn.datasets import load_digits
from sklearn.manifold import trustworthiness
from sklearn.neighbors import NearestNeighbors

from lightning_cnnviz.core.methods.embedding import (
    _FFTGrid,
    _knn,
    _repulsion_exact,
    _repulsion_fft,
    knn_accuracy,
    procrustes_align,
    tsne,
    tsne_affinities,
)


@pytest.fixture(scope="module")
def digits() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_digits(return_X_y=True)
    return x.astype(np.float32), y


def dense_p(count: int, first: torch.Tensor, second: torch.Tensor, values: torch.Tensor) -> np.ndarray:
    p = np.zeros((count, count))
    p[first.numpy(), second.numpy()] = values.numpy()
    return p + p.T


@pytest.mark.parametrize(("count", "jitter"), [(600, 0.05), (1797, 0.05), (1797, 0.5)])
def test_affinities_equal_opentsne_exact_perplexity_affinities(
    digits: tuple[np.ndarray, np.ndarray], count: int, jitter: float
) -> None:
    # digits are integers: a little noise breaks the ties between equal distances (which kNN sets would split),
    # and leaves near-ties that float32 distances would order wrongly
    x = digits[0][:count] + np.random.default_rng(0).normal(scale=jitter, size=(count, 64)).astype(np.float32)
    ours = tsne_affinities(torch.from_numpy(x), perplexity=30)
    theirs = PerplexityBasedNN(x, perplexity=30, method="exact", n_jobs=1).P.toarray()
    mine = dense_p(len(x), ours.first, ours.second, ours.values)
    assert abs(mine.sum() - 1) < 1e-5 and abs(theirs.sum() - 1) < 1e-6
    assert np.abs(mine - theirs).max() <= 5e-6 * theirs.max()


def exact_affinities(x: np.ndarray, perplexity: float = 30.0) -> np.ndarray:
    """By hand, in float64: exact kNN (k = 3 perplexity), each precision bisected 200 times, symmetrised."""
    y = x.astype(np.float64)
    count, k = len(y), int(3 * perplexity)
    squares = (y * y).sum(1)
    d2 = squares[:, None] + squares[None, :] - 2 * y @ y.T
    np.fill_diagonal(d2, np.inf)
    neighbors = np.argsort(d2, axis=1, kind="stable")[:, :k]
    d = np.take_along_axis(d2, neighbors, 1)
    d = d - d[:, :1]
    low, high, beta = np.zeros(count), np.full(count, np.inf), np.ones(count)
    for _ in range(200):
        p = np.exp(-d * beta[:, None])
        entropy = np.log(p.sum(1)) + beta * (d * p).sum(1) / p.sum(1)
        flat = entropy > np.log(perplexity)
        low, high = np.where(flat, beta, low), np.where(flat, high, beta)
        beta = np.where(np.isinf(high), beta * 2, (low + high) / 2)
    p = np.exp(-d * beta[:, None])
    conditional = np.zeros((count, count))
    np.put_along_axis(conditional, neighbors, p / p.sum(1, keepdims=True), 1)
    return (conditional + conditional.T) / (2 * count)


def test_affinities_of_512_d_codes_equal_a_float64_computation_by_hand(digits: tuple[np.ndarray, np.ndarray]) -> None:
    """Codes of CNN width: digits through a fixed random projection to 512-d, where float32 distances lose most
    digits to the norms (openTSNE's own calibration stops early there, so the reference is computed here)."""
    rng = np.random.default_rng(5)
    x = (digits[0][:1200] @ rng.normal(size=(64, 512)) / 8 + rng.normal(scale=0.5, size=(1200, 512))).astype(np.float32)
    ours = tsne_affinities(torch.from_numpy(x), perplexity=30)
    expected = exact_affinities(x)
    mine = dense_p(len(x), ours.first, ours.second, ours.values)
    assert np.abs(mine - expected).max() <= 5e-6 * expected.max()


def test_knn_is_exact_on_near_ties_far_from_the_origin() -> None:
    """Points around a large offset, whose float32 squared distances lose the last digits that order them."""
    rng = np.random.default_rng(3)
    x = 300.0 + rng.normal(size=(500, 32)) + 1e-4 * rng.normal(size=(500, 32))
    d2, index = _knn(torch.from_numpy(x.astype(np.float32)), 20, block=128)
    y = x.astype(np.float32).astype(np.float64)
    brute = ((y[:, None, :] - y[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(brute, np.inf)
    expected = np.argsort(brute, axis=1, kind="stable")[:, :20]
    assert (index.numpy() == expected).all()  # the same neighbours in the same order (float32 orders 38%)
    np.testing.assert_allclose(d2.numpy(), np.take_along_axis(brute, expected, 1), rtol=2e-6)


def loo_knn_accuracy_sklearn(points: np.ndarray, labels: np.ndarray, k: int = 5) -> float:
    neighbors = NearestNeighbors(n_neighbors=k + 1).fit(points).kneighbors(points, return_distance=False)[:, 1:]
    votes = np.zeros((len(points), labels.max() + 1))
    np.add.at(votes, (np.arange(len(points))[:, None], labels[neighbors]), 1)
    return float((votes.argmax(axis=1) == labels).mean())


def test_knn_accuracy_equals_a_scikit_learn_leave_one_out_vote() -> None:
    rng = np.random.default_rng(0)
    points = rng.normal(size=(300, 6)).astype(np.float32)
    labels = (points[:, 0] + 0.5 * rng.normal(size=300) > 0).astype(int) + (points[:, 1] > 1)
    assert knn_accuracy(torch.from_numpy(points), torch.from_numpy(labels)) == pytest.approx(
        loo_knn_accuracy_sklearn(points, labels), abs=1e-9
    )


def quality(features: np.ndarray, embedding: np.ndarray, labels: np.ndarray) -> tuple[float, float]:
    return (
        float(trustworthiness(features, embedding, n_neighbors=5)),
        loo_knn_accuracy_sklearn(embedding, labels),
    )


@pytest.mark.parametrize("method", ["exact", "fft"])
def test_map_quality_matches_opentsne_on_digits(digits: tuple[np.ndarray, np.ndarray], method: str) -> None:
    x, labels = digits
    ours = tsne(torch.from_numpy(x), method=method).numpy()
    theirs = np.asarray(TSNE(n_jobs=2, random_state=0).fit(x))
    (trust_ours, acc_ours), (trust_theirs, acc_theirs) = quality(x, ours, labels), quality(x, theirs, labels)
    print(f"digits {method}: trustworthiness {trust_ours:.4f} vs {trust_theirs:.4f}", end=", ")
    print(f"5-NN accuracy {acc_ours:.4f} vs {acc_theirs:.4f}")
    assert abs(trust_ours - trust_theirs) <= 0.01
    assert abs(acc_ours - acc_theirs) <= 0.02


def test_fft_repulsion_approximates_the_exact_one() -> None:
    torch.manual_seed(0)
    # three Lagrange nodes per box: the error grows with the box width (50 boxes over the map, at most 1 wide)
    for scale, tolerance in ((1e-3, 1e-6), (0.5, 1e-4), (5.0, 1e-2)):
        coords = torch.randn(2, 2000) * scale
        exact = _repulsion_exact(coords.t().double()).t()
        fft = _repulsion_fft(coords, _FFTGrid(50)).double()
        assert ((fft - exact).norm() / exact.norm()).item() < tolerance


def test_seeded_and_deterministic(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = torch.from_numpy(digits[0][:300])
    a = tsne(x, n_iter=100, seed=3)
    b = tsne(x, n_iter=100, seed=3)
    c = tsne(x, n_iter=100, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


@pytest.mark.parametrize("method", ["exact", "fft"])
def test_the_map_does_not_depend_on_the_thread_count(digits: tuple[np.ndarray, np.ndarray], method: str) -> None:
    """The iterations switch between one thread and all of torch's by timing; the map must not notice."""
    x = torch.from_numpy(digits[0][:700])
    threads = torch.get_num_threads()
    try:
        maps = []
        for count in (1, 2):
            torch.set_num_threads(count)
            maps.append(tsne(x, method=method, n_iter=200))
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(maps[0], maps[1])


def test_alignment_removes_rotation_and_keeps_consecutive_maps_close(digits: tuple[np.ndarray, np.ndarray]) -> None:
    x = torch.from_numpy(digits[0][:500])
    first = tsne(x, seed=0)
    # the next "epoch": slightly different codes, another seed; t-SNE maps come back turned and mirrored
    second = tsne(x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1)), seed=1)
    second = second @ torch.tensor([[0.0, -1.0], [-1.0, 0.0]])
    raw = (second - first).norm(dim=1).mean()
    aligned = (procrustes_align(second, first) - first).norm(dim=1).mean()
    print(f"mean displacement: {raw:.2f} raw, {aligned:.2f} aligned")
    assert aligned < 0.25 * raw
    # a warm start from the previous map (no early exaggeration) stays closer still
    noisy = x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(1))
    warm = tsne(noisy, init=first, early_exaggeration_iter=0)
    assert (procrustes_align(warm, first) - first).norm(dim=1).mean() < aligned


def test_bad_input() -> None:
    with pytest.raises(TypeError, match=r"shape \(N, D\)"):
        tsne(torch.zeros(5))
    with pytest.raises(ValueError, match="at least 3 points"):
        tsne(torch.zeros(2, 4))
    with pytest.raises(ValueError, match="'auto', 'exact' or 'fft'"):
        tsne(torch.zeros(10, 4), method="bh")
    with pytest.raises(ValueError, match=r"init must have shape \(10, 2\)"):
        tsne(torch.randn(10, 4), init=torch.zeros(9, 2))


def test_identical_codes_give_a_finite_map() -> None:
    """A network whose last layer died gives every probe image the same code: the map is a finite cloud."""
    y = tsne(torch.zeros(120, 16), perplexity=10, n_iter=100)
    assert bool(torch.isfinite(y).all()) and float(y.std()) > 0
