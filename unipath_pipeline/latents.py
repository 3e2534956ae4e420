"""How VAE latents are normalised before the transformer sees them.

Two conventions exist; a pipeline records its own in its config (`latent_convention`):

- `"diffusers"` (SD3 style, the default for our models): encode `(z - shift) * scale`, decode `z / scale + shift`.
- `"unipath_original"` (the original UniPath release, needed by converted official weights): encode `z * scale`
  (no shift), decode `z / scale - shift` (note the sign).

`scale` and `shift` are the VAE config's `scaling_factor` and `shift_factor` (a missing shift counts as 0).
"""

from __future__ import annotations

import torch

LATENT_CONVENTIONS = ("diffusers", "unipath_original")


def _factors(vae) -> tuple[float, float]:
    return vae.config.scaling_factor, (getattr(vae.config, "shift_factor", None) or 0.0)


def check_latent_convention(convention: str) -> str:
    """Returns `convention` or raises `ValueError` listing the accepted names."""
    if convention not in LATENT_CONVENTIONS:
        raise ValueError(f"`latent_convention` must be one of {list(LATENT_CONVENTIONS)}; got {convention!r}.")
    return convention


def normalize_latents(vae, z: torch.Tensor, convention: str) -> torch.Tensor:
    """VAE latents (a posterior sample) -> the transformer's latent space."""
    scale, shift = _factors(vae)
    if check_latent_convention(convention) == "diffusers":
        return (z - shift) * scale
    return z * scale


def denormalize_latents(vae, latents: torch.Tensor, convention: str) -> torch.Tensor:
    """The transformer's latent space -> VAE latents ready for `vae.decode`."""
    scale, shift = _factors(vae)
    if check_latent_convention(convention) == "diffusers":
        return latents / scale + shift
    return latents / scale - shift
