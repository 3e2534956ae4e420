"""`unipath push`: the upload plan (files, repo type, gating, branch) without any network; `HfApi` is replaced by a
recorder, and the recorded patterns are replayed through huggingface_hub's own file filter."""

import json
import shutil

import pytest
from huggingface_hub import DatasetCard, HfApi, ModelCard
from huggingface_hub.hf_api import DEFAULT_IGNORE_PATTERNS
from huggingface_hub.utils import filter_repo_objects

from unipath_pipeline.cli import main
from unipath_pipeline.hub_publish import folder_files, plan_upload
from unipath_pipeline.model_card import MARKER

JUNK = [".tmp-x7/partial.safetensors", "transformer/.tmp-abcdiffusion_pytorch_model.safetensors", "__pycache__/x.pyc",
        "checkpoint-500/optimizer.bin", "logs/events.out", ".unipath-tiny.tmp-1/model_index.json", "__init__.py"]


@pytest.fixture()
def hub_calls(monkeypatch):
    """Replaces the HfApi methods `unipath push` uses with recorders."""
    calls = []

    def recorder(name):
        def record(self, *args, **kwargs):
            calls.append((name, args, kwargs))
        return record

    for name in ("create_repo", "update_repo_settings", "create_branch", "upload_folder"):
        monkeypatch.setattr(HfApi, name, recorder(name))
    return calls


@pytest.fixture()
def model_folder(tiny_pipe, tmp_path):
    folder = tmp_path / "unipath-tiny"
    tiny_pipe.save_pretrained(str(folder))
    for junk in JUNK:
        (folder / junk).parent.mkdir(parents=True, exist_ok=True)
        (folder / junk).write_text("junk")
    return folder


def uploaded_by(call, folder):
    """The files `upload_folder` would send for the recorded call (its own filter, its default ignores)."""
    kwargs = call[2]
    return sorted(filter_repo_objects(folder_files(str(folder)), allow_patterns=kwargs["allow_patterns"],
                                      ignore_patterns=kwargs["ignore_patterns"] + DEFAULT_IGNORE_PATTERNS))


def test_push_uploads_exactly_the_planned_files(model_folder, hub_calls, capsys):
    assert main(["push", "--model", str(model_folder), "--repo-id", "me/unipath-tiny", "--private", "--revision", "dev",
                 "--token", "hf_test"]) == 0
    names = [c[0] for c in hub_calls]
    assert names == ["create_repo", "create_branch", "upload_folder"]
    create, branch, upload = hub_calls
    assert create[1] == ("me/unipath-tiny",) and create[2] == {"repo_type": "model", "private": True, "exist_ok": True}
    assert branch[2]["branch"] == "dev"
    assert upload[2]["repo_id"] == "me/unipath-tiny" and upload[2]["repo_type"] == "model" and upload[2]["revision"] == "dev"
    sent = uploaded_by(upload, model_folder)
    assert "README.md" in sent and "model_index.json" in sent and "transformer/diffusion_pytorch_model.safetensors" in sent
    assert not [f for f in sent if f in JUNK], sent
    assert sent == sorted(f for f in folder_files(str(model_folder)) if f not in JUNK)
    card = (model_folder / "README.md").read_text()
    assert MARKER in card and 'from_pretrained("me/unipath-tiny")' in card  # the card loads the repo it was pushed to
    assert ModelCard(card).data.library_name == "diffusers"
    assert "uploaded to https://huggingface.co/me/unipath-tiny" in capsys.readouterr().out


def test_dry_run_prints_the_plan_and_touches_nothing(model_folder, monkeypatch, capsys):
    def forbidden(*args, **kwargs):
        raise AssertionError("no Hub call in a dry run")

    for name in ("create_repo", "update_repo_settings", "create_branch", "upload_folder", "create_commit"):
        monkeypatch.setattr(HfApi, name, forbidden)
    assert main(["push", "--model", str(model_folder), "--repo-id", "me/unipath-tiny", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "repo: me/unipath-tiny (model)" in out and "README.md: generated" in out and "model_index.json" in out
    assert "not uploaded:" in out and ".tmp-x7/partial.safetensors" in out and "dry run" in out
    assert not (model_folder / "README.md").exists()


def test_a_bank_goes_to_a_dataset_repo_with_a_dataset_card(tiny_pipe, tmp_path, hub_calls):
    bank = tmp_path / "bank"
    tiny_pipe.prototype_bank.save_pretrained(str(bank))
    assert main(["push", "--bank", str(bank), "--repo-id", "me/tiny-bank"]) == 0
    create, upload = hub_calls
    assert create[2]["repo_type"] == "dataset" and upload[2]["repo_type"] == "dataset"
    assert uploaded_by(upload, bank) == ["README.md", "bank.json", "features.safetensors"]
    card = DatasetCard((bank / "README.md").read_text())
    assert "prototype-bank" in card.data.tags and 'snapshot_download("me/tiny-bank", repo_type="dataset")' in card.text


def test_an_existing_card_is_uploaded_as_it_is(model_folder, hub_calls):
    (model_folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# mine\n")
    assert main(["push", "--model", str(model_folder), "--repo-id", "me/x"]) == 0
    assert (model_folder / "README.md").read_text().endswith("# mine\n")
    assert "README.md" in uploaded_by(hub_calls[-1], model_folder)


def test_official_weights_are_published_only_private_or_gated(model_folder, hub_calls, capsys):
    (model_folder / "unipath_conversion.json").write_text(json.dumps({"source": "official"}))
    assert main(["push", "--model", str(model_folder), "--repo-id", "me/official"]) == 2
    assert "--gated manual" in capsys.readouterr().err and hub_calls == []
    (model_folder / "README.md").write_text("---\nlicense: cc-by-nc-nd-4.0\n---\n# official\n")
    assert main(["push", "--model", str(model_folder), "--repo-id", "me/official", "--gated", "manual"]) == 0
    assert [c[0] for c in hub_calls] == ["create_repo", "update_repo_settings", "upload_folder"]
    assert hub_calls[1][2] == {"gated": "manual", "repo_type": "model"}


def test_push_errors_name_the_argument(model_folder, tiny_pipe, tmp_path, hub_calls, capsys):
    bank = tmp_path / "bank"
    tiny_pipe.prototype_bank.save_pretrained(str(bank))
    empty = tmp_path / "empty"
    empty.mkdir()
    cases = [
        (["--model", str(bank), "--repo-id", "me/x"], "--bank"),
        (["--bank", str(model_folder), "--repo-id", "me/x"], "--model"),
        (["--model", str(model_folder), "--repo-id", "no-owner"], "--repo-id"),
        (["--model", str(tmp_path / "missing"), "--repo-id", "me/x"], "no such folder"),
        (["--model", str(empty), "--repo-id", "me/x"], "not a UniPath pipeline"),
    ]
    for args, needle in cases:
        assert main(["push", *args]) == 2
        assert needle in capsys.readouterr().err
    assert hub_calls == []


def test_plan_lists_sizes_and_ignores_staging_files(model_folder):
    plan = plan_upload(str(model_folder), "me/x")
    assert len(plan.files) == len(plan.sizes) and plan.card == "generated"
    assert set(JUNK) <= set(plan.ignored)
    shutil.rmtree(model_folder / "logs")
    assert "logs/events.out" not in plan_upload(str(model_folder), "me/x").ignored
