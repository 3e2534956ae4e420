"""`unipath convert --from pixcell`: a tiny checkpoint laid out like StonyBrook-CVLab/PixCell-256 (PixArt names, a
`caption_projection.uncond_embedding` buffer, learned-variance output channels, UNI-width captions) initialises a
UniPath transformer: matching tensors copied, the velocity head taken from the noise half, the condition projection
re-initialised when its width differs."""

import json
import os

import pytest
import torch
from diffusers import PixArtTransformer2DModel
from safetensors.torch import save_file

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.cli import main
from unipath_pipeline.convert_pixcell import convert_pixcell, map_pixcell_key

UNI = 24  # stands in for UNI2-h's 1536


def pixcell_transformer(**overrides):
    config = dict(num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=8, num_layers=2,
                  cross_attention_dim=16, sample_size=16, patch_size=2, caption_channels=UNI,
                  use_additional_conditions=False, interpolation_scale=0.5)
    config.update(overrides)
    torch.manual_seed(3)
    model = PixArtTransformer2DModel(**config).eval()
    with torch.no_grad():  # diffusers zero-initialises nothing here, but make every tensor distinctive anyway
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model, config


def write_pixcell(folder, **overrides):
    """PixCell-256's Hub layout: model_index.json plus transformer/ with its custom class name and extra buffer."""
    model, config = pixcell_transformer(**overrides)
    tensors = {k: v.contiguous() for k, v in model.state_dict().items()}
    tensors["caption_projection.uncond_embedding"] = torch.randn(1, config["caption_channels"])
    os.makedirs(folder / "transformer", exist_ok=True)
    save_file(tensors, str(folder / "transformer" / "diffusion_pytorch_model.safetensors"))
    hub_config = {"_class_name": "PixCellTransformer2DModel", "_diffusers_version": "0.32.2", "caption_num_tokens": 1,
                  "activation_fn": "gelu-approximate", "attention_bias": True, "attention_type": "default",
                  "dropout": 0.0, "norm_elementwise_affine": False, "norm_eps": 1e-6, "norm_num_groups": 32,
                  "norm_type": "ada_norm_single", "num_embeds_ada_norm": 1000, "upcast_attention": False, **config}
    (folder / "transformer" / "config.json").write_text(json.dumps(hub_config))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "PixCellPipeline", "transformer": ["pixcell", "x"]}))
    return model, tensors


def test_key_mapping_drops_pixcell_only_buffers():
    assert map_pixcell_key("caption_projection.uncond_embedding") is None
    assert map_pixcell_key("y_pos_embed.y_pos_embed") is None
    assert map_pixcell_key("transformer_blocks.0.attn2.to_k.weight") == "transformer_blocks.0.attn2.to_k.weight"


def test_matching_tensors_are_copied_and_the_condition_projection_reinitialised(tmp_path):
    source, tensors = write_pixcell(tmp_path / "pixcell")
    report = convert_pixcell(str(tmp_path / "pixcell"), str(tmp_path / "out"), caption_channels=32, sample_size=16,
                             progress=False)
    target = PixArtTransformer2DModel.from_pretrained(str(tmp_path / "out"))
    assert (target.config.caption_channels, target.config.out_channels, target.config.interpolation_scale) == (32, 4, 0.5)
    state = target.state_dict()
    for key in report.copied:
        assert torch.equal(state[key], tensors[key]), key
    assert set(report.reinitialised) == {f"caption_projection.linear_{i}.{p}" for i in (1, 2) for p in ("weight", "bias")}
    assert set(report.adapted) == {"proj_out.weight", "proj_out.bias"}
    assert "caption_projection.uncond_embedding" in report.dropped
    assert len(report.copied) + len(report.adapted) + len(report.reinitialised) == len(state)


def test_the_velocity_head_is_pixcells_noise_prediction(tmp_path):
    source, _ = write_pixcell(tmp_path / "pixcell")
    convert_pixcell(str(tmp_path / "pixcell" / "transformer"), str(tmp_path / "out"), caption_channels=UNI,
                    sample_size=16, progress=False)
    target = PixArtTransformer2DModel.from_pretrained(str(tmp_path / "out")).eval()
    g = torch.Generator().manual_seed(0)
    latents, condition = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 1, UNI, generator=g)
    with torch.no_grad():
        kwargs = dict(encoder_hidden_states=condition, timestep=torch.tensor([10, 500]))
        full = source(latents, **kwargs).sample
        torch.testing.assert_close(target(latents, **kwargs).sample, full[:, :4], atol=1e-6, rtol=1e-6)


def test_initialising_a_base_pipeline_gives_a_pipeline_that_generates(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(str(tmp_path / "base"))
    _, tensors = write_pixcell(tmp_path / "pixcell")
    report = convert_pixcell(str(tmp_path / "pixcell"), str(tmp_path / "out"), base=str(tmp_path / "base"), progress=False)
    assert "caption_projection.linear_1.weight" in report.reinitialised  # UNI width 24 vs the tiny MLLM's 32
    pipe = UniPathPipeline.from_pretrained(str(tmp_path / "out"))
    pipe.set_progress_bar_config(disable=True)
    assert torch.equal(pipe.transformer.transformer_blocks[1].attn1.to_q.weight, tensors["transformer_blocks.1.attn1.to_q.weight"])
    assert torch.equal(pipe.dst_encoder.queries, tiny_pipe.dst_encoder.queries)
    images = pipe("lymph node", num_inference_steps=2, output_type="np", generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 32, 32, 3)
    provenance = json.loads((tmp_path / "out" / "unipath_conversion.json").read_text())
    assert provenance["source"] == "pixcell"


def test_a_different_architecture_is_refused_before_writing(tiny_pipe, tmp_path, capsys):
    tiny_pipe.save_pretrained(str(tmp_path / "base"))
    write_pixcell(tmp_path / "pixcell", num_layers=3)
    assert main(["convert", "--from", "pixcell", "--checkpoint", str(tmp_path / "pixcell"), "--out", str(tmp_path / "out"),
                 "--base", str(tmp_path / "base"), "--no-progress"]) == 2
    assert "num_layers" in capsys.readouterr().err and not (tmp_path / "out").exists()
    assert main(["convert", "--from", "pixcell", "--checkpoint", str(tmp_path / "pixcell"), "--out", str(tmp_path / "out"),
                 "--vae", "x"]) == 2
    assert "--vae apply only to --from official" in capsys.readouterr().err


def test_cli_reports_what_was_copied_adapted_and_reinitialised(tmp_path, capsys):
    write_pixcell(tmp_path / "pixcell")
    assert main(["convert", "--from", "pixcell", "--checkpoint", str(tmp_path / "pixcell"), "--out", str(tmp_path / "out"),
                 "--caption-channels", "32", "--sample-size", "16", "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "re-initialised" in printed and "caption_projection.linear_1.weight" in printed and "proj_out.weight" in printed
    with pytest.raises(SystemExit):
        main(["convert", "--from", "pixcell", "--checkpoint", "x", "--out", "y", "--caption-channels", "0"])
