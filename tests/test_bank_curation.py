"""Tests of `unipath_pipeline.bank_curation`: QC, de-duplication, k-means sampling, vocabulary."""

import io
import time
from collections import Counter

import numpy as np
import pytest
from PIL import Image, ImageFilter

from unipath_pipeline import bank_curation as bc

WHITE = (245, 245, 245)


def he_tile(seed: int, size: int = 256) -> Image.Image:
    """A synthetic H&E-like tile: pink stroma, purple nuclei, pixel noise (sharp texture)."""
    rng = np.random.default_rng(seed)
    img = np.empty((size, size, 3), np.float32)
    img[:] = (232, 150, 200)
    yy, xx = np.mgrid[:size, :size]
    for _ in range(60):
        cy, cx = rng.integers(0, size, 2)
        r = rng.integers(4, 10)
        img[(yy - cy) ** 2 + (xx - cx) ** 2 < r * r] = (95, 55, 145)
    img += rng.normal(0, 12, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def smooth_image(seed: int, size: int = 256) -> Image.Image:
    """A smooth random colour field (structure at low frequencies, like a photo)."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((size, size), Image.Resampling.BICUBIC)


def jpeg(image: Image.Image, quality: int = 60) -> Image.Image:
    buffer = io.BytesIO()
    image.save(buffer, "JPEG", quality=quality)
    buffer.seek(0)
    return Image.open(buffer).convert("RGB")


def brighter(image: Image.Image, delta: int = 15) -> Image.Image:
    return Image.fromarray(np.clip(np.asarray(image).astype(int) + delta, 0, 255).astype(np.uint8))


# ------------------------------------------------------------------------------------------------
# Quality control
# ------------------------------------------------------------------------------------------------


def test_tissue_fraction_white_pink_and_half():
    assert bc.tissue_fraction(Image.new("RGB", (300, 300), WHITE)) < 0.01
    assert bc.tissue_fraction(Image.new("RGB", (300, 300), (255, 255, 255))) == 0.0
    assert bc.tissue_fraction(he_tile(0)) > 0.99
    assert bc.tissue_fraction(Image.new("RGB", (64, 64), (95, 55, 145))) == 1.0  # purple nuclei

    half = np.full((200, 400, 3), WHITE, np.uint8)
    half[:, :200] = np.asarray(he_tile(1, 200))
    assert bc.tissue_fraction(Image.fromarray(half)) == pytest.approx(0.5, abs=0.02)
    # Large images are downsampled first; the fraction does not depend on that.
    big = Image.fromarray(half).resize((1600, 800), Image.Resampling.NEAREST)
    assert bc.tissue_fraction(big) == pytest.approx(0.5, abs=0.02)


def test_tissue_fraction_thresholds_and_modes():
    pale_pink = Image.new("RGB", (32, 32), (250, 225, 240))  # bright (V=0.98), lightly saturated (S=0.10)
    assert bc.tissue_fraction(pale_pink) == 1.0
    assert bc.tissue_fraction(pale_pink, saturation_threshold=0.2) == 0.0
    grey = Image.new("RGB", (32, 32), (200, 200, 200))  # unsaturated, V=0.78 < 0.86: counts as tissue
    assert bc.tissue_fraction(grey) == 1.0
    assert bc.tissue_fraction(grey, brightness_threshold=0.7) == 0.0
    # Transparent pixels are glass (white), grayscale images work.
    assert bc.tissue_fraction(Image.new("RGBA", (32, 32), (0, 0, 0, 0))) == 0.0
    assert bc.tissue_fraction(Image.new("L", (32, 32), 250)) == 0.0


def test_blur_score_drops_with_blur_and_is_scale_stable():
    tile = he_tile(2)
    sharp = bc.blur_score(tile)
    mild = bc.blur_score(tile.filter(ImageFilter.GaussianBlur(1)))
    strong = bc.blur_score(tile.filter(ImageFilter.GaussianBlur(3)))
    assert sharp > mild > strong
    assert strong < 20.0 < sharp
    assert bc.blur_score(Image.new("RGB", (100, 100), (200, 100, 150))) == 0.0
    # The same picture rendered at 1024 and 256 pixels scores alike (the raw Laplacian variance would
    # differ by 4**4 = 256x); only resampling-filter differences remain.
    ratio = bc.blur_score(smooth_image(3, 1024)) / bc.blur_score(smooth_image(3, 256))
    assert 0.5 < ratio < 2.0
    assert bc.blur_score(Image.new("RGB", (1, 1))) == 0.0  # tiny images do not crash


def test_check_quality_reasons():
    good = bc.check_quality(he_tile(3))
    assert good.passed and good.reason == ""
    assert good.tissue_fraction > 0.99 and good.blur > 20.0

    white = bc.check_quality(Image.new("RGB", (128, 128), WHITE))
    assert not white.passed
    assert white.reason == "tissue 0.00 < 0.50; blur 0.0 < 20.0"

    blurry = bc.check_quality(he_tile(3).filter(ImageFilter.GaussianBlur(4)))
    assert not blurry.passed and blurry.reason.startswith("blur ") and "tissue" not in blurry.reason

    half = np.full((128, 128, 3), WHITE, np.uint8)
    half[:, :40] = np.asarray(he_tile(4, 128))[:, :40]
    sparse = bc.check_quality(Image.fromarray(half), min_tissue=0.5)
    assert not sparse.passed and sparse.reason.startswith("tissue 0.3") and sparse.reason.endswith("< 0.50")
    assert bc.check_quality(Image.fromarray(half), min_tissue=0.2).passed


# ------------------------------------------------------------------------------------------------
# Perceptual hashing
# ------------------------------------------------------------------------------------------------


def test_perceptual_hash_is_64_bit_and_deterministic():
    image = smooth_image(0)
    h = bc.perceptual_hash(image)
    assert isinstance(h, int) and 0 <= h < 2**64
    assert h.bit_length() == 64  # the DC coefficient (first, most significant bit) is above the median
    assert bc.perceptual_hash(image.copy()) == h
    assert 20 <= bin(h).count("1") <= 40  # median split: about half of the bits are set
    assert 0 <= bc.perceptual_hash(image, hash_size=4) < 2**16
    with pytest.raises(ValueError):
        bc.perceptual_hash(image, hash_size=1)


@pytest.mark.parametrize("make", [smooth_image, he_tile])
def test_perceptual_hash_near_duplicates_close_different_far(make):
    for seed in range(3):
        image = make(seed)
        h = bc.perceptual_hash(image)
        for variant in (jpeg(image), brighter(image), image.resize((160, 160)), image.convert("L")):
            assert bc.hamming_distance(h, bc.perceptual_hash(variant)) <= 4
        assert bc.hamming_distance(h, bc.perceptual_hash(make(seed + 100))) >= 16


def test_hamming_distance():
    assert bc.hamming_distance(0, 0) == 0
    assert bc.hamming_distance(0b1011, 0b0001) == 2
    assert bc.hamming_distance(2**64 - 1, 0) == 64
    assert bc.hamming_distance(np.uint64(7), 0) == 3


# ------------------------------------------------------------------------------------------------
# De-duplication
# ------------------------------------------------------------------------------------------------


def reference_dedup(hashes, max_distance):
    """Brute-force O(N^2) reference: drop an item within max_distance of an earlier kept one."""
    kept = []
    for i, h in enumerate(hashes):
        if all(bin(h ^ hashes[j]).count("1") > max_distance for j in kept):
            kept.append(i)
    return kept


def flip_bits(value, rng, count, width=64):
    for bit in rng.choice(width, size=count, replace=False):
        value ^= 1 << int(bit)
    return value


def test_deduplicate_hashes_finds_planted_near_duplicates_quickly():
    rng = np.random.default_rng(0)
    n_random, n_planted = 20_000, 1_000
    hashes = [int(v) for v in rng.integers(0, 2**64, size=n_random, dtype=np.uint64)]
    sources = rng.choice(n_random, size=n_planted, replace=False)
    planted = [flip_bits(hashes[s], rng, int(rng.integers(0, 5))) for s in sources]
    # Insert each copy at a random position after its source.
    items = [(float(i), h) for i, h in enumerate(hashes)]
    items += [(float(s) + 0.5 + rng.random() * (n_random - s - 1), h) for s, h in zip(sources, planted)]
    items.sort()
    all_hashes = [h for _, h in items]
    expected = [i for i, (position, _) in enumerate(items) if position == int(position)]

    start = time.perf_counter()
    keep = bc.deduplicate_hashes(all_hashes, max_distance=4)
    elapsed = time.perf_counter() - start
    assert keep == expected
    assert elapsed < 2.0, f"deduplicate_hashes took {elapsed:.2f}s for {len(all_hashes)} hashes"
    # Exact-only mode keeps the copies with flipped bits.
    n_exact = sum(h == hashes[s] for s, h in zip(sources, planted))
    assert len(bc.deduplicate_hashes(all_hashes, max_distance=0)) == len(all_hashes) - n_exact


def test_deduplicate_hashes_matches_brute_force_on_clusters():
    rng = np.random.default_rng(1)
    centres = [int(v) for v in rng.integers(0, 2**64, size=40, dtype=np.uint64)]
    hashes = [flip_bits(centres[int(rng.integers(40))], rng, int(rng.integers(0, 9))) for _ in range(1500)]
    for max_distance in (0, 2, 4, 7, 12):
        assert bc.deduplicate_hashes(hashes, max_distance) == reference_dedup(hashes, max_distance)


def test_deduplicate_hashes_greedy_chain_and_edge_cases():
    a = 0x0123456789ABCDEF
    b = a ^ 0b1111  # 4 bits from a
    c = b ^ (0b1111 << 20)  # 4 bits from b, 8 from a
    assert bc.deduplicate_hashes([a, b, c], max_distance=4) == [0, 2]  # only kept items drop others
    assert bc.deduplicate_hashes([a, c, b], max_distance=4) == [0, 1]
    assert bc.deduplicate_hashes([a, a, a, b], max_distance=0) == [0, 3]
    assert bc.deduplicate_hashes(np.array([5, 5, 4, 6], dtype=np.uint64), max_distance=1) == [0, 3]
    assert bc.deduplicate_hashes([], 4) == []
    assert bc.deduplicate_hashes([0, 2**64 - 1], max_distance=64) == [0]
    with pytest.raises(ValueError):
        bc.deduplicate_hashes([1, 2], max_distance=-1)
    with pytest.raises(ValueError):
        bc.deduplicate_hashes([-1])


def reference_dedup_embeddings(features, threshold):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    kept = []
    for i in range(len(unit)):
        if not kept or (unit[kept] @ unit[i]).max() < threshold:
            kept.append(i)
    return kept


def test_deduplicate_embeddings_planted_duplicates_across_and_within_chunks():
    rng = np.random.default_rng(2)
    n, d, n_dup = 3000, 48, 300
    base = rng.normal(size=(n, d)).astype(np.float32)
    sources = rng.choice(n - 1, size=n_dup, replace=False)
    # Copies: rescaled (cosine ignores scale) plus a little noise, placed somewhere after the source;
    # sources near the end put some copies in the same chunk as their source.
    copies = base[sources] * rng.uniform(0.5, 2.0, size=(n_dup, 1)) + rng.normal(0, 0.03, size=(n_dup, d))
    positions = np.r_[np.arange(n, dtype=float), sources + 0.5 + rng.random(n_dup) * np.minimum(n - sources - 1, 150)]
    order = np.argsort(positions, kind="stable")
    features = np.concatenate([base, copies.astype(np.float32)])[order]
    expected = np.flatnonzero(order < n).tolist()

    for chunk_size in (256, 97, 4096):
        assert bc.deduplicate_embeddings(features, threshold=0.95, chunk_size=chunk_size) == expected
    assert reference_dedup_embeddings(features, 0.95) == expected
    # A lower threshold drops more, and still agrees with brute force.
    assert bc.deduplicate_embeddings(features, 0.3, chunk_size=128) == reference_dedup_embeddings(features, 0.3)


def test_deduplicate_embeddings_edge_cases():
    x = np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 0.0], [0.0, 0.0], [0.0, 3.0], [1.0, 1.0]])
    assert bc.deduplicate_embeddings(x, threshold=1.0, chunk_size=2) == [0, 2, 3, 4, 5]  # zeros kept
    assert bc.deduplicate_embeddings(x, threshold=0.7, chunk_size=1) == [0, 2, 3, 4]
    assert bc.deduplicate_embeddings(np.zeros((0, 4))) == []
    with pytest.raises(ValueError):
        bc.deduplicate_embeddings(np.zeros(4))
    with pytest.raises(ValueError):
        bc.deduplicate_embeddings(np.ones((3, 2)), chunk_size=0)


# ------------------------------------------------------------------------------------------------
# K-means
# ------------------------------------------------------------------------------------------------


def blobs(seed=0, k=5, per=200, d=8, spread=0.5):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 10, size=(k, d))
    truth = np.repeat(np.arange(k), per)
    x = centres[truth] + rng.normal(0, spread, size=(k * per, d))
    perm = rng.permutation(k * per)
    return x[perm].astype(np.float32), truth[perm], centres


def test_kmeans_recovers_blobs_and_is_deterministic():
    x, truth, centres = blobs()
    cents, labels = bc.kmeans(x, 5, seed=0, batch_size=128)
    assert cents.shape == (5, 8) and labels.shape == (1000,)
    # Labels agree with the truth up to a permutation.
    pairs = set(zip(truth.tolist(), labels.tolist()))
    assert len(pairs) == 5 and len({p for _, p in pairs}) == 5
    # Each centroid is the mean of its cluster, close to a true centre.
    for t, p in pairs:
        assert np.allclose(cents[p], x[labels == p].mean(axis=0), atol=1e-4)
        assert np.linalg.norm(cents[p] - centres[t]) < 0.2

    again_c, again_l = bc.kmeans(x, 5, seed=0, batch_size=128)
    assert np.array_equal(again_c, cents) and np.array_equal(again_l, labels)
    # batch_size only changes the chunking, not the result.
    other_c, other_l = bc.kmeans(x, 5, seed=0, batch_size=4096)
    assert np.array_equal(other_l, labels) and np.allclose(other_c, cents, atol=1e-5)


def test_kmeans_validation_and_small_cases():
    x, _, _ = blobs(per=4)
    with pytest.raises(ValueError):
        bc.kmeans(x, 0)
    with pytest.raises(ValueError):
        bc.kmeans(x, len(x) + 1)
    with pytest.raises(ValueError):
        bc.kmeans(np.array([[0.0, np.nan]]), 1)
    cents, labels = bc.kmeans(x, len(x))  # k == N: every point is its own cluster
    assert sorted(labels.tolist()) == list(range(len(x)))
    cents, labels = bc.kmeans(x, 1)
    assert np.allclose(cents[0], x.mean(axis=0), atol=1e-5) and not labels.any()
    assert bc.kmeans(x.astype(np.float64), 2)[0].dtype == np.float64


def test_kmeans_sample_one_per_blob():
    x, truth, _ = blobs(seed=3)
    idx = bc.kmeans_sample(x, 5, seed=0)
    assert idx == sorted(set(idx)) and len(idx) == 5
    assert sorted(truth[idx].tolist()) == [0, 1, 2, 3, 4]
    assert bc.kmeans_sample(x, 5, seed=0) == idx
    # Each pick is the member closest to its cluster mean.
    for i in idx:
        members = x[truth == truth[i]]
        dists = np.linalg.norm(members - members.mean(axis=0), axis=1)
        assert np.linalg.norm(x[i] - members.mean(axis=0)) <= dists.min() + 1e-3
    assert bc.kmeans_sample(x, len(x)) == list(range(len(x)))
    assert bc.kmeans_sample(x, 0) == []
    with pytest.raises(ValueError):
        bc.kmeans_sample(x, len(x) + 1)
    with pytest.raises(TypeError):
        bc.kmeans_sample(x, 2, bogus=1)


def test_kmeans_sample_fills_empty_clusters():
    # Only 3 distinct points (repeated): clusters must end empty, yet n unique indices come back.
    points = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]], dtype=np.float32)
    x = np.repeat(points, 20, axis=0)
    idx = bc.kmeans_sample(x, 6, seed=0)
    assert len(idx) == 6 and idx == sorted(set(idx))
    assert {tuple(p) for p in x[idx].tolist()} == {tuple(p) for p in points.tolist()}


def test_kmeans_large_runs_in_chunks_quickly():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(100_000, 64)).astype(np.float32)
    start = time.perf_counter()
    cents, labels = bc.kmeans(x, 64, seed=0, iterations=25, batch_size=4096)
    elapsed = time.perf_counter() - start
    assert cents.shape == (64, 64) and cents.dtype == np.float32 and np.isfinite(cents).all()
    assert labels.shape == (100_000,) and len(np.unique(labels)) == 64
    assert elapsed < 10.0, f"kmeans on 100k x 64 took {elapsed:.1f}s"


# ------------------------------------------------------------------------------------------------
# Vocabulary
# ------------------------------------------------------------------------------------------------


def test_stop_words():
    assert {"the", "of", "and", "with", "image", "showing", "shows", "seen", "view"} <= bc.STOP_WORDS
    assert not {"tissue", "cells", "gland", "stroma", "carcinoma", "nuclei"} & bc.STOP_WORDS
    assert 120 <= len(bc.STOP_WORDS) <= 300
    assert isinstance(bc.STOP_WORDS, frozenset)


def test_ngrams_tokenizer_and_stop_words():
    grams = bc.ngrams("An H&E image showing well-differentiated adenocarcinoma of the colon.")
    assert grams[:4] == ["h&e", "well-differentiated", "adenocarcinoma", "colon"]
    assert "well-differentiated adenocarcinoma" in grams
    assert "adenocarcinoma of the colon" not in grams  # 4-gram
    assert "of the colon" not in grams and "adenocarcinoma of" not in grams  # stop word at an edge
    assert "h&e image" not in grams and "image" not in grams
    assert bc.ngrams("Carcinoma in situ", n_max=3) == ["carcinoma", "situ", "carcinoma in situ"]
    # Case folding, Ki-67, repeats kept, n-grams do not cross punctuation.
    expected = ["ki-67", "high", "ki-67", "high", "ki-67 high", "ki-67 high"]
    assert bc.ngrams("Ki-67 high; Ki-67 HIGH", n_max=2) == expected
    assert "stroma nuclei" not in bc.ngrams("dense stroma. Nuclei are atypical", n_max=2)
    assert bc.ngrams("dense stroma", n_max=1) == ["dense", "stroma"]
    assert bc.ngrams("") == []
    with pytest.raises(ValueError):
        bc.ngrams("x", n_max=0)


def test_count_ngrams_is_document_frequency():
    counts = bc.count_ngrams(["tumor tumor tumor cells", "Tumor cells.", "normal mucosa"], n_max=2)
    assert isinstance(counts, Counter)
    assert counts["tumor"] == 2 and counts["tumor cells"] == 2 and counts["tumor tumor"] == 1
    assert counts["normal mucosa"] == 1 and counts["the"] == 0


CAPTIONS = (
    ["H&E image showing invasive ductal carcinoma with necrosis, grade 3."] * 4
    + ["Invasive ductal carcinoma of the breast at 40x."] * 3
    + ["Normal colon mucosa with crypts; 40x."] * 2
    + ["Mitotic figures in tumor cells."] * 12
    + ["A random caption with unusual words."]
)


def test_build_vocabulary_counts_sorting_and_limits():
    vocab = bc.build_vocabulary(CAPTIONS, min_count=2)
    assert vocab[:4] == ["cells", "figures", "figures in tumor", "mitotic"]  # count 12, then alphabetical
    assert "invasive ductal carcinoma" in vocab and "tumor cells" in vocab
    assert vocab.index("invasive ductal carcinoma") < vocab.index("normal colon mucosa")  # 7 > 2
    assert "40x" in vocab and "3" not in vocab  # pure numbers removed, "40x" is not one
    assert "unusual words" not in vocab  # below min_count
    assert not set(vocab) & bc.STOP_WORDS
    assert bc.build_vocabulary(CAPTIONS, min_count=2, max_size=5) == vocab[:5]
    assert bc.build_vocabulary(iter(CAPTIONS), min_count=2) == vocab  # any iterable, consumed once
    assert all(len(p.split()) == 1 for p in bc.build_vocabulary(CAPTIONS, n_max=1))
    with pytest.raises(ValueError):
        bc.build_vocabulary(CAPTIONS, min_count=0)


def test_build_vocabulary_with_is_term_and_llm_filter():
    lexicon = {"invasive ductal carcinoma", "necrosis", "crypts", "colon"}
    vocab = bc.build_vocabulary(CAPTIONS, is_term=lexicon.__contains__, min_count=2)
    # Lexicon terms at any count >= min_count, plus anything with count >= 5 * min_count (= 10).
    frequent = ["cells", "figures", "figures in tumor", "mitotic", "mitotic figures", "tumor", "tumor cells"]
    assert vocab == frequent + ["invasive ductal carcinoma", "necrosis", "colon", "crypts"]

    seen = []

    def llm_filter(candidates):
        seen.append(list(candidates))
        return [p for p in candidates if " " in p] + ["hallucinated phrase"]

    filtered = bc.build_vocabulary(CAPTIONS, is_term=lexicon.__contains__, min_count=2, llm_filter=llm_filter)
    assert seen == [vocab]  # the hook sees the sorted candidates
    assert filtered == [p for p in vocab if " " in p]  # order kept, unknown phrases ignored
    # max_size applies after the hook.
    unfiltered = bc.build_vocabulary(CAPTIONS, min_count=2)
    assert bc.build_vocabulary(CAPTIONS, min_count=2, llm_filter=lambda c: c[1::2], max_size=3) == unfiltered[1:6:2]
