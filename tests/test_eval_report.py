"""The evaluation report: files written, JSON round trip, HTML / Markdown content, PNG sizes."""

import json
import os
import re
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from unipath_pipeline.evaluation.report import (
    MAX_TILES_PER_ROW,
    ROW_LABEL_HEIGHT,
    ImageGrid,
    render_grid,
    write_report,
)

PROMPT = 'colon adenocarcinoma <b>& "irregular" glands'


def _images(n, size=(48, 32), seed=0):
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)) for _ in range(n)]


def _results():
    return {
        "title": "UniPath test evaluation",
        "summary": {"FID (inception)": 12.3, "Patho-FID (densenet)": 45.6, "controllability (% of real)": 97.1},
        "protocol": {"resize": "bicubic to 299", "crop": "centre", "quantisation": "uint8", "seed": 0},
        "sets": {
            "real": {"path": "/data/real", "count": 500},
            "generated": {"path": "/data/gen", "count": 500, "checkpoint": None},
        },
        "tiers": {
            "1. Pixel fidelity": {
                "inception": {"fid": 10.123456, "kid_mean": 0.0123, "kid_std": 0.0021, "precision": 0.7, "recall": 0.6},
                "densenet": {"fid": 45.6789, "kid_mean": 0.05, "kid_std": 0.004, "precision": 0.65, "recall": None},
                "memorisation": {"copy_rate": 0.0, "nearest_distances": list(range(123)), "threshold": 0.95},
            },
            "2. Semantic consistency": {
                "clip_score": 0.31,
                "classifier": {"accuracy": 0.85, "per_class": {"tumor": 0.9, "stroma": 0.8}},
            },
            "3. Diagnostic utility": {},
            "4. Fine-grained controllability": {"attribute_percent": 88.25, "custom_metric_xyz": "n/a"},
        },
        "unknown_extra": {"anything": 1.5},
        "notes": ["first note", "a <note> & more"],
    }


def _curves():
    return {
        "FID vs noise": {
            "x": [0, 0.05, 0.1],
            "series": {"inception": [10.0, 20.0, 35.0], "densenet": [40.0, 60.0, 90.0]},
            "xlabel": "noise std",
            "ylabel": "FID",
        }
    }


def _grids():
    return [
        ImageGrid(title=PROMPT, real=_images(3, seed=1), generated=_images(5, seed=2), caption="label: tumour <i>"),
        ImageGrid(title="normal mucosa", real=[], generated=_images(10, size=(20, 40), seed=3)),
    ]


class _ImgCollector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.srcs = []

    def handle_starttag(self, tag, attrs):
        if tag == "img":
            self.srcs.append(dict(attrs)["src"])


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out_dir = str(tmp_path_factory.mktemp("report"))
    results = _results()
    files = write_report(out_dir, results, grids=_grids(), curves=_curves())
    return out_dir, results, files


def test_all_files_written(report):
    out_dir, _, files = report
    for key in ("json", "html", "markdown"):
        assert os.path.isfile(files[key]) and os.path.dirname(files[key]) == out_dir
    # tier 1 and tier 2 have >= 2 numeric metrics, tier 3 is empty, tier 4 has one: 2 bar charts + 1 curve
    assert len(files["plots"]) == 3 and len(files["grids"]) == 2
    for path in files["plots"] + files["grids"]:
        assert os.path.isfile(path)
    assert all(os.path.dirname(p) == os.path.join(out_dir, "plots") for p in files["plots"])
    assert all(os.path.dirname(p) == os.path.join(out_dir, "grids") for p in files["grids"])


def test_no_temporary_files_left(report):
    out_dir = report[0]
    for folder, _, names in os.walk(out_dir):
        for name in names:
            assert not name.endswith(".tmp") and "tmp" not in name.lower() and "temp" not in name.lower(), (folder, name)


def test_json_round_trips(report):
    out_dir, results, files = report
    with open(files["json"], encoding="utf-8") as f:
        saved = json.load(f)
    written = saved.pop("files")
    assert saved == results
    assert written["html"] == "report.html" and written["markdown"] == "report.md"
    assert [os.path.join(out_dir, p) for p in written["plots"]] == files["plots"]
    assert [os.path.join(out_dir, p) for p in written["grids"]] == files["grids"]
    assert "files" not in results  # the caller's dict is not modified


def test_html_content(report):
    out_dir, _, files = report
    with open(files["html"], encoding="utf-8") as f:
        page = f.read()
    assert page.startswith("<!DOCTYPE html>") and "<style>" in page
    assert "<script" not in page and "http://" not in page and "https://" not in page
    assert "<title>UniPath test evaluation</title>" in page
    # summary numbers, formatted (percent key gets a % sign)
    for text in (">12.3<", ">45.6<", ">97.1%<"):
        assert text in page
    # 4 significant digits in the tier tables, None as an em dash, long lists summarised
    assert ">10.12<" in page and ">45.68<" in page and ">\u2014<" in page
    assert "[...] 123 items" in page
    assert ">88.25%<" in page and "custom_metric_xyz" in page and "unknown_extra" in page
    # one combined table with both extractors as columns; memorisation stays separate
    assert "<th>metric</th><th>inception</th><th>densenet</th>" in page
    assert "<th>memorisation</th>" not in page and "<h3>memorisation</h3>" in page
    # nested dicts are flattened
    assert "per_class.tumor" in page and "<h3>classifier</h3>" in page
    # every section present, escaped text everywhere
    for heading in ("Summary", "Protocol", "Image sets", "1. Pixel fidelity", "Curves", "Real beside generated", "Notes"):
        assert f"<h2>{heading}</h2>" in page
    assert "&lt;b&gt;&amp; &quot;irregular&quot;" in page and "<b>&" not in page
    assert "label: tumour &lt;i&gt;" in page and "a &lt;note&gt; &amp; more" in page
    # images: relative links that exist next to the HTML
    parser = _ImgCollector()
    parser.feed(page)
    assert len(parser.srcs) == 5
    for src in parser.srcs:
        assert not os.path.isabs(src) and re.match(r"^(plots|grids)/[a-z0-9_]+\.png$", src), src
        assert os.path.isfile(os.path.join(os.path.dirname(files["html"]), src))


def test_markdown_content(report):
    _, _, files = report
    with open(files["markdown"], encoding="utf-8") as f:
        text = f.read()
    assert text.startswith("# UniPath test evaluation")
    assert "| metric | inception | densenet |" in text
    assert re.search(r"^\| --- \| ---: \| ---: \|$", text, re.M)
    assert "| FID (inception) | 12.3 |" in text and "97.1%" in text
    assert "&lt;b&gt;&amp;" in text and "<b>&" not in text
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    assert len(images) == 5
    for src in images:
        assert os.path.isfile(os.path.join(os.path.dirname(files["markdown"]), src))


def test_png_sizes(report):
    _, _, files = report
    first, second = (Image.open(p) for p in files["grids"])
    assert first.size == (128 * 5, 2 * (128 + ROW_LABEL_HEIGHT))
    # empty real row left out; 10 generated images capped at 8 per row
    assert second.size == (128 * MAX_TILES_PER_ROW, 128 + ROW_LABEL_HEIGHT)
    for path in files["plots"]:
        with Image.open(path) as plot:
            plot.load()
            assert plot.format == "PNG" and plot.width >= 300 and plot.height >= 200
    curve = [p for p in files["plots"] if "curve" in os.path.basename(p)]
    assert len(curve) == 1 and Image.open(curve[0]).size == (640, 380)


def test_render_grid_tiles_and_empty_rows(tmp_path):
    path = str(tmp_path / "sub" / "grid.png")
    tall = Image.new("RGB", (20, 60), (200, 0, 0))
    tall.paste((0, 0, 200), (0, 25, 20, 35))  # a blue band in the centre survives the centre crop
    assert render_grid(ImageGrid("t", real=[], generated=[tall, tall.convert("RGBA")]), path, tile=32) == path
    with Image.open(path) as sheet:
        assert sheet.size == (64, 32 + ROW_LABEL_HEIGHT)
        assert sheet.getpixel((16, ROW_LABEL_HEIGHT + 16))[2] > 150
    empty = render_grid(ImageGrid("nothing", real=[], generated=[]), str(tmp_path / "empty.png"), tile=16)
    assert Image.open(empty).size == (16, 16 + ROW_LABEL_HEIGHT)
    assert sorted(os.listdir(tmp_path)) == ["empty.png", "sub"] and os.listdir(tmp_path / "sub") == ["grid.png"]


def test_minimal_results(tmp_path):
    files = write_report(str(tmp_path), {"summary": {"score": float("nan"), "n": np.int64(12345)}})
    assert files["plots"] == [] and files["grids"] == []
    page = open(files["html"], encoding="utf-8").read()
    assert "<title>UniPath evaluation</title>" in page and ">12,345<" in page and ">\u2014<" in page
    saved = json.load(open(files["json"], encoding="utf-8"))
    assert saved["summary"] == {"score": None, "n": 12345}
    assert not os.path.exists(tmp_path / "plots") and not os.path.exists(tmp_path / "grids")
