"""Saving and loading: folders, DiffusionPipeline, and Hub repo ids served from an offline cache."""

import json
import os
import shutil

import numpy as np
import pytest
from conftest import generate
from diffusers import DiffusionPipeline
from diffusers.pipelines.pipeline_loading_utils import _get_custom_components_and_folders

from unipath_pipeline import UniPathPipeline

IDS = [1, 4]


@pytest.fixture(scope="module")
def saved(tiny_pipe, tmp_path_factory):
    folder = tmp_path_factory.mktemp("pipe") / "unipath-tiny"
    tiny_pipe.save_pretrained(str(folder))
    return folder


def _lay_out_in_hub_cache(folder, repo_id: str) -> None:
    """Copies a saved pipeline into the Hugging Face cache layout, as `snapshot_download` would have left it."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = os.path.join(constants.HF_HUB_CACHE, "models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, os.path.join(repo, "snapshots", commit), dirs_exist_ok=True)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(commit)


def test_saved_folder_is_a_standard_diffusers_layout(saved):
    index = json.loads((saved / "model_index.json").read_text())
    assert index["_class_name"] == "UniPathPipeline"
    assert index["dst_encoder"] == ["unipath_pipeline", "DSTEncoder"]
    assert index["prototype_bank"] == ["unipath_pipeline", "PrototypeBank"]
    assert index["latent_convention"] == "diffusers"
    weights = [p.name for p in saved.rglob("*") if p.is_file() and p.suffix in (".safetensors", ".bin", ".pt", ".pkl")]
    assert weights and all(name.endswith(".safetensors") for name in weights)


@pytest.mark.parametrize("loader", [UniPathPipeline, DiffusionPipeline], ids=["UniPathPipeline", "DiffusionPipeline"])
def test_loading_a_saved_folder_gives_identical_images(tiny_pipe, saved, loader):
    loaded = loader.from_pretrained(str(saved))
    assert isinstance(loaded, UniPathPipeline)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded, prototype_ids=IDS), generate(tiny_pipe, prototype_ids=IDS))


@pytest.mark.parametrize("loader", [UniPathPipeline, DiffusionPipeline], ids=["UniPathPipeline", "DiffusionPipeline"])
def test_hub_repo_id_resolves_from_the_offline_cache(tiny_pipe, saved, loader):
    repo_id = "unipath-tests/tiny-pipeline"
    _lay_out_in_hub_cache(saved, repo_id)
    loaded = loader.from_pretrained(repo_id)
    assert isinstance(loaded, UniPathPipeline)
    loaded.set_progress_bar_config(disable=True)
    np.testing.assert_array_equal(generate(loaded, prototype_ids=IDS), generate(tiny_pipe, prototype_ids=IDS))


def test_hub_loading_needs_no_remote_code_for_our_components(saved):
    """diffusers' online path refuses components whose module is unknown to it; ours are registered."""
    index = json.loads((saved / "model_index.json").read_text())
    filenames = [str(p.relative_to(saved)) for p in saved.rglob("*") if p.is_file()]
    custom, folders = _get_custom_components_and_folders("unipath-tests/tiny-pipeline", index, filenames)
    assert custom == {}  # nothing is loaded as remote code
    assert {"dst_encoder", "prototype_adapter", "prototype_bank"} <= set(folders)
