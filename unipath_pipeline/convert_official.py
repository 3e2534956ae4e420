"""Converts the official UniPath checkpoint (one transformers model) into a UniPath diffusers pipeline folder.

The official release is a transformers folder (`config.json` plus safetensors shards) whose state dict holds the
Qwen2.5-VL understanding model (Patho-R1-7B) and UniPath's own parts. Accepted key layout (`map_official_key`):

=====================================================================  ===================  ===================================
official key                                                           component            key written
=====================================================================  ===================  ===================================
``model.latent_queries``                                               ``dst_encoder``      ``queries``
``model.down_projector.{weight,bias}`` (absent: identity)              ``dst_encoder``      ``down_projection.*`` (linear)
``model.prototype_projector.{0,2}.{weight,bias}``                      ``prototype_adapter`` ``mlp.{0,2}.*``
``model.dit.model.condition_projection.uncond_embedding``              dropped (an unused buffer)
``model.dit.model.pos_embed.pos_embed``                                dropped (fixed sin-cos table, recomputed)
``model.dit.model.condition_projection.*``                             ``transformer``      ``caption_projection.*``
``model.dit.model.*``                                                  ``transformer``      ``*``
``visual.*`` or ``model.visual.*``                                     ``mllm``             ``visual.*``
``model.{embed_tokens,layers,norm}.*`` or ``model.language_model.*``   ``mllm``             ``model.*``
``lm_head.*``                                                          ``mllm``             ``lm_head.*``
``*.rotary_emb.inv_freq``                                              dropped (recomputed buffer)
=====================================================================  ===================  ===================================

Both Qwen2.5-VL layouts are accepted: transformers 4.51's (the one the official checkpoint was saved with) and
transformers 5's in-memory names. The MLLM is written in the layout transformers 5 itself writes with
`save_pretrained` (the 4.51 names, which it maps on load), so the folder loads in transformers 4.51 and 5 alike.
Any other key is an error, as is any key the target models expect but the checkpoint lacks.

What cannot be read from the weights has options (defaults from DESIGN section 1): the DiT's head count
(`attention_heads`; default width / 72), its `sample_size` (48) and `interpolation_scale` (0.5), the DST trigger token
(unknown: none by default), and the sampler's `shift` (the original borrows Lumina-Next-SFT's scheduler config, whose
shift was not recorded: 1.0 by default). A DiT config found inside `config.json` (a dict with `attention_head_dim`)
takes precedence over the defaults, options over both.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .checkpoint_io import (
    DEFAULT_MAX_SHARD_SIZE,
    ShardedSafetensorsWriter,
    TensorInfo,
    check_output_folder,
    copy_files,
    describe_keys,
    parse_dtype,
    parse_size,
    safetensors_files,
    scan_safetensors,
    staged_directory,
    stream_component,
)

logger = logging.getLogger(__name__)

DROP = "<dropped>"
MLLM, DST, ADAPTER, TRANSFORMER = "mllm", "dst_encoder", "prototype_adapter", "transformer"
COMPONENT_ORDER = (DST, ADAPTER, TRANSFORMER, MLLM)

#: Licence of the official UniPath weights (all components of the checkpoint).
OFFICIAL_LICENSE = "cc-by-nc-nd-4.0"
#: Written into the output folder: where the weights came from (read by `unipath card` and `unipath push`).
PROVENANCE_FILE = "unipath_conversion.json"

_DIT_PREFIX = "model.dit.model."
_LLM_SUBMODULES = ("embed_tokens.", "layers.", "norm.")
_TOKENIZER_FILES = (
    "tokenizer.json", "tokenizer_config.json", "vocab.json", "merges.txt", "special_tokens_map.json",
    "added_tokens.json", "chat_template.json", "chat_template.jinja",
)
_PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json", "video_preprocessor_config.json")
#: DESIGN section 1: the original DiT (PixCell-256 lineage) has 72-wide heads, 48x48 latents, interpolation 0.5.
DEFAULT_HEAD_DIM, DEFAULT_SAMPLE_SIZE, DEFAULT_INTERPOLATION_SCALE = 72, 48, 0.5
#: The SD3.5 VAE's latent normalisation (DESIGN section 1).
SD35_SCALING, SD35_SHIFT = 1.5305, 0.0609


def map_official_key(key: str) -> Optional[Tuple[str, str]]:
    """Where one official tensor goes: `(component, new_key)`, `(DROP, key)` for tensors dropped on purpose, or
    `None` for a key that is not part of the official layout (see the module docstring)."""
    if key == "model.latent_queries":
        return DST, "queries"
    if key in ("model.down_projector.weight", "model.down_projector.bias"):
        return DST, "down_projection." + key.rsplit(".", 1)[1]
    if key.startswith("model.prototype_projector."):
        rest = key[len("model.prototype_projector."):]
        return (ADAPTER, "mlp." + rest) if rest in ("0.weight", "0.bias", "2.weight", "2.bias") else None
    if key.startswith(_DIT_PREFIX):
        rest = key[len(_DIT_PREFIX):]
        if rest in ("condition_projection.uncond_embedding", "pos_embed.pos_embed"):
            return DROP, key
        if rest.startswith("condition_projection."):
            return TRANSFORMER, "caption_projection." + rest[len("condition_projection."):]
        return TRANSFORMER, rest
    if key.endswith("rotary_emb.inv_freq"):
        return DROP, key
    if key.startswith("visual."):
        return MLLM, key
    if key.startswith("model.visual."):
        return MLLM, key[len("model."):]
    if key.startswith("model.language_model."):
        return MLLM, "model." + key[len("model.language_model."):]
    if key.startswith("model.") and key[len("model."):].startswith(_LLM_SUBMODULES):
        return MLLM, key
    if key.startswith("lm_head."):
        return MLLM, key
    return None


def official_key(component: str, key: str) -> str:
    """The official name of a tensor we write as `key` in `component` (the inverse of `map_official_key`, in the
    transformers 4.51 layout), for error messages."""
    if component == DST:
        return "model.latent_queries" if key == "queries" else "model.down_projector." + key.split(".", 1)[1]
    if component == ADAPTER:
        return "model.prototype_projector." + key[len("mlp."):]
    if component == TRANSFORMER:
        if key.startswith("caption_projection."):
            key = "condition_projection." + key[len("caption_projection."):]
        return _DIT_PREFIX + key
    return key


def saved_mllm_key(key: str) -> str:
    """A transformers-5 Qwen2.5-VL state-dict key -> the name `save_pretrained` writes (the 4.51 layout)."""
    if key.startswith("model.visual."):
        return key[len("model."):]
    if key.startswith("model.language_model."):
        return "model." + key[len("model.language_model."):]
    return key


# --------------------------------------------------------------------------------------------------------------------
# Configs: from config.json and from tensor shapes
# --------------------------------------------------------------------------------------------------------------------


def _known_qwen_config_keys() -> set:
    from transformers import Qwen2_5_VLConfig
    from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig

    known = set(Qwen2_5_VLConfig().to_dict()) | set(Qwen2_5_VLTextConfig().to_dict())
    return known | {"rope_scaling", "rope_theta", "torch_dtype", "dtype", "text_config", "vision_config"}


def mllm_config_from_checkpoint(config: Dict[str, Any]):
    """The Qwen2.5-VL config of the official `config.json` (transformers 4.51's flat layout or 5's nested one).

    Returns `(Qwen2_5_VLConfig, extras)`: `extras` holds the top-level keys that are not Qwen2.5-VL's (the original's
    own settings); they are left out of the MLLM config and recorded in the conversion report.
    """
    from transformers import Qwen2_5_VLConfig

    if "vision_config" not in config:
        raise ValueError("config.json has no `vision_config`: this is not a Qwen2.5-VL-based (official UniPath) checkpoint.")
    known = _known_qwen_config_keys()
    skip = {"architectures", "model_type", "auto_map", "_name_or_path", "transformers_version"}
    extras = {k: v for k, v in config.items() if k not in known and k not in skip}
    clean = {k: v for k, v in config.items() if k in known}
    vision = dict(clean["vision_config"])
    if vision.get("model_type") == "qwen2_5_vl":
        vision["model_type"] = "qwen2_5_vl_vision"
    clean["vision_config"] = vision
    mllm_config = Qwen2_5_VLConfig.from_dict(clean)
    mllm_config.architectures = ["Qwen2_5_VLForConditionalGeneration"]
    return mllm_config, extras


def find_dit_config(config: Any) -> Dict[str, Any]:
    """The first dict inside `config.json` that looks like a PixArt transformer config (has `attention_head_dim`)."""
    if isinstance(config, dict):
        if "attention_head_dim" in config and ("num_attention_heads" in config or "patch_size" in config):
            return config
        for value in config.values():
            found = find_dit_config(value)
            if found:
                return found
    elif isinstance(config, list):
        for value in config:
            found = find_dit_config(value)
            if found:
                return found
    return {}


#: The DiT tensors whose shapes size the transformer config.
_DIT_SIZING_KEYS = ("pos_embed.proj.weight", "caption_projection.linear_1.weight", "proj_out.weight",
                    "transformer_blocks.0.attn2.to_k.weight", "transformer_blocks.0.ff.net.0.proj.weight")
_PIXART_HINT_KEYS = ("norm_eps", "norm_elementwise_affine", "num_embeds_ada_norm", "activation_fn", "upcast_attention",
                     "attention_type", "norm_type", "dropout", "norm_num_groups")


def transformer_config_from_shapes(
    shapes: Dict[str, Tuple[int, ...]],
    hints: Optional[Dict[str, Any]] = None,
    attention_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
) -> Dict[str, Any]:
    """A `PixArtTransformer2DModel` config from the DiT's tensor shapes (keys in diffusers' names).

    Widths, channels, patch size and depth come from the shapes. The head split, `sample_size` and
    `interpolation_scale` are not in the weights: options win, then `hints` (a DiT config found in `config.json`),
    then the original's values (72-wide heads, 48, 0.5).
    """
    hints = hints or {}
    absent = [k for k in _DIT_SIZING_KEYS if k not in shapes]
    if absent:
        raise ValueError(f"The DiT weights lack {describe_keys('model.dit.model.' + k for k in absent)} "
                         "(with caption_projection read as condition_projection): not an official UniPath checkpoint.")
    inner, in_channels, patch, _ = shapes["pos_embed.proj.weight"]
    layers = 1 + max(int(k.split(".")[1]) for k in shapes if k.startswith("transformer_blocks."))
    ff_width = shapes["transformer_blocks.0.ff.net.0.proj.weight"][0]
    if ff_width != 4 * inner:
        raise ValueError(f"The DiT's feed-forward is {ff_width} wide; PixArtTransformer2DModel needs 4 x {inner}.")
    proj_out = shapes["proj_out.weight"][0]
    if proj_out % (patch * patch):
        raise ValueError(f"proj_out has {proj_out} outputs, not a multiple of patch_size^2 = {patch * patch}.")

    heads = attention_heads or hints.get("num_attention_heads")
    if heads is None:
        if inner % DEFAULT_HEAD_DIM:
            raise ValueError(
                f"The DiT is {inner} wide, which is not a multiple of the original's {DEFAULT_HEAD_DIM}-wide heads, and "
                "config.json does not state its head count (it cannot be read from the weights); pass "
                "--attention-heads N."
            )
        heads = inner // DEFAULT_HEAD_DIM
    if inner % heads:
        raise ValueError(f"--attention-heads {heads} does not divide the DiT's width {inner}.")
    config = {
        "num_attention_heads": int(heads),
        "attention_head_dim": inner // int(heads),
        "in_channels": in_channels,
        "out_channels": proj_out // (patch * patch),
        "num_layers": layers,
        "cross_attention_dim": shapes["transformer_blocks.0.attn2.to_k.weight"][1],
        "attention_bias": "transformer_blocks.0.attn1.to_q.bias" in shapes,
        "sample_size": int(sample_size or hints.get("sample_size") or DEFAULT_SAMPLE_SIZE),
        "patch_size": patch,
        "caption_channels": shapes["caption_projection.linear_1.weight"][1],
        "interpolation_scale": float(interpolation_scale or hints.get("interpolation_scale") or DEFAULT_INTERPOLATION_SCALE),
        "use_additional_conditions": any(k.startswith("adaln_single.emb.resolution_embedder.") for k in shapes),
    }
    config.update({k: hints[k] for k in _PIXART_HINT_KEYS if k in hints})
    return config


def _meta_shapes(module: torch.nn.Module, rename=lambda k: k) -> Dict[str, Tuple[int, ...]]:
    return {rename(k): tuple(v.shape) for k, v in module.state_dict().items()}


# --------------------------------------------------------------------------------------------------------------------
# The plan: every tensor routed and every expectation checked before anything is written
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class OfficialPlan:
    """What a conversion will write, derived from `config.json` and the tensor headers alone."""

    folder: str
    infos: Dict[str, TensorInfo]
    routes: Dict[str, Dict[str, str]]  #: component -> {official key: new key}
    dropped: List[str]
    mllm_config: Any
    config_extras: Dict[str, Any]
    transformer_config: Dict[str, Any]
    dst_config: Dict[str, Any]
    adapter_config: Dict[str, Any]


def plan_official_conversion(
    folder: str,
    attention_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
    max_text_length: int = 128,
    max_prototypes: int = 16,
    trigger_token: Optional[str] = None,
) -> OfficialPlan:
    """Routes every tensor of the checkpoint in `folder` and checks names and shapes against the target models
    (built on the `meta` device). Raises one `ValueError` listing unexpected, missing and mis-shaped keys."""
    from diffusers import PixArtTransformer2DModel
    from transformers import Qwen2_5_VLForConditionalGeneration

    from .dst_encoder import DSTEncoder
    from .prototype_adapter import PrototypeAdapter

    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        raw_config = json.load(f)
    files = safetensors_files(folder)
    if not files:
        raise ValueError(f"--checkpoint {folder} holds no *.safetensors weights.")
    infos = scan_safetensors(files)
    routes: Dict[str, Dict[str, str]] = {c: {} for c in COMPONENT_ORDER}
    dropped, unexpected = [], []
    seen: Dict[Tuple[str, str], str] = {}
    for key in infos:
        route = map_official_key(key)
        if route is None:
            unexpected.append(key)
        elif route[0] == DROP:
            dropped.append(key)
        else:
            twin = seen.setdefault(route, key)
            if twin != key:
                raise ValueError(f"--checkpoint {folder} stores one tensor twice, as {twin!r} and {key!r} (two MLLM "
                                 "layouts mixed?); keep one of them.")
            routes[route[0]][key] = route[1]
    if not routes[TRANSFORMER] and not routes[DST]:
        raise ValueError(
            f"--checkpoint {folder} is not an official UniPath checkpoint: it has no `model.dit.model.*` or "
            f"`model.latent_queries` tensors (found e.g. {describe_keys(list(infos)[:5], 5)})."
        )
    shapes = {c: {new: infos[old].shape for old, new in r.items()} for c, r in routes.items()}

    mllm_config, extras = mllm_config_from_checkpoint(raw_config)
    text_hidden = mllm_config.text_config.hidden_size
    missing: List[str] = []
    # What is needed to size the targets; when absent, the original's sizes stand in so that the comparison below
    # reports every missing key at once.
    structural = [k for k in _DIT_SIZING_KEYS if k not in shapes[TRANSFORMER]]
    missing += [official_key(TRANSFORMER, k) for k in structural]
    transformer_config = None if structural else transformer_config_from_shapes(
        shapes[TRANSFORMER], find_dit_config(raw_config), attention_heads, sample_size, interpolation_scale
    )
    cond_width = transformer_config["caption_channels"] if transformer_config else text_hidden
    queries = shapes[DST].get("queries", (1, 64, text_hidden))
    if len(queries) != 3 or queries[0] != 1:
        raise ValueError(f"`model.latent_queries` must be [1, num_queries, hidden]; got {list(queries)}.")
    down = shapes[DST].get("down_projection.weight")
    dst_config = dict(
        hidden_size=queries[2], num_queries=queries[1], projection="linear" if down else "identity",
        cond_dim=down[0] if down else None, max_text_length=max_text_length, trigger_token=trigger_token,
    )
    first = shapes[ADAPTER].get("mlp.0.weight", (cond_width, 1536))
    second = shapes[ADAPTER].get("mlp.2.weight", (cond_width, first[0]))
    adapter_config = dict(feature_dim=first[1], cond_dim=second[0], hidden_dim=None if first[0] == second[0] else first[0],
                          max_prototypes=max_prototypes)

    if dst_config["hidden_size"] != text_hidden:
        raise ValueError(f"The DST queries are {dst_config['hidden_size']} wide but the MLLM's hidden size is {text_hidden}.")
    cond = {"DST output": dst_config["cond_dim"] or dst_config["hidden_size"], "prototype_projector output": adapter_config["cond_dim"],
            "condition_projection input": cond_width}
    if len(set(cond.values())) != 1:
        raise ValueError(f"The condition width must agree across the checkpoint's parts; got {cond}.")

    with torch.device("meta"):
        expected = {
            MLLM: _meta_shapes(Qwen2_5_VLForConditionalGeneration._from_config(mllm_config), saved_mllm_key),
            TRANSFORMER: _meta_shapes(PixArtTransformer2DModel(**transformer_config)) if transformer_config else {},
            DST: _meta_shapes(DSTEncoder(**dst_config)),
            ADAPTER: _meta_shapes(PrototypeAdapter(**adapter_config)),
        }
    if mllm_config.tie_word_embeddings:
        expected[MLLM].pop("lm_head.weight", None)
        tied = [k for k, new in routes[MLLM].items() if new == "lm_head.weight"]
        for key in tied:  # tied to the input embeddings: transformers does not store it
            del routes[MLLM][key]
            dropped.append(key)

    mismatched = []
    reverse = {c: {new: old for old, new in r.items()} for c, r in routes.items()}
    for component, wanted in expected.items():
        for new, shape in wanted.items():
            old = reverse[component].get(new)
            if old is None:
                missing.append(official_key(component, new))
            elif tuple(infos[old].shape) != shape:
                mismatched.append(f"{old} {tuple(infos[old].shape)} (expected {shape})")
        for new, old in reverse[component].items():
            if new not in wanted and not (component == TRANSFORMER and structural):
                unexpected.append(old)
    if unexpected or missing or mismatched:
        parts = []
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {describe_keys(unexpected)}")
        if missing:
            parts.append(f"{len(missing)} missing key(s): {describe_keys(missing)}")
        if mismatched:
            parts.append(f"{len(mismatched)} key(s) with another shape: {describe_keys(mismatched)}")
        raise ValueError(f"--checkpoint {folder} does not match the official UniPath layout; " + "; ".join(parts) + ".")
    return OfficialPlan(folder, infos, routes, sorted(dropped), mllm_config, extras, transformer_config, dst_config,
                        adapter_config)


# --------------------------------------------------------------------------------------------------------------------
# The side inputs: checkpoint folder, VAE, tokenizer
# --------------------------------------------------------------------------------------------------------------------


def resolve_checkpoint(spec: str, argument: str = "--checkpoint", allow_patterns: Optional[List[str]] = None) -> str:
    """A local folder, or a Hub repo id fetched with `snapshot_download` (served from the cache offline)."""
    if os.path.isdir(spec):
        return os.path.abspath(spec)
    if os.path.exists(spec):
        raise ValueError(f"{argument} {spec} is a file; give the checkpoint folder.")
    if spec.count("/") != 1 or spec.startswith((".", "/")):
        raise FileNotFoundError(f"{argument} {spec}: no such folder (and not a Hub repo id).")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(spec, allow_patterns=allow_patterns)
    except Exception as error:  # noqa: BLE001 - network, gating, offline cache miss: all mean "not available"
        raise FileNotFoundError(f"{argument} {spec}: not a local folder, and the Hub repo is unavailable: {error}") from None


def load_vae(spec: str):
    """The VAE from a VAE folder, a pipeline folder with `vae/`, or a Hub id (its `vae` subfolder, else its root)."""
    from diffusers import AutoencoderKL

    if os.path.isdir(spec):
        if os.path.isfile(os.path.join(spec, "vae", "config.json")):
            return AutoencoderKL.from_pretrained(spec, subfolder="vae")
        if os.path.isfile(os.path.join(spec, "config.json")):
            return AutoencoderKL.from_pretrained(spec)
        raise ValueError(f"--vae {spec} is neither a VAE folder (config.json) nor a pipeline folder with vae/.")
    if os.path.exists(spec):
        raise ValueError(f"--vae {spec} is a file; give a VAE folder, a pipeline folder or a Hub id.")
    errors = []
    for subfolder in ("vae", None):
        try:
            return AutoencoderKL.from_pretrained(spec, subfolder=subfolder)
        except Exception as error:  # noqa: BLE001
            errors.append(str(error).splitlines()[0])
    raise ValueError(f"--vae {spec}: not a local folder, and not loadable from the Hub or its cache ({'; '.join(errors)}).")


def load_tokenizer(folder: str, spec: Optional[str], trigger_token: Optional[str]):
    """The MLLM's tokenizer: the checkpoint's own files, else `spec` (a folder or Hub id). Checks the trigger token;
    without a chat template it gets ChatML (Qwen2.5's format). Returns `(tokenizer, notes)`."""
    from transformers import AutoTokenizer

    notes = []
    if spec is None:
        present = [name for name in _TOKENIZER_FILES if os.path.isfile(os.path.join(folder, name))]
        if not present:
            raise ValueError(
                f"--checkpoint {folder} has no tokenizer files ({', '.join(_TOKENIZER_FILES[:3])}, ...); pass "
                "--tokenizer with a folder or Hub id of the Patho-R1-7B / Qwen2.5-VL tokenizer."
            )
        with tempfile.TemporaryDirectory() as scratch:  # without config.json, whose model_type may be the original's
            copy_files(present, folder, scratch)
            try:
                tokenizer = AutoTokenizer.from_pretrained(scratch)
            except Exception as error:  # noqa: BLE001
                raise ValueError(f"--checkpoint {folder}: its tokenizer files cannot be loaded "
                                 f"({str(error).splitlines()[0]}); pass --tokenizer.") from None
        source = "the checkpoint"
    else:
        try:
            tokenizer = AutoTokenizer.from_pretrained(spec)
        except Exception as error:  # noqa: BLE001
            raise ValueError(f"--tokenizer {spec}: cannot load a tokenizer ({str(error).splitlines()[0]}).") from None
        source = spec
    if getattr(tokenizer, "chat_template", None) is None:
        from .presets import CHATML_TEMPLATE

        tokenizer.chat_template = CHATML_TEMPLATE
        notes.append(f"The tokenizer from {source} has no chat template; ChatML (Qwen2.5's format) was set.")
    if trigger_token is not None:
        token_id = tokenizer.convert_tokens_to_ids(trigger_token)
        if token_id is None or (token_id == tokenizer.unk_token_id and trigger_token != tokenizer.unk_token):
            raise ValueError(f"--trigger-token {trigger_token!r} is not a single token of the tokenizer from {source}.")
    return tokenizer, notes


# --------------------------------------------------------------------------------------------------------------------
# Conversion
# --------------------------------------------------------------------------------------------------------------------


@dataclass
class ConversionReport:
    """What a conversion wrote; `peak_buffered_bytes` is the most tensor data any writer held at once."""

    out: str
    source: str
    files: Dict[str, List[str]]
    tensors: Dict[str, int]
    dropped: List[str]
    total_bytes: int
    largest_tensor_bytes: int
    peak_buffered_bytes: int
    max_shard_bytes: int
    notes: List[str] = field(default_factory=list)

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


def _dtype_name(plan: OfficialPlan, dtype: Optional[torch.dtype]) -> str:
    if dtype is not None:
        return str(dtype).replace("torch.", "")
    names = {"BF16": "bfloat16", "F16": "float16", "F32": "float32"}
    found = {plan.infos[k].dtype for k in plan.routes[MLLM]}
    return names.get(found.pop(), "float32") if len(found) == 1 else "float32"


def write_model_index(folder: str, components: Dict[str, Optional[Tuple[str, str]]], config: Dict[str, Any]) -> None:
    """A `model_index.json` for `UniPathPipeline` with `components` (`None` for an absent one)."""
    import diffusers

    index: Dict[str, Any] = {"_class_name": "UniPathPipeline", "_diffusers_version": diffusers.__version__}
    for name, entry in sorted(components.items()):
        index[name] = list(entry) if entry else [None, None]
    index.update(config)
    with open(os.path.join(folder, "model_index.json"), "w", encoding="utf-8") as f:
        json.dump(dict(sorted(index.items())), f, indent=2)
        f.write("\n")


def convert_official(
    checkpoint: str,
    out: str,
    vae: Optional[str] = None,
    no_vae: bool = False,
    tokenizer: Optional[str] = None,
    trigger_token: Optional[str] = None,
    shift: float = 1.0,
    attention_heads: Optional[int] = None,
    sample_size: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
    max_text_length: int = 128,
    max_prototypes: int = 16,
    dtype: Optional[str] = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> ConversionReport:
    """Converts the official checkpoint at `checkpoint` (folder or Hub id) into a UniPath pipeline folder `out`.

    Every check (layout, shapes, VAE, tokenizer, trigger token, output folder) runs before any weight is copied; the
    weights then stream tensor by tensor into per-component shards of at most `max_shard_size`, inside a staging
    folder that becomes `out` only when everything is written.

    Args:
        checkpoint: the official transformers folder (config.json + safetensors shards), or its Hub id.
        out: the pipeline folder to write (must not exist, or be empty, unless `overwrite`).
        vae: the SD3.5 16-channel VAE: a VAE folder, a pipeline folder with `vae/`, or a Hub id. Required unless
            `no_vae` (then load the result with `UniPathPipeline.from_pretrained(out, vae=...)`).
        no_vae: write the pipeline without a VAE.
        tokenizer: where the tokenizer comes from when the checkpoint folder has none (a folder or Hub id).
        trigger_token: the DST trigger token (the official one is unknown; `None` appends none).
        shift: the flow-matching scheduler's `shift` (the original's is unknown; 1.0).
        attention_heads, sample_size, interpolation_scale: the DiT settings that are not in the weights.
        max_text_length: raw-text stream length (128 in the original).
        max_prototypes: prototype slots (16 in the original).
        dtype: `None`/"keep", "float32", "float16" or "bfloat16" for the written weights.
        max_shard_size: the largest output shard, e.g. "2GB" (bounds the memory the conversion needs).
        overwrite: replace a non-empty `out`.
        progress: show progress bars.
    """
    from diffusers import FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel

    from .dst_encoder import DSTEncoder
    from .prototype_adapter import PrototypeAdapter

    torch_dtype = parse_dtype(dtype)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_folder(os.path.abspath(out), overwrite)
    if vae is None and not no_vae:
        raise ValueError("Pass --vae (the SD3.5 16-channel VAE: a folder, a pipeline folder with vae/, or a Hub id), "
                         "or --no-vae to write the pipeline without one.")
    if vae is not None and no_vae:
        raise ValueError("--vae and --no-vae exclude each other.")
    folder = resolve_checkpoint(checkpoint)
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise ValueError(f"--checkpoint {folder} has no config.json: not a transformers checkpoint folder.")

    plan = plan_official_conversion(folder, attention_heads, sample_size, interpolation_scale, max_text_length,
                                    max_prototypes, trigger_token)
    tok, notes = load_tokenizer(folder, tokenizer, trigger_token)
    vae_model = None
    if vae is not None:
        vae_model = load_vae(vae)
        latent = vae_model.config.latent_channels
        if latent != plan.transformer_config["in_channels"]:
            raise ValueError(f"--vae {vae} has {latent} latent channels; the DiT expects {plan.transformer_config['in_channels']}.")
        factors = (vae_model.config.scaling_factor, getattr(vae_model.config, "shift_factor", None) or 0.0)
        if factors != (SD35_SCALING, SD35_SHIFT):
            notes.append(f"The VAE's scaling/shift are {factors}, not the SD3.5 VAE's {(SD35_SCALING, SD35_SHIFT)}.")
    if plan.dropped:
        notes.append(f"Dropped {len(plan.dropped)} tensor(s) on purpose: {describe_keys(plan.dropped, 5)}.")
    if trigger_token is None:
        notes.append("No DST trigger token (the official one is unknown); pass --trigger-token if you know it.")

    weights_names = {MLLM: "model.safetensors"}
    files: Dict[str, List[str]] = {}
    peak = 0
    with staged_directory(out, overwrite) as staging:
        for component in COMPONENT_ORDER:
            writer = ShardedSafetensorsWriter(
                os.path.join(staging, component), weights_names.get(component, "diffusion_pytorch_model.safetensors"),
                max_shard_bytes, torch_dtype,
            )
            files[component] = stream_component(plan.infos, plan.routes[component], writer, progress=progress,
                                                desc=f"converting {component}")
            peak = max(peak, writer.peak_buffered_bytes)
            logger.info("%s: %d tensors -> %s", component, len(plan.routes[component]), files[component])

        with torch.device("meta"):
            DSTEncoder(**plan.dst_config).save_config(os.path.join(staging, DST))
            PrototypeAdapter(**plan.adapter_config).save_config(os.path.join(staging, ADAPTER))
            PixArtTransformer2DModel(**plan.transformer_config).save_config(os.path.join(staging, TRANSFORMER))
        plan.mllm_config.dtype = _dtype_name(plan, torch_dtype)
        plan.mllm_config.save_pretrained(os.path.join(staging, MLLM))
        copy_files(["generation_config.json"], folder, os.path.join(staging, MLLM))
        tok.save_pretrained(os.path.join(staging, "tokenizer"))
        copy_files(_PROCESSOR_FILES, folder, os.path.join(staging, "tokenizer"))
        FlowMatchEulerDiscreteScheduler(shift=shift).save_pretrained(os.path.join(staging, "scheduler"))
        if vae_model is not None:
            vae_model.save_pretrained(os.path.join(staging, "vae"))

        write_model_index(
            staging,
            {
                MLLM: ("transformers", "Qwen2_5_VLForConditionalGeneration"),
                "tokenizer": ("transformers", type(tok).__name__),
                DST: ("unipath_pipeline", "DSTEncoder"),
                ADAPTER: ("unipath_pipeline", "PrototypeAdapter"),
                "prototype_bank": None,
                TRANSFORMER: ("diffusers", "PixArtTransformer2DModel"),
                "vae": ("diffusers", "AutoencoderKL") if vae_model is not None else None,
                "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
            },
            {"latent_convention": "unipath_original", "integer_timesteps": True},
        )
        report = ConversionReport(
            out=os.path.abspath(out), source="official", files=files,
            tensors={c: len(plan.routes[c]) for c in COMPONENT_ORDER}, dropped=plan.dropped,
            total_bytes=sum(plan.infos[k].nbytes for r in plan.routes.values() for k in r),
            largest_tensor_bytes=max(plan.infos[k].nbytes for r in plan.routes.values() for k in r),
            peak_buffered_bytes=peak, max_shard_bytes=max_shard_bytes, notes=notes,
        )
        provenance = {
            "source": "official",
            "license": OFFICIAL_LICENSE,
            "checkpoint": checkpoint if not os.path.isdir(checkpoint) else os.path.basename(os.path.abspath(checkpoint)),
            "vae": vae,
            "options": {"trigger_token": trigger_token, "shift": shift, "dtype": dtype or "keep",
                        "transformer": plan.transformer_config, "dst_encoder": plan.dst_config,
                        "prototype_adapter": plan.adapter_config},
            "config_extras": plan.config_extras,
            "report": {k: v for k, v in report.as_dict().items() if k != "out"},
        }
        with open(os.path.join(staging, PROVENANCE_FILE), "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2, default=str)
            f.write("\n")
    for note in notes:
        logger.info(note)
    return report
