"""Behaviour of UniPathPipeline on the tiny preset (CPU, offline), in the spirit of diffusers' PipelineTesterMixin."""

import dataclasses

import numpy as np
import pytest
import torch
from conftest import PROMPT, ForwardCounter, generate

from unipath_pipeline import STREAMS, UniPathConditioning, UniPathPipeline
from unipath_pipeline.prototype_bank import PrototypeBank, PrototypeEntry

ALL_STREAM_IDS = [0, 3]


def test_seeded_generation_is_deterministic(tiny_pipe):
    a = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, seed=7)
    b = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, seed=7)
    c = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, seed=8)
    np.testing.assert_array_equal(a, b)
    assert np.abs(a - c).max() > 1e-3


def test_output_shapes_types_and_records(tiny_pipe):
    out = tiny_pipe(
        [PROMPT, "normal skin"], prototype_ids=[[1], [2, 5]], num_images_per_prompt=2, num_inference_steps=2,
        height=16, width=24, output_type="pt",
    )
    assert out.images.shape == (4, 3, 16, 24)
    assert 0.0 <= out.images.min() and out.images.max() <= 1.0
    assert out.prototype_ids == [[1], [1], [2, 5], [2, 5]]
    assert out.streams == STREAMS
    pil = tiny_pipe(PROMPT, num_inference_steps=1).images
    assert pil[0].size == (32, 32)  # the preset's native size
    latents = tiny_pipe(PROMPT, num_inference_steps=1, output_type="latent").images
    assert latents.shape == (1, 4, 16, 16)


def test_batch_of_two_equals_two_single_calls(tiny_pipe):
    prompts, ids = [PROMPT, "normal skin with epidermis and dermis"], [[0, 3], [6]]
    batch = generate(tiny_pipe, prompts, prototype_ids=ids, generator=[torch.Generator().manual_seed(s) for s in (1, 2)])
    for i, seed in enumerate((1, 2)):
        single = generate(tiny_pipe, prompts[i], prototype_ids=ids[i], seed=seed)
        np.testing.assert_allclose(batch[i], single[0], atol=1e-4)


@pytest.mark.parametrize("stream", STREAMS)
def test_each_stream_changes_the_image_when_switched_off(tiny_pipe, stream):
    # Compared in latent space: generation is bit-exact for a seed, so any difference is the stream's effect
    # (in the random tiny model, two prototype tokens among ~90 move the latents by ~1e-3).
    full = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, output_type="latent")
    rest = tuple(s for s in STREAMS if s != stream)
    off = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS if "prototype" in rest else None, streams=rest, output_type="latent")
    assert (full - off).abs().max() > 1e-4


def test_padding_tokens_do_not_change_the_image(tiny_pipe):
    cond = tiny_pipe.encode_prompt(PROMPT, prototype_ids=ALL_STREAM_IDS)
    # Append 10 masked tokens with large random values to the text stream; shift the later spans accordingly.
    a, b = cond.spans["text"]
    junk = torch.randn(1, 10, cond.embeds.shape[-1]) * 100
    embeds = torch.cat([cond.embeds[:, :b], junk, cond.embeds[:, b:]], dim=1)
    mask = torch.cat([cond.mask[:, :b], torch.zeros(1, 10, dtype=cond.mask.dtype), cond.mask[:, b:]], dim=1)
    spans = {s: (x + 10 * (s != "text"), y + 10) for s, (x, y) in cond.spans.items()}
    padded = dataclasses.replace(cond, embeds=embeds, mask=mask, spans=spans)
    np.testing.assert_allclose(
        generate(tiny_pipe, None, conditioning=padded), generate(tiny_pipe, None, conditioning=cond), atol=1e-5
    )
    # Without the mask the same junk does change the image: the test above would catch an ignored mask.
    unmasked = dataclasses.replace(padded, mask=torch.ones_like(padded.mask))
    assert np.abs(generate(tiny_pipe, None, conditioning=unmasked) - generate(tiny_pipe, None, conditioning=cond)).max() > 1e-3


def test_precomputed_conditioning_gives_the_same_image_and_skips_the_mllm(tiny_pipe, tmp_path):
    reference = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS)
    cond = tiny_pipe.encode_prompt(PROMPT, prototype_ids=ALL_STREAM_IDS)
    cond.save(str(tmp_path / "cond.safetensors"))
    loaded = UniPathConditioning.load(str(tmp_path / "cond.safetensors"))
    assert loaded.spans == cond.spans and loaded.prototype_ids == [ALL_STREAM_IDS]
    no_mllm = UniPathPipeline(**{**tiny_pipe.components, "mllm": None, "tokenizer": None})
    no_mllm.set_progress_bar_config(disable=True)
    with ForwardCounter(tiny_pipe.mllm.base_model) as counter:
        from_cond = generate(no_mllm, None, conditioning=loaded)
    assert counter.calls == 0
    np.testing.assert_allclose(from_cond, reference, atol=1e-6)
    # Explicit noise at a non-native size works with a conditioning as with a prompt.
    noise = torch.randn(1, 4, 12, 8)
    np.testing.assert_allclose(
        generate(no_mllm, None, conditioning=cond, latents=noise, height=24, width=16),
        generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, latents=noise, height=24, width=16),
        atol=1e-6,
    )
    # A conditioning can be narrowed to fewer streams at call time.
    np.testing.assert_allclose(
        generate(tiny_pipe, None, conditioning=cond, streams=("text", "dst")),
        generate(tiny_pipe, streams=("text", "dst")),
        atol=1e-6,
    )


def test_mllm_runs_once_per_call(tiny_pipe):
    with ForwardCounter(tiny_pipe.mllm.base_model) as mllm, ForwardCounter(tiny_pipe.transformer) as dit:
        generate(tiny_pipe, [PROMPT, "skin"], steps=5, prototype_ids=[1], stream_guidance={"dst": 1.0, "text": 0.5})
    assert mllm.calls == 1
    assert dit.calls == 5  # every guidance branch of a step in one batched call
    with ForwardCounter(tiny_pipe.mllm.base_model) as mllm:
        generate(tiny_pipe, streams=("text", "prototype"), prototype_ids=[1])
    assert mllm.calls == 0  # the raw-text stream is an embedding lookup, no forward pass


def test_stream_guidance_changes_the_image_only_when_its_weight_is_nonzero(tiny_pipe):
    base = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, output_type="latent")
    for stream in STREAMS:
        zero = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, stream_guidance={stream: 0.0}, output_type="latent")
        assert torch.equal(zero, base)
        weighted = generate(tiny_pipe, prototype_ids=ALL_STREAM_IDS, stream_guidance={stream: 2.0}, output_type="latent")
        assert (weighted - base).abs().max() > 1e-4, stream


def test_guidance_combination_follows_the_formula():
    u, c, c_dst = torch.tensor([1.0]), torch.tensor([3.0]), torch.tensor([2.5])
    predictions = torch.cat([u, c, c_dst])
    names = ["null", "cond", "without:dst"]
    out = UniPathPipeline.combine_guidance(predictions, names, 3.0, {"dst": 2.0})
    assert out.item() == pytest.approx(1 + 3 * (3 - 1) + 2 * (3 - 2.5))


def test_joint_guidance_uses_zero_embeddings_with_the_same_mask(tiny_pipe):
    cond = tiny_pipe.encode_prompt(PROMPT, prototype_ids=ALL_STREAM_IDS)
    batched, names = tiny_pipe.guidance_branches(cond, 3.0, {"prototype": 1.0})
    assert names == ["null", "cond", "without:prototype"]
    null, same, without = batched.embeds.chunk(3)
    assert torch.all(null == 0) and torch.equal(batched.mask[0], cond.mask[0])
    a, b = cond.spans["prototype"]
    assert torch.all(without[:, a:b] == 0) and torch.all(batched.mask[2, a:b] == 0)
    assert torch.equal(without[:, :a], same[:, :a])
    assert tiny_pipe.guidance_branches(cond, 1.0, {})[1] == ["cond"]


def test_gradients_reach_the_queries_and_not_the_mllm(tiny_pipe):
    encoder, mllm = tiny_pipe.dst_encoder, tiny_pipe.mllm
    assert not any(p.requires_grad for p in mllm.parameters())
    tokens = encoder.tokenize(tiny_pipe.tokenizer, [PROMPT, "skin"])
    with torch.enable_grad():
        streams = encoder(mllm, tokens)
        (streams["dst"][0].square().mean() + streams["text"][0].mean()).backward()
    try:
        assert encoder.queries.grad is not None and encoder.queries.grad.abs().sum() > 0
        assert all(p.grad is None for p in mllm.parameters())
    finally:
        encoder.queries.grad = None


def test_callbacks_see_and_can_replace_the_latents(tiny_pipe):
    seen = []

    def callback(pipe, step, timestep, kwargs):
        seen.append((step, float(timestep), kwargs["latents"].shape))
        return {"latents": kwargs["latents"] * 0} if step == 2 else {}

    out = generate(tiny_pipe, steps=3, callback_on_step_end=callback, output_type="latent")
    assert [s for s, _, _ in seen] == [0, 1, 2]
    assert all(shape == (1, 4, 16, 16) for _, _, shape in seen)
    assert seen[0][1] > seen[1][1] > seen[2][1]  # sigmas descend from 1
    assert torch.all(out == 0)


def test_interrupt_stops_the_denoising_loop(tiny_pipe):
    steps = []

    def stop_after_first(pipe, step, timestep, kwargs):
        steps.append(step)
        pipe._interrupt = True
        return {}

    generate(tiny_pipe, steps=4, callback_on_step_end=stop_after_first)
    assert steps == [0]


def _bad_bank(pipe):
    return PrototypeBank([PrototypeEntry(i) for i in range(3)], torch.zeros(3, pipe.prototype_adapter.config.feature_dim + 1))


BAD_INPUTS = [
    ({"height": 30}, "height"),
    ({"width": 0}, "width"),
    ({"num_inference_steps": 0}, "num_inference_steps"),
    ({"guidance_scale": -1.0}, "guidance_scale"),
    ({"stream_guidance": {"dst": -1.0}}, "stream_guidance"),
    ({"stream_guidance": {"colour": 1.0}}, "stream_guidance"),
    ({"streams": ("text", "colour")}, "streams"),
    ({"streams": ()}, "streams"),
    ({"prototype_ids": [0, 99]}, "prototype_ids"),
    ({"prototype_ids": [-1]}, "prototype_ids"),
    ({"prototype_ids": [0, 1, 2, 3, 4]}, "prototype_ids"),
    ({"prototype_ids": [1], "streams": ("text", "dst")}, "prototype_ids"),
    ({"num_images_per_prompt": 0}, "num_images_per_prompt"),
    ({"output_type": "jpeg"}, "output_type"),
    ({"latents": torch.zeros(1, 4, 8, 8)}, "latents"),
    ({"callback_on_step_end_tensor_inputs": ["noise"]}, "callback_on_step_end_tensor_inputs"),
    ({"generator": [torch.Generator(), torch.Generator()]}, "generator"),
]


@pytest.mark.parametrize("kwargs,argument", BAD_INPUTS, ids=[f"{a}-{i}" for i, (_, a) in enumerate(BAD_INPUTS)])
def test_bad_input_raises_before_any_model_runs(tiny_pipe, kwargs, argument):
    with ForwardCounter(tiny_pipe.mllm.base_model) as mllm, ForwardCounter(tiny_pipe.transformer) as dit:
        with pytest.raises(ValueError, match=argument):
            tiny_pipe(PROMPT, **kwargs)
    assert mllm.calls == 0 and dit.calls == 0


def test_prototype_feature_size_mismatch_is_a_clear_error(tiny_pipe):
    pipe = UniPathPipeline(**{**tiny_pipe.components, "prototype_bank": _bad_bank(tiny_pipe)})
    with ForwardCounter(pipe.mllm.base_model) as mllm:
        with pytest.raises(ValueError, match="feature_dim"):
            pipe(PROMPT, prototype_ids=[1])
    assert mllm.calls == 0


def test_prompt_and_conditioning_batch_mismatch_is_a_clear_error(tiny_pipe):
    cond = tiny_pipe.encode_prompt([PROMPT, "skin"])
    with ForwardCounter(tiny_pipe.transformer) as dit:
        with pytest.raises(ValueError, match="prompt.*conditioning"):
            tiny_pipe([PROMPT, "skin", "lymph node"], conditioning=cond)
        with pytest.raises(ValueError, match="prototype_ids"):
            tiny_pipe(conditioning=cond, prototype_ids=[1])
        with pytest.raises(ValueError, match="streams"):
            tiny_pipe(conditioning=cond.select(("text",)), streams=("text", "dst"))
    assert dit.calls == 0


def test_missing_components_are_clear_errors(tiny_pipe):
    no_mllm = UniPathPipeline(**{**tiny_pipe.components, "mllm": None, "tokenizer": None})
    with pytest.raises(ValueError, match="conditioning"):
        no_mllm(PROMPT)
    no_bank = UniPathPipeline(**{**tiny_pipe.components, "prototype_bank": None})
    with pytest.raises(ValueError, match="prototype_bank"):
        no_bank(PROMPT, prototype_ids=[0])
    with pytest.raises(ValueError, match="condition width"):
        UniPathPipeline(**{**tiny_pipe.components, "prototype_adapter": type(tiny_pipe.prototype_adapter)(24, 16)})
