"""The bundled default model: loaded when no model is named, and by `UniPathPipeline.from_default()`."""

import time

import numpy as np
import pytest
import torch

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.cli import main
from unipath_pipeline.default_model import default_model_available

needs_weights = pytest.mark.skipif(not default_model_available(), reason="the default weights are not built into this checkout")


@pytest.mark.skipif(default_model_available(), reason="the default weights are present")
def test_without_weights_the_default_is_a_clear_error(tmp_path, capsys):
    assert main(["generate", "--prompt", "skin", "--out", str(tmp_path / "x.png")]) == 2
    assert "unipath_tiny.sh" in capsys.readouterr().err
    with pytest.raises(FileNotFoundError, match="preset:tiny"):
        UniPathPipeline.from_default()


@needs_weights
def test_generate_without_a_model_uses_the_default_within_a_minute(tmp_path, capsys):
    start = time.perf_counter()
    assert main(["generate", "--prompt", "H&E skin, epidermis, dermis, 20x", "--out", str(tmp_path / "x.png")]) == 0
    assert time.perf_counter() - start < 60
    from PIL import Image

    assert min(Image.open(tmp_path / "x.png").size) >= 128


@needs_weights
def test_the_default_follows_the_prompt():
    pipe = UniPathPipeline.from_default()
    pipe.set_progress_bar_config(disable=True)
    assert pipe.mllm.config.model_type == "bert" and pipe.transformer.dtype == torch.float32

    def image(prompt):
        return pipe(prompt, num_inference_steps=20, retrieve=False, generator=torch.Generator().manual_seed(0), output_type="np").images[0]

    skin, carcinoma = image("H&E skin, epidermis, dermis, 20x"), image("H&E breast, carcinoma, pleomorphic nuclei, 40x")
    assert np.abs(skin - carcinoma).mean() > 0.02


@needs_weights
def test_a_hub_card_renders_for_the_bundled_default(tmp_path):
    from huggingface_hub import ModelCard

    out = tmp_path / "README.md"
    assert main(["card", "--model", "default", "--out", str(out)]) == 0
    card = out.read_text()
    assert ModelCard(card).data.license == "apache-2.0"
    assert "from_default()" in card and "all-MiniLM-L6-v2" in card and "not for diagnosis" in card


@needs_weights
def test_the_shipped_configs_hold_no_paths_of_the_machine_that_trained_them():
    import json
    import os

    from unipath_pipeline.default_model import DEFAULT_MODEL_DIR

    for directory, _, files in os.walk(DEFAULT_MODEL_DIR):
        for name in (f for f in files if f.endswith(".json")):
            with open(os.path.join(directory, name), encoding="utf-8") as f:
                assert "_name_or_path" not in json.load(f), os.path.join(directory, name)
