"""Streaming safetensors I/O for checkpoint converters: header scans, bounded-memory sharded writing, and output folders
that appear all at once or not at all.

Nothing here loads a whole checkpoint: `scan_safetensors` reads only headers (names, shapes, dtypes), `read_tensors`
yields one tensor at a time, and `ShardedSafetensorsWriter` holds at most one output shard (plus the tensor being
added) before writing it. Converting a 7B checkpoint therefore needs about one shard of memory, never two copies of
the weights.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, Iterator, List, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

logger = logging.getLogger(__name__)

#: Bytes per element of each safetensors dtype name.
DTYPE_BYTES = {
    "F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
    "F8_E4M3": 1, "F8_E5M2": 1, "U16": 2, "U32": 4, "U64": 8,
}

DEFAULT_MAX_SHARD_SIZE = "2GB"


@dataclass(frozen=True)
class TensorInfo:
    """Where a tensor lives in a checkpoint and what it is, read from the safetensors header only."""

    file: str
    shape: Tuple[int, ...]
    dtype: str

    @property
    def nbytes(self) -> int:
        """Size of the tensor's data in bytes."""
        numel = 1
        for dim in self.shape:
            numel *= dim
        return numel * DTYPE_BYTES.get(self.dtype, 4)


def parse_size(text: str | int) -> int:
    """`"2GB"`, `"500MB"`, `"64KB"`, `"1.5GiB"` or a plain number of bytes -> bytes."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?I?B?)\s*", str(text).upper())
    if not match:
        raise ValueError(f"Not a size: {text!r}; use e.g. 2GB, 500MB or a number of bytes.")
    number, unit = float(match.group(1)), match.group(2).rstrip("B") or ""
    powers = {"": 0, "K": 1, "M": 2, "G": 3, "T": 4}
    base = 1024 if unit.endswith("I") else 1000
    size = int(number * base ** powers[unit.rstrip("I")])
    if size < 1:
        raise ValueError(f"The size must be positive; got {text!r}.")
    return size


def parse_dtype(name: Optional[str]) -> Optional[torch.dtype]:
    """`None`/"keep" -> `None` (keep each tensor's dtype); "float32", "float16", "bfloat16" -> the torch dtype."""
    if name in (None, "keep"):
        return None
    if name not in ("float32", "float16", "bfloat16"):
        raise ValueError(f"--dtype must be keep, float32, float16 or bfloat16; got {name!r}.")
    return getattr(torch, name)


def safetensors_files(folder: str) -> List[str]:
    """The weight files of a checkpoint folder: those named by a `*.safetensors.index.json`, else every
    `*.safetensors` file at the top level (sorted; hidden files such as half-written temporaries are skipped)."""
    indexes = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors.index.json") and not f.startswith("."))
    if len(indexes) > 1:
        raise ValueError(f"{folder} holds several safetensors indexes ({indexes}); keep one checkpoint per folder.")
    if indexes:
        with open(os.path.join(folder, indexes[0]), encoding="utf-8") as f:
            weight_map = json.load(f).get("weight_map") or {}
        files = sorted(set(weight_map.values()))
        missing = [name for name in files if not os.path.isfile(os.path.join(folder, name))]
        if missing:
            raise FileNotFoundError(f"{indexes[0]} in {folder} names shards that are not there: {missing}.")
        return [os.path.join(folder, name) for name in files]
    return [os.path.join(folder, f) for f in sorted(os.listdir(folder)) if f.endswith(".safetensors") and not f.startswith(".")]


def scan_safetensors(files: Iterable[str]) -> Dict[str, TensorInfo]:
    """Every tensor's file, shape and dtype, from the headers alone (no tensor data is read)."""
    infos: Dict[str, TensorInfo] = {}
    for path in files:
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                if key in infos:
                    raise ValueError(f"Tensor {key!r} is stored twice: in {infos[key].file} and {path}.")
                view = f.get_slice(key)
                infos[key] = TensorInfo(path, tuple(view.get_shape()), view.get_dtype())
    return infos


def read_tensors(infos: Dict[str, TensorInfo], keys: Iterable[str]) -> Iterator[Tuple[str, torch.Tensor]]:
    """Yields `(key, tensor)` for `keys`, one tensor in memory at a time, opening each input file once."""
    by_file: Dict[str, List[str]] = {}
    for key in keys:
        by_file.setdefault(infos[key].file, []).append(key)
    for path in sorted(by_file):
        with safe_open(path, framework="pt") as f:
            for key in by_file[path]:
                yield key, f.get_tensor(key)


def shard_file_names(weights_name: str, count: int) -> List[str]:
    """`model.safetensors`, 3 -> `model-00001-of-00003.safetensors`, ... (the transformers / diffusers convention)."""
    if count == 1:
        return [weights_name]
    stem, ext = os.path.splitext(weights_name)
    return [f"{stem}-{i:05d}-of-{count:05d}{ext}" for i in range(1, count + 1)]


class ShardedSafetensorsWriter:
    """Writes one component's tensors as safetensors shards of at most `max_shard_bytes` each.

    Tensors are buffered until the next one would overflow the shard, then the buffer is written and released, so at
    most one shard (plus the tensor being added) is held. `close()` names the shards as transformers and diffusers
    expect (`<weights_name>` alone, or `<stem>-0000i-of-0000n<ext>` plus `<weights_name>.index.json`).

    Args:
        folder: where the files go (it is created).
        weights_name: `model.safetensors` (transformers) or `diffusion_pytorch_model.safetensors` (diffusers).
        max_shard_bytes: the largest shard, in bytes (a single larger tensor gets a shard of its own).
        dtype: convert floating-point tensors to this dtype on the way (`None` keeps them).
    """

    def __init__(self, folder: str, weights_name: str, max_shard_bytes: int, dtype: Optional[torch.dtype] = None):
        self.folder, self.weights_name, self.max_shard_bytes, self.dtype = folder, weights_name, max_shard_bytes, dtype
        os.makedirs(folder, exist_ok=True)
        self._buffer: Dict[str, torch.Tensor] = {}
        self._buffer_bytes = 0
        self._shards: List[Tuple[str, List[str]]] = []  # (temporary file name, keys)
        self.total_bytes = 0
        self.peak_buffered_bytes = 0  #: the most tensor bytes this writer ever held at once
        self.closed = False

    def add(self, key: str, tensor: torch.Tensor) -> None:
        """Queues one tensor; writes the current shard first when `tensor` would not fit in it."""
        if self.closed:
            raise RuntimeError("The writer is closed.")
        if self.dtype is not None and tensor.is_floating_point():
            tensor = tensor.to(self.dtype)
        tensor = tensor.contiguous()
        nbytes = tensor.numel() * tensor.element_size()
        if self._buffer and self._buffer_bytes + nbytes > self.max_shard_bytes:
            self._flush()
        self._buffer[key] = tensor
        self._buffer_bytes += nbytes
        self.total_bytes += nbytes
        self.peak_buffered_bytes = max(self.peak_buffered_bytes, self._buffer_bytes)

    def _flush(self) -> None:
        name = f".shard-{len(self._shards):05d}.safetensors"
        save_file(self._buffer, os.path.join(self.folder, name), metadata={"format": "pt"})
        self._shards.append((name, list(self._buffer)))
        self._buffer, self._buffer_bytes = {}, 0

    def close(self) -> List[str]:
        """Writes the last shard, gives the shards their final names and writes the index; returns the file names."""
        if self.closed:
            raise RuntimeError("The writer is already closed.")
        if self._buffer or not self._shards:
            self._flush()
        self.closed = True
        names = shard_file_names(self.weights_name, len(self._shards))
        weight_map = {}
        for (tmp, keys), name in zip(self._shards, names):
            os.replace(os.path.join(self.folder, tmp), os.path.join(self.folder, name))
            weight_map.update({key: name for key in keys})
        if len(names) > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            with open(os.path.join(self.folder, self.weights_name + ".index.json"), "w", encoding="utf-8") as f:
                json.dump(index, f, indent=2)
                f.write("\n")
            names.append(self.weights_name + ".index.json")
        return names


@contextmanager
def staged_directory(out: str, overwrite: bool = False) -> Iterator[str]:
    """Yields an empty staging folder beside `out`; when the block succeeds it becomes `out` in one rename, and when
    it fails it is deleted, so `out` is never left half-written.

    `out` may already exist only if it is empty or `overwrite` is set (then it is replaced, also at the very end).
    """
    out = os.path.abspath(out)
    check_output_folder(out, overwrite)
    parent, name = os.path.split(out)
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    old = None
    if os.path.exists(out):
        old = tempfile.mkdtemp(prefix=f".{name}.old-", dir=parent)
        os.replace(out, os.path.join(old, name))
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def check_output_folder(out: str, overwrite: bool, argument: str = "--out") -> None:
    """Raises `ValueError` when `out` is a file, or a non-empty folder and `overwrite` is not set."""
    if os.path.isfile(out):
        raise ValueError(f"{argument} {out} is a file; give a folder.")
    if os.path.isdir(out) and os.listdir(out) and not overwrite:
        raise ValueError(f"{argument} {out} exists and is not empty; choose another folder or pass --overwrite.")


def copy_files(names: Iterable[str], source: str, target: str) -> List[str]:
    """Copies the files among `names` that exist in `source` into `target`; returns the names copied."""
    copied = []
    os.makedirs(target, exist_ok=True)
    for name in names:
        path = os.path.join(source, name)
        if os.path.isfile(path):
            shutil.copy2(path, os.path.join(target, name))
            copied.append(name)
    return copied


def progress_bar(total_bytes: int, desc: str, enabled: bool):
    """A tqdm byte counter (a no-op object when disabled)."""
    from tqdm.auto import tqdm

    return tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=not enabled, leave=False)


def stream_component(
    infos: Dict[str, TensorInfo],
    routes: Dict[str, str],
    writer: ShardedSafetensorsWriter,
    transform: Optional[Callable[[str, torch.Tensor], torch.Tensor]] = None,
    progress: bool = True,
    desc: str = "",
) -> List[str]:
    """Copies the tensors in `routes` (`source key -> target key`) through `writer`, one at a time; returns the
    written file names. `transform(target_key, tensor)` may reshape or slice a tensor on the way."""
    total = sum(infos[k].nbytes for k in routes)
    with progress_bar(total, desc, progress) as bar:
        for key, tensor in read_tensors(infos, routes):
            target = routes[key]
            writer.add(target, transform(target, tensor) if transform else tensor)
            del tensor
            bar.update(infos[key].nbytes)
    return writer.close()


def describe_keys(keys: Iterable[str], limit: int = 20) -> str:
    """`'a', 'b', ... (and 40 more)` for error messages."""
    keys = sorted(keys)
    shown = ", ".join(repr(k) for k in keys[:limit])
    return shown + (f" ... (and {len(keys) - limit} more)" if len(keys) > limit else "")
