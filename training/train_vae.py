#!/usr/bin/env python
"""Train a small `AutoencoderKL` on image tiles (for CPU-sized UniPath models), then measure its latent statistics.

    python training/train_vae.py --train_data_dir data/unipath-tiny/train --resolution 128 \\
        --output_dir runs/vae --max_train_steps 3000

Loss: L1 + MSE on pixels, L1 on image gradients (keeps nuclei edges sharp without a perceptual network, none of
which is available offline) and a small KL term. At the end the encoder's latent mean and standard deviation over the
training tiles become the VAE config's `shift_factor` and `scaling_factor` (as for SD3's VAE), so the diffusion
transformer sees unit-variance latents under the pipeline's "diffusers" latent convention.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import set_seed
from diffusers import AutoencoderKL
from tqdm.auto import tqdm

from unipath_pipeline.data import DataError, ImageCaptionCollator, ImageCaptionFolder, StepBatchSampler

logger = logging.getLogger("train_vae")

SIZES = {
    "tiny": dict(block_out_channels=(32, 64, 128), layers_per_block=1, latent_channels=4, norm_num_groups=32),
    "small": dict(block_out_channels=(64, 128, 256), layers_per_block=2, latent_channels=4, norm_num_groups=32),
}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--train_data_dir", required=True)
    p.add_argument("--output_dir", required=True)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--resolution", type=int, default=128, help="tile size the VAE is made for")
    p.add_argument("--crop", type=int, default=64, help="random training crops (the VAE is convolutional; 4x cheaper)")
    p.add_argument("--train_batch_size", type=int, default=8)
    p.add_argument("--max_train_steps", type=int, default=3000)
    p.add_argument("--learning_rate", type=float, default=2e-4)
    p.add_argument("--kl_weight", type=float, default=1e-6)
    p.add_argument("--edge_weight", type=float, default=0.5)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--log_every", type=int, default=100)
    args = p.parse_args(argv)
    for name in ("resolution", "crop", "train_batch_size", "max_train_steps"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be >= 1")
    return args


def gradients(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return x[..., 1:, :] - x[..., :-1, :], x[..., :, 1:] - x[..., :, :-1]


def reconstruction_loss(x: torch.Tensor, y: torch.Tensor, edge_weight: float) -> torch.Tensor:
    loss = F.l1_loss(y, x) + F.mse_loss(y, x)
    for gx, gy in zip(gradients(x), gradients(y)):
        loss = loss + edge_weight * F.l1_loss(gy, gx)
    return loss


@torch.no_grad()
def latent_statistics(vae: AutoencoderKL, loader, batches: int, device) -> tuple[float, float]:
    samples = []
    for _, batch in zip(range(batches), loader):
        samples.append(vae.encode(batch["pixel_values"].to(device)).latent_dist.mean.flatten())
    values = torch.cat(samples)
    return values.mean().item(), values.std().item()


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s %(name)s: %(message)s", level=logging.INFO)
    accelerator = Accelerator(cpu=not torch.accelerator.is_available())
    set_seed(args.seed)
    dataset = ImageCaptionFolder(args.train_data_dir)
    collate = ImageCaptionCollator(args.resolution)
    loader = torch.utils.data.DataLoader(dataset, batch_sampler=StepBatchSampler(len(dataset), args.train_batch_size, args.seed), collate_fn=collate)
    vae = AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                        up_block_types=("UpDecoderBlock2D",) * 3, sample_size=args.resolution, **SIZES[args.size])
    optimizer = torch.optim.AdamW(vae.parameters(), lr=args.learning_rate, weight_decay=1e-4)
    vae, optimizer = accelerator.prepare(vae, optimizer)
    batches = iter(loader)
    running = []
    for step in tqdm(range(1, args.max_train_steps + 1), desc="vae"):
        x = next(batches)["pixel_values"].to(accelerator.device)
        if args.crop < args.resolution:
            top, left = (int(v) for v in torch.randint(0, args.resolution - args.crop + 1, (2,)))
            x = x[..., top : top + args.crop, left : left + args.crop]
        if torch.rand(()) < 0.5:  # flips and 90-degree rotations: H&E has no orientation
            x = x.flip(-1)
        x = torch.rot90(x, int(torch.randint(0, 4, ())), dims=(-2, -1))
        posterior = accelerator.unwrap_model(vae).encode(x).latent_dist
        y = accelerator.unwrap_model(vae).decode(posterior.sample()).sample
        loss = reconstruction_loss(x, y, args.edge_weight) + args.kl_weight * posterior.kl().mean()
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad()
        running.append(loss.item())
        if step % args.log_every == 0:
            logger.info("step %d loss %.4f", step, sum(running) / len(running))
            running = []
    vae = accelerator.unwrap_model(vae).eval()
    mean, std = latent_statistics(vae, iter(loader), max(1, 256 // args.train_batch_size), accelerator.device)
    vae.register_to_config(shift_factor=mean, scaling_factor=1.0 / std)
    staging = os.path.normpath(args.output_dir) + ".tmp"
    shutil.rmtree(staging, ignore_errors=True)
    vae.save_pretrained(staging)
    shutil.rmtree(args.output_dir, ignore_errors=True)
    os.replace(staging, args.output_dir)
    print(f"saved {args.output_dir}: {sum(p.numel() for p in vae.parameters()):,} parameters, latent mean {mean:.4f}, std {std:.4f}")
    return 0


if __name__ == "__main__":
    try:
        raise SystemExit(main())
    except DataError as error:
        raise SystemExit(f"train_vae.py: error: {error}")
