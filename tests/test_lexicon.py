"""The packaged pathology lexicon: its data, its validation, and synonym matching."""

import json
import time
from importlib import resources

import pytest

from unipath_pipeline.lexicon import CATEGORIES, Concept, ConceptMatch, Lexicon, canonical_form


@pytest.fixture(scope="module")
def lexicon() -> Lexicon:
    return Lexicon.default()


def ids(lexicon: Lexicon, text: str) -> list:
    return [c.id for c in lexicon.normalize(text)]


def write_lexicon(tmp_path, concepts, **extra) -> str:
    data = {"name": "test", "version": "0.1", "categories": list(CATEGORIES), "concepts": concepts, **extra}
    path = tmp_path / "lexicon.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return str(path)


# ------------------------------------------------------------------------------------------------ the data
def test_categories_constant():
    assert CATEGORIES == ("tissue", "architecture", "cytology", "stroma", "inflammation", "stain", "other")


def test_packaged_lexicon_size_and_spread(lexicon):
    assert lexicon.name == "unipath-pathology-lexicon"
    assert lexicon.version == "1.0.0"
    assert len(lexicon) >= 150
    for category in CATEGORIES:
        assert len(lexicon.by_category(category)) >= 12, category
    assert {c.category for c in lexicon.concepts} == set(CATEGORIES)


def test_packaged_file_is_a_resource_and_validates(tmp_path):
    text = resources.files("unipath_pipeline").joinpath("resources").joinpath("lexicon.json").read_text("utf-8")
    data = json.loads(text)
    assert data["categories"] == list(CATEGORIES)
    assert "licence" in data
    path = tmp_path / "copy.json"
    path.write_text(text, encoding="utf-8")
    loaded = Lexicon.from_file(str(path))
    assert [c.id for c in loaded.concepts] == [c.id for c in Lexicon.default().concepts]


def test_default_is_cached():
    assert Lexicon.default() is Lexicon.default()


def test_every_synonym_maps_to_exactly_one_concept(lexicon):
    owner = {}
    for concept in lexicon.concepts:
        for term in concept.terms:
            key = canonical_form(term)
            assert owner.setdefault(key, concept.id) == concept.id, (term, owner[key], concept.id)


@pytest.mark.parametrize("variant", ["as written", "hyphens as spaces", "upper case"])
def test_every_term_finds_itself_as_one_whole_match(lexicon, variant):
    # Guards against a longer term of another concept shadowing a synonym, and against regex/lookup drift.
    for concept in lexicon.concepts:
        for term in concept.terms:
            text = {"as written": term, "hyphens as spaces": term.replace("-", " "), "upper case": term.upper()}[variant]
            found = lexicon.find(f"({text}).")
            assert [(m.concept.id, m.text) for m in found] == [(concept.id, text)], (concept.id, text, found)


@pytest.mark.parametrize(
    "british, american",
    [
        ("tumour", "tumor"),
        ("haematoxylin", "hematoxylin"),
        ("keratinisation", "keratinization"),
        ("oesophagus", "esophagus"),
        ("hyalinisation", "hyalinization"),
        ("oedema", "edema"),
        ("haemorrhage", "hemorrhage"),
        ("tumour-infiltrating lymphocytes", "tumor-infiltrating lymphocytes"),
    ],
)
def test_british_and_american_spellings(lexicon, british, american):
    assert lexicon.lookup(british) is not None
    assert lexicon.lookup(british) == lexicon.lookup(american)


@pytest.mark.parametrize(
    "abbreviation, concept_id",
    [("TILs", "tils"), ("DCIS", "dcis"), ("N:C", "nc_ratio"), ("H&E", "he_stain"), ("HE stain", "he_stain"),
     ("IHC", "ihc"), ("DAB", "dab"), ("LVI", "lymphovascular_invasion"), ("SCC", "squamous_cell_carcinoma")],
)
def test_abbreviations(lexicon, abbreviation, concept_id):
    assert ids(lexicon, f"slide: {abbreviation}.") == [concept_id]


# ------------------------------------------------------------------------------------------------ matching
def test_paraphrases_normalize_to_one_concept(lexicon):
    dark = lexicon.normalize("dark nuclei")
    assert len(dark) == 1 and dark[0].id == "hyperchromasia"
    assert lexicon.normalize("hyperchromatic nuclei") == dark
    assert lexicon.normalize("Hyperchromasia") == dark
    assert lexicon.concept("hyperchromasia").name == "hyperchromatic nuclei"
    assert ids(lexicon, "a tumour") == ids(lexicon, "a tumor") == ["tumour"]


def test_longest_match_first(lexicon):
    found = lexicon.find("many signet ring cells")
    assert [(m.concept.id, m.text) for m in found] == [("signet_ring_cells", "signet ring cells")]
    # The longer term swallows the shorter concepts inside it ("tumour", "lymphocytes").
    assert ids(lexicon, "dense tumour-infiltrating lymphocytes") == ["tils"]
    assert ids(lexicon, "atypical mitoses") == ["atypical_mitoses"]
    assert ids(lexicon, "mitoses") == ["mitoses"]
    assert ids(lexicon, "irregular glands in desmoplastic stroma") == ["irregular_glands", "desmoplasia"]
    assert ids(lexicon, "prostate gland") == ["prostate"]


def test_whole_words_only(lexicon):
    assert lexicon.find("England") == []  # "gland" inside a word
    assert lexicon.find("semicolon, tumourigenesis, thefat") == []
    assert ids(lexicon, "glands of England") == ["glands"]
    # Derived forms match only where the lexicon lists them: "colonic" is a synonym of colon.
    assert ids(lexicon, "colonic mucosa") == ["colon"]
    assert ids(lexicon, "colonic") == ["colon"]
    assert lexicon.find("he said") == []  # bare "HE" is not a term (it would hit the pronoun)


def test_case_insensitive_and_spans(lexicon):
    text = "Colon ADENOCARCINOMA with Desmoplastic Stroma"
    found = lexicon.find(text)
    assert [m.concept.id for m in found] == ["colon", "adenocarcinoma", "desmoplasia"]
    for m in found:
        assert isinstance(m, ConceptMatch)
        assert text[m.start:m.end] == m.text
    assert found[1].text == "ADENOCARCINOMA"


def test_hyphen_space_and_plural_variants(lexicon):
    for text in ["well-differentiated", "well differentiated", "Well - differentiated", "well–differentiated"]:
        assert ids(lexicon, text) == ["well_differentiated"], text
    assert ids(lexicon, "signet-ring cells") == ["signet_ring_cells"]
    assert ids(lexicon, "back to back glands") == ids(lexicon, "back-to-back glands") == ["crowded_glands"]
    # A plural "s" / "es" on the last word.
    assert ids(lexicon, "a gland") == ids(lexicon, "glands") == ["glands"]
    assert ids(lexicon, "crypt abscess") == ids(lexicon, "crypt abscesses") == ["crypt_abscesses"]
    assert ids(lexicon, "lymph nodes") == ["lymph_node"]
    assert ids(lexicon, "tumours and tumors") == ["tumour"]
    assert ids(lexicon, "TIL") == ids(lexicon, "TILs") == ["tils"]
    # ...but not an arbitrary suffix, nor an "es" where English takes "s".
    assert lexicon.find("glandsy") == []
    assert lexicon.find("glandes") == []
    assert lexicon.find("PMNes") == []


def test_matches_are_non_overlapping_and_in_text_order(lexicon):
    text = "H&E, 40x: poorly differentiated carcinoma, necrosis, TILs, neutrophils and pale staining"
    found = lexicon.find(text)
    assert [m.concept.id for m in found] == [
        "he_stain", "mag_40x", "poorly_differentiated", "carcinoma", "necrosis", "tils", "neutrophils", "pale_staining"
    ]
    for previous, current in zip(found, found[1:]):
        assert previous.end <= current.start


def test_normalize_is_unique_in_first_appearance_order(lexicon):
    concepts = lexicon.normalize("tumor with necrosis; more tumour and necrotic debris; a Tumour")
    assert [c.id for c in concepts] == ["tumour", "necrosis"]
    assert all(isinstance(c, Concept) for c in concepts)


def test_bundle_has_all_categories(lexicon):
    empty = lexicon.bundle("")
    assert list(empty) == list(CATEGORIES) and all(v == [] for v in empty.values())
    text = ("breast, cribriform, prominent nucleoli, desmoplasia, lymphocytes, eosinophilic, DCIS, "
            "skin, nests, mitoses, fibrosis, granulomas, faded, 20x")
    bundle = lexicon.bundle(text)
    assert list(bundle) == list(CATEGORIES)
    assert bundle == {
        "tissue": ["breast", "skin"],
        "architecture": ["cribriform", "nests"],
        "cytology": ["prominent nucleoli", "mitoses"],
        "stroma": ["desmoplasia", "fibrosis"],
        "inflammation": ["lymphocytes", "granulomas"],
        "stain": ["eosinophilic", "faded"],
        "other": ["ductal carcinoma in situ", "20x"],
    }
    for concept in lexicon.normalize(text):
        assert concept.name in bundle[concept.category]


def test_is_term(lexicon):
    for phrase in ["dark nuclei", "Hyperchromasia", "tumor", "tumours", "well-differentiated", " H&E ", "N:C ratio"]:
        assert lexicon.is_term(phrase), phrase
    for phrase in ["dark nuclei everywhere", "England", "", "   ", "nuclei", "glandes", "the"]:
        assert not lexicon.is_term(phrase), phrase


def test_concept_lookup_errors(lexicon):
    assert lexicon.concept("tils").category == "inflammation"
    with pytest.raises(KeyError, match="hyperchromasia"):
        lexicon.concept("dark nuclei")  # a synonym, not an id: the message names the concept
    with pytest.raises(KeyError, match="No concept"):
        lexicon.concept("no-such-concept")


def test_find_is_fast(lexicon):
    prompt = (
        "H&E-stained section of colon adenocarcinoma at 20x: irregular back-to-back glands with cribriform areas in "
        "desmoplastic stroma; tumour cells show marked nuclear pleomorphism, dark nuclei, prominent nucleoli and "
        "frequent atypical mitoses, with scattered signet-ring cells, dense tumor-infiltrating lymphocytes, focal "
        "dirty necrosis, lymphovascular invasion, well-stained, slight tissue folds and some blur at the very edge of the tile."
    )
    assert 55 <= len(prompt.split()) <= 70
    lexicon.find(prompt)  # builds the regex
    runs = 200
    start = time.perf_counter()
    for _ in range(runs):
        lexicon.find(prompt)
    per_call = (time.perf_counter() - start) / runs
    assert per_call < 1e-3, f"find took {per_call * 1e3:.3f} ms per call"


# --------------------------------------------------------------------------------------------- validation
GOOD = [
    {"id": "a", "category": "tissue", "name": "colon", "synonyms": ["colonic"]},
    {"id": "b", "category": "stain", "name": "pale", "synonyms": ["pale staining"]},
]


def test_from_file_accepts_a_valid_file(tmp_path):
    lexicon = Lexicon.from_file(write_lexicon(tmp_path, GOOD))
    assert (lexicon.name, lexicon.version, len(lexicon)) == ("test", "0.1", 2)
    assert [c.id for c in lexicon.normalize("Pale-staining colonic mucosa")] == ["b", "a"]


def test_from_file_rejects_a_duplicate_synonym(tmp_path):
    concepts = GOOD + [{"id": "c", "category": "other", "name": "large bowel", "synonyms": ["Colonic"]}]
    with pytest.raises(ValueError, match=r"'Colonic'.*shared by concepts 'a' and 'c'"):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))
    # The name counts as a synonym, and hyphen/space variants are the same synonym.
    concepts = GOOD + [{"id": "c", "category": "other", "name": "pale-staining", "synonyms": []}]
    with pytest.raises(ValueError, match="shared by concepts"):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))


def test_from_file_rejects_an_ambiguous_plural(tmp_path):
    concepts = GOOD + [{"id": "c", "category": "other", "name": "colons", "synonyms": []}]
    with pytest.raises(ValueError, match="plural"):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))


def test_from_file_rejects_an_unknown_category(tmp_path):
    concepts = GOOD + [{"id": "c", "category": "molecular", "name": "KRAS", "synonyms": []}]
    with pytest.raises(ValueError, match="unknown category 'molecular'"):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))
    with pytest.raises(ValueError, match="unknown categories"):
        Lexicon.from_file(write_lexicon(tmp_path, GOOD, categories=list(CATEGORIES) + ["molecular"]))


def test_from_file_rejects_a_duplicate_id(tmp_path):
    concepts = GOOD + [{"id": "a", "category": "other", "name": "benign", "synonyms": []}]
    with pytest.raises(ValueError, match="duplicate concept id 'a'"):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))


@pytest.mark.parametrize(
    "concepts, message",
    [
        ([], "non-empty"),
        ([{"id": "", "category": "tissue", "name": "colon"}], "empty or missing `id`"),
        ([{"id": "a", "category": "tissue", "name": "  "}], "empty or missing `name`"),
        ([{"id": "a", "category": "tissue", "name": "colon", "synonyms": ["", "x"]}], "empty synonym"),
        ([{"id": "a", "category": "tissue", "name": "colon", "synonyms": "colonic"}], "list of strings"),
        ([{"id": "a", "category": "tissue", "name": "colon", "synonyms": ["--"]}], "no letters or digits"),
    ],
)
def test_from_file_rejects_empty_things(tmp_path, concepts, message):
    with pytest.raises(ValueError, match=message):
        Lexicon.from_file(write_lexicon(tmp_path, concepts))


def test_from_file_rejects_bad_json(tmp_path):
    path = tmp_path / "broken.json"
    path.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        Lexicon.from_file(str(path))
