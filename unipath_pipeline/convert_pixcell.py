"""Initialises a UniPath transformer from PixCell-256 weights (`unipath convert --from pixcell`).

PixCell-256 (StonyBrook-CVLab/PixCell-256 on the Hub) is a PixArt-Sigma-style diffusers transformer
(`PixCellTransformer2DModel`, custom code in its `transformer/` folder) conditioned on one UNI2-h embedding (1536-d).
Its state dict uses `PixArtTransformer2DModel`'s names plus:

- `caption_projection.uncond_embedding`: a buffer for classifier-free guidance (dropped);
- `y_pos_embed.y_pos_embed`: position table of multi-token UNI conditions (`caption_num_tokens > 1`; dropped);
- `proj_out`: PixArt predicts a learned variance, so `out_channels` is twice the latent channels (32 for the 16-channel
  SD3.5 VAE); the first half (the noise prediction) initialises our velocity head.

Every other tensor is copied when its shape matches the target; the caption projection is re-initialised when the
condition width differs (UNI2-h's 1536 vs the MLLM's 3584), and any other mismatch is an error. The target is either
the original UniPath DiT (PixCell's config with caption width 3584, out channels = in channels, sample size 48,
interpolation 0.5) or the transformer of an existing pipeline (`base`), which then gets the new transformer.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from typing import Any, Dict, List, Optional, Tuple

import torch

from .checkpoint_io import (
    DEFAULT_MAX_SHARD_SIZE,
    ShardedSafetensorsWriter,
    check_output_folder,
    describe_keys,
    parse_dtype,
    parse_size,
    safetensors_files,
    scan_safetensors,
    staged_directory,
    stream_component,
)
from .convert_official import PROVENANCE_FILE, resolve_checkpoint

logger = logging.getLogger(__name__)

PIXCELL_REPO_ID = "StonyBrook-CVLab/PixCell-256"
#: PixArtTransformer2DModel's config keys (PixCell's config has these plus `caption_num_tokens`).
PIXART_CONFIG_KEYS = (
    "num_attention_heads", "attention_head_dim", "in_channels", "out_channels", "num_layers", "dropout", "norm_num_groups",
    "cross_attention_dim", "attention_bias", "sample_size", "patch_size", "activation_fn", "num_embeds_ada_norm",
    "upcast_attention", "norm_type", "norm_elementwise_affine", "norm_eps", "interpolation_scale",
    "use_additional_conditions", "caption_channels", "attention_type",
)
#: The original UniPath DiT differs from PixCell-256 in these (DESIGN section 1).
UNIPATH_OVERRIDES = {"caption_channels": 3584, "sample_size": 48, "interpolation_scale": 0.5, "use_additional_conditions": False}
#: Must agree between PixCell and the target for the weights to carry over.
ARCHITECTURE_KEYS = ("num_attention_heads", "attention_head_dim", "num_layers", "in_channels", "patch_size",
                     "cross_attention_dim", "attention_bias")


def map_pixcell_key(key: str) -> Optional[str]:
    """PixCell transformer key -> our `PixArtTransformer2DModel` key, or `None` for a tensor we drop."""
    if key in ("caption_projection.uncond_embedding", "pos_embed.pos_embed") or key.startswith("y_pos_embed."):
        return None
    return key


@dataclass
class PixCellReport:
    """What `convert_pixcell` did to each target tensor."""

    out: str
    copied: List[str] = field(default_factory=list)
    adapted: Dict[str, str] = field(default_factory=dict)
    reinitialised: Dict[str, str] = field(default_factory=dict)
    dropped: List[str] = field(default_factory=list)
    config: Dict[str, Any] = field(default_factory=dict)
    files: List[str] = field(default_factory=list)
    peak_buffered_bytes: int = 0

    def as_dict(self) -> Dict[str, Any]:
        """A JSON-serialisable copy."""
        return asdict(self)


def _transformer_folder(root: str) -> str:
    for candidate in (os.path.join(root, "transformer"), root):
        if os.path.isfile(os.path.join(candidate, "config.json")) and safetensors_files(candidate):
            return candidate
    raise ValueError(f"--checkpoint {root} is neither a PixCell pipeline folder (transformer/) nor a transformer folder "
                     "(config.json + *.safetensors).")


def _pixart_defaults() -> Dict[str, Any]:
    import inspect

    from diffusers import PixArtTransformer2DModel

    parameters = inspect.signature(PixArtTransformer2DModel.__init__).parameters
    return {k: p.default for k, p in parameters.items() if k in PIXART_CONFIG_KEYS and p.default is not inspect.Parameter.empty}


def target_config(source: Dict[str, Any], base_config: Optional[Dict[str, Any]] = None, **overrides) -> Dict[str, Any]:
    """The `PixArtTransformer2DModel` config to initialise: `base_config` when given, else PixCell's with UniPath's
    values (`UNIPATH_OVERRIDES`, out channels = in channels); `overrides` that are not `None` win."""
    source = {**_pixart_defaults(), **source}
    if base_config is not None:
        base_config = {**_pixart_defaults(), **base_config}
        config = {k: base_config[k] for k in PIXART_CONFIG_KEYS if k in base_config}
    else:
        config = {k: source[k] for k in PIXART_CONFIG_KEYS if k in source}
        config.update(UNIPATH_OVERRIDES)
        config["out_channels"] = source.get("in_channels", 4)
    config.update({k: v for k, v in overrides.items() if v is not None})
    different = {k: (source.get(k), config.get(k)) for k in ARCHITECTURE_KEYS if source.get(k) != config.get(k)}
    if different:
        raise ValueError(f"PixCell's transformer and the target differ in {different} (PixCell, target); its weights "
                         "cannot initialise that architecture.")
    return config


def convert_pixcell(
    checkpoint: str,
    out: str,
    base: Optional[str] = None,
    caption_channels: Optional[int] = None,
    sample_size: Optional[int] = None,
    out_channels: Optional[int] = None,
    interpolation_scale: Optional[float] = None,
    seed: int = 0,
    dtype: Optional[str] = None,
    max_shard_size: str | int = DEFAULT_MAX_SHARD_SIZE,
    overwrite: bool = False,
    progress: bool = True,
) -> PixCellReport:
    """Writes a transformer initialised from PixCell-256 into `out` (a transformer folder), or, with `base`, a copy of
    the pipeline `base` whose transformer is the initialised one.

    Args:
        checkpoint: PixCell-256: its pipeline folder, its `transformer/` folder, or a Hub id (default layout).
        out: the folder to write (must not exist or be empty, unless `overwrite`).
        base: a UniPath pipeline folder; its transformer config is the target and the result is a whole pipeline.
        caption_channels, sample_size, out_channels, interpolation_scale: override the target config.
        seed: seeds the re-initialised tensors.
        dtype: "keep"/None, "float32", "float16" or "bfloat16".
        max_shard_size: the largest output shard (bounds memory).
        overwrite: replace a non-empty `out`.
        progress: show a progress bar.
    """
    from diffusers import PixArtTransformer2DModel
    from diffusers.models.embeddings import PixArtAlphaTextProjection

    torch_dtype = parse_dtype(dtype)
    max_shard_bytes = parse_size(max_shard_size)
    check_output_folder(os.path.abspath(out), overwrite)
    base_config = None
    if base is not None:
        if not os.path.isfile(os.path.join(base, "model_index.json")):
            raise ValueError(f"--base {base} is not a pipeline folder (no model_index.json).")
        with open(os.path.join(base, "transformer", "config.json"), encoding="utf-8") as f:
            base_config = json.load(f)
    root = resolve_checkpoint(checkpoint, allow_patterns=["transformer/*", "model_index.json"])
    folder = _transformer_folder(root)
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
        source_config = json.load(f)
    config = target_config(source_config, base_config, caption_channels=caption_channels, sample_size=sample_size,
                           out_channels=out_channels, interpolation_scale=interpolation_scale)
    infos = scan_safetensors(safetensors_files(folder))
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in PixArtTransformer2DModel(**config).state_dict().items()}

    report = PixCellReport(out=os.path.abspath(out), config=config)
    routes: Dict[str, str] = {}
    slices: Dict[str, Tuple[int, int]] = {}
    source_out = source_config.get("out_channels") or source_config.get("in_channels")
    problems = []
    # the condition projection is re-initialised as a whole when any of it does not fit (its halves belong together)
    projection_fits = all(tuple(info.shape) == expected.get(map_pixcell_key(key) or "")
                          for key, info in infos.items() if key.startswith("caption_projection.linear_"))
    for key, info in infos.items():
        target = map_pixcell_key(key)
        if target is None or target not in expected:
            report.dropped.append(key)
            continue
        shape = expected[target]
        if target.startswith("caption_projection.") and not projection_fits:
            report.reinitialised[target] = (f"the condition width differs (PixCell {source_config.get('caption_channels')}, "
                                            f"target {config['caption_channels']})")
        elif tuple(info.shape) == shape:
            routes[key] = target
            report.copied.append(target)
        elif target.startswith("proj_out.") and source_out == 2 * config["out_channels"]:
            routes[key] = target
            slices[target] = (source_out, config["out_channels"])
            report.adapted[target] = (f"kept the first {config['out_channels']} of PixCell's {source_out} output channels "
                                      "(the noise prediction; the rest is its learned variance)")
        elif target.startswith(("caption_projection.", "proj_out.")):
            report.reinitialised[target] = f"PixCell's {tuple(info.shape)} does not fit {shape}"
        else:
            problems.append(f"{key} {tuple(info.shape)} (target {shape})")
    absent = [k for k in expected if k not in routes and k not in report.reinitialised]
    for key in absent:
        if key.startswith(("caption_projection.", "proj_out.")):
            report.reinitialised[key] = "not in PixCell's weights"
        else:
            problems.append(f"{key} is missing from PixCell's weights")
    if problems:
        raise ValueError(f"--checkpoint {folder} cannot initialise the target transformer: {describe_keys(problems)}.")

    fresh: Dict[str, torch.Tensor] = {}
    if report.reinitialised:
        inner = config["num_attention_heads"] * config["attention_head_dim"]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            modules = {
                "caption_projection.": PixArtAlphaTextProjection(config["caption_channels"], inner, act_fn="gelu_tanh"),
                "proj_out.": torch.nn.Linear(inner, config["patch_size"] ** 2 * config["out_channels"]),
            }
        for key in report.reinitialised:
            prefix = next(p for p in modules if key.startswith(p))
            fresh[key] = modules[prefix].state_dict()[key[len(prefix):]].detach()

    def adapt(target: str, tensor: torch.Tensor) -> torch.Tensor:
        if target not in slices:
            return tensor
        total, keep = slices[target]
        patch_area = tensor.shape[0] // total
        # proj_out rows are ordered (patch row, patch column, channel): keep the first `keep` channels of each pixel
        return tensor.reshape(patch_area, total, *tensor.shape[1:])[:, :keep].reshape(patch_area * keep, *tensor.shape[1:]).clone()

    with staged_directory(out, overwrite) as staging:
        target_folder = staging
        if base is not None:
            shutil.copytree(base, staging, dirs_exist_ok=True,
                            ignore=shutil.ignore_patterns("transformer", "README.md", ".tmp*", PROVENANCE_FILE))
            target_folder = os.path.join(staging, "transformer")
        writer = ShardedSafetensorsWriter(target_folder, "diffusion_pytorch_model.safetensors", max_shard_bytes, torch_dtype)
        for key, tensor in fresh.items():
            writer.add(key, tensor)
        report.files = stream_component(infos, routes, writer, adapt, progress, "initialising from PixCell")
        report.peak_buffered_bytes = writer.peak_buffered_bytes
        with torch.device("meta"):
            PixArtTransformer2DModel(**config).save_config(target_folder)
        provenance = {"source": "pixcell", "checkpoint": checkpoint if not os.path.isdir(checkpoint) else PIXCELL_REPO_ID,
                      "base": base and os.path.basename(os.path.abspath(base)),
                      "report": {k: v for k, v in report.as_dict().items() if k != "out"}}
        if base is not None and os.path.isfile(os.path.join(base, PROVENANCE_FILE)):
            with open(os.path.join(base, PROVENANCE_FILE), encoding="utf-8") as f:
                provenance["base_provenance"] = json.load(f)
        with open(os.path.join(staging, PROVENANCE_FILE), "w", encoding="utf-8") as f:
            json.dump(provenance, f, indent=2)
            f.write("\n")
    for key, why in report.reinitialised.items():
        logger.info("Re-initialised %s: %s.", key, why)
    return report
