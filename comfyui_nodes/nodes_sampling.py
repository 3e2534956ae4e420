"""UniPath Sampler (condition tokens -> IMAGE and LATENT) and UniPath Decode (LATENT -> IMAGE)."""

from __future__ import annotations

from typing import Dict

import torch

from unipath_pipeline import UniPathConditioning, UniPathPipeline

from .comfy_compat import StepProgress, io, raise_if_interrupted
from .sockets import UniPathConditioningSocket, UniPathPipelineSocket
from .tensors import comfy_latent, decode_latents, latents_from_comfy

CATEGORY = "UniPath"
MAX_SIZE = 4096
MAX_BATCH = 64
MAX_STEPS = 1000


def check_image_size(pipe: UniPathPipeline, width: int, height: int) -> None:
    """Raises `ValueError` naming `width` / `height` unless both are positive multiples of the model's spatial
    multiple (VAE down-sampling x patch size)."""
    multiple = pipe.spatial_multiple
    for name, value in (("width", width), ("height", height)):
        if value <= 0 or value % multiple:
            lower = value - value % multiple
            nearest = " or ".join(str(v) for v in (lower, lower + multiple) if v > 0)
            raise ValueError(
                f"`{name}` must be a positive multiple of {multiple} for this UniPath model; got {value} "
                f"(nearest valid: {nearest})."
            )


def stream_weights(conditioning: UniPathConditioning, weights: Dict[str, float]) -> Dict[str, float]:
    """The non-zero per-stream guidance weights; raises `ValueError` naming `<stream>_guidance` for a stream that the
    conditioning does not hold."""
    chosen = {stream: float(w) for stream, w in weights.items() if w}
    for stream, weight in chosen.items():
        if weight < 0:
            raise ValueError(f"`{stream}_guidance` must be >= 0; got {weight}.")
        if stream not in conditioning.streams:
            raise ValueError(
                f"`{stream}_guidance` is {weight} but the conditioning has no '{stream}' stream (it holds "
                f"{list(conditioning.streams)}); set it to 0 or switch the stream on in UniPath Encode."
            )
    return chosen


class UniPathSampler(io.ComfyNode):
    """Denoises from seeded noise under the condition tokens; returns the decoded images and the latents."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathSampler",
            display_name="UniPath Sampler",
            category=CATEGORY,
            description="Generates H&E tiles with flow-matching Euler steps. Joint classifier-free guidance (null = "
                        "all streams zeroed, as the original) plus optional per-stream guidance.",
            inputs=[
                UniPathPipelineSocket.Input("pipeline"),
                UniPathConditioningSocket.Input("conditioning"),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, control_after_generate=True),
                io.Int.Input("steps", default=30, min=1, max=MAX_STEPS),
                io.Float.Input("guidance_scale", default=3.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Joint guidance scale s; 1 disables the unconditional branch."),
                io.Float.Input("text_guidance", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Extra guidance towards the raw-text stream (0: off; each non-zero weight "
                                       "costs one more batched branch)."),
                io.Float.Input("dst_guidance", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Extra guidance towards the diagnostic semantic tokens."),
                io.Float.Input("prototype_guidance", default=0.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Extra guidance towards the prototypes."),
                io.Int.Input("width", default=128, min=8, max=MAX_SIZE, step=8,
                             tooltip="A multiple of the model's size multiple (see UniPath Loader's info)."),
                io.Int.Input("height", default=128, min=8, max=MAX_SIZE, step=8,
                             tooltip="A multiple of the model's size multiple (see UniPath Loader's info)."),
                io.Int.Input("batch_size", default=1, min=1, max=MAX_BATCH, tooltip="Images to generate."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image"),
                io.Latent.Output("latent", display_name="latent"),
            ],
        )

    @classmethod
    def execute(
        cls,
        pipeline: UniPathPipeline,
        conditioning: UniPathConditioning,
        seed: int = 0,
        steps: int = 30,
        guidance_scale: float = 3.0,
        text_guidance: float = 0.0,
        dst_guidance: float = 0.0,
        prototype_guidance: float = 0.0,
        width: int = 128,
        height: int = 128,
        batch_size: int = 1,
    ) -> io.NodeOutput:
        check_image_size(pipeline, width, height)
        if not 1 <= steps <= MAX_STEPS:
            raise ValueError(f"`steps` must be in 1..{MAX_STEPS}; got {steps}.")
        if not 1 <= batch_size <= MAX_BATCH:
            raise ValueError(f"`batch_size` must be in 1..{MAX_BATCH}; got {batch_size}.")
        weights = stream_weights(conditioning, {"text": text_guidance, "dst": dst_guidance, "prototype": prototype_guidance})
        raise_if_interrupted()
        progress = StepProgress(steps)
        latents = pipeline(
            conditioning=conditioning,
            streams=conditioning.streams,
            height=height,
            width=width,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            stream_guidance=weights,
            num_images_per_prompt=batch_size,
            generator=torch.Generator(device="cpu").manual_seed(seed),
            output_type="latent",
            callback_on_step_end=progress.on_step_end,
        ).images
        raise_if_interrupted()
        return io.NodeOutput(decode_latents(pipeline, latents), comfy_latent(latents))


class UniPathDecode(io.ComfyNode):
    """Decodes UniPath latents into images with the model's own VAE and latent convention."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathDecode",
            display_name="UniPath Decode",
            category=CATEGORY,
            description="Decodes a LATENT made by UniPath Sampler with the same model's VAE.",
            inputs=[
                UniPathPipelineSocket.Input("pipeline"),
                io.Latent.Input("latent"),
            ],
            outputs=[io.Image.Output("image", display_name="image")],
        )

    @classmethod
    def execute(cls, pipeline: UniPathPipeline, latent: Dict[str, torch.Tensor]) -> io.NodeOutput:
        return io.NodeOutput(decode_latents(pipeline, latents_from_comfy(pipeline, latent)))
