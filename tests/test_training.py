"""The training scripts, run for a few steps on CPU on a tiny image-caption folder made here."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from unipath_pipeline import UniPathPipeline

REPO = Path(__file__).resolve().parents[1]
TRAIN = str(REPO / "training" / "train_unipath.py")
PRECOMPUTE = str(REPO / "training" / "precompute.py")
CAPTIONS = ["gland in stroma", "lymphocyte rich stroma", "necrosis with mitosis", "keratin pearl in squamous tissue",
            "adipocyte and mucin", "gland and lymphocyte"]


def make_folder(root: Path, n: int = 8, bad: int = 0) -> Path:
    """`n` small pinkish images with captions (imagefolder layout); `bad` more files that are not images."""
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(n):
        pixels = (rng.random((40, 48, 3)) * 90 + [150, 80, 140]).astype("uint8")
        Image.fromarray(pixels).save(root / f"{i}.png")
        rows.append({"file_name": f"{i}.png", "text": CAPTIONS[i % len(CAPTIONS)], "bank_id": i % 8})
    for j in range(bad):
        (root / f"bad{j}.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
        rows.insert(2 * j + 1, {"file_name": f"bad{j}.png", "text": "gland", "bank_id": 0})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return make_folder(tmp_path_factory.mktemp("data") / "tiles")


def run(script: str, *args: str, launcher=(), check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run([*launcher, *([sys.executable] if not launcher else []), script, *args],
                            capture_output=True, text=True, timeout=600)
    if check and result.returncode != 0:
        raise AssertionError(f"{script} failed ({result.returncode}):\n{result.stderr[-4000:]}")
    return result


def train(folder: Path, out: Path, *extra: str, launcher=(), check: bool = True):
    return run(TRAIN, "--pretrained_model_name_or_path", "preset:tiny", "--train_data_dir", str(folder),
               "--output_dir", str(out), "--train_batch_size", "2", "--learning_rate", "1e-3",
               "--bank_id_column", "bank_id", *extra, launcher=launcher, check=check)


def losses(out: Path) -> list:
    return [json.loads(line)["loss"] for line in (out / "train_loss.jsonl").read_text().splitlines()]


def weights(folder: Path) -> dict:
    return {
        **load_file(str(folder / "transformer" / "diffusion_pytorch_model.safetensors")),
        **{f"dst.{k}": v for k, v in load_file(str(folder / "dst_encoder" / "diffusion_pytorch_model.safetensors")).items()},
        **{f"adapter.{k}": v for k, v in load_file(str(folder / "prototype_adapter" / "diffusion_pytorch_model.safetensors")).items()},
    }


def assert_same_weights(a: dict, b: dict, atol: float = 1e-6) -> None:
    """Equal to float tolerance. Attention key biases get a gradient that is zero in exact arithmetic (softmax ignores
    a constant shift), so Adam turns rounding noise of ~1e-12 into steps of ~lr: they get a looser bound."""
    assert a.keys() == b.keys()
    for key in a:
        tolerance = 1e-4 if key.endswith("to_k.bias") else atol
        torch.testing.assert_close(a[key], b[key], atol=tolerance, rtol=1e-5, msg=key)


def test_full_training_writes_a_loadable_pipeline_that_differs_from_its_base(folder, tmp_path):
    out = tmp_path / "run"
    train(folder, out, "--max_train_steps", "3", "--validation_prompts", "gland in stroma", "--validation_steps", "2",
          "--validation_inference_steps", "2", "--use_ema", "--ema_decay", "0.5")
    assert len(losses(out)) == 3 and all(np.isfinite(losses(out)))
    assert sorted(p.name for p in (out / "validation").iterdir()) == ["step-000002", "step-000003"]
    card = (out / "README.md").read_text()
    assert "library_name: diffusers" in card and "not for diagnosis" in card
    trained = UniPathPipeline.from_pretrained(str(out))
    base = UniPathPipeline.from_preset("tiny", seed=0)
    changed = [n for n, p in trained.transformer.named_parameters() if not torch.equal(p, base.transformer.get_parameter(n))]
    assert changed
    assert not torch.equal(trained.dst_encoder.queries, base.dst_encoder.queries)
    # The frozen parts are untouched.
    for name in ("mllm", "vae"):
        for n, p in getattr(trained, name).named_parameters():
            assert torch.equal(p, getattr(base, name).get_parameter(n)), (name, n)


def test_resumed_run_reaches_the_same_weights_as_an_uninterrupted_one(folder, tmp_path):
    common = ("--checkpointing_steps", "2", "--use_ema", "--ema_decay", "0.9", "--gradient_accumulation_steps", "2",
              "--lr_scheduler", "cosine", "--lr_warmup_steps", "1")
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    train(folder, straight, "--max_train_steps", "4", *common)
    train(folder, resumed, "--max_train_steps", "2", *common)
    assert [p.name for p in resumed.glob("checkpoint-*")] == ["checkpoint-2"]
    train(folder, resumed, "--max_train_steps", "4", "--resume_from_checkpoint", "latest", *common)
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-4"]
    np.testing.assert_allclose(losses(resumed), losses(straight), rtol=1e-5)
    assert_same_weights(weights(resumed), weights(straight))


def test_a_kill_during_a_checkpoint_save_leaves_the_previous_checkpoint_loadable(folder, tmp_path):
    out = tmp_path / "killed"
    process = subprocess.Popen(
        [sys.executable, TRAIN, "--pretrained_model_name_or_path", "preset:tiny", "--train_data_dir", str(folder),
         "--output_dir", str(out), "--train_batch_size", "2", "--max_train_steps", "500", "--checkpointing_steps", "1"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    deadline = time.time() + 120
    try:
        # Wait for at least one finished checkpoint, then kill while the next one is being written.
        while time.time() < deadline and not (list(out.glob("checkpoint-*")) and list(out.glob(".tmp-checkpoint-*"))):
            time.sleep(0.001)
        os.kill(process.pid, signal.SIGKILL)
    finally:
        process.wait()
    assert list(out.glob("checkpoint-*")), "no checkpoint was completed before the deadline"
    complete = sorted(out.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    last = int(complete[-1].name.split("-")[1])
    # Resuming from the latest complete checkpoint works and finishes the run.
    train(folder, out, "--max_train_steps", str(last + 2), "--checkpointing_steps", "1", "--resume_from_checkpoint", "latest")
    assert UniPathPipeline.from_pretrained(str(out)) is not None
    assert (out / f"checkpoint-{last + 2}").is_dir()


def test_lora_training_saves_weights_that_the_pipeline_loads_and_unloads(folder, tmp_path):
    out = tmp_path / "lora"
    train(folder, out, "--max_train_steps", "3", "--lora_rank", "4", "--learning_rate", "1e-2",
          "--validation_prompts", "gland in stroma", "--validation_steps", "100", "--validation_inference_steps", "3")
    assert (out / "pytorch_lora_weights.safetensors").is_file() and not (out / "model_index.json").exists()
    keys = load_file(str(out / "pytorch_lora_weights.safetensors")).keys()
    assert keys and all(k.startswith("transformer.") and ".lora_" in k for k in keys)

    pipe = UniPathPipeline.from_preset("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)

    def image():
        return np.asarray(pipe("gland in stroma", num_inference_steps=3, generator=torch.Generator().manual_seed(0)).images[0], dtype=int)

    base = image()
    pipe.load_lora_weights(str(out))
    with_lora = image()
    # The merged LoRA gives the image the training run validated with its live peft layers.
    validated = np.asarray(Image.open(out / "validation" / "step-000003" / "00.png"), dtype=int)
    assert np.abs(with_lora - validated).max() <= 1
    assert np.abs(with_lora - base).max() > 2
    with pytest.raises(ValueError, match="already loaded"):
        pipe.load_lora_weights(str(out))
    pipe.unload_lora_weights()
    np.testing.assert_array_equal(image(), base)


def test_two_processes_give_the_same_losses_as_one_with_the_same_global_batch(folder, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    common = ("--max_train_steps", "3", "--pretrained_model_name_or_path", "preset:tiny", "--train_data_dir", str(folder),
              "--learning_rate", "1e-3", "--bank_id_column", "bank_id")
    run(TRAIN, "--output_dir", str(one), "--train_batch_size", "4", *common)
    launcher = (sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
                "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29517")
    result = run(TRAIN, "--output_dir", str(two), "--train_batch_size", "2", *common, launcher=launcher)
    assert "2 process(es)" in result.stderr
    np.testing.assert_allclose(losses(two), losses(one), rtol=1e-5)
    assert_same_weights(weights(two), weights(one))


def test_precomputed_cache_holds_the_frozen_inputs_and_trains(folder, tmp_path):
    cache = tmp_path / "cache"
    run(PRECOMPUTE, "--pretrained_model_name_or_path", "preset:tiny", "--train_data_dir", str(folder), "--output_dir",
        str(cache), "--shard_size", "3", "--batch_size", "2", "--bank_id_column", "bank_id")
    index = json.loads((cache / "index.json").read_text())
    assert index["num_samples"] == 8 and [s["num_samples"] for s in index["shards"]] == [3, 3, 2]

    from unipath_pipeline.data import ImageCaptionFolder, image_to_tensor
    from unipath_pipeline.training_cache import CachedSamples

    pipe = UniPathPipeline.from_preset("tiny", seed=0)
    samples, source = CachedSamples(str(cache)), ImageCaptionFolder(str(folder), bank_id_column="bank_id")
    for i in (0, 4, 7):
        sample, record = samples[i], source[i]
        with torch.no_grad():
            posterior = pipe.vae.encode(image_to_tensor(record.image, 32)[None]).latent_dist
            tokens = pipe.dst_encoder.tokenize(pipe.tokenizer, [record.caption])
            text = pipe.dst_encoder.embed_text(pipe.mllm, tokens)[0]
        torch.testing.assert_close(sample["latent_mean"], posterior.mean[0], atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(sample["text_embeds"], text)
        assert sample["caption"] == record.caption and record.bank_id not in sample["prototype_ids"]
        torch.testing.assert_close(sample["prototype_features"][: len(sample["prototype_ids"])], pipe.prototype_bank.select(sample["prototype_ids"]))

    # A rerun finds every shard done; training from the cache runs.
    before = {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*")}
    run(PRECOMPUTE, "--pretrained_model_name_or_path", "preset:tiny", "--train_data_dir", str(folder), "--output_dir",
        str(cache), "--shard_size", "3", "--batch_size", "2", "--bank_id_column", "bank_id")
    assert {p.name: p.stat().st_mtime_ns for p in cache.glob("shard-*")} == before
    out = tmp_path / "cached-run"
    run(TRAIN, "--pretrained_model_name_or_path", "preset:tiny", "--cache_dir", str(cache), "--output_dir", str(out),
        "--train_batch_size", "2", "--max_train_steps", "2")
    assert len(losses(out)) == 2 and (out / "model_index.json").is_file()


def test_unreadable_images_are_skipped_and_counted(tmp_path):
    data = make_folder(tmp_path / "tiles", n=6, bad=2)
    result = train(data, tmp_path / "run", "--max_train_steps", "4")
    assert "Skipped" in result.stderr and "unreadable" in result.stderr
    assert len(losses(tmp_path / "run")) == 4


BAD_ARGUMENTS = [
    ((), "exactly one data source"),
    (("--train_data_dir", "x", "--train_shards", "y"), "exactly one data source"),
    (("--train_data_dir", "x", "--max_train_steps", "0"), "--max_train_steps must be >= 1"),
    (("--train_data_dir", "x", "--cond_dropout", "1.5"), "--cond_dropout must be in"),
    (("--train_data_dir", "x", "--learning_rate", "0"), "--learning_rate must be > 0"),
    (("--train_data_dir", "x", "--resume_from_checkpoint", "nowhere"), "--resume_from_checkpoint"),
]


@pytest.mark.parametrize("args,message", BAD_ARGUMENTS)
def test_bad_arguments_are_rejected_before_training(tmp_path, args, message):
    result = run(TRAIN, "--pretrained_model_name_or_path", "preset:tiny", "--output_dir", str(tmp_path / "o"), *args, check=False)
    assert result.returncode == 2 and message in result.stderr
    assert not (tmp_path / "o").exists()


def test_data_problems_are_clear_errors_before_training(folder, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "metadata.jsonl").write_text("")
    for data, extra, message in [
        (empty, (), "empty"),
        (folder, ("--caption_column", "caption"), "no column 'caption'"),
        (tmp_path / "missing", (), "is not a folder"),
        (folder, ("--resolution", "30"), "--resolution must be a multiple of 4"),
    ]:
        result = train(data, tmp_path / "o", "--max_train_steps", "1", *extra, check=False)
        assert result.returncode == 2 and message in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "o" / "train_loss.jsonl").exists()
    shutil.rmtree(tmp_path / "o", ignore_errors=True)
