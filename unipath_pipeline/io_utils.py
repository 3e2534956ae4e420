"""Atomic, pickle-free file writing and reading (safetensors and JSON)."""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
from safetensors import safe_open
from safetensors.torch import save_file

_METADATA_KEY = "unipath"


def human_bytes(nbytes: float) -> str:
    """`1536` -> `'1.5 KiB'`."""
    for unit in ("B", "KiB", "MiB", "GiB"):
        if nbytes < 1024 or unit == "GiB":
            return f"{nbytes:.1f} {unit}" if unit != "B" else f"{int(nbytes)} B"
        nbytes /= 1024


@contextmanager
def atomic_path(path: str) -> Iterator[str]:
    """Yields a temporary path next to `path`; renames it onto `path` only if the block finishes."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=folder)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; the result should get the permissions of a normal new file
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def atomic_write_json(obj: Any, path: str) -> None:
    """Writes `obj` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")


def atomic_save_safetensors(tensors: Dict[str, torch.Tensor], path: str, metadata: Optional[dict] = None) -> None:
    """Saves `tensors` (plus JSON-serialisable `metadata`) to a safetensors file atomically."""
    header = {_METADATA_KEY: json.dumps(metadata)} if metadata is not None else None
    with atomic_path(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=header)


def load_safetensors_with_metadata(
    path: str, device: Optional[torch.device] = None
) -> Tuple[Dict[str, torch.Tensor], Any]:
    """Loads the tensors and the JSON metadata written by `atomic_save_safetensors`."""
    with safe_open(path, framework="pt", device=str(device or "cpu")) as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        raw = (f.metadata() or {}).get(_METADATA_KEY)
    return tensors, (json.loads(raw) if raw is not None else None)
