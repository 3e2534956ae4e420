"""Utilities for curating a prototype bank from many (up to ~100,000) H&E tiles.

Everything here is pure (no I/O, no global state) and depends only on numpy and Pillow:

* quality control: :func:`tissue_fraction`, :func:`blur_score`, :func:`check_quality`;
* de-duplication: :func:`perceptual_hash` + :func:`deduplicate_hashes` (near-identical pixels) and
  :func:`deduplicate_embeddings` (near-identical feature vectors);
* diverse sampling: :func:`kmeans` and :func:`kmeans_sample`;
* a keyword vocabulary from captions: :func:`ngrams`, :func:`count_ngrams`, :func:`build_vocabulary`.

Memory stays bounded for large collections: nothing builds an ``N x N`` matrix. Pairwise work is done
in chunks (``chunk x block`` similarity / distance tiles) and hash de-duplication uses multi-index
hashing (exact-match lookups on bit bands) instead of all-pairs comparison.
"""

from __future__ import annotations

import collections
import functools
import logging
import re
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

__all__ = [
    "QualityReport",
    "STOP_WORDS",
    "blur_score",
    "build_vocabulary",
    "check_quality",
    "count_ngrams",
    "deduplicate_embeddings",
    "deduplicate_hashes",
    "hamming_distance",
    "kmeans",
    "kmeans_sample",
    "ngrams",
    "perceptual_hash",
    "tissue_fraction",
]

#: Side length (pixels) of the copies that quality metrics are computed on.
QC_MAX_SIDE = 256
# Upper bound on the number of float elements in one temporary distance / similarity tile.
_MAX_TILE_ELEMENTS = 1 << 24


# --------------------------------------------------------------------------------------------------
# Image helpers
# --------------------------------------------------------------------------------------------------


def _to_rgb(image: Image.Image) -> Image.Image:
    """An RGB copy; transparent pixels are composited onto white (glass), not black."""
    has_alpha = "A" in image.getbands() or (image.mode == "P" and "transparency" in image.info)
    if has_alpha:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return image.convert("RGB") if image.mode != "RGB" else image


def _fit_max_side(image: Image.Image, max_side: int, allow_upscale: bool, min_side: int = 1) -> Image.Image:
    """`image` resized (aspect ratio kept) so its longer side is `max_side` (never smaller than `min_side`)."""
    width, height = image.size
    if width < 1 or height < 1:
        raise ValueError(f"empty image of size {image.size}")
    longest = max(width, height)
    if longest == max_side or (longest < max_side and not allow_upscale):
        return image
    scale = max_side / longest
    size = (max(min_side, round(width * scale)), max(min_side, round(height * scale)))
    return image.resize(size, Image.Resampling.BILINEAR)


# --------------------------------------------------------------------------------------------------
# Quality control
# --------------------------------------------------------------------------------------------------


def tissue_fraction(
    image: Image.Image, saturation_threshold: float = 0.07, brightness_threshold: float = 0.86
) -> float:
    """Fraction (0..1) of the pixels of an H&E tile that show tissue rather than background.

    Rule: in HSV space (saturation and value scaled to 0..1), background glass is *bright and
    unsaturated*, so a pixel is **background** when ``saturation <= saturation_threshold`` **and**
    ``value >= brightness_threshold``; every other pixel is **tissue**. Eosin/haematoxylin staining
    makes tissue pink/purple (saturated), and dense tissue is darker than glass, so either condition
    marks tissue. Note that dark, unsaturated pixels (pen marks, black scanner borders, folds) count as
    tissue under this rule; they must be caught by other checks if that matters.

    Transparent pixels count as white. The rule is applied to a copy downsampled to a longest side of
    at most 256 pixels (fractions are scale-invariant, so this only trades precision for speed).
    """
    small = _fit_max_side(_to_rgb(image), QC_MAX_SIDE, allow_upscale=False)
    hsv = np.asarray(small.convert("HSV"), dtype=np.float32) / 255.0
    saturation, value = hsv[..., 1], hsv[..., 2]
    tissue = (saturation > saturation_threshold) | (value < brightness_threshold)
    return float(tissue.mean())


def blur_score(image: Image.Image) -> float:
    """Sharpness: variance of the Laplacian of the grayscale image (higher = sharper; blur lowers it).

    The grayscale (0..255) image is first resized (up or down, aspect ratio kept) to a longest side of
    exactly 256 pixels so scores are comparable across tile sizes. The Laplacian is the 4-neighbour
    kernel ``[[0, 1, 0], [1, -4, 1], [0, 1, 0]]`` evaluated on interior pixels only (no border padding),
    i.e. the same value as OpenCV's ``cv2.Laplacian(gray, cv2.CV_64F).var()`` without border effects.
    """
    gray = _fit_max_side(_to_rgb(image).convert("L"), QC_MAX_SIDE, allow_upscale=True, min_side=3)
    g = np.asarray(gray, dtype=np.float64)
    laplacian = g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4.0 * g[1:-1, 1:-1]
    return float(laplacian.var())


@dataclass
class QualityReport:
    """The outcome of :func:`check_quality`.

    Attributes:
        tissue_fraction: see :func:`tissue_fraction`.
        blur: see :func:`blur_score`.
        passed: whether every check passed.
        reason: ``""`` when passed, else the failed checks joined by ``"; "``, e.g.
            ``"tissue 0.12 < 0.50; blur 3.4 < 20.0"``.
    """

    tissue_fraction: float
    blur: float
    passed: bool
    reason: str


def check_quality(image: Image.Image, min_tissue: float = 0.5, min_blur: float = 20.0) -> QualityReport:
    """Quality control of one tile: enough tissue (``>= min_tissue``) and sharp enough (``>= min_blur``)."""
    tissue = tissue_fraction(image)
    blur = blur_score(image)
    failures = []
    if tissue < min_tissue:
        failures.append(f"tissue {tissue:.2f} < {min_tissue:.2f}")
    if blur < min_blur:
        failures.append(f"blur {blur:.1f} < {min_blur:.1f}")
    return QualityReport(tissue_fraction=tissue, blur=blur, passed=not failures, reason="; ".join(failures))


# --------------------------------------------------------------------------------------------------
# Perceptual hashing and hash de-duplication
# --------------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=8)
def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix ``D`` (``D @ x`` is the DCT of the column vector ``x``)."""
    k = np.arange(n, dtype=np.float64)[:, None]
    i = np.arange(n, dtype=np.float64)[None, :]
    matrix = np.cos(np.pi * (2.0 * i + 1.0) * k / (2.0 * n)) * np.sqrt(2.0 / n)
    matrix[0, :] = np.sqrt(1.0 / n)
    matrix.flags.writeable = False
    return matrix


def perceptual_hash(image: Image.Image, hash_size: int = 8) -> int:
    """The DCT perceptual hash (pHash) of an image, as a non-negative ``hash_size**2``-bit integer.

    The image is converted to grayscale, resized (Lanczos) to ``4*hash_size`` squared, transformed with
    an orthonormal 2-D DCT-II (``D @ X @ D.T``), and the top-left ``hash_size x hash_size`` block of
    low frequencies (DC term included) is compared with its median: each coefficient above the median
    is a 1 bit. Bits are packed row-major, the first coefficient being the most significant bit, so
    ``hash_size=8`` gives a 64-bit integer. Re-encoding, mild blur and brightness shifts flip few bits;
    different images differ in about half of them (compare with :func:`hamming_distance`).
    """
    if hash_size < 2:
        raise ValueError(f"hash_size must be >= 2, got {hash_size}")
    side = 4 * hash_size
    gray = _to_rgb(image).convert("L").resize((side, side), Image.Resampling.LANCZOS)
    pixels = np.asarray(gray, dtype=np.float64)
    dct = _dct_matrix(side)
    low = (dct @ pixels @ dct.T)[:hash_size, :hash_size]
    bits = (low > np.median(low)).ravel()
    value = 0
    for bit in bits:
        value = (value << 1) | int(bit)
    return value


def hamming_distance(a: int, b: int) -> int:
    """Number of differing bits between two non-negative integer hashes."""
    return (int(a) ^ int(b)).bit_count()


def _band_layout(width: int, n_bands: int) -> List[Tuple[int, int]]:
    """(shift, mask) pairs splitting `width` bits into `n_bands` contiguous bands of near-equal size."""
    base, extra = divmod(width, n_bands)
    layout, shift = [], 0
    for band in range(n_bands):
        size = base + (1 if band < extra else 0)
        layout.append((shift, (1 << size) - 1))
        shift += size
    return layout


def deduplicate_hashes(hashes: Sequence[int], max_distance: int = 4) -> List[int]:
    """Indices of the hashes to keep after removing near-duplicates (stable, first occurrence wins).

    Hashes are visited in order; a hash is dropped when it is within ``max_distance`` bits (Hamming
    distance) of an earlier *kept* hash, otherwise it is kept. (So with a chain ``a ~ b ~ c`` where
    ``a`` and ``c`` are far apart, ``a`` and ``c`` are kept and ``b`` dropped.)

    Scales to 100,000+ hashes through multi-index hashing: the bits are split into
    ``max_distance + 1`` bands; by the pigeonhole principle two hashes within ``max_distance`` bits
    agree exactly on at least one band, so each hash is compared only with the kept hashes that share
    one of its band values (dictionary lookups), not with all earlier hashes. Only kept hashes are
    indexed, so large clusters of near-identical tiles stay cheap.

    Args:
        hashes: non-negative integers (e.g. from :func:`perceptual_hash`; numpy integers are fine).
        max_distance: largest Hamming distance that counts as a duplicate (0 = exact duplicates only).
    """
    if max_distance < 0:
        raise ValueError(f"max_distance must be >= 0, got {max_distance}")
    values = [int(h) for h in hashes]
    if not values:
        return []
    if min(values) < 0:
        raise ValueError("hashes must be non-negative integers")
    width = max(64, max(v.bit_length() for v in values))
    if max_distance >= width:  # every pair is within max_distance: only the first survives
        return [0]

    layout = _band_layout(width, max_distance + 1)
    tables: List[dict] = [dict() for _ in layout]
    kept_values = set()
    keep: List[int] = []
    for index, value in enumerate(values):
        if value in kept_values:
            continue
        keys = [(value >> shift) & mask for shift, mask in layout]
        duplicate = False
        seen = set()
        for table, key in zip(tables, keys):
            for other in table.get(key, ()):
                if other in seen:
                    continue
                seen.add(other)
                if (value ^ other).bit_count() <= max_distance:
                    duplicate = True
                    break
            if duplicate:
                break
        if duplicate:
            continue
        keep.append(index)
        kept_values.add(value)
        for table, key in zip(tables, keys):
            table.setdefault(key, []).append(value)
    logger.info("deduplicate_hashes: kept %d of %d (max_distance=%d)", len(keep), len(values), max_distance)
    return keep


# --------------------------------------------------------------------------------------------------
# Embedding de-duplication
# --------------------------------------------------------------------------------------------------


def _as_matrix(features: np.ndarray, name: str = "features") -> np.ndarray:
    """`features` as a finite 2-D floating array (float32 unless it is float64)."""
    array = np.asarray(features)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a 2-D array [N, d], got shape {array.shape}")
    if array.dtype != np.float64:
        array = array.astype(np.float32, copy=False)
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return array


def deduplicate_embeddings(features: np.ndarray, threshold: float = 0.95, chunk_size: int = 4096) -> List[int]:
    """Indices of the rows to keep after removing near-duplicate embeddings (stable, first wins).

    Rows are visited in order; a row is dropped when its cosine similarity to an earlier *kept* row is
    ``>= threshold`` (with a ``1e-6`` tolerance for float rounding, so ``threshold=1.0`` removes exact
    duplicates). All-zero rows have similarity 0 to everything, so they are always kept.

    Memory is ``O(chunk_size**2 + N)`` plus the ``O(chunk_size * d)`` row copies: each chunk of rows is
    compared with the kept rows in blocks of ``chunk_size`` (one ``chunk_size x chunk_size`` similarity
    tile at a time), then within itself. Time is ``O(N * kept * d)``.
    """
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    x = _as_matrix(features)
    n = x.shape[0]
    if n == 0:
        return []
    norms = np.linalg.norm(x, axis=1)
    inv_norms = np.divide(1.0, norms, out=np.zeros_like(norms), where=norms > 0).astype(x.dtype)
    cutoff = threshold - 1e-6

    def unit_rows(indices: np.ndarray) -> np.ndarray:
        return x[indices] * inv_norms[indices, None]

    kept = np.empty(n, dtype=np.int64)  # kept[:n_kept] are the kept indices, ascending
    n_kept = 0
    for start in range(0, n, chunk_size):
        rows = np.arange(start, min(start + chunk_size, n))
        chunk = unit_rows(rows)
        alive = np.ones(len(rows), dtype=bool)
        # 1) against rows kept in earlier chunks, one block at a time.
        for block_start in range(0, n_kept, chunk_size):
            if not alive.any():
                break
            block = unit_rows(kept[block_start:min(block_start + chunk_size, n_kept)])
            live = np.flatnonzero(alive)
            similar = (chunk[live] @ block.T >= cutoff).any(axis=1)
            alive[live[similar]] = False
        # 2) within the chunk: greedy in order, only rows that still survive matter.
        live = np.flatnonzero(alive)
        if len(live) > 1:
            sub = chunk[live]
            similar = np.triu(sub @ sub.T >= cutoff, k=1)
            survivors = np.ones(len(live), dtype=bool)
            for i in np.flatnonzero(similar.any(axis=1)):
                if survivors[i]:
                    survivors &= ~similar[i]
            alive[live[~survivors]] = False
        new = rows[alive]
        kept[n_kept:n_kept + len(new)] = new
        n_kept += len(new)
    logger.info("deduplicate_embeddings: kept %d of %d (threshold=%.3f)", n_kept, n, threshold)
    return kept[:n_kept].tolist()


# --------------------------------------------------------------------------------------------------
# K-means
# --------------------------------------------------------------------------------------------------


def _assign(x: np.ndarray, centroids: np.ndarray, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(labels [N], squared distance to the assigned centroid [N]), computed in row chunks."""
    n, k = x.shape[0], centroids.shape[0]
    rows = max(1, min(batch_size, _MAX_TILE_ELEMENTS // max(k, 1)))
    c_sq = np.einsum("ij,ij->i", centroids, centroids)
    labels = np.empty(n, dtype=np.int64)
    min_d2 = np.empty(n, dtype=np.float64)
    for start in range(0, n, rows):
        chunk = x[start:start + rows]
        d2 = c_sq[None, :] - 2.0 * (chunk @ centroids.T)  # + |x|^2, constant per row
        best = np.argmin(d2, axis=1)
        x_sq = np.einsum("ij,ij->i", chunk, chunk)
        labels[start:start + rows] = best
        min_d2[start:start + rows] = np.maximum(d2[np.arange(len(chunk)), best] + x_sq, 0.0)
    return labels, min_d2


def _cluster_sums(x: np.ndarray, labels: np.ndarray, k: int, batch_size: int) -> Tuple[np.ndarray, np.ndarray]:
    """(per-cluster float64 sums [k, d], counts [k]) accumulated chunk by chunk."""
    sums = np.zeros((k, x.shape[1]), dtype=np.float64)
    for start in range(0, x.shape[0], batch_size):
        chunk_labels = labels[start:start + batch_size]
        order = np.argsort(chunk_labels, kind="stable")
        sorted_labels = chunk_labels[order]
        starts = np.flatnonzero(np.r_[True, sorted_labels[1:] != sorted_labels[:-1]])
        sums[sorted_labels[starts]] += np.add.reduceat(
            x[start:start + batch_size][order].astype(np.float64), starts, axis=0
        )
    counts = np.bincount(labels, minlength=k)
    return sums, counts


def _kmeans_plus_plus(x: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding on the rows of `x` (a subsample); returns [k, d] centroids."""
    m = x.shape[0]
    chosen = np.zeros(m, dtype=bool)
    first = int(rng.integers(m))
    chosen[first] = True
    centers = [first]
    min_d2 = np.sum((x - x[first]) ** 2, axis=1, dtype=np.float64)
    for _ in range(1, k):
        weights = np.where(chosen, 0.0, min_d2)
        total = weights.sum()
        if total > 0:
            nxt = int(rng.choice(m, p=weights / total))
        else:  # all remaining points coincide with a chosen centre: pick any unchosen one
            nxt = int(rng.choice(np.flatnonzero(~chosen)))
        chosen[nxt] = True
        centers.append(nxt)
        np.minimum(min_d2, np.sum((x - x[nxt]) ** 2, axis=1, dtype=np.float64), out=min_d2)
    return x[centers].copy()


def _kmeans(
    features: np.ndarray, k: int, seed: int, iterations: int, batch_size: int
) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(centroids, labels, squared distance of each point to its centroid)."""
    x = _as_matrix(features)
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of points ({n}), got {k}")
    if iterations < 0:
        raise ValueError(f"iterations must be >= 0, got {iterations}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    sample_size = min(n, 20 * k)
    sample = np.sort(rng.choice(n, size=sample_size, replace=False)) if sample_size < n else np.arange(n)
    centroids = _kmeans_plus_plus(x[sample], k, rng)

    previous = None
    converged = False
    for iteration in range(iterations):
        labels, min_d2 = _assign(x, centroids, batch_size)
        if previous is not None and np.array_equal(labels, previous):
            converged = True
            logger.debug("kmeans converged after %d iterations", iteration)
            break
        sums, counts = _cluster_sums(x, labels, k, batch_size)
        new_centroids = (sums / np.maximum(counts, 1)[:, None]).astype(x.dtype)
        empty = np.flatnonzero(counts == 0)
        if len(empty):
            # Re-seed each empty cluster at the point farthest from its centroid (a different one each).
            far = np.argsort(-min_d2, kind="stable")[: len(empty)]
            new_centroids[empty] = x[far]
            labels[far] = empty
            min_d2[far] = 0.0
        centroids = new_centroids
        previous = labels
    if not converged:
        labels, min_d2 = _assign(x, centroids, batch_size)
    return centroids, labels, min_d2


def kmeans(
    features: np.ndarray, k: int, seed: int = 0, iterations: int = 25, batch_size: int = 4096
) -> Tuple[np.ndarray, np.ndarray]:
    """K-means clustering of the rows of ``features`` ``[N, d]``: returns ``(centroids [k, d], labels [N])``.

    Initialisation is k-means++ on a random subsample of at most ``20 * k`` points; then up to
    ``iterations`` full Lloyd iterations (stopping early once labels no longer change). Distances are
    computed in chunks of at most ``batch_size`` rows (fewer when ``k`` is large, so that one distance
    tile stays under ~16M elements), so memory is ``O(batch_size * k + N)`` beyond the input itself.
    A cluster that becomes empty is re-seeded at the point farthest from its centroid. Deterministic
    for a given ``seed``. Computation is in float32 unless ``features`` is float64; centroid means are
    accumulated in float64.

    Raises:
        ValueError: when ``k < 1`` or ``k > N``, or ``features`` is not a finite 2-D array.
    """
    centroids, labels, _ = _kmeans(features, k, seed, iterations, batch_size)
    return centroids, labels


def kmeans_sample(features: np.ndarray, n: int, seed: int = 0, **kwargs) -> List[int]:
    """``n`` representative row indices of ``features``, sorted ascending and unique.

    Runs :func:`kmeans` with ``k = n`` (``kwargs`` are passed on: ``iterations``, ``batch_size``) and
    picks, for each cluster, the member closest to its centroid (ties: lowest index). If a cluster ends
    up empty, the missing picks are filled by farthest-point traversal: repeatedly the point farthest
    from every index chosen so far, so exactly ``n`` indices come back. ``n == 0`` returns ``[]``.

    Raises:
        ValueError: when ``n < 0`` or ``n > N``.
    """
    x = _as_matrix(features)
    total = x.shape[0]
    if not 0 <= n <= total:
        raise ValueError(f"n must be between 0 and the number of points ({total}), got {n}")
    iterations = kwargs.pop("iterations", 25)
    batch_size = kwargs.pop("batch_size", 4096)
    if kwargs:
        raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
    if n == 0:
        return []
    _, labels, min_d2 = _kmeans(x, n, seed, iterations, batch_size)
    order = np.lexsort((np.arange(total), min_d2, labels))  # by label, then distance, then index
    sorted_labels = labels[order]
    first = np.r_[True, sorted_labels[1:] != sorted_labels[:-1]]
    chosen = [int(i) for i in order[first]]
    missing = n - len(chosen)
    if missing:
        logger.info("kmeans_sample: %d empty clusters, filling by farthest-point traversal", missing)
        chosen.extend(_farthest_points(x, chosen, missing))
    return sorted(chosen)


def _farthest_points(x: np.ndarray, chosen: List[int], count: int, block: int = 4096) -> List[int]:
    """`count` new indices, each the point farthest from all indices chosen so far."""
    x_sq = np.einsum("ij,ij->i", x, x).astype(np.float64)
    nearest = np.full(x.shape[0], np.inf)

    def update(indices: List[int]) -> None:
        for s in range(0, len(indices), block):
            centres = x[indices[s:s + block]]
            c_sq = np.einsum("ij,ij->i", centres, centres)
            for r in range(0, x.shape[0], block):
                d2 = x_sq[r:r + block, None] - 2.0 * (x[r:r + block] @ centres.T) + c_sq[None, :]
                np.minimum(nearest[r:r + block], d2.min(axis=1), out=nearest[r:r + block])

    update(chosen)
    taken = np.zeros(x.shape[0], dtype=bool)
    taken[chosen] = True
    extra: List[int] = []
    for _ in range(count):
        candidate = int(np.argmax(np.where(taken, -np.inf, nearest)))
        taken[candidate] = True
        extra.append(candidate)
        update([candidate])
    return extra


# --------------------------------------------------------------------------------------------------
# Vocabulary from captions
# --------------------------------------------------------------------------------------------------

_ENGLISH_STOP_WORDS = """
a about above after again against all almost along already also although am among an and another any
are aren't around as at be because been before being below between both but by can cannot could did
do does doing done down during each either else etc even ever every few for from further had has
have having he her here hers herself him himself his how however i if in into is isn't it it's its
itself just least less let many may me might more most much must my myself near neither no nor not
now of off often on once one only or other others otherwise our ours ourselves out over own per
perhaps quite rather same several she should since so some such than that the their theirs them
themselves then there therefore these they this those though through throughout thus to too toward
towards under until up upon us very via was we were what when where whether which while who whom
whose why will with within without would yet you your yours yourself yourselves
"""
# Generic words of image captions that never name a pathology concept. Domain words (tissue, cell,
# slide, stain, magnification, ...) are deliberately NOT stop words.
_CAPTION_STOP_WORDS = """
image images picture pictures photo photograph figure fig panel show shows showing shown seen see
view views viewed depict depicts depicting depicted demonstrate demonstrates demonstrating demonstrated
reveal reveals revealing revealed illustrate illustrates illustrating illustrated display displays
displaying displayed visible appear appears appearing observed noted note example likely possibly
"""

#: Stop words: common English function words plus generic captioning words ("image", "showing", ...).
#: Domain words such as "tissue" or "cells" are not included.
STOP_WORDS: frozenset = frozenset((_ENGLISH_STOP_WORDS + _CAPTION_STOP_WORDS).split())

# A word: letters/digits, optionally joined by '-', '&' or an apostrophe ("h&e", "well-differentiated",
# "ki-67", "crohn's").
_WORD = re.compile(r"[^\W_]+(?:[-&'\u2019][^\W_]+)*")


def _segments(text: str) -> List[List[str]]:
    """Lower-cased words, split into runs that are not separated by punctuation (n-grams stay inside)."""
    segments: List[List[str]] = []
    current: List[str] = []
    last_end = 0
    lowered = text.lower()
    for match in _WORD.finditer(lowered):
        gap = lowered[last_end:match.start()]
        if current and gap.strip():
            segments.append(current)
            current = []
        current.append(match.group().replace("\u2019", "'"))
        last_end = match.end()
    if current:
        segments.append(current)
    return segments


def ngrams(text: str, n_max: int = 3) -> List[str]:
    """Lower-cased word n-grams (n = 1..n_max) of ``text``, with repeats, ordered by n then position.

    Words are runs of letters/digits that may contain ``-``, ``&`` or an apostrophe ("h&e",
    "well-differentiated"). N-grams never cross punctuation (".", ",", ";", parentheses, ...) and
    never start or end with a word of :data:`STOP_WORDS` (they may contain one inside, e.g.
    "carcinoma in situ").
    """
    if n_max < 1:
        raise ValueError(f"n_max must be >= 1, got {n_max}")
    segments = _segments(text)
    grams: List[str] = []
    for n in range(1, n_max + 1):
        for words in segments:
            for i in range(len(words) - n + 1):
                if words[i] in STOP_WORDS or words[i + n - 1] in STOP_WORDS:
                    continue
                grams.append(" ".join(words[i:i + n]))
    return grams


def count_ngrams(texts: Iterable[str], n_max: int = 3) -> collections.Counter:
    """Document frequency of every n-gram of :func:`ngrams`: each n-gram counts once per text."""
    counts: collections.Counter = collections.Counter()
    for text in texts:
        counts.update(set(ngrams(text, n_max)))
    return counts


def _is_number(phrase: str) -> bool:
    """Whether every word of `phrase` is a number ("40", "2-3", "10 20")."""
    return all(re.fullmatch(r"[\d\-&']+", word) for word in phrase.split())


def build_vocabulary(
    texts: Iterable[str],
    is_term: Optional[Callable[[str], bool]] = None,
    min_count: int = 2,
    max_size: Optional[int] = None,
    n_max: int = 3,
    llm_filter: Optional[Callable[[List[str]], List[str]]] = None,
) -> List[str]:
    """A keyword vocabulary mined from captions by n-gram counting.

    Steps:

    1. document frequencies of all n-grams (:func:`count_ngrams`; stop words never start/end one);
    2. keep n-grams with frequency ``>= min_count`` that are not pure numbers;
    3. when ``is_term`` is given (e.g. membership in a pathology lexicon), keep a phrase only if
       ``is_term(phrase)`` is true **or** it is frequent: frequency ``>= 5 * min_count``;
    4. sort by descending frequency, then alphabetically;
    5. when ``llm_filter`` is given, it receives that list and returns the phrases to keep (a hook for
       an LLM-based filter, as in the original UniPath); the order of step 4 is kept and phrases it
       returns that were not candidates are ignored;
    6. truncate to ``max_size``.
    """
    if min_count < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if max_size is not None and max_size < 0:
        raise ValueError(f"max_size must be >= 0 or None, got {max_size}")
    counts = count_ngrams(texts, n_max)
    frequent_count = 5 * min_count
    candidates = [
        phrase
        for phrase, count in counts.items()
        if count >= min_count
        and not _is_number(phrase)
        and (is_term is None or count >= frequent_count or is_term(phrase))
    ]
    candidates.sort(key=lambda phrase: (-counts[phrase], phrase))
    if llm_filter is not None:
        accepted = set(llm_filter(list(candidates)))
        unknown = accepted.difference(candidates)
        if unknown:
            logger.warning("build_vocabulary: llm_filter returned %d phrases that were not candidates", len(unknown))
        candidates = [phrase for phrase in candidates if phrase in accepted]
    if max_size is not None:
        candidates = candidates[:max_size]
    logger.info("build_vocabulary: %d phrases from %d distinct n-grams", len(candidates), len(counts))
    return candidates
