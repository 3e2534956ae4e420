"""Loading pipelines and prototype banks for the nodes, with small least-recently-used caches.

ComfyUI re-runs a loader node whenever its inputs change; the caches keep the last few models in memory so that
switching back and forth between two models (or devices, or dtypes) does not reload them from disk each time.
"""

from __future__ import annotations

import logging
import os
import re
from collections import OrderedDict
from typing import Callable, Dict, Generic, Hashable, Optional, Tuple, TypeVar

import torch

from unipath_pipeline import PrototypeBank, UniPathPipeline
from unipath_pipeline.model_sources import DEFAULT_SOURCE, PRESET_PREFIX, load_pipeline
from unipath_pipeline.default_model import DEFAULT_MODEL_DIR, default_model_available

from .comfy_compat import comfy_device

logger = logging.getLogger(__name__)

DEVICES = ("auto", "cpu", "cuda", "mps")
DTYPES = ("auto", "float32", "float16", "bfloat16")
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
#: A folder name that is not found as given is also looked up in these ComfyUI model folders.
COMFY_MODEL_FOLDERS = ("diffusers", "unipath")

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most `max_entries` values, the least recently used one evicted first."""

    def __init__(self, max_entries: int):
        if max_entries < 1:
            raise ValueError(f"`max_entries` must be >= 1; got {max_entries}.")
        self.max_entries = max_entries
        self._entries: OrderedDict[K, V] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: K) -> bool:
        return key in self._entries

    def get_or_load(self, key: K, load: Callable[[], V]) -> V:
        if key in self._entries:
            self._entries.move_to_end(key)
            return self._entries[key]
        value = load()
        self._entries[key] = value
        while len(self._entries) > self.max_entries:
            evicted, _ = self._entries.popitem(last=False)
            logger.info("UniPath: released %s from the cache", evicted)
        return value

    def clear(self) -> None:
        self._entries.clear()


#: Loaded pipelines keyed by (source, device, dtype).
PIPELINES: LruCache[Tuple[str, str, str], UniPathPipeline] = LruCache(max_entries=2)
#: Loaded prototype banks keyed by source.
BANKS: LruCache[str, PrototypeBank] = LruCache(max_entries=4)


def resolve_device(device: str) -> torch.device:
    """`auto` -> ComfyUI's device; otherwise the named device, which must be available."""
    if device not in DEVICES:
        raise ValueError(f"`device` must be one of {list(DEVICES)}; got {device!r}.")
    if device == "auto":
        return comfy_device()
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("`device` is 'cuda' but PyTorch sees no CUDA device; choose 'auto' or 'cpu'.")
    if device == "mps" and not torch.backends.mps.is_available():
        raise ValueError("`device` is 'mps' but PyTorch sees no MPS device; choose 'auto' or 'cpu'.")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto` -> float32 on the CPU and MPS, bfloat16 (else float16) on CUDA; otherwise the named dtype."""
    if dtype not in DTYPES:
        raise ValueError(f"`dtype` must be one of {list(DTYPES)}; got {dtype!r}.")
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.float32


def _comfy_model_folders() -> list:
    try:
        import folder_paths  # ComfyUI's model folder registry
    except ImportError:
        return []
    folders = []
    for name in COMFY_MODEL_FOLDERS:
        try:
            folders.extend(folder_paths.get_folder_paths(name))
        except KeyError:
            continue
    return folders


def resolve_source(source: str, argument: str = "source") -> str:
    """Checks a model or bank source: `default`, `preset:NAME`, an existing folder (also looked up in ComfyUI's
    `models/diffusers` and `models/unipath`), or a Hub repo id `owner/name`. Returns the folder path or the id."""
    source = source.strip()
    if not source:
        raise ValueError(f"`{argument}` is empty; use 'default', 'preset:tiny', a folder or a Hub repo id (owner/name).")
    if source == DEFAULT_SOURCE or source.startswith(PRESET_PREFIX):
        return source
    path = os.path.expanduser(source)
    if os.path.isdir(path):
        return os.path.abspath(path)
    for folder in _comfy_model_folders():
        candidate = os.path.join(folder, source)
        if os.path.isdir(candidate):
            return candidate
    if HUB_ID.match(source) and not os.path.isabs(source):
        return source
    raise ValueError(
        f"`{argument}` {source!r} is neither 'default', 'preset:NAME', an existing folder (also looked for in "
        "ComfyUI's models/diffusers and models/unipath) nor a Hub repo id (owner/name)."
    )


def load_unipath_pipeline(source: str, device: str = "auto", dtype: str = "auto") -> UniPathPipeline:
    """The pipeline named by `source` on `device` in `dtype`, from the cache when it was loaded recently."""
    resolved = resolve_source(source)
    torch_device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, torch_device)
    dtype_name = str(torch_dtype).removeprefix("torch.")
    key = (resolved, str(torch_device), dtype_name)

    def load() -> UniPathPipeline:
        if resolved == DEFAULT_SOURCE and not default_model_available():
            raise ValueError(
                "`source` is 'default' but the bundled default UniPath model is not part of this installation yet "
                "(its weights are built by training/recipes/unipath_tiny.sh). Set `source` to a model folder, a Hub "
                "repo id, or 'preset:tiny' (random weights, for trying the nodes)."
            )
        logger.info("UniPath: loading %s on %s in %s", resolved, torch_device, dtype_name)
        return load_pipeline(resolved, str(torch_device), dtype_name)

    return PIPELINES.get_or_load(key, load)


def load_prototype_bank(source: str, subfolder: str = "") -> PrototypeBank:
    """A prototype bank from `default` (the bundled default model's), a bank folder, a pipeline folder holding a
    `prototype_bank` subfolder, or a Hub repo id (with `subfolder` inside it); cached."""
    resolved = resolve_source(source)
    if resolved.startswith(PRESET_PREFIX):
        raise ValueError("`source` of a prototype bank cannot be a preset; a preset's bank comes with its pipeline.")
    subfolder = subfolder.strip().strip("/")

    def load() -> PrototypeBank:
        if resolved == DEFAULT_SOURCE:
            if not default_model_available():
                raise ValueError(
                    "`source` is 'default' but the bundled default UniPath model (and its bank) is not part of this "
                    "installation yet; set `source` to a bank folder or a Hub repo id."
                )
            return PrototypeBank.from_pretrained(DEFAULT_MODEL_DIR, subfolder="prototype_bank")
        if not subfolder and os.path.isdir(resolved) and os.path.isdir(os.path.join(resolved, "prototype_bank")):
            return PrototypeBank.from_pretrained(resolved, subfolder="prototype_bank")
        return PrototypeBank.from_pretrained(resolved, subfolder=subfolder or None)

    return BANKS.get_or_load((resolved, subfolder), load)


def describe_pipeline(pipe: UniPathPipeline, source: str) -> str:
    """What a user needs to wire the other nodes: native size, size multiple, streams, bank and slots."""
    native = pipe.transformer.config.sample_size * pipe.vae_scale_factor
    bank: Optional[PrototypeBank] = pipe.prototype_bank
    lines: Dict[str, str] = {
        "model": source,
        "device / dtype": f"{pipe.device} / {str(pipe.transformer.dtype).removeprefix('torch.')}",
        "native size": f"{native} x {native} px (width and height must be multiples of {pipe.spatial_multiple})",
        "understanding model": "none (pass precomputed conditionings)" if pipe.mllm is None else type(pipe.mllm).__name__,
        "prototype slots": str(pipe.prototype_adapter.config.max_prototypes),
        "prototype bank": "none" if bank is None else f"{len(bank)} entries, {len(bank.keyword_index)} keywords",
    }
    return "\n".join(f"{k}: {v}" for k, v in lines.items())


def describe_bank(bank: PrototypeBank) -> str:
    """Size, encoder and the most frequent keywords of a bank (for choosing ids and keywords)."""
    frequent = sorted(bank.keyword_index.items(), key=lambda kv: (-len(kv[1]), kv[0]))[:30]
    retrieval = [name for name, f in (("text", bank.text_features), ("image", bank.image_features)) if f is not None]
    return "\n".join([
        f"{len(bank)} entries (ids 0..{len(bank) - 1}), feature_dim {bank.feature_dim}",
        f"retrieval features: {', '.join(retrieval) or 'none (keyword recall only)'}; encoder: {bank.encoder}",
        "keywords: " + ", ".join(f"{k} ({len(ids)})" for k, ids in frequent),
    ])
