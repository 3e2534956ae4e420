"""The evaluation suite end to end on small image folders (the metric formulas are tested in test_eval_metrics.py)."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from unipath_pipeline.cli import main
from unipath_pipeline.data import DataError
from unipath_pipeline.evaluation.images import ImageSet
from unipath_pipeline.evaluation.suite import EvaluationConfig, evaluate

REPO = Path(__file__).resolve().parents[1]
LABELS = {"glandular": (230, 150, 200), "lymphoid": (170, 110, 200)}


def tile(seed: int, label: str, size: int = 64) -> Image.Image:
    """H&E-like texture whose colour and nucleus density depend on the label."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size, size, 3)) + LABELS[label]
    yy, xx = np.ogrid[:size, :size]
    for _ in range(15 if label == "glandular" else 45):
        y, x = rng.integers(0, size, 2)
        pixels[(yy - y) ** 2 + (xx - x) ** 2 <= 9] = [80, 40, 140]
    return Image.fromarray(np.clip(pixels + rng.normal(0, 10, pixels.shape), 0, 255).astype("uint8"))


def load_script(relative_path: str):
    """A script of the repository (not a package module) imported by path."""
    spec = importlib.util.spec_from_file_location(Path(relative_path).stem, REPO / relative_path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def image_folder(root, seeds, prompts=True, group=False, size=64):
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for i, seed in enumerate(seeds):
        label = list(LABELS)[i % 2]
        tile(seed, label, size).save(root / f"{i:03d}.png")
        prompt = f"{label} tissue" + (f", variant {i % 4 // 2}" if group else "")
        rows.append({"file_name": f"{i:03d}.png", "label": label, **({"text": prompt} if prompts else {}),
                     **({"group": label} if group else {})})
    (root / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return root


def config(tmp_path, **kw):
    return EvaluationConfig(extractors=("inception",), kid_subsets=20, kid_subset_size=8, cache_dir=str(tmp_path / "cache"), **kw)


def test_identical_sets_give_fid_about_zero_and_noise_raises_it_monotonically(tmp_path):
    real = ImageSet(str(image_folder(tmp_path / "real", range(10))), name="real")
    same = ImageSet(str(image_folder(tmp_path / "same", range(10))), name="generated")
    results = evaluate(real, same, str(tmp_path / "report"), config(tmp_path, calibration_noise=(8, 64)))
    fid = results["tiers"]["1. Pixel fidelity"]["inception"]["fid"]
    assert abs(fid) < 1e-3
    assert (tmp_path / "report" / "report.html").is_file() and (tmp_path / "report" / "report.md").is_file()
    # The calibration curve: real against real with increasing pixel noise.
    html = (tmp_path / "report" / "report.html").read_text()
    assert "FID of real vs noisy real" in html
    values = _curve(tmp_path / "report")
    assert values[0] == 0 and all(a < b for a, b in zip(values, values[1:])), values


def _curve(report_dir):
    data = json.loads((report_dir / "report.json").read_text())
    curves = data.get("curves") or {}
    assert curves, "the report has no curve data"
    return next(iter(next(iter(curves.values()))["series"].values()))


def test_kid_is_about_zero_for_two_samples_of_one_distribution(tmp_path):
    real = ImageSet(str(image_folder(tmp_path / "a", range(0, 16))), name="real")
    other = ImageSet(str(image_folder(tmp_path / "b", range(100, 116))), name="generated")
    tier = evaluate(real, other, str(tmp_path / "r"), config(tmp_path))["tiers"]["1. Pixel fidelity"]["inception"]
    assert abs(tier["kid_mean"]) < 3 * tier["kid_std"] + 1e-3
    assert tier["precision"] > 0.5 and tier["recall"] > 0.5


def test_all_four_tiers_report_with_labels_prompts_and_paraphrases(tmp_path):
    real = ImageSet(str(image_folder(tmp_path / "real", range(16))), name="real")
    generated = ImageSet(str(image_folder(tmp_path / "gen", range(200, 212), group=True)), name="generated")
    results = evaluate(real, generated, str(tmp_path / "report"), config(tmp_path))
    tiers = results["tiers"]
    utility = tiers["3. Diagnostic utility"]["inception"]
    assert utility["train real, test real (reference)"] >= 0.75 and utility["train generated, test real"] >= 0.75
    control = tiers["4. Fine-grained controllability"]["inception"]
    assert 75 < control["controllability (% of real)"] <= 134
    paraphrase = tiers["4. Fine-grained controllability"]["paraphrase robustness"]["inception"]
    assert paraphrase["groups"] == 2
    assert paraphrase["paraphrase margin"] == pytest.approx(
        paraphrase["centred agreement within concepts"] - paraphrase["centred agreement across concepts"])
    alignment = tiers["2. Semantic consistency"]
    assert any("held-out real" in k for k in alignment) and any("generated" in k for k in alignment)
    assert tiers["1. Pixel fidelity"]["memorisation"]["against"] == "real set"
    html = (tmp_path / "report" / "report.html").read_text()
    assert "Fine-grained controllability" in html and "<img" in html
    assert list((tmp_path / "report" / "grids").glob("*.png"))
    # the recipe's side-by-side table reads the written report.json and goes into a card's Evaluation section
    compare = load_script("training/recipes/compare_reports.py")
    card = tmp_path / "card.md"
    card.write_text("# model\n\n## Evaluation\n\nold table\n\n## Licences\n\nApache-2.0\n")
    report_path = str(tmp_path / "report" / "report.json")
    assert compare.main(["--report", f"this={report_path}", "--report", f"again={report_path}", "--card", str(card)]) == 0
    text = card.read_text()
    assert "old table" not in text and text.endswith("## Licences\n\nApache-2.0\n")
    fid = f"{tiers['1. Pixel fidelity']['inception']['fid']:.1f}"
    assert f"| FID (inception) \u2193 | {fid} | {fid} |" in text
    assert f"| paraphrase margin (inception) \u2191 | {paraphrase['paraphrase margin']:.3f} |" in text
    assert f"{control['controllability (% of real)']:.1f}%" in text


def test_reference_features_are_cached_by_content(tmp_path):
    real = ImageSet(str(image_folder(tmp_path / "real", range(4))), name="real")
    evaluate(real, real, str(tmp_path / "r1"), config(tmp_path))
    cached = list((tmp_path / "cache").glob("*.safetensors"))
    assert len(cached) == 1
    stamp = cached[0].stat().st_mtime_ns
    evaluate(real, real, str(tmp_path / "r2"), config(tmp_path))
    assert cached[0].stat().st_mtime_ns == stamp
    tile(999, "lymphoid").save(tmp_path / "real" / "000.png")  # new content, new key
    evaluate(ImageSet(str(tmp_path / "real"), name="real"), real, str(tmp_path / "r3"), config(tmp_path))
    assert len(list((tmp_path / "cache").glob("*.safetensors"))) == 2


def test_bad_folders_are_clear_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty"):
        ImageSet(str(tmp_path / "empty"))
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="no images, only other files"):
        ImageSet(str(tmp_path / "text"))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    tile(0, "lymphoid", 64).save(mixed / "a.png")
    tile(1, "lymphoid", 48).save(mixed / "b.png")
    with pytest.raises(DataError, match="mixes image sizes.*--resize-to"):
        list(ImageSet(str(mixed)).batches())
    assert next(ImageSet(str(mixed), resize_to=32).batches())[1].shape == (2, 32, 32, 3)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="not a readable image"):
        list(ImageSet(str(broken)).batches())
    one = image_folder(tmp_path / "one", [0])
    with pytest.raises(ValueError, match="at least 2"):
        evaluate(ImageSet(str(one), name="real"), ImageSet(str(one)), str(tmp_path / "o"), config(tmp_path))


def test_cli_generates_then_evaluates(tmp_path, capsys):
    real = image_folder(tmp_path / "real", range(4), size=32)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"{l} tissue", "label": l}) + "\n" for l in LABELS))
    rc = main(["evaluate", "--real", str(real), "--model", "preset:tiny", "--prompts", str(prompts), "--images-per-prompt", "2",
               "--steps", "2", "--out", str(tmp_path / "report"), "--extractors", "inception", "--cache-dir", str(tmp_path / "c")])
    assert rc == 0
    assert "FID (inception)" in capsys.readouterr().out
    rows = [json.loads(l) for l in (tmp_path / "report" / "generated" / "metadata.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and {r["label"] for r in rows} == set(LABELS)
    assert main(["evaluate", "--real", str(real), "--out", str(tmp_path / "x")]) == 2
