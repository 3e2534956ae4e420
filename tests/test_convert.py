"""`unipath convert --from official`: a tiny checkpoint with exactly the official key names (DESIGN section 1), written
without our converter's help, converts into a pipeline whose transformer matches an independent re-implementation of
the original DiT, and which loads and generates."""

import json
import math
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.cli import main
from unipath_pipeline.convert_official import DROP, convert_official, map_official_key, transformer_config_from_shapes
from unipath_pipeline.presets import byte_level_qwen2_tokenizer

HIDDEN, QUERIES, FEATURE, HEADS, HEAD_DIM, LAYERS, CHANNELS, PATCH, SAMPLE = 32, 4, 24, 2, 72, 2, 16, 2, 8
DIT = "model.dit.model."


# ----------------------------------------------------------------------------------------------------------------------
# A tiny official checkpoint, written from the key names of DESIGN section 1
# ----------------------------------------------------------------------------------------------------------------------


def _randn(generator, *shape, scale=None):
    return torch.randn(*shape, generator=generator) * (scale if scale is not None else 1 / math.sqrt(shape[-1]))


def official_dit_tensors(generator, width=HEADS * HEAD_DIM, layers=LAYERS, caption=HIDDEN, channels=CHANNELS, patch=PATCH):
    """The original DiT's tensors (PixArt names, `condition_projection`, its unused `uncond_embedding`)."""
    t = {
        "pos_embed.proj.weight": _randn(generator, width, channels, patch, patch, scale=0.2),
        "pos_embed.proj.bias": _randn(generator, width, scale=0.1),
        "adaln_single.emb.timestep_embedder.linear_1.weight": _randn(generator, width, 256),
        "adaln_single.emb.timestep_embedder.linear_1.bias": _randn(generator, width, scale=0.1),
        "adaln_single.emb.timestep_embedder.linear_2.weight": _randn(generator, width, width),
        "adaln_single.emb.timestep_embedder.linear_2.bias": _randn(generator, width, scale=0.1),
        "adaln_single.linear.weight": _randn(generator, 6 * width, width),
        "adaln_single.linear.bias": _randn(generator, 6 * width, scale=0.1),
        "condition_projection.linear_1.weight": _randn(generator, width, caption),
        "condition_projection.linear_1.bias": _randn(generator, width, scale=0.1),
        "condition_projection.linear_2.weight": _randn(generator, width, width),
        "condition_projection.linear_2.bias": _randn(generator, width, scale=0.1),
        "condition_projection.uncond_embedding": _randn(generator, 1, caption),
        "scale_shift_table": _randn(generator, 2, width, scale=0.1),
        "proj_out.weight": _randn(generator, patch * patch * channels, width),
        "proj_out.bias": _randn(generator, patch * patch * channels, scale=0.1),
    }
    for i in range(layers):
        b = f"transformer_blocks.{i}."
        t[b + "scale_shift_table"] = _randn(generator, 6, width, scale=0.1)
        for attn in ("attn1", "attn2"):
            for proj in ("to_q", "to_k", "to_v", "to_out.0"):
                t[f"{b}{attn}.{proj}.weight"] = _randn(generator, width, width)
                t[f"{b}{attn}.{proj}.bias"] = _randn(generator, width, scale=0.1)
        t[b + "ff.net.0.proj.weight"] = _randn(generator, 4 * width, width)
        t[b + "ff.net.0.proj.bias"] = _randn(generator, 4 * width, scale=0.1)
        t[b + "ff.net.2.weight"] = _randn(generator, width, 4 * width)
        t[b + "ff.net.2.bias"] = _randn(generator, width, scale=0.1)
    return {DIT + k: v for k, v in t.items()}


def tiny_qwen_config(vocab_size: int) -> dict:
    """A Qwen2.5-VL config.json in transformers 4.51's flat layout, plus settings of the original's own."""
    return {
        "architectures": ["UniPathQwenForInferenceLM"], "model_type": "unipath_qwen", "transformers_version": "4.51.3",
        "vocab_size": vocab_size, "hidden_size": HIDDEN, "intermediate_size": 64, "num_hidden_layers": 2,
        "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 512, "rms_norm_eps": 1e-6,
        "rope_theta": 1000000.0, "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]},
        "tie_word_embeddings": False, "torch_dtype": "float32", "bos_token_id": None, "eos_token_id": 0,
        "vision_config": {"depth": 1, "hidden_size": 16, "intermediate_size": 32, "num_heads": 2, "out_hidden_size": HIDDEN,
                          "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
                          "fullatt_block_indexes": [0], "model_type": "qwen2_5_vl", "in_chans": 3},
        "n_query": QUERIES, "gen_vision_tower": "none", "diffusion_name_or_path": "dit",
    }


def tiny_qwen(config: dict):
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    clean = {k: v for k, v in config.items() if k not in ("architectures", "model_type", "n_query", "gen_vision_tower",
                                                         "diffusion_name_or_path")}
    clean["vision_config"] = {**clean["vision_config"], "model_type": "qwen2_5_vl_vision"}
    torch.manual_seed(1)
    return Qwen2_5_VLForConditionalGeneration(Qwen2_5_VLConfig.from_dict(clean))


def qwen_tensors_in_451_layout(config: dict, tmp_path) -> dict:
    """Random Qwen2.5-VL weights named as transformers writes them (`visual.*`, `model.layers.*`, `lm_head.*`)."""
    tiny_qwen(config).save_pretrained(str(tmp_path / "qwen-scratch"))
    return load_file(str(tmp_path / "qwen-scratch" / "model.safetensors"))


def write_official_checkpoint(folder, tmp_path, shards=3, edit=None, seed=0, config_edit=None, transformers5=False):
    """Writes a tiny official checkpoint: sharded safetensors with an index, config.json, tokenizer files.
    `transformers5`: the MLLM under transformers 5's names and config.json in its nested layout."""
    tokenizer = byte_level_qwen2_tokenizer()
    config = tiny_qwen_config(len(tokenizer))
    if config_edit:
        config_edit(config)
    generator = torch.Generator().manual_seed(seed)
    if transformers5:
        model = tiny_qwen(config)
        tensors = {k: v.clone() for k, v in model.state_dict().items()}
        if model.config.tie_word_embeddings:
            del tensors["lm_head.weight"]
        config = {**model.config.to_dict(), "n_query": QUERIES}
    else:
        tensors = qwen_tensors_in_451_layout(config, tmp_path)
    tensors.update(official_dit_tensors(generator))
    tensors["model.latent_queries"] = _randn(generator, 1, QUERIES, HIDDEN, scale=0.5)
    tensors["model.prototype_projector.0.weight"] = _randn(generator, HIDDEN, FEATURE)
    tensors["model.prototype_projector.0.bias"] = _randn(generator, HIDDEN, scale=0.1)
    tensors["model.prototype_projector.2.weight"] = _randn(generator, HIDDEN, HIDDEN)
    tensors["model.prototype_projector.2.bias"] = _randn(generator, HIDDEN, scale=0.1)
    if edit:
        edit(tensors)
    os.makedirs(folder, exist_ok=True)
    keys = sorted(tensors)
    names = [f"model-{i + 1:05d}-of-{shards:05d}.safetensors" for i in range(shards)]
    weight_map = {}
    for i, name in enumerate(names):  # round-robin: every shard mixes MLLM, DiT and UniPath tensors
        part = {k: tensors[k].contiguous() for k in keys[i::shards]}
        save_file(part, os.path.join(folder, name), metadata={"format": "pt"})
        weight_map.update({k: name for k in part})
    with open(os.path.join(folder, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(config, f)
    tokenizer.save_pretrained(str(folder))
    return tensors


def write_tiny_vae(folder):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                  up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                  latent_channels=CHANNELS, norm_num_groups=4, sample_size=16, scaling_factor=1.5305,
                  shift_factor=0.0609).save_pretrained(str(folder))


@pytest.fixture(scope="module")
def official(tmp_path_factory):
    root = tmp_path_factory.mktemp("official")
    tensors = write_official_checkpoint(root / "checkpoint", root)
    write_tiny_vae(root / "vae")
    return root, tensors


@pytest.fixture(scope="module")
def converted(official):
    root, _ = official
    report = convert_official(str(root / "checkpoint"), str(root / "pipeline"), vae=str(root / "vae"),
                              trigger_token="<|dst|>", sample_size=SAMPLE, shift=1.0, progress=False)
    return root / "pipeline", report


# ----------------------------------------------------------------------------------------------------------------------
# An independent reference of the original DiT's forward (DESIGN section 1: PixArt, adaLN-single, cross-attention)
# ----------------------------------------------------------------------------------------------------------------------


def sincos_1d(dim, positions):
    omega = 1.0 / 10000 ** (torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0))
    angles = positions.reshape(-1, 1).double() * omega[None]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)


def sincos_2d(dim, rows, cols, base, scale):
    """MAE-style 2D sin-cos table for a rows x cols grid (row-major tokens): first half the column coordinate,
    second half the row coordinate, each in units of `base / size / scale`."""
    y = torch.arange(rows, dtype=torch.float64) / (rows / base) / scale
    x = torch.arange(cols, dtype=torch.float64) / (cols / base) / scale
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.cat([sincos_1d(dim // 2, xx), sincos_1d(dim // 2, yy)], dim=1).float()


def timestep_features(t, dim=256):
    half = dim // 2
    freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / half)
    angles = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(angles), torch.sin(angles)], dim=-1)


def layer_norm(x):
    return torch.nn.functional.layer_norm(x, x.shape[-1:], eps=1e-6)


def linear(w, name, x):
    return x @ w[name + ".weight"].T + w[name + ".bias"]


def attention(w, name, x, context, heads, bias=None):
    b, n, d = x.shape
    q = linear(w, name + ".to_q", x).view(b, -1, heads, d // heads).transpose(1, 2)
    k = linear(w, name + ".to_k", context).view(b, -1, heads, d // heads).transpose(1, 2)
    v = linear(w, name + ".to_v", context).view(b, -1, heads, d // heads).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d // heads)
    if bias is not None:
        scores = scores + bias[:, None, None, :]
    out = (scores.softmax(-1) @ v).transpose(1, 2).reshape(b, n, d)
    return linear(w, name + ".to_out.0", out)


def reference_dit(tensors, latents, timestep, condition, mask, heads, sample_size, scale=0.5):
    """The original DiT written from DESIGN section 1 with the official tensors (names under `model.dit.model.`)."""
    w = {k[len(DIT):]: v.float() for k, v in tensors.items() if k.startswith(DIT)}
    b, c, height, width = latents.shape
    p = w["pos_embed.proj.weight"].shape[-1]
    dim = w["pos_embed.proj.weight"].shape[0]
    rows, cols = height // p, width // p
    # patch embedding (a p x p linear map of each patch) plus the 2D sin-cos position table
    patches = latents.reshape(b, c, rows, p, cols, p).permute(0, 2, 4, 1, 3, 5).reshape(b, rows * cols, c * p * p)
    x = patches @ w["pos_embed.proj.weight"].reshape(dim, -1).T + w["pos_embed.proj.bias"]
    x = x + sincos_2d(dim, rows, cols, base=sample_size // p, scale=scale)[None]
    # adaLN-single: one timestep embedding shared by all blocks
    emb = linear(w, "adaln_single.emb.timestep_embedder.linear_2",
                 torch.nn.functional.silu(linear(w, "adaln_single.emb.timestep_embedder.linear_1", timestep_features(timestep))))
    t6 = linear(w, "adaln_single.linear", torch.nn.functional.silu(emb))
    # the condition projection (Linear, GELU-tanh, Linear), cross-attention only, masked
    context = linear(w, "condition_projection.linear_2", torch.nn.functional.gelu(
        linear(w, "condition_projection.linear_1", condition), approximate="tanh"))
    bias = (1 - mask.float()) * -10000.0
    for i in range(sum(1 for k in w if k.endswith(".attn1.to_q.weight"))):
        blk = f"transformer_blocks.{i}"
        shift_a, scale_a, gate_a, shift_f, scale_f, gate_f = (w[blk + ".scale_shift_table"][None] + t6.view(b, 6, dim)).chunk(6, 1)
        x = x + gate_a * attention(w, blk + ".attn1", layer_norm(x) * (1 + scale_a) + shift_a,
                                   layer_norm(x) * (1 + scale_a) + shift_a, heads)
        x = x + attention(w, blk + ".attn2", x, context, heads, bias)
        h = layer_norm(x) * (1 + scale_f) + shift_f
        h = linear(w, blk + ".ff.net.2", torch.nn.functional.gelu(linear(w, blk + ".ff.net.0.proj", h), approximate="tanh"))
        x = x + gate_f * h
    shift, scale_out = (w["scale_shift_table"][None] + emb[:, None]).chunk(2, 1)
    x = linear(w, "proj_out", layer_norm(x) * (1 + scale_out) + shift)
    out_c = x.shape[-1] // (p * p)
    return x.reshape(b, rows, cols, p, p, out_c).permute(0, 5, 1, 3, 2, 4).reshape(b, out_c, rows * p, cols * p)


def dit_inputs(seed=0, batch=2, size=SAMPLE, tokens=7):
    g = torch.Generator().manual_seed(seed)
    latents = torch.randn(batch, CHANNELS, size, size, generator=g)
    condition = torch.randn(batch, tokens, HIDDEN, generator=g)
    mask = torch.ones(batch, tokens, dtype=torch.long)
    mask[0, 4:] = 0
    return latents, torch.tensor([999, 321]), condition, mask


# ----------------------------------------------------------------------------------------------------------------------
# Tests
# ----------------------------------------------------------------------------------------------------------------------


def test_key_mapping_routes_each_official_prefix():
    assert map_official_key("model.latent_queries") == ("dst_encoder", "queries")
    assert map_official_key("model.prototype_projector.2.bias") == ("prototype_adapter", "mlp.2.bias")
    assert map_official_key("model.dit.model.condition_projection.linear_1.weight") == (
        "transformer", "caption_projection.linear_1.weight")
    assert map_official_key("model.dit.model.transformer_blocks.3.attn2.to_k.bias") == (
        "transformer", "transformer_blocks.3.attn2.to_k.bias")
    assert map_official_key("model.dit.model.condition_projection.uncond_embedding")[0] == DROP
    assert map_official_key("visual.blocks.0.attn.qkv.weight") == ("mllm", "visual.blocks.0.attn.qkv.weight")
    assert map_official_key("model.layers.0.mlp.up_proj.weight") == ("mllm", "model.layers.0.mlp.up_proj.weight")
    # transformers 5's own names map to the same written layout
    assert map_official_key("model.visual.merger.ln_q.weight") == ("mllm", "visual.merger.ln_q.weight")
    assert map_official_key("model.language_model.norm.weight") == ("mllm", "model.norm.weight")
    assert map_official_key("lm_head.weight") == ("mllm", "lm_head.weight")
    for stray in ("model.dit.extra", "model.prototype_projector.1.weight", "text_encoder.x", "model.something.weight"):
        assert map_official_key(stray) is None


def test_transformer_config_is_read_from_shapes_and_needs_heads_when_ambiguous():
    g = torch.Generator().manual_seed(0)
    shapes = {k[len(DIT):].replace("condition_projection", "caption_projection"): tuple(v.shape)
              for k, v in official_dit_tensors(g, width=16, layers=3, caption=40, channels=4).items()}
    with pytest.raises(ValueError, match="--attention-heads"):
        transformer_config_from_shapes(shapes)
    config = transformer_config_from_shapes(shapes, attention_heads=2)
    assert (config["num_layers"], config["attention_head_dim"], config["caption_channels"], config["in_channels"],
            config["out_channels"], config["sample_size"], config["interpolation_scale"]) == (3, 8, 40, 4, 4, 48, 0.5)
    hinted = transformer_config_from_shapes(shapes, hints={"num_attention_heads": 4, "sample_size": 32})
    assert (hinted["attention_head_dim"], hinted["sample_size"]) == (4, 32)


def test_converted_transformer_matches_a_reference_of_the_original_dit(official, converted, tmp_path):
    from diffusers import PixArtTransformer2DModel

    _, tensors = official
    folder, _ = converted
    transformer = PixArtTransformer2DModel.from_pretrained(str(folder / "transformer")).eval()
    assert transformer.config.caption_channels == HIDDEN and transformer.config.interpolation_scale == 0.5
    latents, timestep, condition, mask = dit_inputs()
    with torch.no_grad():
        ours = transformer(latents, encoder_hidden_states=condition, encoder_attention_mask=mask, timestep=timestep,
                           added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
        expected = reference_dit(tensors, latents, timestep, condition, mask, HEADS, SAMPLE)
        torch.testing.assert_close(ours, expected, atol=1e-5, rtol=1e-5)
        # another resolution: the position table is rebuilt from the same base size
        big = dit_inputs(seed=1, size=2 * SAMPLE)
        torch.testing.assert_close(
            transformer(big[0], encoder_hidden_states=big[2], encoder_attention_mask=big[3], timestep=big[1]).sample,
            reference_dit(tensors, *big, HEADS, SAMPLE), atol=1e-5, rtol=1e-5)

        transformer.save_pretrained(str(tmp_path / "round-trip"))
        again = PixArtTransformer2DModel.from_pretrained(str(tmp_path / "round-trip")).eval()
        np.testing.assert_array_equal(
            again(latents, encoder_hidden_states=condition, encoder_attention_mask=mask, timestep=timestep).sample.numpy(),
            ours.numpy())


def test_converted_components_hold_the_official_tensors(official, converted):
    from transformers import Qwen2_5_VLForConditionalGeneration

    _, tensors = official
    folder, report = converted
    mllm, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(folder / "mllm"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    state = mllm.state_dict()
    assert torch.equal(state["model.visual.blocks.0.attn.qkv.weight"], tensors["visual.blocks.0.attn.qkv.weight"])
    assert torch.equal(state["model.language_model.layers.1.mlp.up_proj.weight"], tensors["model.layers.1.mlp.up_proj.weight"])
    assert torch.equal(state["lm_head.weight"], tensors["lm_head.weight"])

    pipe = UniPathPipeline.from_pretrained(str(folder))
    assert torch.equal(pipe.dst_encoder.queries, tensors["model.latent_queries"])
    assert pipe.dst_encoder.config.trigger_token == "<|dst|>" and pipe.dst_encoder.config.num_queries == QUERIES
    assert pipe.dst_encoder.config.prompt_template == "Analysis of my description: {prompt}"
    assert torch.equal(pipe.prototype_adapter.mlp[2].weight, tensors["model.prototype_projector.2.weight"])
    assert pipe.config.latent_convention == "unipath_original" and pipe.config.integer_timesteps
    assert pipe.scheduler.config.shift == 1.0 and type(pipe.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert report.tensors["dst_encoder"] == 1 and len(report.dropped) == 1  # uncond_embedding
    provenance = json.loads((folder / "unipath_conversion.json").read_text())
    assert provenance["source"] == "official" and provenance["license"] == "cc-by-nc-nd-4.0"
    assert provenance["config_extras"]["n_query"] == QUERIES  # the original's own settings, kept aside


def test_transformers_5_names_nested_config_and_tied_embeddings_convert_too(tmp_path):
    from transformers import Qwen2_5_VLForConditionalGeneration

    def tie(config):
        config["tie_word_embeddings"] = True

    tensors = write_official_checkpoint(tmp_path / "v5", tmp_path, config_edit=tie, transformers5=True)
    assert "model.language_model.layers.0.mlp.up_proj.weight" in tensors and "lm_head.weight" not in tensors
    assert "text_config" in json.loads((tmp_path / "v5" / "config.json").read_text())
    write_tiny_vae(tmp_path / "vae")
    convert_official(str(tmp_path / "v5"), str(tmp_path / "out"), vae=str(tmp_path / "vae"), sample_size=SAMPLE,
                     progress=False)
    mllm, info = Qwen2_5_VLForConditionalGeneration.from_pretrained(str(tmp_path / "out" / "mllm"), output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
    embed = tensors["model.language_model.embed_tokens.weight"]
    assert torch.equal(mllm.get_input_embeddings().weight, embed) and torch.equal(mllm.lm_head.weight, embed)
    pipe = UniPathPipeline.from_pretrained(str(tmp_path / "out"))
    pipe.set_progress_bar_config(disable=True)
    assert pipe("gland", num_inference_steps=1, output_type="np").images.shape[-1] == 3


def test_converted_pipeline_generates_an_image(converted):
    folder, _ = converted
    pipe = UniPathPipeline.from_pretrained(str(folder))
    pipe.set_progress_bar_config(disable=True)
    out = pipe("colon adenocarcinoma, irregular glands", num_inference_steps=2, output_type="np",
               generator=torch.Generator().manual_seed(0))
    native = SAMPLE * pipe.vae_scale_factor
    assert out.images.shape == (1, native, native, 3) and np.isfinite(out.images).all()


def test_streaming_holds_at_most_one_output_shard(official, tmp_path):
    root, _ = official
    limit = 64 * 1024
    report = convert_official(str(root / "checkpoint"), str(tmp_path / "out"), vae=str(root / "vae"),
                              sample_size=SAMPLE, max_shard_size=limit, progress=False)
    assert report.peak_buffered_bytes <= limit + report.largest_tensor_bytes
    assert report.peak_buffered_bytes < report.total_bytes / 4
    mllm_files = report.files["mllm"]
    assert "model.safetensors.index.json" in mllm_files and len(mllm_files) > 3
    index = json.loads((tmp_path / "out" / "mllm" / "model.safetensors.index.json").read_text())
    assert set(index["weight_map"].values()) == set(mllm_files) - {"model.safetensors.index.json"}
    # sharded components load like unsharded ones
    from diffusers import PixArtTransformer2DModel

    assert len(report.files["transformer"]) > 2
    PixArtTransformer2DModel.from_pretrained(str(tmp_path / "out" / "transformer"))


def test_missing_and_unexpected_keys_are_listed_and_nothing_is_written(tmp_path):
    def edit(tensors):
        del tensors["model.latent_queries"]
        del tensors[DIT + "transformer_blocks.1.attn2.to_v.bias"]
        tensors["model.stray_head.weight"] = torch.zeros(2)

    write_official_checkpoint(tmp_path / "bad", tmp_path, edit=edit)
    with pytest.raises(ValueError) as error:
        convert_official(str(tmp_path / "bad"), str(tmp_path / "out"), no_vae=True, sample_size=SAMPLE, progress=False)
    message = str(error.value)
    assert "model.stray_head.weight" in message and "unexpected" in message
    assert "model.latent_queries" in message and DIT + "transformer_blocks.1.attn2.to_v.bias" in message
    assert "2 missing" in message
    assert sorted(os.listdir(tmp_path)) == ["bad", "qwen-scratch"]


def test_one_tensor_under_two_layouts_is_refused(tmp_path):
    def twice(tensors):
        tensors["model.visual.merger.ln_q.weight"] = tensors["visual.merger.ln_q.weight"].clone()

    write_official_checkpoint(tmp_path / "bad", tmp_path, edit=twice)
    with pytest.raises(ValueError, match="stores one tensor twice"):
        convert_official(str(tmp_path / "bad"), str(tmp_path / "out"), no_vae=True, sample_size=SAMPLE, progress=False)


def test_overwrite_replaces_an_existing_folder_only_when_asked(official, tmp_path):
    root, _ = official
    out = tmp_path / "out"
    out.mkdir()
    (out / "stale.txt").write_text("old")
    args = dict(no_vae=True, sample_size=SAMPLE, progress=False)
    with pytest.raises(ValueError, match="--overwrite"):
        convert_official(str(root / "checkpoint"), str(out), **args)
    assert (out / "stale.txt").exists()
    convert_official(str(root / "checkpoint"), str(out), overwrite=True, **args)
    assert not (out / "stale.txt").exists() and (out / "model_index.json").exists()
    assert json.loads((out / "model_index.json").read_text())["vae"] == [None, None]
    from diffusers import AutoencoderKL  # --no-vae: the VAE is passed when loading

    pipe = UniPathPipeline.from_pretrained(str(out), vae=AutoencoderKL.from_pretrained(str(root / "vae")))
    assert pipe.vae.config.latent_channels == CHANNELS
    assert sorted(os.listdir(tmp_path)) == ["out"]  # no staging or backup folder left behind


def test_a_failure_while_streaming_leaves_no_half_written_folder(official, tmp_path, monkeypatch):
    from unipath_pipeline import checkpoint_io

    root, _ = official
    calls = {"n": 0}
    original = checkpoint_io.ShardedSafetensorsWriter.add

    def failing_add(self, key, tensor):
        calls["n"] += 1
        if calls["n"] == 20:
            raise OSError("disk full")
        return original(self, key, tensor)

    monkeypatch.setattr(checkpoint_io.ShardedSafetensorsWriter, "add", failing_add)
    with pytest.raises(OSError, match="disk full"):
        convert_official(str(root / "checkpoint"), str(tmp_path / "out"), vae=str(root / "vae"), sample_size=SAMPLE,
                         max_shard_size="16KB", progress=False)
    assert os.listdir(tmp_path) == []


def test_cli_convert_checks_its_arguments_before_any_work(official, tmp_path, capsys):
    root, _ = official
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "file.txt").write_text("x")
    cases = [
        (["--checkpoint", str(tmp_path / "nope"), "--out", str(tmp_path / "o"), "--vae", str(root / "vae")], "--checkpoint"),
        (["--checkpoint", str(root / "checkpoint"), "--out", str(tmp_path / "taken"), "--vae", str(root / "vae")], "--overwrite"),
        (["--checkpoint", str(root / "checkpoint"), "--out", str(tmp_path / "o")], "--vae"),
        (["--checkpoint", str(root / "checkpoint"), "--out", str(tmp_path / "o"), "--vae", str(tmp_path)], "--vae"),
        (["--checkpoint", str(root / "vae"), "--out", str(tmp_path / "o"), "--no-vae"], "not an official UniPath"),
        (["--checkpoint", str(root / "checkpoint"), "--out", str(tmp_path / "o"), "--no-vae", "--trigger-token", "<|nope|>"],
         "--trigger-token"),
    ]
    for args, needle in cases:
        assert main(["convert", "--from", "official", *args]) == 2
        assert needle in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path)) == ["taken"]


def test_cli_convert_writes_a_pipeline_and_prints_a_summary(official, tmp_path, capsys):
    root, _ = official
    out = tmp_path / "pipe"
    assert main(["convert", "--from", "official", "--checkpoint", str(root / "checkpoint"), "--out", str(out),
                 "--vae", str(root / "vae"), "--sample-size", str(SAMPLE), "--shift", "3.0", "--dtype", "bfloat16",
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "transformer" in printed and "mllm" in printed and str(out) in printed
    scheduler = json.loads((out / "scheduler" / "scheduler_config.json").read_text())
    assert scheduler["shift"] == 3.0
    assert load_file(str(out / "dst_encoder" / "diffusion_pytorch_model.safetensors"))["queries"].dtype == torch.bfloat16
    assert main(["generate", "--model", str(out), "--prompt", "lymph node", "--steps", "2", "--out", str(tmp_path / "x.png")]) == 0
    assert (tmp_path / "x.png").is_file()
