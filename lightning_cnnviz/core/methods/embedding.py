"""t-SNE in torch, on the features' device: openTSNE's algorithm and defaults, with an exact gradient for small N
and FFT-accelerated interpolation (FIt-SNE, Linderman et al. 2019) for large N.

* Affinities: exact k nearest neighbours (``k = min(N - 1, 3 * perplexity)``); Gaussian conditionals
  calibrated to the perplexity by a vectorised bisection; symmetrised ``P = (P_{j|i} + P_{i|j}) / 2N``.
* Initialisation: PCA (sign-fixed) scaled to a standard deviation of 1e-4, plus a seeded jitter; or a given map.
* Optimisation (openTSNE's defaults and gradient scaling): 250 iterations with early exaggeration 12, then 500;
  learning rate ``N / exaggeration``; momentum 0.8; gains; steps clipped to norm 5; the map re-centred.
* Repulsion: exact O(N^2) in blocks, or FFT interpolation (3 Lagrange nodes per box and axis, boxes of side at
  most 1), whichever is cheaper at that iteration for the map's current extent.

:func:`procrustes_align` maps a new embedding onto a previous one (rotation or reflection, scale, shift).
"""

from __future__ import annotations

import math
import time
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

__all__ = ["knn_accuracy", "procrustes_align", "tsne", "tsne_after"]


@dataclass
class TSNEAffinities:
    """Symmetric t-SNE affinities ``P_ij = (P_{j|i} + P_{i|j}) / 2N`` on the kNN graph; they sum to 1.

    Each unordered pair is stored once (``first < second``) with its value ``P_ij`` (= ``P_ji``).

    Attributes:
        first, second: (H,) the two points of each pair.
        values: (H,) ``P_ij``.
        count: N.
    """

    first: Tensor
    second: Tensor
    values: Tensor
    count: int

    def incidence(self) -> Tensor:
        """(N, H) sparse CSR matrix with +1 at (first, pair) and -1 at (second, pair): ``B @ f`` adds each pair's
        force ``f`` to its first point and subtracts it from its second."""
        pairs = torch.arange(self.values.numel(), device=self.values.device)
        rows = torch.cat([self.first, self.second])
        order = torch.argsort(rows, stable=True)
        columns = torch.cat([pairs, pairs])[order]
        signs = torch.cat([torch.ones_like(self.values), -torch.ones_like(self.values)])[order]
        crow = torch.zeros(self.count + 1, dtype=torch.long, device=rows.device)
        crow[1:] = torch.bincount(rows, minlength=self.count).cumsum(0)
        with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": the product used here is stable
            warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
            return torch.sparse_csr_tensor(
                crow, columns, signs, size=(self.count, self.values.numel()), check_invariants=False
            )


def _knn(features: Tensor, k: int, block: int = 2048, band: int = 8) -> tuple[Tensor, Tensor]:
    """Squared Euclidean distances and indices of the ``k`` nearest other points, nearest first.

    A float32 product of the centred points, whose rounding (measured at most ``4.4 eps (|x_i|^2 + |x_j|^2)``,
    bounded here at ``2 (sqrt(D) + 2)`` times that) can swap near-tied neighbours, finds candidates; the ``2 * band``
    around the ``k``-th are re-ordered by their differences, and a row where the bound reaches past them is
    computed in float64 whole: the neighbour set is the exact one."""
    x = (features.double() - features.double().mean(dim=0)).float()
    count, dims = x.shape
    norms = (x * x).sum(dim=1)
    wide, inner = min(count - 1, k + band), max(0, k - band)
    rounding = 2 * (dims**0.5 + 2) * torch.finfo(torch.float32).eps * (norms + norms.max())
    distances, indices = [], []
    for start in range(0, count, block):
        stop = min(start + block, count)
        rows, part = torch.arange(start, stop, device=x.device), x[start:stop]  # a view, not a gathered copy
        d2 = torch.addmm(norms[None, :], part, x.t(), beta=1, alpha=-2).add_(norms[start:stop, None])
        d2[rows - start, rows] = float("inf")
        value, index = torch.topk(d2, min(count - 1, wide + 1), dim=1, largest=False, sorted=True)
        beyond, value, index = value[:, -1], value[:, :wide], index[:, :wide]
        # differences are exact to float32's rounding of the distance itself (no cancellation of large norms)
        edge = (part[:, None, :] - x[index[:, inner:]]).pow_(2).sum(dim=2).double()
        exact, order = edge.sort(dim=1, stable=True)
        value, index = value.double(), torch.cat([index[:, :inner], index[:, inner:].gather(1, order)], dim=1)
        value[:, inner:] = exact
        kth, slack = exact[:, k - inner - 1], rounding[rows].double()
        unsure = (value[:, inner - 1] + slack > kth) if inner else torch.zeros_like(kth, dtype=torch.bool)
        if wide < count - 1:  # a point beyond the candidates could be nearer than the k-th
            unsure |= beyond.double() - slack <= kth
        if bool(unsure.any()):
            redo, x64 = rows[unsure], x.double()
            whole = (x64[redo] * x64[redo]).sum(1, keepdim=True) - 2 * x64[redo] @ x64.t() + (x64 * x64).sum(1)
            whole[torch.arange(len(redo), device=x.device), redo] = float("inf")
            value[unsure], index[unsure] = torch.topk(whole, wide, dim=1, largest=False, sorted=True)
        distances.append(value[:, :k].clamp_min_(0))
        indices.append(index[:, :k])
    return torch.cat(distances), torch.cat(indices)


def tsne_affinities(features: Tensor, perplexity: float = 30.0) -> TSNEAffinities:
    """Perplexity-calibrated affinities of ``features`` (N, D): exact kNN, bisection on each point's precision."""
    count = features.shape[0]
    if count < 3:
        raise ValueError(f"t-SNE needs at least 3 points, got {count}")
    if not perplexity > 0:
        raise ValueError(f"perplexity must be positive, got {perplexity}")
    k = min(count - 1, max(1, int(3 * perplexity)))
    perplexity = min(perplexity, (count - 1) / 3)
    d2, neighbors = _knn(features, k)
    d2 = d2.double()
    d2 = d2 - d2[:, :1]  # shift by the nearest distance: same conditionals, no underflow
    goal = math.log(perplexity)
    low = torch.zeros(count, 1, dtype=torch.float64, device=d2.device)
    high = torch.full_like(low, float("inf"))
    beta = torch.ones_like(low)
    for _ in range(100):
        p = torch.exp(-d2 * beta)
        total = p.sum(dim=1, keepdim=True)
        entropy = torch.log(total) + beta * (d2 * p).sum(dim=1, keepdim=True) / total
        too_flat = entropy > goal  # entropy too high: sharpen (raise beta)
        low = torch.where(too_flat, beta, low)
        high = torch.where(too_flat, high, beta)
        beta = torch.where(torch.isinf(high), beta * 2, (low + high) / 2)
        if (entropy - goal).abs().max() < 1e-6:
            break
    p = torch.exp(-d2 * beta)
    conditional = (p / p.sum(dim=1, keepdim=True) / (2 * count)).float()
    source = torch.arange(count, device=neighbors.device).repeat_interleave(neighbors.shape[1])
    target = neighbors.flatten()
    pairs = torch.sparse_coo_tensor(
        torch.stack([torch.cat([source, target]), torch.cat([target, source])]),
        torch.cat([conditional.flatten(), conditional.flatten()]),
        size=(count, count),
        check_invariants=False,
    ).coalesce()  # sums the two directions of mutual neighbours
    indices, values = pairs.indices(), pairs.values()
    upper = indices[0] < indices[1]
    return TSNEAffinities(
        indices[0][upper].contiguous(), indices[1][upper].contiguous(), values[upper].contiguous(), count
    )


def _pca_init(features: Tensor, generator: torch.Generator) -> Tensor:
    x = features.double()
    x = x - x.mean(dim=0)
    if x.shape[1] <= x.shape[0]:
        _, vectors = torch.linalg.eigh(x.t() @ x)
        components = vectors[:, -2:].flip(1)  # (D, 2), largest variance first
    else:
        _, _, vh = torch.linalg.svd(x, full_matrices=False)
        components = vh[:2].t()
    signs = torch.sign(components.gather(0, components.abs().argmax(dim=0, keepdim=True)))
    embedding = x @ (components * signs)
    spread = embedding[:, 0].std()  # 0 when every code is the same (a network whose last layer died)
    embedding = embedding / spread * 1e-4 if spread > 0 else torch.zeros_like(embedding)
    jitter = torch.randn(embedding.shape, generator=generator, dtype=torch.float64) * 1e-4 * 0.01
    return (embedding + jitter.to(embedding.device)).float()


def _attraction(xs: Tensor, ys: Tensor, affinities: TSNEAffinities, incidence: Tensor, exaggeration: float) -> Tensor:
    """sum_j P_ij w_ij (y_i - y_j): each pair once, from 1-D coordinate gathers, summed by one sparse product."""
    dx = torch.index_select(xs, 0, affinities.first) - torch.index_select(xs, 0, affinities.second)
    dy = torch.index_select(ys, 0, affinities.first) - torch.index_select(ys, 0, affinities.second)
    strength = (affinities.values * exaggeration) / torch.addcmul(torch.addcmul(dx.new_ones(()), dx, dx), dy, dy)
    return incidence @ torch.stack([strength * dx, strength * dy], dim=1)


def _repulsion_exact(y: Tensor, block: int = 4096) -> Tensor:
    """(sum_j w_ij^2 (y_i - y_j)) / Z with w = 1 / (1 + d^2), Z = sum_{i != j} w_ij, in row blocks.

    ``1 + d^2`` comes out of one matrix product of augmented coordinates ``[y, |y|^2 + 1, 1] . [-2y, 1, |y|^2]``.
    """
    count = y.shape[0]
    norms = (y * y).sum(dim=1, keepdim=True)
    ones = torch.ones_like(norms)
    left = torch.cat([y, norms + 1, ones], dim=1)  # (N, 4)
    right = torch.cat([-2 * y, ones, norms], dim=1)  # (N, 4)
    ones_y = torch.cat([ones, y], dim=1)  # (N, 3)
    moments, z = [], y.new_zeros(())
    for start in range(0, count, block):
        w = (left[start : start + block] @ right.t()).reciprocal_()
        z = z + w.sum(dim=1).sum()  # rows first: the same sums in the same order on any number of threads
        moments.append(w.mul_(w) @ ones_y)
    m = torch.cat(moments)
    return (y * m[:, :1] - m[:, 1:]) / (z - count)


_SMOOTH = sorted(
    {
        2**a * 3**b * 5**c * 7**d
        for a in range(14)
        for b in range(8)
        for c in range(6)
        for d in range(3)
        if 2**a * 3**b * 5**c * 7**d <= 16384
    }
)


class _FFTGrid:
    """The interpolation grid and the kernels' spectra, kept while the embedding stays inside the grid and
    fills at least ``refill`` of it (the kernels depend only on the grid spacing, so their FFTs are reused)."""

    def __init__(self, min_intervals: int, margin: float = 1.02, refill: float = 0.8) -> None:
        self.min_intervals, self.margin, self.refill = min_intervals, margin, refill
        self.low = self.span = 0.0
        self.boxes = 0
        self.spectra: Tensor | None = None

    def fit(self, coords: Tensor, low: float, high: float) -> None:
        inside = self.spectra is not None and low >= self.low and high <= self.low + self.span
        inside = inside and self.spectra is not None and self.spectra.dtype == coords.dtype
        if inside and (high - low) >= self.refill * self.span:
            return
        span = max(high - low, 1e-6) * self.margin
        boxes = max(self.min_intervals, math.ceil(span))  # boxes of side at most 1
        boxes = next(b for b in range(boxes, boxes + 256) if 6 * b in _SMOOTH)
        self.low, self.span, self.boxes = (low + high) / 2 - span / 2, span, boxes
        nodes = 3 * boxes
        spacing = span / nodes
        offsets = torch.arange(2 * nodes, device=coords.device)
        offsets = torch.where(offsets < nodes, offsets, offsets - 2 * nodes).to(coords.dtype) * spacing
        kernel = 1.0 / (1.0 + offsets[:, None] ** 2 + offsets[None, :] ** 2)
        kernels = torch.stack([kernel, kernel * kernel])  # w for Z, w^2 for the force
        kernels[:, nodes, :] = 0
        kernels[:, :, nodes] = 0
        self.spectra = torch.fft.rfft2(kernels).real  # even kernels: real spectra (the imaginary part is rounding)


def _repulsion_fft(coords: Tensor, grid: _FFTGrid, bounds: tuple[float, float] | None = None) -> Tensor:
    """FIt-SNE's interpolated repulsion for ``coords`` (2, N): 3 Lagrange nodes per box and axis, charges
    ``[1, y]`` spread to the grid, convolved with ``w^2`` by FFT and interpolated back; ``Z`` from the ``w``
    kernel by Parseval. Returns (2, N)."""
    # float64 while the map is tightly packed (float32 would lose its small forces to cancellation), then float32
    low, high = bounds if bounds is not None else (float(v) for v in torch.aminmax(coords))
    coords = coords.to(torch.float64 if high - low < 4.0 else torch.float32)
    grid.fit(coords, low, high)
    assert grid.spectra is not None
    count, boxes = coords.shape[1], grid.boxes
    nodes = 3 * boxes
    width = grid.span / boxes
    scaled = (coords - grid.low) / width  # (2, N) in box units
    box = scaled.floor().clamp_(0, boxes - 1)
    t = scaled - box
    a, b, c = t - 1 / 6, t - 0.5, t - 5 / 6  # Lagrange basis for nodes at 1/6, 1/2, 5/6 of the box
    basis = torch.stack([4.5 * b * c, -9.0 * a * c, 4.5 * a * b], dim=2)  # (2, N, 3)
    first = (box * 3).long()  # (2, N) index of the box's first node
    steps = torch.arange(3, device=coords.device)
    flat = ((first[0, :, None] + steps)[:, :, None] * nodes + (first[1, :, None] + steps)[:, None, :]).reshape(-1)
    weight = (basis[0, :, :, None] * basis[1, :, None, :]).reshape(count, 9)  # (N, 9)
    local = coords - (grid.low + grid.span / 2)  # charges relative to the grid centre: less cancellation
    charges = torch.cat([torch.ones_like(local[:1]), local]).t()  # (N, 3)
    spread = torch.zeros(nodes * nodes, 3, dtype=coords.dtype, device=coords.device)
    spread.index_add_(0, flat, (weight[:, :, None] * charges[:, None, :]).reshape(-1, 3))
    padded = torch.zeros(3, 2 * nodes, 2 * nodes, dtype=coords.dtype, device=coords.device)
    padded[:, :nodes, :nodes] = spread.t().reshape(3, nodes, nodes)
    spectra = torch.fft.rfft2(padded)  # (3, 2M, M + 1)
    # sum_ij w_ij = <G, K1 * G> over the grid, by Parseval on the half spectrum (interior columns count twice)
    power = (spectra[0].real ** 2 + spectra[0].imag ** 2) * grid.spectra[0]
    z = (2 * power.sum(dim=1).sum() - power[:, 0].sum() - power[:, -1].sum()) / (4 * nodes * nodes) - count
    # complex times real as two real products: one rounding each, on any thread split (no fused complex kernel)
    convolved = torch.view_as_complex(torch.view_as_real(spectra) * grid.spectra[1][..., None])
    potentials = torch.fft.irfft2(convolved, s=(2 * nodes, 2 * nodes))[:, :nodes, :nodes]
    at_points = (torch.index_select(potentials.reshape(3, -1), 1, flat).view(3, count, 9) * weight).sum(dim=2)
    return ((local * at_points[:1] - at_points[1:]) / z).float()


class _ThreadChoice:
    """On CPU, iterations run on one thread or on all of torch's, whichever was faster when both were last timed
    (``probe`` iterations each, every ``period``): beside a busy process every thread of an op waits for a time
    slice at its barrier, so one thread is then far faster; on a quiet machine all threads are. The map does not
    depend on it: every sum runs rows first, then over fewer than 32,768 partial sums (one thread), and no fused
    complex product is split across threads, for N up to 16,384 (above, the thread count stays).

    This sets torch's process-wide intra-op thread count during the iterations (restored on exit, also on error):
    another Python thread running torch ops meanwhile runs under it. It is kept because the gain is large: 4x to
    6x beside one busy process against a cost of about 4% on a quiet machine (``benchmarks/tsne.py
    --fixed-threads``, figures in ``benchmarks/README.md``)."""

    def __init__(self, device: torch.device, count: int, period: int = 150, probe: int = 8) -> None:
        self.initial = torch.get_num_threads()
        self.enabled = device.type == "cpu" and self.initial > 1 and count <= 16384
        self.period, self.probe = period, probe
        self.started, self.timings = 0.0, [0.0, 0.0]

    def before(self, iteration: int) -> None:
        phase = iteration % self.period
        if self.enabled and phase in (0, self.probe):
            torch.set_num_threads(1 if phase == 0 else self.initial)
            self.started = time.perf_counter()

    def after(self, iteration: int) -> None:
        phase = iteration % self.period
        if self.enabled and phase in (self.probe - 1, 2 * self.probe - 1):
            self.timings[phase >= self.probe] = time.perf_counter() - self.started
            if phase == 2 * self.probe - 1:
                torch.set_num_threads(1 if self.timings[0] <= self.timings[1] else self.initial)

    def restore(self) -> None:
        if self.enabled:
            torch.set_num_threads(self.initial)


def tsne(
    features: Tensor,
    *,
    perplexity: float = 30.0,
    early_exaggeration: float = 12.0,
    early_exaggeration_iter: int = 250,
    n_iter: int = 500,
    learning_rate: float | None = None,
    momentum: float = 0.8,
    max_step_norm: float | None = 5.0,
    init: Tensor | None = None,
    seed: int = 0,
    method: str = "auto",
    min_intervals: int = 20,
    affinities: TSNEAffinities | None = None,
) -> Tensor:
    """Embed ``features`` (N, D) in 2-D with t-SNE; returns (N, 2) on the features' device.

    Args:
        features: the points (e.g. penultimate-layer codes); ``perplexity``: effective number of neighbours.
        early_exaggeration, early_exaggeration_iter, n_iter: the two phases (openTSNE: 12 for 250, then 500).
        learning_rate: default ``N / exaggeration`` (openTSNE's "auto"); ``momentum``, ``max_step_norm``: 0.8, 5.
        init: a map (N, 2) to start from (a warm start, usually with ``early_exaggeration_iter=0``); default PCA.
        seed: seed of the initial jitter (the only randomness).
        method: ``"exact"``, ``"fft"`` or ``"auto"`` (the cheaper at each iteration: exact while ``N <= 4 x`` the FFT
            grid's side, 6 nodes per unit of the map's extent and at least 6 x ``min_intervals``).
        min_intervals: the FFT grid's least boxes per axis (openTSNE: 50; 20 keeps the early, compact map's grid
            small; boxes of side at most 1 and 3 nodes per box as openTSNE, so the accuracy is the same).
        affinities: precomputed :func:`tsne_affinities` (then ``perplexity`` is not used).

    Example:
        >>> x = torch.cat([torch.randn(40, 5), torch.randn(40, 5) + 8])
        >>> y = tsne(x, perplexity=10, n_iter=200)
        >>> y.shape, bool((y[:40].mean(0) - y[40:].mean(0)).norm() > 5 * y[:40].std(0).norm())
        (torch.Size([80, 2]), True)
    """
    if not (isinstance(features, Tensor) and features.dim() == 2):
        raise TypeError(f"features must be a tensor of shape (N, D), got {features!r:.80}")
    if method not in ("auto", "exact", "fft"):
        raise ValueError(f"method can be 'auto', 'exact' or 'fft', got {method!r}")
    count = features.shape[0]
    generator = torch.Generator().manual_seed(seed)
    if affinities is None:
        affinities = tsne_affinities(features.detach(), perplexity)
    if init is None:
        y = _pca_init(features.detach(), generator).to(features.device)
    else:
        if init.shape != (count, 2):
            raise ValueError(f"init must have shape ({count}, 2), got {tuple(init.shape)}")
        y = init.detach().float().to(features.device)
        y = y - y.mean(dim=0)
    use_fft = method == "fft"
    grid = _FFTGrid(min_intervals)
    incidence = affinities.incidence()
    coords = y.t().contiguous()  # (2, N): each axis contiguous
    update = torch.zeros_like(coords)
    gains = torch.full_like(coords, 1.2)  # openTSNE's first step: sign(0) != sign(gradient), so every gain is 1 + 0.2
    schedule = [early_exaggeration] * early_exaggeration_iter + [1.0] * n_iter
    threads = _ThreadChoice(coords.device, count)
    try:
        for iteration, exaggeration in enumerate(schedule):
            threads.before(iteration)
            rate = learning_rate if learning_rate is not None else count / exaggeration
            bounds = None
            if method == "auto":  # the cheaper one now: exact costs ~N^2, the FFT ~(grid side)^2, side ~ extent
                low, high = (float(v) for v in torch.aminmax(coords))
                bounds = (low, high)
                use_fft = count > 4 * 6 * max(min_intervals, math.ceil((high - low) * grid.margin))
            repulsion = _repulsion_fft(coords, grid, bounds) if use_fft else _repulsion_exact(coords.t()).t()
            gradient = _attraction(coords[0], coords[1], affinities, incidence, exaggeration).t().sub_(repulsion)
            if iteration > 0:  # gains: +0.2 where the step changes direction, x0.8 (at least +0.01) elsewhere
                flipped = (update * gradient) < 0
                gains = torch.where(flipped, gains + 0.2, gains.mul_(0.8).add_(0.01))
            update.mul_(momentum).addcmul_(gains, gradient, value=-rate)
            if max_step_norm is not None:  # each point's step clipped to norm max_step_norm
                squared = torch.addcmul(update[0] * update[0], update[1], update[1])
                update.mul_(squared.reciprocal_().mul_(max_step_norm**2).clamp_(max=1.0).sqrt_())
            coords.add_(update)
            coords.sub_(coords.mean(dim=1, keepdim=True))
            threads.after(iteration)
    finally:
        threads.restore()
    y = coords.t().contiguous()
    return y


def tsne_after(
    features: Tensor, previous: Tensor | None, *, perplexity: float = 30.0, seed: int = 0, warm_start: bool = True
) -> Tensor:
    """The t-SNE map of ``features`` that follows ``previous`` (the last map, on any device), when it holds as many
    points: started from it without early exaggeration (``warm_start``) and Procrustes-aligned to it, so a map of
    the next call keeps its points' places; else a fresh map."""
    previous = previous if previous is not None and len(previous) == len(features) else None
    if previous is None:
        return tsne(features, perplexity=perplexity, seed=seed)
    warm: dict[str, Any] = {"init": previous.to(features.device), "early_exaggeration_iter": 0} if warm_start else {}
    embedding = tsne(features, perplexity=perplexity, seed=seed, **warm)
    return procrustes_align(embedding, previous.to(embedding.device))


def procrustes_align(embedding: Tensor, reference: Tensor, *, scale: bool = True) -> Tensor:
    """``embedding`` rotated (or reflected), scaled and shifted to best match ``reference`` in least squares.

    Example:
        >>> ref = torch.randn(50, 2)
        >>> turn = torch.tensor([[0.0, -1.0], [1.0, 0.0]])
        >>> bool(torch.allclose(procrustes_align(3 * ref @ turn + 7, ref), ref, atol=1e-5))
        True
    """
    if embedding.shape != reference.shape:
        raise ValueError(f"shapes differ: {tuple(embedding.shape)} and {tuple(reference.shape)}")
    a = embedding.double() - embedding.double().mean(dim=0)
    b = reference.double() - reference.double().mean(dim=0)
    u, s, vh = torch.linalg.svd(a.t() @ b)
    rotation = u @ vh
    factor = s.sum() / (a * a).sum().clamp_min(1e-12) if scale else a.new_ones(())
    aligned = factor * (a @ rotation) + reference.double().mean(dim=0)
    return aligned.to(embedding.dtype)


def knn_accuracy(points: Tensor, labels: Tensor, k: int = 5, block: int = 2048) -> float:
    """Leave-one-out ``k``-nearest-neighbour accuracy: the share of points whose label is the majority label of
    their ``k`` nearest other points (Euclidean; ties go to the smallest label).

    Example:
        >>> points = torch.tensor([[0.0], [0.1], [0.2], [5.0], [5.1], [5.2]])
        >>> knn_accuracy(points, torch.tensor([0, 0, 0, 1, 1, 1]), k=2)
        1.0
    """
    if points.shape[0] != labels.shape[0] or points.shape[0] <= k:
        raise ValueError(
            f"need more than k={k} points with one label each, got {tuple(points.shape)} and {tuple(labels.shape)}"
        )
    _, neighbors = _knn(points.reshape(points.shape[0], -1), k, block)
    labels = labels.to(neighbors.device).long()
    votes = torch.zeros(points.shape[0], int(labels.max()) + 1, device=neighbors.device)
    votes.scatter_add_(1, labels[neighbors], torch.ones_like(neighbors, dtype=votes.dtype))
    return float((votes.argmax(dim=1) == labels).double().mean())


def nearest_neighbours(points: Tensor, k: int = 8, block: int = 2048) -> Tensor:
    """(N, k) indices of each point's ``k`` nearest other points by Euclidean distance, nearest first: the exact
    neighbour sets :func:`tsne` uses (CS231n's "nearest neighbours in code space").

    Example:
        >>> nearest_neighbours(torch.tensor([[0.0], [1.0], [3.0], [7.0]]), k=2).tolist()
        [[1, 2], [0, 2], [1, 0], [2, 1]]
    """
    if points.shape[0] <= k:
        raise ValueError(f"need more than k={k} points, got {points.shape[0]}")
    return _knn(points.reshape(points.shape[0], -1), k, block)[1]
