"""The `unipath` command line."""

import pytest
from PIL import Image

from unipath_pipeline.cli import main, output_paths


def test_generate_writes_images_with_the_requested_size(tmp_path, capsys):
    out = tmp_path / "tiles" / "tile.png"
    rc = main(["generate", "--model", "preset:tiny", "--prompt", "skin with a nevus", "--prototype-ids", "1,2",
               "--steps", "2", "--height", "16", "--width", "24", "--num-images", "2", "--out", str(out)])
    assert rc == 0
    paths = [tmp_path / "tiles" / "tile-000.png", tmp_path / "tiles" / "tile-001.png"]
    assert all(Image.open(p).size == (24, 16) for p in paths)
    assert "prototype 1: explicit id" in capsys.readouterr().out
    assert sorted(p.name for p in (tmp_path / "tiles").iterdir()) == ["tile-000.png", "tile-001.png"]


def test_generate_loads_a_saved_pipeline_folder(tiny_pipe, tmp_path):
    tiny_pipe.save_pretrained(str(tmp_path / "model"))
    assert main(["generate", "--model", str(tmp_path / "model"), "--prompt", "lymph node", "--steps", "1",
                 "--out", str(tmp_path / "out")]) == 0
    assert Image.open(tmp_path / "out" / "unipath-000.png").size == (32, 32)


def test_generate_rejects_bad_arguments_without_writing(tmp_path, capsys):
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "preset:tiny", "--prompt", "x", "--height", "30", "--out", str(out)]) == 2
    assert "height" in capsys.readouterr().err and not out.exists() and list(tmp_path.iterdir()) == []
    with pytest.raises(SystemExit):
        main(["generate", "--model", "preset:tiny", "--prompt", "x", "--prototype-ids", "a,b", "--out", str(out)])
    with pytest.raises(SystemExit):
        main(["generate", "--model", "preset:tiny", "--prompt", "x", "--steps", "0", "--out", str(out)])


def test_info_on_the_official_preset_prints_sizes(capsys):
    assert main(["info", "--preset", "official"]) == 0
    out = capsys.readouterr().out
    assert "PixArtTransformer2DModel" in out and "610,358,464" in out
    assert "Qwen2_5_VLForConditionalGeneration" in out and "15.4 GiB" in out
    assert "64 diagnostic semantic tokens" in out and "384x384" in out


def test_info_on_a_model_lists_components_and_streams(capsys):
    assert main(["info", "--model", "preset:tiny"]) == 0
    out = capsys.readouterr().out
    for word in ("dst_encoder", "prototype_adapter", "mllm", "8 entries", "text", "dst", "prototype"):
        assert word in out


def test_output_paths():
    assert output_paths("a/b.png", 1) == ["a/b.png"]
    assert output_paths("a/b.jpg", 2) == ["a/b-000.jpg", "a/b-001.jpg"]
    assert output_paths("folder", 1) == ["folder/unipath-000.png"]
