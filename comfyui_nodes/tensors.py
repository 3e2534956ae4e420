"""Conversions between ComfyUI's tensor layouts and the pipeline's.

ComfyUI: IMAGE is `[B, H, W, C]` float32 in 0..1 on the CPU; LATENT is a dict `{"samples": [B, C, h, w]}`.
The pipeline: images `[B, C, H, W]` in 0..1 (`output_type="pt"`), latents `[B, C, h, w]` in its transformer's space.
"""

from __future__ import annotations

from typing import Dict

import numpy as np
import PIL.Image
import torch

from unipath_pipeline import UniPathPipeline


def comfy_image_from_pipeline(images: torch.Tensor) -> torch.Tensor:
    """`[B, C, H, W]` images in 0..1 -> a ComfyUI IMAGE `[B, H, W, C]` float32 on the CPU."""
    return images.permute(0, 2, 3, 1).clamp(0, 1).to(device="cpu", dtype=torch.float32).contiguous()


def pil_from_comfy_image(image: torch.Tensor, argument: str = "image", index: int = 0) -> PIL.Image.Image:
    """Image `index` of a ComfyUI IMAGE batch as an RGB PIL image (grey or RGBA batches are converted)."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 3, 4):
        raise ValueError(f"`{argument}` must be a ComfyUI IMAGE [batch, height, width, channels]; got {tuple(image.shape)}.")
    if not 0 <= index < image.shape[0]:
        raise ValueError(f"`{argument}` has {image.shape[0]} images; index {index} does not exist.")
    pixels = (image[index].detach().float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
    if pixels.shape[-1] == 1:
        pixels = np.repeat(pixels, 3, axis=-1)
    return PIL.Image.fromarray(np.ascontiguousarray(pixels[..., :3]))


def comfy_latent(latents: torch.Tensor) -> Dict[str, torch.Tensor]:
    """Pipeline latents -> a ComfyUI LATENT (kept on the CPU, as ComfyUI's own samplers do)."""
    return {"samples": latents.detach().to(device="cpu", dtype=torch.float32)}


def latents_from_comfy(pipe: UniPathPipeline, latent: Dict[str, torch.Tensor], argument: str = "latent") -> torch.Tensor:
    """The `samples` of a ComfyUI LATENT, checked against the pipeline's latent space."""
    samples = latent.get("samples") if isinstance(latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4:
        raise ValueError(f"`{argument}` must be a ComfyUI LATENT {{'samples': [batch, channels, h, w]}}.")
    channels = pipe.transformer.config.in_channels
    if samples.shape[1] != channels:
        raise ValueError(
            f"`{argument}` has {samples.shape[1]} channels but this UniPath model's latents have {channels}; "
            "decode latents with the pipeline that made them."
        )
    return samples


def decode_latents(pipe: UniPathPipeline, latents: torch.Tensor) -> torch.Tensor:
    """Pipeline latents -> a ComfyUI IMAGE, with the pipeline's own decoding."""
    return comfy_image_from_pipeline(pipe.decode_latents(latents, output_type="pt"))
