"""Bank building at corpus scale: time and peak memory of pass 2 (de-duplication, K-means sampling, vocabulary,
keywords, text features, thumbnails) over N tiles, default 100,000.

Pass 1 (decode, QC, features) is per shard and its memory does not grow with N; what grows is pass 2. To measure it
without hours of CPU feature extraction, this script writes pass-1 shards of random 2048-d features (the Inception
width) and random thumbnails in the work-folder format, then runs `build_bank`, which finds every shard done (the
resume path) and goes straight to pass 2. Captions come from a small pathology phrase list.

    python benchmarks/bench_bank_build.py [--tiles 100000] [--size 1000] [--shard-size 4096]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
import time
from pathlib import Path

import torch

from unipath_pipeline.bank_builder import BankBuildConfig, build_bank
from unipath_pipeline.io_utils import atomic_save_safetensors

PHRASES = ["irregular glands", "desmoplastic stroma", "dark nuclei", "prominent nucleoli", "lymphocytic infiltrate",
           "necrosis", "mitoses", "keratin pearls", "adipose tissue", "mucin pools", "solid sheets", "papillary fronds"]


def write_fake_pass_one(work: Path, tiles: int, shard_size: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    rows = []
    for number, start in enumerate(range(0, tiles, shard_size)):
        n = min(shard_size, tiles - start)
        records = []
        for i in range(start, start + n):
            text = f"tumour with {PHRASES[i % 12]} and {PHRASES[(i * 7 + 3) % 12]}"
            rows.append({"file_name": f"t{i}.png", "text": text})
            records.append({"file_name": f"t{i}.png", "caption": text, "passed": True, "reason": "", "tissue": 0.9, "blur": 300.0})
        features = torch.nn.functional.normalize(torch.randn(n, 2048, generator=generator), dim=-1)
        tensors = {
            "image_features": features,
            "thumbnails": torch.randint(0, 255, (n, 64, 64, 3), dtype=torch.uint8, generator=generator),
            "phash": torch.randint(-(2**62), 2**62, (n,), generator=generator),
        }
        atomic_save_safetensors(tensors, str(work / f"features-{number:05d}.safetensors"), {"records": records})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiles", type=int, default=100_000)
    parser.add_argument("--size", type=int, default=1000)
    parser.add_argument("--shard-size", type=int, default=4096)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "work").mkdir()
        start = time.perf_counter()
        rows = write_fake_pass_one(tmp / "work", args.tiles, args.shard_size)
        (tmp / "captions.jsonl").write_text("".join(f'{{"file_name": "{r["file_name"]}", "text": "{r["text"]}"}}\n' for r in rows))
        prepared = time.perf_counter() - start
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        start = time.perf_counter()
        bank = build_bank(str(tmp / "images"), str(tmp / "captions.jsonl"), str(tmp / "bank"),
                          config=BankBuildConfig(size=args.size, shard_size=args.shard_size), work_dir=str(tmp / "work"))
        elapsed = time.perf_counter() - start
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    feature_mib = args.tiles * 2048 * 4 / 2**20
    print(f"tiles={args.tiles} size={args.size} shards of {args.shard_size} (pass-1 shards written in {prepared:.0f} s)")
    print(f"pass 2: {elapsed:.1f} s; peak RSS {peak / 1024:.0f} MiB (before pass 2: {before / 1024:.0f} MiB; "
          f"the 2048-d features alone are {feature_mib:.0f} MiB); bank: {bank}")


if __name__ == "__main__":
    main()
