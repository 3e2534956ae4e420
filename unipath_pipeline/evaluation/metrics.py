"""Feature-space metrics for evaluating generated images.

Every function here works on *precomputed* feature arrays (``[n, d]``, one row per image, e.g. the
pooled activations of an Inception / pathology foundation model) and depends only on numpy (plus
torch for :func:`linear_probe` and safetensors I/O of :class:`FeatureStats`).

* distribution distances: :class:`StatsAccumulator` / :class:`FeatureStats` (streaming Gaussian
  statistics), :func:`frechet_distance`, :func:`fid_from_features`, :func:`kid`;
* manifold coverage: :func:`precision_recall` (improved precision / recall);
* nearest neighbours and memorisation: :func:`nearest_neighbours`, :func:`memorisation`;
* semantic consistency: :func:`linear_probe`, :func:`paraphrase_agreement`, :func:`paraphrase_separation`,
  :func:`prototype_adherence`.

Memory stays bounded for large sets (10,000+ images): nothing builds an ``N x N`` matrix. Pairwise
work is done in ``chunk_size x chunk_size`` distance tiles with a running k-smallest merge, KID kernel
sums are accumulated tile by tile, and covariances are accumulated batch by batch.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Dict, Hashable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from ..io_utils import atomic_save_safetensors, load_safetensors_with_metadata

logger = logging.getLogger(__name__)

__all__ = [
    "FeatureStats",
    "StatsAccumulator",
    "fid_from_features",
    "frechet_distance",
    "kid",
    "linear_probe",
    "memorisation",
    "nearest_neighbours",
    "paraphrase_agreement",
    "paraphrase_separation",
    "precision_recall",
    "prototype_adherence",
]

# Rows per batch when feature arrays are folded into a StatsAccumulator.
_STATS_BATCH = 4096
# Up to this k, nearest neighbours in a distance tile are found by repeated argmin instead of argpartition.
_ARGMIN_K = 8


# --------------------------------------------------------------------------------------------------
# Input helpers
# --------------------------------------------------------------------------------------------------


def _as_features(x: np.ndarray, name: str, min_rows: int = 1) -> np.ndarray:
    """`x` as a finite float64 ``[n, d]`` array (a 1-D array is one row); ValueError otherwise."""
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr.reshape(1, -1)
    if arr.ndim != 2:
        raise ValueError(f"{name}: expected a [n, d] feature array, got shape {arr.shape}")
    if arr.shape[1] < 1:
        raise ValueError(f"{name}: features have zero dimensions")
    if arr.shape[0] < min_rows:
        raise ValueError(f"{name}: need at least {min_rows} samples, got {arr.shape[0]}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: features contain NaN or infinite values")
    return arr


def _check_same_dim(a: np.ndarray, b: np.ndarray, names: str) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"{names}: feature dimensions differ ({a.shape[1]} vs {b.shape[1]})")


def _check_chunk(chunk_size: int) -> int:
    if int(chunk_size) < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    return int(chunk_size)


# --------------------------------------------------------------------------------------------------
# Gaussian statistics and the Fréchet distance
# --------------------------------------------------------------------------------------------------


@dataclass
class FeatureStats:
    """Gaussian statistics (float64) of a feature set: mean ``[d]``, covariance ``[d, d]`` (ddof=1), count."""

    mean: np.ndarray
    cov: np.ndarray
    count: int

    def __post_init__(self) -> None:
        self.mean = np.asarray(self.mean, dtype=np.float64).reshape(-1)
        self.cov = np.asarray(self.cov, dtype=np.float64)
        d = self.mean.shape[0]
        if self.cov.shape != (d, d):
            raise ValueError(f"covariance shape {self.cov.shape} does not match mean of dimension {d}")
        self.count = int(self.count)

    @property
    def dim(self) -> int:
        """The feature dimension ``d``."""
        return int(self.mean.shape[0])

    def save(self, path: str) -> None:
        """Writes the statistics to a safetensors file (tensors ``mean``, ``cov``; metadata ``count``), atomically."""
        atomic_save_safetensors(
            {
                "mean": torch.from_numpy(np.ascontiguousarray(self.mean)),
                "cov": torch.from_numpy(np.ascontiguousarray(self.cov)),
            },
            path,
            metadata={"count": self.count},
        )

    @classmethod
    def load(cls, path: str) -> "FeatureStats":
        """Reads statistics written by :meth:`save`."""
        tensors, metadata = load_safetensors_with_metadata(path)
        if "mean" not in tensors or "cov" not in tensors:
            raise ValueError(f"{path}: not a FeatureStats file (needs tensors 'mean' and 'cov')")
        count = int((metadata or {}).get("count", 0))
        return cls(
            mean=tensors["mean"].to(torch.float64).numpy(),
            cov=tensors["cov"].to(torch.float64).numpy(),
            count=count,
        )


class StatsAccumulator:
    """Streaming mean and covariance of feature batches, in float64.

    Each batch is reduced to its own mean and centred scatter matrix, which are merged into the running
    totals with Chan et al.'s pairwise update (``M2 = M2_a + M2_b + delta delta^T n_a n_b / n``). Unlike
    a raw sum of outer products this does not lose precision when the features have a large mean.
    Memory is ``O(d^2)`` regardless of how many images are added.
    """

    def __init__(self, dim: int):
        if int(dim) < 1:
            raise ValueError(f"dim must be >= 1, got {dim}")
        self.dim = int(dim)
        self.count = 0
        self._mean = np.zeros(self.dim, dtype=np.float64)
        self._m2 = np.zeros((self.dim, self.dim), dtype=np.float64)

    def add(self, batch: np.ndarray) -> None:
        """Adds a ``[n, dim]`` batch of features (a 1-D array is one feature vector; empty batches are ignored)."""
        arr = np.asarray(batch, dtype=np.float64)
        if arr.ndim == 1:
            arr = arr.reshape(1, -1)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"expected a [n, {self.dim}] batch, got shape {arr.shape}")
        n_b = arr.shape[0]
        if n_b == 0:
            return
        if not np.isfinite(arr).all():
            raise ValueError("batch contains NaN or infinite values")
        mean_b = arr.mean(axis=0)
        centred = arr - mean_b
        m2_b = centred.T @ centred
        n_a = self.count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._m2 = self._m2 + m2_b + np.outer(delta, delta) * (n_a * n_b / n)
        self.count = n

    def result(self) -> FeatureStats:
        """The statistics so far (covariance with ddof=1); ValueError with fewer than 2 samples."""
        if self.count < 2:
            raise ValueError(f"too few images for a covariance: need at least 2, got {self.count}")
        cov = self._m2 / (self.count - 1)
        cov = 0.5 * (cov + cov.T)  # exact symmetry despite rounding
        return FeatureStats(mean=self._mean.copy(), cov=cov, count=self.count)


def _stats_of(x: np.ndarray) -> FeatureStats:
    acc = StatsAccumulator(x.shape[1])
    for start in range(0, x.shape[0], _STATS_BATCH):
        acc.add(x[start : start + _STATS_BATCH])
    return acc.result()


def frechet_distance(a: FeatureStats, b: FeatureStats) -> float:
    """Fréchet distance between the Gaussians ``N(mu1, S1)`` and ``N(mu2, S2)`` (FID on image features).

    ``FD = ||mu1 - mu2||^2 + Tr(S1) + Tr(S2) - 2 Tr(sqrt(S1 S2))``, computed in float64 without scipy:

    ``S1 S2`` is not symmetric, but with the eigendecomposition ``S1 = U diag(l) U^T`` and the symmetric
    square root ``A = sqrt(S1) = U diag(sqrt(max(l, 0))) U^T``, the matrix ``A S2 A`` is symmetric
    positive semi-definite and similar to ``S1 S2`` (``A S2 A = A^-1 (S1 S2) A`` when ``S1`` is
    invertible, and by continuity otherwise). Hence ``S1 S2`` has the same (non-negative) eigenvalues
    ``e_i`` and ``Tr(sqrt(S1 S2)) = sum_i sqrt(max(e_i, 0))`` with ``e = eigvalsh(A S2 A)``. Tiny
    negative eigenvalues (rounding of rank-deficient covariances, e.g. fewer images than dimensions)
    are clamped to 0, and so is a tiny negative final result.
    """
    if a.dim != b.dim:
        raise ValueError(f"feature dimensions differ ({a.dim} vs {b.dim})")
    mu1, mu2 = np.asarray(a.mean, np.float64), np.asarray(b.mean, np.float64)
    s1, s2 = np.asarray(a.cov, np.float64), np.asarray(b.cov, np.float64)
    s1 = 0.5 * (s1 + s1.T)
    s2 = 0.5 * (s2 + s2.T)
    eigvals, eigvecs = np.linalg.eigh(s1)
    sqrt_s1 = (eigvecs * np.sqrt(np.clip(eigvals, 0.0, None))) @ eigvecs.T
    middle = sqrt_s1 @ s2 @ sqrt_s1
    middle = 0.5 * (middle + middle.T)
    tr_covmean = float(np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum())
    diff = mu1 - mu2
    value = float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * tr_covmean)
    return max(value, 0.0)


def fid_from_features(x: np.ndarray, y: np.ndarray) -> float:
    """Fréchet distance between the Gaussian statistics of two ``[n, d]`` feature sets (at least 2 rows each)."""
    xa = _as_features(x, "x", min_rows=2)
    ya = _as_features(y, "y", min_rows=2)
    _check_same_dim(xa, ya, "fid_from_features")
    return frechet_distance(_stats_of(xa), _stats_of(ya))


# --------------------------------------------------------------------------------------------------
# Kernel inception distance
# --------------------------------------------------------------------------------------------------


def _poly_kernel_sum(a: np.ndarray, b: np.ndarray, gamma: float, coef0: float, degree: int, chunk: int) -> float:
    """``sum_ij k(a_i, b_j)`` for the polynomial kernel, accumulated tile by tile."""
    total = 0.0
    for i in range(0, a.shape[0], chunk):
        ai = a[i : i + chunk]
        for j in range(0, b.shape[0], chunk):
            total += float(np.sum((gamma * (ai @ b[j : j + chunk].T) + coef0) ** degree))
    return total


def kid(
    x: np.ndarray,
    y: np.ndarray,
    subsets: int = 100,
    subset_size: int = 1000,
    degree: int = 3,
    gamma: Optional[float] = None,
    coef0: float = 1.0,
    seed: int = 0,
) -> Tuple[float, float]:
    """Kernel inception distance (Bińkowski et al. 2018): unbiased MMD^2 averaged over random subsets.

    Kernel: ``k(a, b) = (gamma a.b + coef0)^degree`` with ``gamma = 1/d`` by default (as in the paper
    and torch-fidelity). For each of `subsets` draws, ``m = min(subset_size, len(x), len(y))`` rows of
    `x` and of `y` are sampled without replacement (``numpy.random.default_rng(seed)``) and the unbiased
    estimator ``sum_{i!=j} k(x_i,x_j)/(m(m-1)) + sum_{i!=j} k(y_i,y_j)/(m(m-1)) - 2 sum_ij k(x_i,y_j)/m^2``
    is computed. Being unbiased it can be slightly negative for samples of one distribution.

    Returns:
        ``(mean, std)`` of the per-subset estimates (std with ddof=0, as torch-fidelity).
    """
    xa = _as_features(x, "x", min_rows=2)
    ya = _as_features(y, "y", min_rows=2)
    _check_same_dim(xa, ya, "kid")
    if int(subsets) < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    if int(degree) < 1:
        raise ValueError(f"degree must be >= 1, got {degree}")
    m = min(int(subset_size), xa.shape[0], ya.shape[0])
    if m < 2:
        raise ValueError(f"subset_size must be >= 2, got {subset_size}")
    g = 1.0 / xa.shape[1] if gamma is None else float(gamma)
    degree = int(degree)
    rng = np.random.default_rng(seed)
    chunk = 1024
    estimates = np.empty(int(subsets), dtype=np.float64)
    for s in range(int(subsets)):
        xs = xa[rng.choice(xa.shape[0], m, replace=False)]
        ys = ya[rng.choice(ya.shape[0], m, replace=False)]
        diag_x = float(np.sum((g * np.einsum("ij,ij->i", xs, xs) + coef0) ** degree))
        diag_y = float(np.sum((g * np.einsum("ij,ij->i", ys, ys) + coef0) ** degree))
        k_xx = _poly_kernel_sum(xs, xs, g, coef0, degree, chunk) - diag_x
        k_yy = _poly_kernel_sum(ys, ys, g, coef0, degree, chunk) - diag_y
        k_xy = _poly_kernel_sum(xs, ys, g, coef0, degree, chunk)
        estimates[s] = (k_xx + k_yy) / (m * (m - 1)) - 2.0 * k_xy / (m * m)
    mean, std = float(estimates.mean()), float(estimates.std())
    logger.debug("KID over %d subsets of %d: %.6g +- %.6g", subsets, m, mean, std)
    return mean, std


# --------------------------------------------------------------------------------------------------
# Nearest neighbours (chunked) and manifold coverage
# --------------------------------------------------------------------------------------------------


def _tile_smallest(d2: np.ndarray, k: int) -> Tuple[np.ndarray, np.ndarray]:
    """The `k` smallest entries of each row of `d2` (destroyed): ``(values, column indices)``, unordered."""
    if k >= d2.shape[1]:
        return d2, np.broadcast_to(np.arange(d2.shape[1], dtype=np.int64), d2.shape)
    if k <= _ARGMIN_K:
        # A few vectorised argmin passes are much faster than argpartition for small k.
        rows = np.arange(d2.shape[0])
        cols = np.empty((d2.shape[0], k), dtype=np.int64)
        vals = np.empty((d2.shape[0], k), dtype=np.float64)
        for j in range(k):
            col = d2.argmin(axis=1)
            cols[:, j] = col
            vals[:, j] = d2[rows, col]
            d2[rows, col] = np.inf
        return vals, cols
    cols = np.argpartition(d2, k - 1, axis=1)[:, :k]
    return np.take_along_axis(d2, cols, axis=1), cols


def _knn(
    query: np.ndarray, reference: np.ndarray, k: int, chunk_size: int, exclude_self: bool
) -> Tuple[np.ndarray, np.ndarray]:
    """The `k` nearest reference rows (L2) of each query row: ``(distances [n, k], indices [n, k])``, ascending.

    Works in ``chunk_size x chunk_size`` tiles, keeping a running k-smallest per query row. With
    `exclude_self`, `query` *is* `reference` and row ``i`` never counts as its own neighbour (other
    rows with identical features still do).
    """
    nq, nr = query.shape[0], reference.shape[0]
    if exclude_self and nq != nr:
        raise ValueError("exclude_self needs query and reference to be the same set")
    available = nr - 1 if exclude_self else nr
    if k < 1 or k > available:
        raise ValueError(f"cannot find {k} neighbours among {available} reference samples")
    # Distances are translation invariant; centring reduces cancellation in |a|^2 + |b|^2 - 2ab.
    centre = reference.mean(axis=0)
    q = query - centre
    r = reference - centre
    q2 = np.einsum("ij,ij->i", q, q)
    r2 = np.einsum("ij,ij->i", r, r)
    out_d = np.empty((nq, k), dtype=np.float64)
    out_i = np.empty((nq, k), dtype=np.int64)
    for qs in range(0, nq, chunk_size):
        qe = min(qs + chunk_size, nq)
        qc = q[qs:qe]
        best_d = np.empty((qe - qs, 0), dtype=np.float64)
        best_i = np.empty((qe - qs, 0), dtype=np.int64)
        for rs in range(0, nr, chunk_size):
            re_ = min(rs + chunk_size, nr)
            d2 = qc @ r[rs:re_].T
            d2 *= -2.0
            d2 += q2[qs:qe, None]
            d2 += r2[None, rs:re_]
            if exclude_self:
                lo, hi = max(qs, rs), min(qe, re_)
                if lo < hi:
                    diag = np.arange(lo, hi)
                    d2[diag - qs, diag - rs] = np.inf
            vals, cols = _tile_smallest(d2, k)
            best_d = np.concatenate([best_d, vals], axis=1)
            best_i = np.concatenate([best_i, cols + rs], axis=1)
            if best_d.shape[1] > k:
                keep = np.argsort(best_d, axis=1, kind="stable")[:, :k]
                best_d = np.take_along_axis(best_d, keep, axis=1)
                best_i = np.take_along_axis(best_i, keep, axis=1)
        order = np.argsort(best_d, axis=1, kind="stable")
        out_d[qs:qe] = np.take_along_axis(best_d, order, axis=1)
        out_i[qs:qe] = np.take_along_axis(best_i, order, axis=1)
    return np.sqrt(np.clip(out_d, 0.0, None)), out_i


def nearest_neighbours(
    query: np.ndarray, reference: np.ndarray, chunk_size: int = 1024, exclude_self: bool = False
) -> Tuple[np.ndarray, np.ndarray]:
    """The nearest reference row (L2) of every query row: ``(distances [n], indices [n])``.

    Computed in ``chunk_size x chunk_size`` distance tiles, so memory is bounded for large sets. With
    ``exclude_self=True``, `query` and `reference` are the same set and row ``i`` is never matched to
    itself (a duplicate row elsewhere still is).
    """
    q = _as_features(query, "query")
    r = _as_features(reference, "reference")
    _check_same_dim(q, r, "nearest_neighbours")
    dist, idx = _knn(q, r, 1, _check_chunk(chunk_size), exclude_self)
    return dist[:, 0], idx[:, 0]


def _covered(points: np.ndarray, manifold: np.ndarray, radii: np.ndarray, chunk_size: int) -> np.ndarray:
    """Whether each point lies within ``radii[j]`` of some manifold sample ``j`` (boolean ``[n]``), chunked."""
    centre = manifold.mean(axis=0)
    p = points - centre
    m = manifold - centre
    p2 = np.einsum("ij,ij->i", p, p)
    # |p - m_j|^2 <= r_j^2  <=>  |m_j|^2 - r_j^2 - 2 p.m_j <= -|p|^2
    offset = np.einsum("ij,ij->i", m, m) - radii * radii
    inside = np.zeros(p.shape[0], dtype=bool)
    for ps in range(0, p.shape[0], chunk_size):
        pe = min(ps + chunk_size, p.shape[0])
        bound = -p2[ps:pe, None]
        hit = np.zeros(pe - ps, dtype=bool)
        for ms in range(0, m.shape[0], chunk_size):
            me = min(ms + chunk_size, m.shape[0])
            rows = ~hit
            tile = p[ps:pe][rows] @ m[ms:me].T
            tile *= -2.0
            tile += offset[None, ms:me]
            hit[rows] = (tile <= bound[rows]).any(axis=1)
            if hit.all():
                break
        inside[ps:pe] = hit
    return inside


def precision_recall(
    real: np.ndarray, fake: np.ndarray, k: int = 3, chunk_size: int = 1024
) -> Tuple[float, float]:
    """Improved precision and recall (Kynkäänniemi et al. 2019) of generated features.

    Each set's manifold is the union of L2 balls around its samples, with radius the distance to the
    sample's `k`-th nearest neighbour within its own set (itself excluded). Precision is the fraction of
    `fake` samples inside the real manifold (within the radius of at least one real sample); recall is
    the fraction of `real` samples inside the fake manifold. Distances are computed in chunks.

    Returns:
        ``(precision, recall)``, both in ``[0, 1]``.
    """
    ra = _as_features(real, "real")
    fa = _as_features(fake, "fake")
    _check_same_dim(ra, fa, "precision_recall")
    chunk = _check_chunk(chunk_size)
    k = int(k)
    if ra.shape[0] <= k or fa.shape[0] <= k:
        raise ValueError(f"need more than k={k} samples in each set (real {ra.shape[0]}, fake {fa.shape[0]})")
    real_radii = _knn(ra, ra, k, chunk, exclude_self=True)[0][:, -1]
    fake_radii = _knn(fa, fa, k, chunk, exclude_self=True)[0][:, -1]
    precision = float(_covered(fa, ra, real_radii, chunk).mean())
    recall = float(_covered(ra, fa, fake_radii, chunk).mean())
    logger.debug("precision/recall (k=%d): %.4f / %.4f", k, precision, recall)
    return precision, recall


# --------------------------------------------------------------------------------------------------
# Memorisation
# --------------------------------------------------------------------------------------------------


def memorisation(
    generated: np.ndarray, training: np.ndarray, copy_ratio: float = 0.5, chunk_size: int = 1024
) -> dict:
    """How close generated images come to the training set, and how many look like copies.

    Rule: let ``t`` be the median, over training samples, of the distance from each training sample to
    its nearest *other* training sample (the typical spacing of genuinely distinct images). A generated
    image is a **copy** when the L2 distance from its features to the nearest training feature is
    strictly below ``copy_threshold = copy_ratio * t``. With duplicated training data ``t`` can be 0, in
    which case nothing is counted as a copy (a warning is logged).

    Returns:
        ``{"mean_nn_distance", "median_nn_distance"`` (over generated images),
        ``"training_median_nn_distance"`` (``t``), ``"copy_threshold"``, ``"copy_rate"`` (fraction of
        generated images that are copies), ``"nearest_indices"`` (list of the nearest training index of
        each generated image)``}``.
    """
    ga = _as_features(generated, "generated")
    ta = _as_features(training, "training", min_rows=2)
    _check_same_dim(ga, ta, "memorisation")
    chunk = _check_chunk(chunk_size)
    if copy_ratio < 0:
        raise ValueError(f"copy_ratio must be >= 0, got {copy_ratio}")
    gen_d, gen_i = _knn(ga, ta, 1, chunk, exclude_self=False)
    train_d, _ = _knn(ta, ta, 1, chunk, exclude_self=True)
    gen_d, gen_i = gen_d[:, 0], gen_i[:, 0]
    train_median = float(np.median(train_d[:, 0]))
    if train_median == 0.0:
        logger.warning("half or more of the training features have an exact duplicate; copy threshold is 0")
    threshold = float(copy_ratio) * train_median
    copy_rate = float((gen_d < threshold).mean())
    return {
        "mean_nn_distance": float(gen_d.mean()),
        "median_nn_distance": float(np.median(gen_d)),
        "training_median_nn_distance": train_median,
        "copy_threshold": threshold,
        "copy_rate": copy_rate,
        "nearest_indices": [int(i) for i in gen_i],
    }


# --------------------------------------------------------------------------------------------------
# Semantic consistency
# --------------------------------------------------------------------------------------------------


def linear_probe(
    train_x: np.ndarray,
    train_y: Sequence[Hashable],
    test_x: np.ndarray,
    test_y: Sequence[Hashable],
    epochs: int = 200,
    weight_decay: float = 1e-3,
    seed: int = 0,
) -> float:
    """Test accuracy of a multinomial logistic-regression probe trained on features.

    Features are standardised with the *training* mean and standard deviation (constant dimensions are
    left unscaled). Labels may be any hashables (e.g. strings); they are mapped to class indices in
    order of first appearance in `train_y`. The probe (weights initialised from a small normal draw
    seeded with `seed`, zero bias) minimises mean cross-entropy ``+ weight_decay * ||W||^2`` with
    full-batch L-BFGS (strong-Wolfe line search, at most `epochs` iterations) in float64 on the CPU, so
    it is deterministic for a given seed. Test samples whose label never occurs in training count as
    wrong.

    Returns:
        Accuracy on the test set, in ``[0, 1]``.
    """
    xtr = _as_features(train_x, "train_x")
    xte = _as_features(test_x, "test_x")
    _check_same_dim(xtr, xte, "linear_probe")
    ytr_list, yte_list = list(train_y), list(test_y)
    if len(ytr_list) != xtr.shape[0] or len(yte_list) != xte.shape[0]:
        raise ValueError("the number of labels must match the number of feature rows")
    classes: Dict[Hashable, int] = {}
    for label in ytr_list:
        classes.setdefault(label, len(classes))
    if len(classes) < 2:
        raise ValueError(f"linear_probe needs at least 2 classes in training, got {len(classes)}")
    if int(epochs) < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    mean = xtr.mean(axis=0)
    std = xtr.std(axis=0)
    std[std < 1e-12] = 1.0
    features_tr = torch.from_numpy((xtr - mean) / std)
    features_te = torch.from_numpy((xte - mean) / std)
    labels_tr = torch.tensor([classes[label] for label in ytr_list], dtype=torch.long)
    labels_te = torch.tensor([classes.get(label, -1) for label in yte_list], dtype=torch.long)

    generator = torch.Generator().manual_seed(int(seed))
    n_classes, dim = len(classes), xtr.shape[1]
    weight = (0.01 * torch.randn(dim, n_classes, generator=generator, dtype=torch.float64)).requires_grad_()
    bias = torch.zeros(n_classes, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [weight, bias],
        lr=1.0,
        max_iter=int(epochs),
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        logits = features_tr @ weight + bias
        loss = torch.nn.functional.cross_entropy(logits, labels_tr) + weight_decay * (weight * weight).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        final_loss = optimizer.step(closure)
    with torch.no_grad():
        predictions = (features_te @ weight + bias).argmax(dim=1)
        accuracy = float((predictions == labels_te).double().mean())
    logger.debug(
        "linear probe: %d classes, train loss %.4g, test accuracy %.4f", n_classes, float(final_loss.detach()), accuracy
    )
    return accuracy


def _unit_rows(x: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit L2 norm (zero rows stay zero, so their cosine similarity is 0)."""
    norms = np.linalg.norm(x, axis=-1, keepdims=True)
    return x / np.maximum(norms, eps)


def paraphrase_agreement(groups: Dict[str, List[np.ndarray]]) -> float:
    """Agreement between images generated from paraphrases of the same concept.

    `groups` maps each concept to a list with one feature array (``[n_i, d]``, or a single ``[d]``
    vector) per paraphrased prompt. For each concept the per-paraphrase mean feature vectors are
    compared pairwise by cosine similarity and the pairwise similarities are averaged; the result is
    the mean over concepts, in ``[-1, 1]``. ValueError when a concept has fewer than 2 paraphrases.
    """
    if not groups:
        raise ValueError("paraphrase_agreement needs at least one concept")
    scores = []
    dim: Optional[int] = None
    for concept, arrays in groups.items():
        if len(arrays) < 2:
            raise ValueError(f"concept {concept!r} has {len(arrays)} paraphrase(s); need at least 2")
        means = []
        for j, arr in enumerate(arrays):
            feats = _as_features(arr, f"{concept!r}[{j}]")
            if dim is None:
                dim = feats.shape[1]
            elif feats.shape[1] != dim:
                raise ValueError(f"{concept!r}[{j}]: feature dimension {feats.shape[1]} != {dim}")
            means.append(feats.mean(axis=0))
        unit = _unit_rows(np.stack(means))
        sims = unit @ unit.T
        p = unit.shape[0]
        scores.append(float((sims.sum() - np.trace(sims)) / (p * (p - 1))))
    return float(np.mean(scores))


def paraphrase_separation(groups: Dict[str, List[np.ndarray]]) -> dict:
    """Whether paraphrases of one concept agree *more than images of different concepts do*.

    Raw agreement (`paraphrase_agreement`) is high even for a model that ignores its prompt: all its images look
    alike. Here the per-paraphrase mean features are first centred on their grand mean, then compared by cosine:
    `within` averages the pairs inside each concept, `across` the pairs from different concepts, and
    `margin = within - across` is ~0 for a prompt-blind model and grows as paraphrases land on the same images
    while other concepts land elsewhere. Needs >= 2 concepts with >= 2 paraphrases each.
    """
    if len(groups) < 2:
        raise ValueError("paraphrase_separation needs at least 2 concepts")
    means, owner = [], []
    for concept, arrays in groups.items():
        if len(arrays) < 2:
            raise ValueError(f"concept {concept!r} has {len(arrays)} paraphrase(s); need at least 2")
        for j, arr in enumerate(arrays):
            means.append(_as_features(arr, f"{concept!r}[{j}]").mean(axis=0))
            owner.append(concept)
    if len({m.shape[0] for m in means}) != 1:
        raise ValueError("paraphrase_separation: all features must have the same dimension")
    stacked = np.stack(means)
    unit = _unit_rows(stacked - stacked.mean(axis=0, keepdims=True))
    sims = unit @ unit.T
    owner_arr = np.array(owner)
    same = owner_arr[:, None] == owner_arr[None, :]
    off_diagonal = ~np.eye(len(owner), dtype=bool)
    within = float(sims[same & off_diagonal].mean())
    across = float(sims[~same].mean())
    return {"within": within, "across": across, "margin": within - across}


def prototype_adherence(
    generated: np.ndarray, chosen: List[np.ndarray], random_pool: np.ndarray, seed: int = 0
) -> dict:
    """Whether generated images resemble the prototypes that conditioned them more than random ones.

    For image ``i`` the chosen similarity is the mean cosine similarity between ``generated[i]`` and the
    ``m_i`` rows of ``chosen[i]``; the random similarity is the mean cosine similarity to ``m_i`` rows of
    `random_pool` drawn without replacement (with replacement if the pool is smaller) by
    ``numpy.random.default_rng(seed)``. An image *wins* when its chosen similarity is strictly higher.

    Returns:
        ``{"chosen_similarity", "random_similarity"`` (means over images), ``"win_rate"`` (fraction of
        images that win)``}``.
    """
    gen = _as_features(generated, "generated")
    pool = _as_features(random_pool, "random_pool")
    _check_same_dim(gen, pool, "prototype_adherence")
    if len(chosen) != gen.shape[0]:
        raise ValueError(f"need one prototype set per generated image ({len(chosen)} vs {gen.shape[0]})")
    rng = np.random.default_rng(seed)
    gen_unit = _unit_rows(gen)
    pool_unit = _unit_rows(pool)
    chosen_sims = np.empty(gen.shape[0], dtype=np.float64)
    random_sims = np.empty(gen.shape[0], dtype=np.float64)
    for i, protos in enumerate(chosen):
        p = _as_features(protos, f"chosen[{i}]")
        _check_same_dim(gen, p, f"chosen[{i}]")
        m = p.shape[0]
        chosen_sims[i] = float((_unit_rows(p) @ gen_unit[i]).mean())
        idx = rng.choice(pool.shape[0], m, replace=m > pool.shape[0])
        random_sims[i] = float((pool_unit[idx] @ gen_unit[i]).mean())
    return {
        "chosen_similarity": float(chosen_sims.mean()),
        "random_similarity": float(random_sims.mean()),
        "win_rate": float((chosen_sims > random_sims).mean()),
    }
