"""Pipeline speed and overhead on the tiny preset.

Prints, for two image sizes:
- seconds per image from a prompt (`pipe(prompt, ...)`: encoding, denoising, decoding);
- seconds per image from the same precomputed conditioning and noise (`pipe(conditioning=..., latents=...)`);
- seconds for a bare loop of the same transformer forwards (guidance branches batched), Euler updates and VAE
  decode on those same inputs, and the ratio of the two (target <= 1.05: the pipeline adds almost nothing);
- the number of MLLM forwards per call (must be 1, whatever the number of steps).

    python benchmarks/bench_pipeline.py [--sizes 64 128] [--steps 30] [--repeats 5] [--preset tiny]
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.latents import denormalize_latents

PROMPT = "colon adenocarcinoma, irregular glands in desmoplastic stroma"
PROTOTYPES = [0, 3]


def bare_loop(pipe: UniPathPipeline, conditioning, latents: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """The irreducible work: transformer forwards over [null, cond], Euler steps, VAE decode."""
    embeds = torch.cat([torch.zeros_like(conditioning.embeds), conditioning.embeds])
    mask = torch.cat([conditioning.mask, conditioning.mask])
    sigmas = np.append(np.linspace(1.0, 1.0 / steps, steps), 0.0)
    for sigma, sigma_next in zip(sigmas[:-1], sigmas[1:]):
        timestep = torch.full((2 * latents.shape[0],), sigma * 1000.0)
        prediction = pipe.transformer(
            latents.repeat(2, 1, 1, 1), encoder_hidden_states=embeds, encoder_attention_mask=mask, timestep=timestep,
            added_cond_kwargs={"resolution": None, "aspect_ratio": None}, return_dict=False,
        )[0]
        uncond, cond = prediction.chunk(2)
        latents = latents + (sigma_next - sigma) * (uncond + guidance * (cond - uncond))
    vae_latents = denormalize_latents(pipe.vae, latents, pipe.config.latent_convention)
    return pipe.vae.decode(vae_latents, return_dict=False)[0]


def median_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def count_mllm_forwards(pipe: UniPathPipeline, size: int, steps: int) -> int:
    calls = []
    handle = pipe.mllm.base_model.register_forward_hook(lambda *_: calls.append(1))
    try:
        pipe(PROMPT, height=size, width=size, num_inference_steps=steps, prototype_ids=PROTOTYPES, output_type="pt")
    finally:
        handle.remove()
    return len(calls)


@torch.no_grad()
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--guidance", type=float, default=3.0)
    args = parser.parse_args()

    pipe = UniPathPipeline.from_preset(args.preset, seed=0)
    pipe.set_progress_bar_config(disable=True)
    print(f"preset={args.preset} steps={args.steps} guidance={args.guidance} threads={torch.get_num_threads()}")
    print(f"{'size':>6} {'prompt->image s':>16} {'pipeline s':>11} {'bare loop s':>12} {'ratio':>7} {'MLLM forwards/call':>19}")
    for size in args.sizes:
        latent_size = size // pipe.vae_scale_factor
        noise = torch.randn(1, pipe.transformer.config.in_channels, latent_size, latent_size, generator=torch.Generator().manual_seed(0))
        conditioning = pipe.encode_prompt(PROMPT, prototype_ids=PROTOTYPES)

        common = dict(height=size, width=size, num_inference_steps=args.steps, guidance_scale=args.guidance,
                      latents=noise, output_type="pt")

        def run_from_prompt():
            return pipe(PROMPT, prototype_ids=PROTOTYPES, **common).images

        def run_pipeline():
            return pipe(conditioning=conditioning, **common).images

        def run_bare():
            return bare_loop(pipe, conditioning, noise, args.steps, args.guidance)

        # Same inputs, same work: the two images must agree before their times are compared.
        reference = (run_bare() / 2 + 0.5).clamp(0, 1)
        difference = max((run() - reference).abs().max().item() for run in (run_pipeline, run_from_prompt))
        if difference > 1e-4:
            raise SystemExit(f"pipeline and bare loop disagree by {difference:.2e} at {size}px; the comparison is void")
        full = median_seconds(run_from_prompt, args.repeats)
        piped, bare = median_seconds(run_pipeline, args.repeats), median_seconds(run_bare, args.repeats)
        forwards = count_mllm_forwards(pipe, size, args.steps)
        print(f"{size:>6} {full:>16.4f} {piped:>11.4f} {bare:>12.4f} {piped / bare:>7.3f} {forwards:>19}")


if __name__ == "__main__":
    main()
