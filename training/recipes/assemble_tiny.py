#!/usr/bin/env python
"""Assemble the untrained `small` pipeline of the default model: the `small` preset (real all-MiniLM-L6-v2, random
transformer, DST queries and adapter) with the VAE trained by `train_vae.py` and the bank built from the training
tiles; and mark each training caption with its tile's bank entry (`bank_id`), so retrieval during training never
returns a sample's own tile.

    python training/recipes/assemble_tiny.py --vae runs/vae --bank runs/bank --train_dir data/train --out runs/init
"""

from __future__ import annotations

import argparse
import json
import os

from diffusers import AutoencoderKL

from unipath_pipeline import PrototypeBank, UniPathPipeline
from unipath_pipeline.io_utils import atomic_path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vae", required=True)
    parser.add_argument("--bank", required=True)
    parser.add_argument("--train_dir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    pipe = UniPathPipeline.from_preset("small", seed=args.seed)
    bank = PrototypeBank.from_pretrained(args.bank)
    pipe.register_modules(vae=AutoencoderKL.from_pretrained(args.vae), prototype_bank=bank)
    pipe.save_pretrained(args.out)
    ids = {entry.source: entry.id for entry in bank.entries}
    path = os.path.join(args.train_dir, "metadata.jsonl")
    with open(path, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        f.write("".join(json.dumps({**r, "bank_id": ids.get(r["file_name"])}) + "\n" for r in rows))
    print(f"{args.out}: small pipeline with the trained VAE and a bank of {len(bank)}; "
          f"{sum(r['file_name'] in ids for r in rows)} of {len(rows)} captions have their tile in the bank")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
