"""The prototype stream: encoders, bank building, retrieval with reasons, attribute bundles, pipeline integration."""

import json

import numpy as np
import pytest
import torch
from PIL import Image, ImageFilter

from unipath_pipeline import PrototypeAdapter, PrototypeBank, PrototypeEntry, UniPathPipeline
from unipath_pipeline.attributes import AttributeBundle
from unipath_pipeline.bank_builder import BankBuildConfig, build_bank
from unipath_pipeline.cli import main
from unipath_pipeline.encoders import DEFAULT_ENCODER_NAME, EncoderUnavailable, default_encoder, load_encoder

CAPTIONS = [
    "colon adenocarcinoma with cribriform glands and dirty necrosis",
    "hyperchromatic nuclei with prominent nucleoli in solid sheets",
    "normal epidermis with keratinization over dermis",
    "dense lymphocytic infiltrate in lymph node",
    "adipose tissue with thin fibrous septa",
    "desmoplastic stroma around infiltrating glands",
]


def tissue_tile(seed: int, size: int = 96) -> Image.Image:
    """An H&E-like texture: pink stroma with purple nuclei blobs, different for each seed."""
    rng = np.random.default_rng(seed)
    pixels = np.zeros((size, size, 3)) + [235 - 10 * (seed % 3), 150 + 8 * (seed % 4), 200]
    for _ in range(40 + 10 * (seed % 5)):
        y, x, r = rng.integers(0, size, 2).tolist() + [int(rng.integers(3, 7))]
        yy, xx = np.ogrid[:size, :size]
        pixels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = [90 + 5 * (seed % 7), 40, 140]
    pixels += rng.normal(0, 12, pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype("uint8"))


@pytest.fixture(scope="module")
def built_bank(tmp_path_factory):
    root = tmp_path_factory.mktemp("bank")
    tiles = root / "tiles"
    tiles.mkdir()
    rows = []
    for i in range(12):
        tissue_tile(i).save(tiles / f"t{i}.png")
        rows.append({"file_name": f"t{i}.png", "text": CAPTIONS[i % len(CAPTIONS)]})
    tissue_tile(0).save(tiles / "dup.png")  # an exact duplicate of t0
    Image.new("RGB", (96, 96), (245, 245, 245)).save(tiles / "background.png")  # no tissue
    tissue_tile(3).filter(ImageFilter.GaussianBlur(6)).save(tiles / "blurred.png")
    (tiles / "broken.png").write_bytes(b"not an image")
    rows += [{"file_name": n, "text": "gland"} for n in ("dup.png", "background.png", "blurred.png", "broken.png")]
    (root / "captions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    bank = build_bank(str(tiles), str(root / "captions.jsonl"), str(root / "bank"), config=BankBuildConfig(size=10, shard_size=5))
    return bank, root


def test_default_encoder_is_real_and_offline():
    encoder = default_encoder()
    text = encoder.encode_text(["hyperchromatic nuclei", "dark nuclei", "adipose tissue"])
    assert text.shape == (3, 384)
    torch.testing.assert_close(text.norm(dim=-1), torch.ones(3))
    assert text[0] @ text[1] > text[0] @ text[2]  # a paraphrase is closer than an unrelated phrase
    images = encoder.encode_image([tissue_tile(0), tissue_tile(0), Image.new("RGB", (64, 64), "white")])
    assert images.shape == (3, 2048) and images[0] @ images[1] > 0.999 > images[0] @ images[2]
    assert encoder.name == DEFAULT_ENCODER_NAME and not encoder.joint_space
    with pytest.raises(ValueError, match="Unknown encoder spec"):
        load_encoder("magic")


def test_bank_build_applies_quality_control_dedup_and_kmeans(built_bank):
    bank, root = built_bank
    report = json.loads((root / "bank" / "build_report.json").read_text())
    assert report["counts"] == {"tiles": 16, "unreadable": 1, "failed_quality": 2, "duplicates": 1, "entries": 10}
    assert len(bank) == 10 and bank.feature_dim == 2048 and bank.thumbnails.shape == (10, 64, 64, 3)
    assert bank.text_features.shape == (10, 384) and bank.image_features.shape == (10, 2048)
    assert "dup.png" not in {e.source for e in bank.entries} and "background.png" not in {e.source for e in bank.entries}
    assert set(bank.vocabulary) >= {"glands", "hyperchromatic nuclei"}
    for entry in bank.entries:
        assert entry.description in CAPTIONS and all(k in entry.description.lower() for k in entry.keywords)
    loaded = PrototypeBank.from_pretrained(str(root / "bank"))
    assert loaded.entries == bank.entries and torch.equal(loaded.features, bank.features)
    assert loaded.keyword_index == bank.keyword_index and loaded.encoder == DEFAULT_ENCODER_NAME


def test_bank_build_resumes_from_its_work_shards(built_bank, tmp_path):
    _, root = built_bank
    shards = sorted((root / "bank.work").glob("features-*.safetensors"))
    assert len(shards) == 4  # 16 tiles in shards of 5
    stamps = [p.stat().st_mtime_ns for p in shards]
    rebuilt = build_bank(str(root / "tiles"), str(root / "captions.jsonl"), str(tmp_path / "again"),
                         config=BankBuildConfig(size=10, shard_size=5), work_dir=str(root / "bank.work"))
    assert [p.stat().st_mtime_ns for p in shards] == stamps and len(rebuilt) == 10


def test_retrieval_reasons_and_paraphrases(built_bank):
    bank, root = built_bank
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    dark = bank.retrieve("dark nuclei", generator=g())
    ids = {p.id for p in dark}
    hyper = [e.id for e in bank.entries if "hyperchromatic nuclei" in e.keywords]
    assert hyper and set(hyper[:2]) & ids
    reasons = {r for p in dark for r in p.reasons}
    assert any(r.startswith("text->text ") for r in reasons)
    assert any("concept" in r and "'dark nuclei'" in r for r in reasons)  # recalled through the lexicon
    assert [p.id for p in bank.retrieve("dark nuclei", generator=g())] == [p.id for p in dark]  # deterministic
    assert not any(r.startswith("text->image") for r in reasons)  # the default encoder has no joint space
    explicit = bank.retrieve(ids=[3, 1], keywords=["glands"], generator=g())
    assert [p.id for p in explicit][:2] == [3, 1] and explicit[0].reasons == ["explicit id"]
    assert all("requested keyword 'glands'" in p.reasons for p in explicit[2:])
    nearest = bank.retrieve(reference_image=Image.open(root / "tiles" / bank.entries[4].source))
    assert nearest[0].id == 4 and nearest[0].reasons[0].startswith("reference image")
    limited = bank.retrieve("glands necrosis nuclei lymph node adipose", limit=3, exclude=[0, 1], generator=g())
    assert len(limited) == 3 and not {0, 1} & {p.id for p in limited}
    with pytest.raises(ValueError, match="no bank entry carries"):
        bank.retrieve(keywords=["unicorn"])


def test_retrieval_encodes_each_prompt_once(built_bank):
    bank, _ = built_bank
    encoder, calls = default_encoder(), []

    class Counting:
        name, joint_space = encoder.name, encoder.joint_space

        def encode_text(self, texts):
            calls.append(list(texts))
            return encoder.encode_text(texts)

    for _ in range(3):
        first = bank.retrieve("lymph node with lymphocytic infiltrate", encoder=Counting(), generator=torch.Generator().manual_seed(0))
    assert calls == [["lymph node with lymphocytic infiltrate"]]
    assert [p.id for p in first] == [p.id for p in bank.retrieve("lymph node with lymphocytic infiltrate", generator=torch.Generator().manual_seed(0))]


def test_retrieval_refuses_a_mismatched_encoder(built_bank):
    bank, _ = built_bank

    class Other:
        name, joint_space = "other", False

    with pytest.raises(EncoderUnavailable, match="same one"):
        bank.retrieve("glands", encoder=Other())


def test_bank_validation_on_load(tmp_path):
    bank = PrototypeBank([PrototypeEntry(0, ["gland"])], torch.zeros(1, 3))
    bank.save_pretrained(str(tmp_path))
    meta = json.loads((tmp_path / "bank.json").read_text())
    meta["vocabulary"] = ["stroma"]
    (tmp_path / "bank.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="missing from the vocabulary"):
        PrototypeBank.from_pretrained(str(tmp_path))
    with pytest.raises(ValueError, match="need `encoder`"):
        PrototypeBank([PrototypeEntry(0)], torch.zeros(1, 3), text_features=torch.zeros(1, 4))


def test_attribute_bundles_parse_and_fall_back_to_the_lexicon():
    parsed = AttributeBundle.parse('Sure! {"tissue": ["colon"], "cytology": "dark nuclei, mitoses", "colour": ["sparkly"]} bye')
    assert parsed.source == "mllm" and parsed.tissue == ["colon"]
    assert "hyperchromatic nuclei" in parsed.cytology and parsed.other == ["sparkly"]
    lines = AttributeBundle.parse("tissue: breast\nstroma: desmoplasia")
    assert lines.tissue == ["breast"] and lines.stroma
    assert AttributeBundle.parse("no structure here") is None
    bundle = AttributeBundle.from_lexicon("breast carcinoma with dark nuclei and lymphocytes, H&E")
    assert bundle.source == "lexicon" and bundle.cytology and bundle.inflammation and bundle.stain
    assert "cytology:" in bundle.as_text()


def test_pipeline_uses_chosen_prototypes_and_reports_why(built_bank, tiny_pipe):
    bank, root = built_bank
    adapter = PrototypeAdapter(feature_dim=bank.feature_dim, cond_dim=32, max_prototypes=4)
    pipe = UniPathPipeline(**{**tiny_pipe.components, "prototype_bank": bank, "prototype_adapter": adapter})
    pipe.set_progress_bar_config(disable=True)
    run = lambda **kw: pipe("dark nuclei in solid sheets", num_inference_steps=2, output_type="latent",  # noqa: E731
                            generator=torch.Generator().manual_seed(0), **kw)
    retrieved = run()
    assert retrieved.prototype_ids[0] and len(retrieved.prototype_ids[0]) <= 4
    assert all(p.reasons for p in retrieved.prototypes[0])
    assert retrieved.attributes[0]["cytology"] and retrieved.attributes[0]["source"] == "lexicon"
    by_keyword = run(prototype_keywords=["glands"])
    assert all(any("requested keyword" in r for r in p.reasons) for p in by_keyword.prototypes[0])
    assert not any("text->text" in r for p in by_keyword.prototypes[0] for r in p.reasons)  # retrieve=None: explicit only
    by_image = run(prototype_image=Image.open(root / "tiles" / bank.entries[2].source), retrieve=False)
    assert by_image.prototype_ids[0][0] == 2
    none = run(retrieve=False)
    assert none.prototype_ids == [[]]
    assert not torch.equal(none.images, retrieved.images)
    appended = run(append_attributes=True)
    assert not torch.equal(appended.images, retrieved.images)  # the bundle entered the raw-text stream
    with pytest.raises(ValueError, match="prototype_keywords"):
        run(prototype_keywords=["unicorn"])
    with pytest.raises(ValueError, match="prototype_image"):
        tiny_pipe("x", prototype_image=Image.new("RGB", (8, 8)))  # the tiny bank has no image features


def test_expand_prompt_uses_the_mllm_when_it_generates(tiny_pipe):
    bundle = tiny_pipe.expand_prompt("breast carcinoma with dark nuclei")
    # The random tiny Qwen2 generates noise: the answer cannot be parsed, so the lexicon speaks (and says so).
    assert bundle.source == "lexicon" and bundle.tissue and bundle.cytology
    assert tiny_pipe.expand_prompt("lymph node", use_mllm=False).source == "lexicon"


def test_cli_bank_and_terms(built_bank, capsys):
    _, root = built_bank
    assert main(["terms", "normalize", "dark nuclei and tumor cells"]) == 0
    out = capsys.readouterr().out
    assert "hyperchromatic" in out and "unipath-pathology-lexicon" in out
    assert main(["bank", "retrieve", "--bank", str(root / "bank"), "--prompt", "dark nuclei"]) == 0
    assert "text->text" in capsys.readouterr().out
    assert main(["bank", "info", "--bank", str(root / "bank")]) == 0
    assert "entries=10" in capsys.readouterr().out
    assert main(["bank", "retrieve", "--bank", str(root / "bank"), "--keywords", "unicorn"]) == 2


def test_cli_generate_with_a_bank_keywords_and_a_reference_image(built_bank, tmp_path, capsys):
    bank, root = built_bank
    out = tmp_path / "x.png"
    assert main(["generate", "--model", "preset:tiny", "--bank", str(root / "bank"), "--prompt", "dark nuclei",
                 "--steps", "1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "text->text" in printed and "cytology: hyperchromatic nuclei" in printed and out.is_file()
    assert main(["generate", "--model", "preset:tiny", "--bank", str(root / "bank"), "--prompt", "x", "--steps", "1",
                 "--prototype-image", str(root / "tiles" / bank.entries[5].source), "--no-retrieve",
                 "--prototype-keywords", bank.entries[0].keywords[0], "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "reference image" in printed and f"requested keyword '{bank.entries[0].keywords[0]}'" in printed
