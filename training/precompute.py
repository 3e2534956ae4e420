#!/usr/bin/env python
"""Cache what is frozen during UniPath training, so that training skips the VAE encoder and the embedding lookups.

    python training/precompute.py --pretrained_model_name_or_path preset:tiny --train_data_dir tiles/ \\
        --resolution 32 --output_dir cache/ [--shard_size 1024] [--batch_size 16]

Per sample: the VAE posterior (mean and std, so training still samples fresh latents), the raw-text embeddings
(before the trainable down-projection), the DST prompt tokens, and the retrieved prototype features (the sample's
own bank entry excluded). Shards of `--shard_size` samples are written atomically with an `index.json`; a rerun
skips the shards that exist, so an interrupted run resumes. Memory holds one shard at a time.
Then: `train_unipath.py --cache_dir cache/ ...`.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import os
import sys
from typing import List, Optional

import torch
from tqdm.auto import tqdm

from unipath_pipeline.model_sources import load_pipeline
from unipath_pipeline.data import DataError, ImageCaptionCollator, add_data_arguments, open_from_args
from unipath_pipeline.training_cache import shard_name, write_index, write_shard
from unipath_pipeline.training_utils import pad_prototype_features, step_generator

logger = logging.getLogger("precompute")


def parse_args(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pretrained_model_name_or_path", required=True)
    p.add_argument("--output_dir", required=True, help="the cache folder")
    add_data_arguments(p)
    p.add_argument("--shard_size", type=int, default=1024)
    p.add_argument("--batch_size", type=int, default=16, help="samples per VAE / embedding batch")
    p.add_argument("--seed", type=int, default=0, help="seeds the prototype retrieval of each sample")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args(argv)
    for name in ("shard_size", "batch_size"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1 (got {getattr(args, name)})")
    return args


@torch.no_grad()
def encode_records(pipe, collate: ImageCaptionCollator, records, first_index: int, seed: int) -> List[dict]:
    """Cache entries for one batch of `ImageCaption` records (unreadable images dropped)."""
    batch = collate(records)
    if not batch["captions"]:
        return []
    posterior = pipe.vae.encode(batch["pixel_values"].to(pipe.device, pipe.vae.dtype)).latent_dist
    tokens = pipe.dst_encoder.tokenize(pipe.tokenizer, batch["captions"])
    text_embeds = pipe.dst_encoder.embed_text(pipe.mllm, tokens).float().cpu()
    adapter = pipe.prototype_adapter.config
    ids_per_sample = []
    for position, caption in zip(batch["positions"], batch["captions"]):
        own = records[position].bank_id
        chosen = [] if pipe.prototype_bank is None else pipe.prototype_bank.retrieve(
            caption, limit=adapter.max_prototypes, exclude=[own] if own is not None else [],
            generator=step_generator(seed, first_index + position),
        )
        ids_per_sample.append([p.id for p in chosen])
    features, mask = pad_prototype_features(
        [pipe.prototype_bank.select(ids) if ids else torch.zeros(0, adapter.feature_dim) for ids in ids_per_sample],
        adapter.max_prototypes, adapter.feature_dim,
    )
    entries = []
    for i, (caption, key) in enumerate(zip(batch["captions"], batch["keys"])):
        entries.append(dict(
            latent_mean=posterior.mean[i].float().cpu(), latent_std=posterior.std[i].float().cpu(),
            text_embeds=text_embeds[i], text_attention_mask=tokens.text_attention_mask[i],
            text_input_ids=tokens.text_input_ids[i],
            prefix_input_ids=tokens.prefix_input_ids[i, : tokens.prefix_lengths[i]], prefix_lengths=tokens.prefix_lengths[i],
            prototype_features=features[i], prototype_mask=mask[i],
            caption=caption, key=key, prototype_ids=ids_per_sample[i],
        ))
    return entries


def main(argv: Optional[List[str]] = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    source = open_from_args(args)
    pipe = load_pipeline(args.pretrained_model_name_or_path, device=args.device)
    resolution = args.resolution or pipe.transformer.config.sample_size * pipe.vae_scale_factor
    if resolution % pipe.spatial_multiple:
        raise DataError(f"--resolution must be a multiple of {pipe.spatial_multiple} for this model (got {resolution}).")
    if pipe.mllm is None or pipe.tokenizer is None:
        raise DataError("The pipeline has no mllm/tokenizer to embed the captions with.")
    collate = ImageCaptionCollator(resolution, args.center_crop)
    os.makedirs(args.output_dir, exist_ok=True)

    records = iter(source) if isinstance(source, torch.utils.data.IterableDataset) else (source[i] for i in range(len(source)))
    total = None if isinstance(source, torch.utils.data.IterableDataset) else len(source)
    shards, skipped, number = [], 0, 0
    with tqdm(total=total, desc="precompute", unit="img") as progress:
        while True:
            chunk = list(itertools.islice(records, args.shard_size))
            if not chunk:
                break
            path = os.path.join(args.output_dir, shard_name(number))
            if os.path.isfile(path):  # written by an earlier, interrupted run
                from safetensors import safe_open

                with safe_open(path, framework="pt") as f:
                    shards.append({"file": shard_name(number), "num_samples": f.get_slice("prefix_lengths").get_shape()[0]})
            else:
                entries = []
                for start in range(0, len(chunk), args.batch_size):
                    entries += encode_records(pipe, collate, chunk[start : start + args.batch_size], number * args.shard_size + start, args.seed)
                skipped += len(chunk) - len(entries)
                if entries:
                    shards.append(write_shard(args.output_dir, number, entries))
            progress.update(len(chunk))
            number += 1
    if not shards:
        raise DataError("No readable image in the source: nothing was cached.")
    write_index(args.output_dir, shards, {
        "model": args.pretrained_model_name_or_path, "resolution": resolution, "seed": args.seed, "skipped_images": skipped,
    })
    print(f"cached {sum(s['num_samples'] for s in shards)} samples in {len(shards)} shard(s) at {args.output_dir}; skipped {skipped} unreadable image(s)")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except DataError as error:
        print(f"precompute.py: error: {error}", file=sys.stderr)
        sys.exit(2)
