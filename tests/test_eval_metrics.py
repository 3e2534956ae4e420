"""Tests of the feature-space evaluation metrics (unipath_pipeline.evaluation.metrics)."""

import math

import numpy as np
import pytest

from unipath_pipeline.evaluation.metrics import (
    FeatureStats,
    StatsAccumulator,
    fid_from_features,
    frechet_distance,
    kid,
    linear_probe,
    memorisation,
    nearest_neighbours,
    paraphrase_agreement,
    paraphrase_separation,
    precision_recall,
    prototype_adherence,
)


def _random_spd(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def _random_orthogonal(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


# --------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------


def test_fid_of_a_set_against_itself_is_zero():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(500, 32)) @ rng.normal(size=(32, 32)) * 5.0 + 3.0
    scale = float(np.trace(np.cov(x, rowvar=False)))
    assert fid_from_features(x, x) < 1e-6 * scale
    # Also with fewer samples than dimensions (rank-deficient covariance).
    small = rng.normal(size=(10, 64))
    assert fid_from_features(small, small) < 1e-6 * float(np.trace(np.cov(small, rowvar=False)))


def test_fid_rises_monotonically_with_noise_and_is_symmetric():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2000, 16)) @ rng.normal(size=(16, 16))
    noise = rng.normal(size=x.shape)
    values = [fid_from_features(x, x + s * noise) for s in (0.0, 0.1, 0.3, 1.0, 3.0)]
    assert values[0] < 1e-8
    assert all(a < b for a, b in zip(values, values[1:])), values
    y = rng.normal(size=(800, 16)) * 2.0 + 1.0
    assert fid_from_features(x, y) == pytest.approx(fid_from_features(y, x), rel=1e-9)
    sx, sy = FeatureStats(np.zeros(16), _random_spd(rng, 16), 10), FeatureStats(np.ones(16), _random_spd(rng, 16), 10)
    assert frechet_distance(sx, sy) == pytest.approx(frechet_distance(sy, sx), rel=1e-9)


def test_frechet_distance_diagonal_closed_form():
    # For diagonal covariances sqrt(S1 S2) = diag(sqrt(s1 s2)), so
    # FD = ||mu1 - mu2||^2 + sum_i (sqrt(s1_i) - sqrt(s2_i))^2.
    rng = np.random.default_rng(2)
    d = 20
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.1, 5.0, size=d), rng.uniform(0.1, 5.0, size=d)
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(s1) - np.sqrt(s2)) ** 2))
    got = frechet_distance(FeatureStats(mu1, np.diag(s1), 100), FeatureStats(mu2, np.diag(s2), 100))
    assert got == pytest.approx(expected, rel=1e-10)


def test_frechet_distance_commuting_closed_form():
    # S1 = Q diag(a) Q^T and S2 = Q diag(b) Q^T share eigenvectors, so sqrt(S1 S2) = Q diag(sqrt(ab)) Q^T
    # and FD = ||mu1 - mu2||^2 + sum_i (sqrt(a_i) - sqrt(b_i))^2.
    rng = np.random.default_rng(3)
    d = 12
    q = _random_orthogonal(rng, d)
    a, b = rng.uniform(0.05, 4.0, size=d), rng.uniform(0.05, 4.0, size=d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = (q * a) @ q.T, (q * b) @ q.T
    expected = float(np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2))
    got = frechet_distance(FeatureStats(mu1, s1, 50), FeatureStats(mu2, s2, 50))
    assert got == pytest.approx(expected, rel=1e-9)


def test_frechet_distance_hand_computed_2x2():
    # mu1 = (0, 0), mu2 = (1, 2)  ->  ||mu1 - mu2||^2 = 1 + 4 = 5
    # S1 = [[2, 1], [1, 2]] (Tr 4), S2 = [[1, 0], [0, 4]] (Tr 5); they do not commute.
    # S1 S2 = [[2, 4], [1, 8]]: trace 10, det = det(S1) det(S2) = 3 * 4 = 12.
    # For a 2x2 matrix with eigenvalues l1, l2 >= 0: (sqrt(l1) + sqrt(l2))^2 = tr + 2 sqrt(det), so
    # Tr sqrt(S1 S2) = sqrt(10 + 2 sqrt(12)) = sqrt(10 + 4 sqrt(3)) ~= 4.1143898.
    # FD = 5 + 4 + 5 - 2 sqrt(10 + 4 sqrt(3)) ~= 5.7712204476543.
    expected = 14.0 - 2.0 * math.sqrt(10.0 + 4.0 * math.sqrt(3.0))
    assert expected == pytest.approx(5.7712204476543, abs=1e-12)
    a = FeatureStats(np.array([0.0, 0.0]), np.array([[2.0, 1.0], [1.0, 2.0]]), 2)
    b = FeatureStats(np.array([1.0, 2.0]), np.array([[1.0, 0.0], [0.0, 4.0]]), 2)
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-12)
    assert frechet_distance(b, a) == pytest.approx(expected, rel=1e-12)


def test_frechet_distance_dimension_mismatch():
    with pytest.raises(ValueError):
        frechet_distance(FeatureStats(np.zeros(2), np.eye(2), 2), FeatureStats(np.zeros(3), np.eye(3), 2))


# --------------------------------------------------------------------------------------------------
# Streaming statistics
# --------------------------------------------------------------------------------------------------


def test_stats_accumulator_matches_numpy():
    rng = np.random.default_rng(4)
    # A large common offset: a naive sum-of-outer-products would lose precision here.
    data = rng.normal(size=(1000, 8)) @ rng.normal(size=(8, 8)) + 1e4
    acc = StatsAccumulator(8)
    for start, stop in [(0, 1), (1, 7), (7, 7), (7, 400), (400, 1000)]:
        acc.add(data[start:stop])
    stats = acc.result()
    assert stats.count == 1000
    np.testing.assert_allclose(stats.mean, data.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(stats.cov, np.cov(data, rowvar=False, ddof=1), rtol=1e-8, atol=1e-9)
    assert stats.mean.dtype == np.float64 and stats.cov.dtype == np.float64


def test_stats_accumulator_too_few_and_bad_shape():
    acc = StatsAccumulator(3)
    with pytest.raises(ValueError, match="too few images for a covariance: need at least 2"):
        acc.result()
    acc.add(np.ones((1, 3)))
    with pytest.raises(ValueError, match="need at least 2"):
        acc.result()
    with pytest.raises(ValueError):
        acc.add(np.ones((2, 4)))
    with pytest.raises(ValueError):
        acc.add(np.array([[1.0, np.nan, 0.0]]))


def test_feature_stats_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    acc = StatsAccumulator(6)
    acc.add(rng.normal(size=(37, 6)))
    stats = acc.result()
    path = str(tmp_path / "sub" / "stats.safetensors")
    stats.save(path)
    loaded = FeatureStats.load(path)
    assert loaded.count == 37
    np.testing.assert_array_equal(loaded.mean, stats.mean)
    np.testing.assert_array_equal(loaded.cov, stats.cov)
    assert loaded.cov.dtype == np.float64
    assert [p.name for p in (tmp_path / "sub").iterdir()] == ["stats.safetensors"]  # no temp files left
    assert frechet_distance(loaded, stats) < 1e-12


# --------------------------------------------------------------------------------------------------
# KID
# --------------------------------------------------------------------------------------------------


def _kid_reference(x: np.ndarray, y: np.ndarray, degree: int, gamma: float, coef0: float) -> float:
    """Unbiased MMD^2 on the full sets with explicit kernel matrices (small data only)."""
    m = len(x)
    kxx = (gamma * x @ x.T + coef0) ** degree
    kyy = (gamma * y @ y.T + coef0) ** degree
    kxy = (gamma * x @ y.T + coef0) ** degree
    off = ~np.eye(m, dtype=bool)
    return float(kxx[off].mean() + kyy[off].mean() - 2.0 * kxy.mean())


def test_kid_matches_explicit_formula():
    rng = np.random.default_rng(6)
    x, y = rng.normal(size=(60, 10)), rng.normal(size=(60, 10)) + 0.3
    # subset_size >= n: every subset is a permutation of the whole set, so the std is ~0.
    mean, std = kid(x, y, subsets=3, subset_size=1000)
    assert mean == pytest.approx(_kid_reference(x, y, 3, 1.0 / 10, 1.0), rel=1e-9)
    assert std < 1e-9 * max(1.0, abs(mean))


def test_kid_same_distribution_near_zero_and_shift_positive():
    rng = np.random.default_rng(7)
    x, y = rng.normal(size=(600, 16)), rng.normal(size=(600, 16))
    mean, std = kid(x, y, subsets=20, subset_size=200)
    assert abs(mean) < 3 * std or abs(mean) < 1e-3
    shifted_mean, shifted_std = kid(x, y + 1.0, subsets=20, subset_size=200)
    assert shifted_mean > 0.1 and shifted_mean > 10 * shifted_std
    assert shifted_mean > 20 * abs(mean)


def test_kid_is_unbiased_for_the_linear_kernel():
    # With k(a, b) = a.b the unbiased MMD^2 estimates ||mu_x - mu_y||^2 = 1 exactly in expectation. The
    # biased (V-statistic) version would add Tr(Sx)/m + Tr(Sy)/m = 2 * 10 / 20 = 1.0 on top.
    rng = np.random.default_rng(8)
    d = 10
    shift = np.zeros(d)
    shift[0] = 1.0
    x, y = rng.normal(size=(3000, d)), rng.normal(size=(3000, d)) + shift
    mean, _ = kid(x, y, subsets=300, subset_size=20, degree=1, gamma=1.0, coef0=0.0, seed=3)
    assert mean == pytest.approx(1.0, abs=0.2)


def test_kid_errors_and_seed():
    rng = np.random.default_rng(9)
    x = rng.normal(size=(50, 4))
    with pytest.raises(ValueError):
        kid(x[:1], x)
    with pytest.raises(ValueError):
        kid(x, rng.normal(size=(50, 5)))
    assert kid(x, x + 0.5, subsets=5, subset_size=10, seed=1) == kid(x, x + 0.5, subsets=5, subset_size=10, seed=1)


# --------------------------------------------------------------------------------------------------
# Precision / recall
# --------------------------------------------------------------------------------------------------


def _precision_recall_brute_force(real, fake, k):
    def radii(x):
        d = np.linalg.norm(x[:, None] - x[None], axis=-1)
        np.fill_diagonal(d, np.inf)
        return np.sort(d, axis=1)[:, k - 1]

    d = np.linalg.norm(fake[:, None] - real[None], axis=-1)  # [fake, real]
    precision = float((d <= radii(real)[None, :]).any(axis=1).mean())
    recall = float((d.T <= radii(fake)[None, :]).any(axis=1).mean())
    return precision, recall


@pytest.mark.parametrize("k", [1, 3, 12])  # 12 exercises the argpartition path, the others repeated argmin
def test_precision_recall_matches_brute_force(k):
    rng = np.random.default_rng(20)
    real = rng.normal(size=(150, 6))
    fake = rng.normal(size=(130, 6)) * 1.3 + 0.4
    expected = _precision_recall_brute_force(real, fake, k)
    assert 0.0 < expected[0] < 1.0 and 0.0 < expected[1] < 1.0
    assert precision_recall(real, fake, k=k, chunk_size=32) == expected


def test_precision_recall_identical_sets():
    rng = np.random.default_rng(10)
    x = rng.normal(size=(300, 8))
    assert precision_recall(x, x.copy(), k=3, chunk_size=64) == (1.0, 1.0)


def test_precision_recall_far_away_fake():
    rng = np.random.default_rng(11)
    real = rng.normal(size=(300, 8))
    fake = rng.normal(size=(300, 8)) + 50.0
    precision, recall = precision_recall(real, fake, k=3, chunk_size=100)
    assert precision == 0.0 and recall == 0.0


def test_precision_recall_mode_dropping():
    rng = np.random.default_rng(12)
    d = 4
    mode_a, mode_b = np.zeros(d), np.full(d, 30.0)
    real = np.concatenate([rng.normal(size=(400, d)) + mode_a, rng.normal(size=(400, d)) + mode_b])
    fake = rng.normal(size=(400, d)) + mode_a  # covers only mode A
    precision, recall = precision_recall(real, fake, k=5, chunk_size=128)
    assert precision > 0.9
    assert 0.4 < recall <= 0.5
    # Chunking does not change the answer.
    assert precision_recall(real, fake, k=5, chunk_size=7) == (precision, recall)


# --------------------------------------------------------------------------------------------------
# Nearest neighbours and memorisation
# --------------------------------------------------------------------------------------------------


def test_nearest_neighbours_matches_brute_force():
    rng = np.random.default_rng(13)
    query, reference = rng.normal(size=(70, 5)) + 100.0, rng.normal(size=(93, 5)) + 100.0
    full = np.linalg.norm(query[:, None, :] - reference[None, :, :], axis=-1)
    dist, idx = nearest_neighbours(query, reference, chunk_size=16)
    np.testing.assert_array_equal(idx, full.argmin(axis=1))
    np.testing.assert_allclose(dist, full.min(axis=1), rtol=1e-7)

    self_full = np.linalg.norm(reference[:, None, :] - reference[None, :, :], axis=-1)
    np.fill_diagonal(self_full, np.inf)
    dist, idx = nearest_neighbours(reference, reference, chunk_size=10, exclude_self=True)
    np.testing.assert_array_equal(idx, self_full.argmin(axis=1))
    np.testing.assert_allclose(dist, self_full.min(axis=1), rtol=1e-7)
    assert not np.any(idx == np.arange(len(reference)))


def test_memorisation_detects_copies_and_not_fresh_samples():
    rng = np.random.default_rng(14)
    training = rng.normal(size=(500, 16))
    copies = training[[3, 40, 41, 499, 250]].copy()
    report = memorisation(copies, training, chunk_size=64)
    assert report["copy_rate"] == 1.0
    assert report["nearest_indices"] == [3, 40, 41, 499, 250]
    assert report["mean_nn_distance"] < 1e-5
    assert report["copy_threshold"] == pytest.approx(0.5 * report["training_median_nn_distance"])

    fresh = rng.normal(size=(200, 16))
    report = memorisation(fresh, training, chunk_size=64)
    assert report["copy_rate"] == 0.0
    assert report["median_nn_distance"] > report["copy_threshold"]
    assert len(report["nearest_indices"]) == 200

    mixed = np.concatenate([copies, fresh[:15]])
    assert memorisation(mixed, training)["copy_rate"] == pytest.approx(0.25)


# --------------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------------


def _blobs(rng, n_per_class, centres, spread=1.0):
    x = np.concatenate([rng.normal(size=(n_per_class, centres.shape[1])) * spread + c for c in centres])
    return x


def test_linear_probe_separable_string_labels():
    rng = np.random.default_rng(15)
    centres = rng.normal(size=(3, 12)) * 6.0
    names = ["tumour", "stroma", "lymphocytes"]
    train_x, test_x = _blobs(rng, 60, centres), _blobs(rng, 40, centres)
    train_y = [n for n in names for _ in range(60)]
    test_y = [n for n in names for _ in range(40)]
    perm = rng.permutation(len(train_y))  # label order must not matter
    acc = linear_probe(train_x[perm], [train_y[i] for i in perm], test_x, test_y, epochs=100)
    assert acc > 0.95
    # Deterministic for a seed.
    assert acc == linear_probe(train_x[perm], [train_y[i] for i in perm], test_x, test_y, epochs=100)
    # Test labels never seen in training count as wrong.
    unseen = linear_probe(train_x, train_y, test_x, ["necrosis"] * len(test_y), epochs=100)
    assert unseen == 0.0


def test_linear_probe_random_labels_near_chance():
    rng = np.random.default_rng(16)
    train_x, test_x = rng.normal(size=(200, 10)), rng.normal(size=(1000, 10))
    train_y, test_y = rng.integers(0, 2, size=200), rng.integers(0, 2, size=1000)
    acc = linear_probe(train_x, train_y, test_x, test_y, epochs=50, seed=3)
    assert 0.4 < acc < 0.6
    assert acc == linear_probe(train_x, train_y, test_x, test_y, epochs=50, seed=3)


def test_linear_probe_needs_two_classes():
    x = np.random.default_rng(17).normal(size=(10, 3))
    with pytest.raises(ValueError):
        linear_probe(x, ["a"] * 10, x, ["a"] * 10)


# --------------------------------------------------------------------------------------------------
# Paraphrase agreement and prototype adherence
# --------------------------------------------------------------------------------------------------


def test_paraphrase_agreement():
    rng = np.random.default_rng(18)
    d = 32
    concept = rng.normal(size=d)
    # Paraphrases whose images share the concept direction agree almost perfectly ...
    consistent = [concept + 0.05 * rng.normal(size=(20, d)) for _ in range(4)]
    assert paraphrase_agreement({"adenocarcinoma": consistent}) > 0.95
    # ... unrelated paraphrases (random mean directions) do not.
    unrelated = [rng.normal(size=d) * 5 + rng.normal(size=(20, d)) for _ in range(4)]
    assert abs(paraphrase_agreement({"x": unrelated})) < 0.4
    # Hand-checkable: means (1, 0) and (0, 1) -> cosine 0; means (1, 0) and (-1, 0) -> -1; mean of concepts.
    groups = {
        "a": [np.array([[1.0, 0.0], [1.0, 0.0]]), np.array([[0.0, 2.0]])],
        "b": [np.array([1.0, 0.0]), np.array([[-3.0, 0.0]])],
    }
    assert paraphrase_agreement(groups) == pytest.approx(-0.5)
    with pytest.raises(ValueError):
        paraphrase_agreement({"c": [np.ones((3, 2))]})


def test_paraphrase_separation_is_zero_for_a_prompt_blind_model_and_positive_for_one_that_follows():
    rng = np.random.default_rng(7)
    d, concepts = 64, ["skin", "carcinoma", "nevus"]
    shared = rng.normal(size=d) * 10  # what every image has in common: makes raw agreement high regardless
    blind = {c: [shared + rng.normal(size=(8, d)) for _ in range(3)] for c in concepts}
    following = {c: [shared + 3 * direction + rng.normal(size=(8, d)) for _ in range(3)]
                 for c, direction in zip(concepts, rng.normal(size=(3, d)))}
    assert paraphrase_agreement(blind) > 0.9 and paraphrase_agreement(following) > 0.9  # raw agreement cannot tell
    assert abs(paraphrase_separation(blind)["margin"]) < 0.3
    separation = paraphrase_separation(following)
    assert separation["margin"] > 0.8 and separation["within"] > separation["across"]
    # Hand-checkable: two concepts, two paraphrases each, centred means (1, 0), (1, 0), (-1, 0), (-1, 0).
    exact = paraphrase_separation({"a": [np.array([2.0, 0.0])] * 2, "b": [np.array([0.0, 0.0])] * 2})
    assert exact == pytest.approx({"within": 1.0, "across": -1.0, "margin": 2.0})
    with pytest.raises(ValueError, match="2 concepts"):
        paraphrase_separation({"a": [np.ones(2), np.ones(2)]})


def test_prototype_adherence():
    rng = np.random.default_rng(19)
    d = 24
    pool = rng.normal(size=(300, d))
    chosen = [pool[rng.choice(300, 4, replace=False)] for _ in range(50)]
    # Each generated image is close to the mean of its own prototypes.
    generated = np.stack([c.mean(axis=0) + 0.1 * rng.normal(size=d) for c in chosen])
    report = prototype_adherence(generated, chosen, pool, seed=0)
    assert report["win_rate"] > 0.95
    assert report["chosen_similarity"] > report["random_similarity"] + 0.3
    assert abs(report["random_similarity"]) < 0.1
    assert report == prototype_adherence(generated, chosen, pool, seed=0)
    # Images unrelated to their prototypes win only about half the time.
    unrelated = prototype_adherence(rng.normal(size=(200, d)), [pool[:3]] * 200, pool, seed=1)
    assert 0.3 < unrelated["win_rate"] < 0.7
    with pytest.raises(ValueError):
        prototype_adherence(generated, chosen[:-1], pool)
