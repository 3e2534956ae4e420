#!/usr/bin/env python
"""A grid of images from the bundled default model: one row per prompt, one column per seed, with the real tiles'
look for comparison left to the reader.

    python examples/default_model_grid.py --out docs/default-samples.jpg [--seeds 3] [--steps 30] [--guidance 3]
"""

from __future__ import annotations

import argparse

import torch
from PIL import Image, ImageDraw

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.io_utils import atomic_path

PROMPTS = (
    "H&E skin, epidermis, dermis, collagen, eosinophilic stroma, 20x",
    "H&E skin, intradermal nevus, nests of melanocytes in the dermis, 10x",
    "H&E breast, carcinoma, pleomorphic nuclei, prominent nucleoli, 40x",
    "H&E tumour, dense hyperchromatic nuclei, 40x",
)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="the grid image (.jpg or .png)")
    parser.add_argument("--prompt", action="append", default=None, help="a row (repeatable; default: four examples)")
    parser.add_argument("--seeds", type=int, default=3, help="columns (>= 1)")
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args(argv)
    if args.seeds < 1 or args.steps < 1:
        parser.error("--seeds and --steps must be >= 1")
    prompts = args.prompt or list(PROMPTS)
    pipe = UniPathPipeline.from_default()
    label_height, pad = 14, 4
    rows = []
    for prompt in prompts:
        generators = [torch.Generator().manual_seed(seed) for seed in range(args.seeds)]
        images = pipe(prompt, num_images_per_prompt=args.seeds, num_inference_steps=args.steps,
                      guidance_scale=args.guidance, generator=generators).images
        rows.append((prompt, images))
    size = rows[0][1][0].width
    grid = Image.new("RGB", (args.seeds * (size + pad) - pad, len(rows) * (size + label_height + pad)), "white")
    draw = ImageDraw.Draw(grid)
    for r, (prompt, images) in enumerate(rows):
        top = r * (size + label_height + pad)
        draw.text((2, top + 1), prompt, fill="black")
        for c, image in enumerate(images):
            grid.paste(image, (c * (size + pad), top + label_height))
    with atomic_path(args.out) as tmp:
        grid.save(tmp, format="JPEG" if args.out.lower().endswith((".jpg", ".jpeg")) else "PNG", quality=90)
    print(f"wrote {args.out}: {len(rows)} prompts x {args.seeds} seeds")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
