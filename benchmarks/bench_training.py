"""Training throughput with and without the precomputed cache (training/precompute.py), in samples per second.

Runs `training/train_unipath.py` twice on the same data (images decoded, resized and VAE-encoded every step, against
the cache) and reports the median per-step throughput after warm-up, and the speed-up.

    python benchmarks/bench_training.py [--train_data_dir DIR] [--resolution 64] [--steps 30] [--batch 8]

Without --train_data_dir it writes 64 synthetic 256x256 PNG tiles (decoding and resizing them is part of the cost).
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


def synthetic_folder(root: Path, n: int = 64, size: int = 256) -> Path:
    root.mkdir(parents=True)
    rng = np.random.default_rng(0)
    words = ["gland", "stroma", "lymphocyte", "necrosis", "mitosis", "mucin"]
    with open(root / "metadata.jsonl", "w") as f:
        for i in range(n):
            Image.fromarray((rng.random((size, size, 3)) * 255).astype("uint8")).save(root / f"{i}.png")
            f.write(json.dumps({"file_name": f"{i}.png", "text": f"{words[i % 6]} and {words[(i + 2) % 6]}"}) + "\n")
    return root


def run(script: str, *args: str) -> None:
    subprocess.run([sys.executable, str(REPO / "training" / script), *args], check=True, capture_output=True)


def samples_per_second(run_dir: Path, batch: int, warmup: int) -> float:
    seconds = [json.loads(l)["seconds"] for l in (run_dir / "train_loss.jsonl").read_text().splitlines()][warmup:]
    return batch / statistics.median(seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="preset:tiny")
    parser.add_argument("--train_data_dir")
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=5)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = Path(args.train_data_dir) if args.train_data_dir else synthetic_folder(tmp / "data")
        common = ["--pretrained_model_name_or_path", args.model, "--resolution", str(args.resolution),
                  "--train_batch_size", str(args.batch), "--max_train_steps", str(args.steps), "--checkpointing_steps", "100000"]
        run("precompute.py", "--pretrained_model_name_or_path", args.model, "--train_data_dir", str(data),
            "--resolution", str(args.resolution), "--output_dir", str(tmp / "cache"))
        run("train_unipath.py", *common, "--train_data_dir", str(data), "--output_dir", str(tmp / "uncached"))
        run("train_unipath.py", *common, "--cache_dir", str(tmp / "cache"), "--output_dir", str(tmp / "cached"))
        uncached = samples_per_second(tmp / "uncached", args.batch, args.warmup)
        cached = samples_per_second(tmp / "cached", args.batch, args.warmup)
    print(f"model={args.model} resolution={args.resolution} batch={args.batch} steps={args.steps} (median after {args.warmup} warm-up steps)")
    print(f"{'uncached samples/s':>20} {'cached samples/s':>18} {'speed-up':>9}")
    print(f"{uncached:>20.1f} {cached:>18.1f} {cached / uncached:>8.2f}x")


if __name__ == "__main__":
    main()
