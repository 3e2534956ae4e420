"""UniPath: H&E pathology image generation conditioned on raw text, diagnostic semantic tokens and prototypes."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Union

import numpy as np
import PIL.Image
import torch
from diffusers import AutoencoderKL, DiffusionPipeline, FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel
from diffusers.image_processor import VaeImageProcessor
from diffusers.utils import BaseOutput, logging, replace_example_docstring
from diffusers.utils.torch_utils import randn_tensor

from .attributes import AttributeBundle, can_generate, generate_bundle
from .conditioning import STREAMS, UniPathConditioning, assemble_conditioning, check_stream_names
from .dst_encoder import DSTEncoder
from .latents import check_latent_convention, denormalize_latents
from .lora import UniPathLoraLoaderMixin
from .prototype_adapter import PrototypeAdapter
from .prototype_bank import PrototypeBank, RetrievedPrototype

logger = logging.get_logger(__name__)

EXAMPLE_DOC_STRING = """
    Examples:
        ```py
        >>> import torch
        >>> from unipath_pipeline import UniPathPipeline

        >>> pipe = UniPathPipeline.from_preset("tiny", seed=0)  # random weights, for trying the API
        >>> out = pipe("colon adenocarcinoma, irregular glands in desmoplastic stroma", prototype_ids=[0, 3],
        ...            num_inference_steps=30, generator=torch.Generator().manual_seed(0))
        >>> out.images[0].save("tile.png")
        ```
"""


@dataclass
class UniPathPipelineOutput(BaseOutput):
    """Output of `UniPathPipeline`.

    Args:
        images: the generated images (PIL images, a `[B, H, W, 3]` numpy array, a `[B, 3, H, W]` tensor, or latents
            for `output_type="latent"`).
        prototype_ids: for each image, the prototype bank ids that conditioned it.
        streams: the condition streams that were used.
        prototypes: for each image, the prototypes used and why each was chosen.
        attributes: for each image, its prompt's attribute bundle (`AttributeBundle.as_dict()`).
    """

    images: Union[List[PIL.Image.Image], np.ndarray, torch.Tensor]
    prototype_ids: List[List[int]]
    streams: tuple
    prototypes: List[List[RetrievedPrototype]]
    attributes: List[Dict[str, Any]]


PromptIds = Optional[Union[Sequence[int], Sequence[Sequence[int]]]]
PromptKeywords = Optional[Union[Sequence[str], Sequence[Sequence[str]]]]
PromptImages = Optional[Union[PIL.Image.Image, Sequence[Optional[PIL.Image.Image]]]]


def retrieval_generator(generator) -> Optional[torch.Generator]:
    """A generator for retrieval sampling seeded like the call's, so retrieval never shifts the latents' noise."""
    first = generator[0] if isinstance(generator, list) else generator
    return None if first is None else torch.Generator().manual_seed(first.initial_seed())


@dataclass
class PrototypeChoice:
    """What one prompt asks of the prototype bank."""

    ids: List[int] = field(default_factory=list)
    keywords: List[str] = field(default_factory=list)
    image: Optional[PIL.Image.Image] = None
    retrieve: bool = False


def _per_prompt(value, batch: int, argument: str, is_item_list) -> list:
    """`None` -> empty lists; a flat list -> the same list for every prompt; a list of lists -> one per prompt."""
    if value is None:
        return [[] for _ in range(batch)]
    if isinstance(value, str):
        raise ValueError(f"`{argument}` must be a list, not a string.")
    items = list(value)
    if items and all(is_item_list(v) for v in items):
        if len(items) != batch:
            raise ValueError(f"`{argument}` has {len(items)} lists but there are {batch} prompts.")
        return [list(v) for v in items]
    return [list(items) for _ in range(batch)]


class UniPathPipeline(DiffusionPipeline, UniPathLoraLoaderMixin):
    r"""Text-to-image pipeline for H&E pathology in the style of UniPath.

    Three condition streams enter the transformer's cross-attention as one masked token sequence: the prompt's token
    embeddings from the frozen MLLM (`"text"`), diagnostic semantic tokens read out of the MLLM by learnable queries
    (`"dst"`), and prototype bank entries projected into tokens (`"prototype"`).

    Args:
        transformer: the PixArt-style denoiser; its caption projection maps condition tokens into cross-attention.
        vae: the autoencoder of the latent space.
        scheduler: the flow-matching sampler.
        dst_encoder: learnable queries and prompt template of the raw-text and DST streams.
        prototype_adapter: prototype feature -> condition token MLP.
        mllm: the frozen understanding model; optional when `conditioning=` is always passed.
        tokenizer: the MLLM's tokenizer; optional as `mllm`.
        prototype_bank: prototype entries and features; needed for `prototype_ids`.
        latent_convention: `"diffusers"` or `"unipath_original"`, see `unipath_pipeline.latents`.
        integer_timesteps: give the transformer integer timesteps, as the original sampler did.
    """

    model_cpu_offload_seq = "mllm->dst_encoder->prototype_adapter->transformer->vae"
    _optional_components = ["mllm", "tokenizer", "prototype_bank"]
    _callback_tensor_inputs = ["latents"]

    def __init__(
        self,
        transformer: PixArtTransformer2DModel,
        vae: AutoencoderKL,
        scheduler: FlowMatchEulerDiscreteScheduler,
        dst_encoder: DSTEncoder,
        prototype_adapter: PrototypeAdapter,
        mllm: Optional[torch.nn.Module] = None,
        tokenizer: Optional[Any] = None,
        prototype_bank: Optional[PrototypeBank] = None,
        latent_convention: str = "diffusers",
        integer_timesteps: bool = False,
    ):
        super().__init__()
        check_latent_convention(latent_convention)
        widths = {
            "transformer.config.caption_channels": transformer.config.caption_channels,
            "dst_encoder.cond_dim": dst_encoder.cond_dim,
            "prototype_adapter.config.cond_dim": prototype_adapter.config.cond_dim,
        }
        if len(set(widths.values())) != 1:
            raise ValueError(f"The condition width must agree across components; got {widths}.")
        if mllm is not None:
            mllm.requires_grad_(False).eval()
        self.register_modules(
            transformer=transformer,
            vae=vae,
            scheduler=scheduler,
            dst_encoder=dst_encoder,
            prototype_adapter=prototype_adapter,
            mllm=mllm,
            tokenizer=tokenizer,
            prototype_bank=prototype_bank,
        )
        self.register_to_config(latent_convention=latent_convention, integer_timesteps=integer_timesteps)
        self.prototype_encoder = None  # retrieval encoder; None: the bank's offline default when it has one
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)
        self.image_processor = VaeImageProcessor(vae_scale_factor=self.vae_scale_factor)

    @classmethod
    def from_preset(cls, name: str, seed: int = 0, device: Union[str, torch.device] = "cpu") -> "UniPathPipeline":
        """Builds a pipeline with random weights from a named architecture (see `unipath_pipeline.presets`).

        `"tiny"` builds in seconds offline (tests, API trials); `"official"` has the original's dimensions and is
        meant for `device="meta"` (sizes and memory without allocating).
        """
        from .presets import build_preset

        components, config = build_preset(name, seed=seed, device=device)
        return cls(**components, **config)

    @classmethod
    def from_default(cls, device: Union[str, torch.device] = "cpu", dtype: Optional[torch.dtype] = None) -> "UniPathPipeline":
        """The bundled default model (trained on real H&E tiles, runs on a laptop CPU; see `default_model`)."""
        from .default_model import load_default

        return load_default(device, dtype)

    # ------------------------------------------------------------------------------------------------------------
    # Input checks: all of them run before any model does.
    # ------------------------------------------------------------------------------------------------------------

    @property
    def spatial_multiple(self) -> int:
        """Height and width must be multiples of this (VAE downsampling times the transformer's patch size)."""
        return self.vae_scale_factor * self.transformer.config.patch_size

    def check_inputs(
        self,
        prompt,
        height: int,
        width: int,
        num_inference_steps: int,
        guidance_scale: float,
        stream_guidance: Optional[Dict[str, float]],
        streams: tuple,
        prototype_ids: PromptIds,
        prototype_keywords: PromptKeywords,
        prototype_image: PromptImages,
        retrieve: Optional[bool],
        num_images_per_prompt: int,
        latents: Optional[torch.Tensor],
        conditioning: Optional[UniPathConditioning],
        output_type: str,
        callback_on_step_end_tensor_inputs: Sequence[str],
        generator=None,
    ) -> None:
        """Raises `ValueError` naming the offending argument and its accepted range."""
        m = self.spatial_multiple
        for name, value in (("height", height), ("width", width)):
            if not isinstance(value, int) or value <= 0 or value % m:
                raise ValueError(f"`{name}` must be a positive multiple of {m} (VAE factor x patch size); got {value}.")
        if not isinstance(num_inference_steps, int) or num_inference_steps < 1:
            raise ValueError(f"`num_inference_steps` must be an integer >= 1; got {num_inference_steps}.")
        if not math.isfinite(guidance_scale) or guidance_scale < 0:
            raise ValueError(f"`guidance_scale` must be a finite number >= 0; got {guidance_scale}.")
        for stream, weight in (stream_guidance or {}).items():
            check_stream_names([stream], "stream_guidance")
            if stream not in streams:
                raise ValueError(f"`stream_guidance` weights stream {stream!r}, which is off; `streams` is {streams}.")
            if not math.isfinite(weight) or weight < 0:
                raise ValueError(f"`stream_guidance[{stream!r}]` must be a finite number >= 0; got {weight}.")
        if not isinstance(num_images_per_prompt, int) or num_images_per_prompt < 1:
            raise ValueError(f"`num_images_per_prompt` must be an integer >= 1; got {num_images_per_prompt}.")
        if output_type not in ("pil", "np", "pt", "latent"):
            raise ValueError(f"`output_type` must be one of 'pil', 'np', 'pt', 'latent'; got {output_type!r}.")
        bad = [k for k in callback_on_step_end_tensor_inputs if k not in self._callback_tensor_inputs]
        if bad:
            raise ValueError(f"`callback_on_step_end_tensor_inputs` accepts {self._callback_tensor_inputs}; got {bad}.")

        if conditioning is None:
            if prompt is None:
                raise ValueError("Pass `prompt` (a string or a list of strings) or a precomputed `conditioning`.")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if not prompts or not all(isinstance(p, str) for p in prompts):
                raise ValueError("`prompt` must be a string or a non-empty list of strings.")
            if {"text", "dst"} & set(streams) and (self.mllm is None or self.tokenizer is None):
                raise ValueError(
                    "This pipeline has no `mllm`/`tokenizer`, so the 'text' and 'dst' streams cannot be encoded; pass "
                    "a precomputed `conditioning=` or load a pipeline with its understanding model."
                )
            batch = len(prompts)
            self.prototype_choices(prompts, prototype_ids, prototype_keywords, prototype_image, retrieve)
            given = [name for name, value in (("prototype_ids", prototype_ids), ("prototype_keywords", prototype_keywords),
                                              ("prototype_image", prototype_image), ("retrieve", retrieve)) if value]
            if "prototype" not in streams and given:
                raise ValueError(f"`{'`, `'.join(given)}` given but the 'prototype' stream is off in `streams`.")
        else:
            batch = len(conditioning)
            if prompt is not None:
                n = 1 if isinstance(prompt, str) else len(prompt)
                if n != batch:
                    raise ValueError(f"`prompt` has {n} entries but `conditioning` has batch size {batch}; they must match.")
            if any(x is not None for x in (prototype_ids, prototype_keywords, prototype_image, retrieve)):
                raise ValueError("`prototype_ids`, `prototype_keywords`, `prototype_image` and `retrieve` cannot be combined "
                                 "with `conditioning`: its prototypes are fixed.")
            missing = [s for s in streams if s not in conditioning.spans]
            if missing:
                raise ValueError(f"`streams` asks for {missing}, but `conditioning` holds only {list(conditioning.streams)}.")
            cond_width = self.transformer.config.caption_channels
            if conditioning.embeds.shape[-1] != cond_width:
                raise ValueError(
                    f"`conditioning` tokens are {conditioning.embeds.shape[-1]}-d; the transformer expects {cond_width}."
                )

        if isinstance(generator, list) and len(generator) != batch * num_images_per_prompt:
            raise ValueError(f"`generator` is a list of {len(generator)} generators but {batch * num_images_per_prompt} images are made.")
        if latents is not None:
            expected = (batch * num_images_per_prompt, self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
            if tuple(latents.shape) != expected:
                raise ValueError(f"`latents` must have shape {expected} for these arguments; got {tuple(latents.shape)}.")

    @staticmethod
    def normalize_prototype_ids(prototype_ids: PromptIds, batch: int) -> List[List[int]]:
        """`None`, one list for every prompt, or one list per prompt -> one list per prompt."""
        return _per_prompt(prototype_ids, batch, "prototype_ids", lambda v: isinstance(v, (list, tuple)))

    def prototype_choices(
        self,
        prompts: List[str],
        prototype_ids: PromptIds = None,
        prototype_keywords: PromptKeywords = None,
        prototype_image: PromptImages = None,
        retrieve: Optional[bool] = None,
    ) -> List[PrototypeChoice]:
        """One validated `PrototypeChoice` per prompt; raises `ValueError` naming the argument.

        `retrieve=None` retrieves from the prompt exactly when nothing was chosen explicitly for it (and a bank is
        loaded); `True` adds retrieval to an explicit choice; `False` never retrieves.
        """
        batch = len(prompts)
        ids = self.normalize_prototype_ids(prototype_ids, batch)
        keywords = _per_prompt(prototype_keywords, batch, "prototype_keywords", lambda v: isinstance(v, (list, tuple)))
        images = prototype_image if isinstance(prototype_image, (list, tuple)) else [prototype_image] * batch
        if len(images) != batch:
            raise ValueError(f"`prototype_image` has {len(images)} images but there are {batch} prompts.")
        if any(im is not None and not isinstance(im, PIL.Image.Image) for im in images):
            raise ValueError("`prototype_image` must be a PIL image, or one PIL image (or None) per prompt.")
        bank = self.prototype_bank
        wanted = any(ids) or any(keywords) or any(im is not None for im in images) or retrieve
        if bank is None:
            if wanted:
                raise ValueError("Prototypes were asked for but this pipeline has no `prototype_bank`; load or pass one.")
            return [PrototypeChoice() for _ in prompts]
        slots = self.prototype_adapter.config.max_prototypes
        for sample_ids, sample_keywords in zip(ids, keywords):
            bank.check_ids(sample_ids)
            if len(sample_ids) > slots:
                raise ValueError(f"`prototype_ids` allows at most {slots} ids per prompt; got {len(sample_ids)}.")
            unknown = [k for k in sample_keywords if k.strip().lower() not in bank.keyword_index]
            if unknown:
                raise ValueError(f"`prototype_keywords` {unknown} are not keywords of any bank entry (e.g. {sorted(bank.keyword_index)[:5]}).")
        if any(im is not None for im in images) and bank.image_features is None:
            raise ValueError("`prototype_image` needs a bank with image retrieval features; build one with `unipath bank build`.")
        if bank.feature_dim != self.prototype_adapter.config.feature_dim:
            raise ValueError(
                f"The prototype bank's features are {bank.feature_dim}-d but the prototype adapter expects "
                f"feature_dim={self.prototype_adapter.config.feature_dim}; use a bank built with the same feature extractor."
            )
        return [
            PrototypeChoice(i, k, im, (not (i or k or im is not None)) if retrieve is None else retrieve)
            for i, k, im in zip(ids, keywords, images)
        ]

    def choose_prototypes(
        self, prompts: List[str], choices: List[PrototypeChoice], generator: Optional[torch.Generator] = None
    ) -> List[List[RetrievedPrototype]]:
        """Runs the bank's retrieval for each prompt (explicit choices first), capped at the adapter's slot count."""
        if self.prototype_bank is None:
            return [[] for _ in prompts]
        return [
            self.prototype_bank.retrieve(
                prompt if choice.retrieve else None, ids=choice.ids, keywords=choice.keywords,
                reference_image=choice.image, encoder=self.prototype_encoder,
                limit=self.prototype_adapter.config.max_prototypes, generator=generator,
            )
            for prompt, choice in zip(prompts, choices)
        ]

    def expand_prompt(self, prompt: str, use_mllm: bool = True) -> AttributeBundle:
        """The prompt as an explicit attribute bundle (tissue, architecture, cytology, stroma, inflammation, stain,
        other): from the MLLM's own generation when it is a generative chat model and `use_mllm`, else (or when its
        answer cannot be parsed) from the pathology lexicon; `bundle.source` says which."""
        if use_mllm and self.mllm is not None and can_generate(self.mllm, self.tokenizer):
            bundle = generate_bundle(self.mllm, self.tokenizer, prompt, self.dst_encoder.config.system_prompt)
            if bundle is not None:
                return bundle
        return AttributeBundle.from_lexicon(prompt)

    # ------------------------------------------------------------------------------------------------------------
    # Encoding: the MLLM runs once per call, never per step.
    # ------------------------------------------------------------------------------------------------------------

    def encode_prompt(
        self,
        prompt: Union[str, List[str]],
        streams: Sequence[str] = STREAMS,
        prototype_ids: PromptIds = None,
        device: Optional[torch.device] = None,
        prototype_keywords: PromptKeywords = None,
        prototype_image: PromptImages = None,
        retrieve: Optional[bool] = None,
        append_attributes: bool = False,
        generate_attributes: bool = False,
        generator: Optional[torch.Generator] = None,
    ) -> UniPathConditioning:
        """Encodes prompts, their attribute bundles and their prototypes into one masked condition sequence.

        The result can be passed back as `conditioning=` so that the MLLM is skipped. One MLLM forward encodes the
        whole batch (only when the 'dst' stream is asked for).

        Args:
            prompt: the prompt or prompts.
            streams: the streams to encode, any of 'text', 'dst', 'prototype'.
            prototype_ids: bank ids: one list for every prompt, or one list per prompt.
            device: where the result lives; defaults to the pipeline's execution device.
            prototype_keywords: bank keywords (one list for every prompt, or one per prompt); entries carrying them are used.
            prototype_image: a reference image (or one per prompt); its nearest bank entries are used.
            retrieve: retrieve from the prompt (see `prototype_choices`).
            append_attributes: append the attribute bundle to the raw-text stream.
            generate_attributes: make the bundle with the MLLM's generation (`expand_prompt`) instead of the lexicon.
            generator: seeds the keyword sampling of the retrieval.
        """
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        streams = check_stream_names(streams)
        device = device or self._execution_device
        attributes = [self.expand_prompt(p, use_mllm=generate_attributes) for p in prompts]
        parts: Dict[str, tuple] = {}
        mllm_streams = [s for s in streams if s in ("text", "dst")]
        if mllm_streams:
            text_prompts = [f"{p}. {a.as_text()}" if append_attributes and a.as_text() else p for p, a in zip(prompts, attributes)]
            tokens = self.dst_encoder.tokenize(self.tokenizer, prompts, text_prompts=text_prompts)
            parts.update(self.dst_encoder(self.mllm, tokens, mllm_streams))
        chosen: List[List[RetrievedPrototype]] = [[] for _ in prompts]
        if "prototype" in streams:
            choices = self.prototype_choices(prompts, prototype_ids, prototype_keywords, prototype_image, retrieve)
            chosen = self.choose_prototypes(prompts, choices, generator)
            dim = self.prototype_adapter.config.feature_dim
            features = [self.prototype_bank.select([c.id for c in row]) if row else torch.zeros(0, dim) for row in chosen]
            parts["prototype"] = self.prototype_adapter(features)
        conditioning = assemble_conditioning(
            parts, [[c.id for c in row] for row in chosen], prompts, device=device, dtype=self.transformer.dtype
        )
        conditioning.prototype_reasons = [[c.reasons for c in row] for row in chosen]
        conditioning.attributes = [a.as_dict() for a in attributes]
        empty = [prompts[i] for i in range(len(prompts)) if not conditioning.mask[i].any()]
        if empty:
            raise ValueError(f"No condition token is left for {empty}: `streams={streams}` chose no prototype for them.")
        return conditioning

    def guidance_branches(
        self, conditioning: UniPathConditioning, guidance_scale: float, stream_guidance: Dict[str, float]
    ) -> tuple[UniPathConditioning, List[str]]:
        """All guidance branches batched as one conditioning, with the name of each branch.

        Branches: `"null"` (zeros for every stream, when `guidance_scale != 1`), `"cond"`, and `"without:<stream>"`
        for each stream with a non-zero `stream_guidance` weight.
        """
        branches, names = [conditioning], ["cond"]
        if guidance_scale != 1.0:
            branches.insert(0, conditioning.null())
            names.insert(0, "null")
        for stream, weight in stream_guidance.items():
            if weight != 0:
                branches.append(conditioning.without(stream))
                names.append(f"without:{stream}")
        return UniPathConditioning.cat(branches), names

    @staticmethod
    def combine_guidance(
        predictions: torch.Tensor, names: List[str], guidance_scale: float, stream_guidance: Dict[str, float]
    ) -> torch.Tensor:
        """`u + s (c - u) + sum_k w_k (c - c_without_k)` over the batched branch predictions."""
        chunks = dict(zip(names, predictions.chunk(len(names))))
        cond = chunks["cond"]
        guided = chunks["null"] + guidance_scale * (cond - chunks["null"]) if "null" in chunks else cond
        for stream, weight in stream_guidance.items():
            if weight != 0:
                guided = guided + weight * (cond - chunks[f"without:{stream}"])
        return guided

    def prepare_latents(
        self, batch_size: int, height: int, width: int, dtype, device, generator, latents: Optional[torch.Tensor]
    ) -> torch.Tensor:
        """Initial noise (flow matching starts at sigma = 1, so no scaling)."""
        if latents is not None:
            return latents.to(device=device, dtype=dtype)
        shape = (batch_size, self.transformer.config.in_channels, height // self.vae_scale_factor, width // self.vae_scale_factor)
        return randn_tensor(shape, generator=generator, device=device, dtype=dtype)

    @torch.no_grad()
    def decode_latents(self, latents: torch.Tensor, output_type: str = "pil"):
        """Latents in the transformer's space (`output_type="latent"`) -> images ('pil', 'np' or 'pt' in 0..1), with
        this pipeline's VAE and latent convention."""
        vae_latents = denormalize_latents(self.vae, latents.to(self.vae.device, self.vae.dtype), self.config.latent_convention)
        decoded = self.vae.decode(vae_latents, return_dict=False)[0]
        return self.image_processor.postprocess(decoded, output_type=output_type)

    @property
    def interrupt(self) -> bool:
        """Set `pipe._interrupt = True` (e.g. from a callback) to stop the denoising loop early."""
        return getattr(self, "_interrupt", False)

    # ------------------------------------------------------------------------------------------------------------
    # Generation
    # ------------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    @replace_example_docstring(EXAMPLE_DOC_STRING)
    def __call__(
        self,
        prompt: Union[str, List[str], None] = None,
        height: Optional[int] = None,
        width: Optional[int] = None,
        num_inference_steps: int = 30,
        guidance_scale: float = 3.0,
        stream_guidance: Optional[Dict[str, float]] = None,
        streams: Sequence[str] = STREAMS,
        prototype_ids: PromptIds = None,
        prototype_keywords: PromptKeywords = None,
        prototype_image: PromptImages = None,
        retrieve: Optional[bool] = None,
        append_attributes: bool = False,
        generate_attributes: bool = False,
        num_images_per_prompt: int = 1,
        generator: Optional[Union[torch.Generator, List[torch.Generator]]] = None,
        latents: Optional[torch.Tensor] = None,
        conditioning: Optional[UniPathConditioning] = None,
        output_type: str = "pil",
        return_dict: bool = True,
        callback_on_step_end: Optional[Callable[["UniPathPipeline", int, torch.Tensor, Dict], Dict]] = None,
        callback_on_step_end_tensor_inputs: Sequence[str] = ("latents",),
    ) -> Union[UniPathPipelineOutput, tuple]:
        r"""Generates images.

        Args:
            prompt: the description(s) of the tissue to draw. May be omitted when `conditioning` is given.
            height, width: image size in pixels, multiples of `pipe.spatial_multiple`; default: the transformer's
                native size.
            num_inference_steps: denoising steps, >= 1 (sigmas `linspace(1, 1/N, N)` as the original sampler).
            guidance_scale: the joint classifier-free guidance scale `s` (>= 0; 1 disables the null branch). The null
                condition is all-zero embeddings for every stream with the same mask, as in the original.
            stream_guidance: optional per-stream weights `w_k` (>= 0) adding `w_k * (c - c_without_k)`, where
                `c_without_k` has stream `k` zeroed and masked. Each non-zero weight costs one more batched branch.
            streams: the streams to condition on, any of 'text', 'dst', 'prototype'; the others are cut out.
            prototype_ids: prototype bank ids for the prototype stream: one list used for every prompt, or one list
                per prompt; at most `prototype_adapter.config.max_prototypes` each.
            prototype_keywords: bank keywords (one list for every prompt, or one per prompt): entries carrying them.
            prototype_image: a reference image (or one per prompt): its nearest bank entries.
            retrieve: retrieve prototypes from the prompt as the original did (text->text, text->image, keyword
                recall). `None`: only for prompts with no explicit choice; `True`: also with one; `False`: never.
            append_attributes: append the prompt's attribute bundle to the raw-text stream.
            generate_attributes: build the attribute bundle with the MLLM's own generation (else the lexicon).
            num_images_per_prompt: images per prompt.
            generator: a `torch.Generator` or one per image, for reproducible noise.
            latents: initial noise `[batch * num_images_per_prompt, C, H / f, W / f]`.
            conditioning: a `UniPathConditioning` from `encode_prompt`; skips the MLLM.
            output_type: 'pil', 'np', 'pt' or 'latent'.
            return_dict: return a `UniPathPipelineOutput` instead of a tuple.
            callback_on_step_end: called as `fn(pipe, step, timestep, callback_kwargs)` after each step; may return
                replacements for the tensors in `callback_kwargs`.
            callback_on_step_end_tensor_inputs: which tensors `callback_kwargs` holds (subset of `["latents"]`).

        Examples:

        Returns:
            `UniPathPipelineOutput` (or `(images, prototype_ids)` when `return_dict=False`).
        """
        # 1. Check inputs: every error is raised before any model runs.
        native = self.transformer.config.sample_size * self.vae_scale_factor
        height = native if height is None else height
        width = native if width is None else width
        streams = check_stream_names(streams)
        stream_guidance = dict(stream_guidance or {})
        self.check_inputs(
            prompt, height, width, num_inference_steps, guidance_scale, stream_guidance, streams, prototype_ids,
            prototype_keywords, prototype_image, retrieve, num_images_per_prompt, latents, conditioning, output_type,
            callback_on_step_end_tensor_inputs, generator,
        )
        self._interrupt = False
        device, dtype = self._execution_device, self.transformer.dtype

        # 2. Encode the prompt once (or take the precomputed conditioning), then repeat per image.
        if conditioning is None:
            conditioning = self.encode_prompt(
                prompt, streams, prototype_ids, device, prototype_keywords, prototype_image, retrieve,
                append_attributes, generate_attributes, generator=retrieval_generator(generator),
            )
        conditioning = conditioning.select(streams).to(device=device, dtype=dtype)
        conditioning = conditioning.repeat_interleave(num_images_per_prompt)
        branches, branch_names = self.guidance_branches(conditioning, guidance_scale, stream_guidance)

        # 3. Timesteps: the original sampler's sigmas.
        sigmas = np.linspace(1.0, 1.0 / num_inference_steps, num_inference_steps)
        self.scheduler.set_timesteps(sigmas=sigmas, device=device)
        timesteps = self.scheduler.timesteps

        # 4. Initial noise.
        latents = self.prepare_latents(len(conditioning), height, width, dtype, device, generator, latents)

        # 5. Denoising loop: all guidance branches in one transformer call per step.
        n_branches = len(branch_names)
        with self.progress_bar(total=len(timesteps)) as progress_bar:
            for i, t in enumerate(timesteps):
                if self.interrupt:
                    break
                model_input = latents.repeat(n_branches, 1, 1, 1)
                timestep = t.expand(model_input.shape[0])
                if self.config.integer_timesteps:
                    timestep = timestep.long()
                prediction = self.transformer(
                    model_input,
                    encoder_hidden_states=branches.embeds,
                    encoder_attention_mask=branches.mask,
                    timestep=timestep,
                    added_cond_kwargs={"resolution": None, "aspect_ratio": None},
                    return_dict=False,
                )[0]
                velocity = self.combine_guidance(prediction, branch_names, guidance_scale, stream_guidance)
                latents = self.scheduler.step(velocity, t, latents, return_dict=False)[0]

                if callback_on_step_end is not None:
                    tensors = {"latents": latents}
                    callback_kwargs = {k: tensors[k] for k in callback_on_step_end_tensor_inputs}
                    callback_outputs = callback_on_step_end(self, i, t, callback_kwargs)
                    latents = callback_outputs.pop("latents", latents)
                progress_bar.update()

        # 6. Decode.
        images = latents if output_type == "latent" else self.decode_latents(latents, output_type)

        self.maybe_free_model_hooks()
        if not return_dict:
            return images, conditioning.prototype_ids
        prototypes = [[RetrievedPrototype(i, list(r)) for i, r in zip(ids, reasons)]
                      for ids, reasons in zip(conditioning.prototype_ids, conditioning.prototype_reasons)]
        return UniPathPipelineOutput(images, conditioning.prototype_ids, streams, prototypes, conditioning.attributes)

