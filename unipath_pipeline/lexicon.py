"""A curated, versioned pathology terminology lexicon ("terminology harmonization").

The lexicon maps the many ways people write a pathology concept ("dark nuclei", "hyperchromasia",
"hyperchromatic nuclei") onto one canonical concept with a stable id and a category. The data ships inside
the package (`unipath_pipeline/resources/lexicon.json`); `Lexicon.default()` loads it once per process.

Matching (`Lexicon.find`) is case-insensitive and whole-word, prefers the longest term at each position,
never returns overlapping matches, and tolerates two simple variants: a hyphen versus a space between words
("well-differentiated" / "well differentiated") and a plural "s" / "es" on the last word ("gland" / "glands").
All terms are compiled into one regular expression per lexicon (a character trie, built on the first `find`),
so a prompt of a few dozen words is scanned in well under a millisecond.

Example:
    >>> lexicon = Lexicon.default()
    >>> [c.id for c in lexicon.normalize("dark nuclei and hyperchromasia in colonic glands")]
    ['hyperchromasia', 'colon', 'glands']
"""

from __future__ import annotations

import difflib
import json
import logging
import os
import re
from dataclasses import dataclass
from functools import cached_property, lru_cache
from importlib import resources
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple, Union

logger = logging.getLogger(__name__)

#: The concept categories, in their canonical order (also the key order of `Lexicon.bundle`).
CATEGORIES: Tuple[str, ...] = ("tissue", "architecture", "cytology", "stroma", "inflammation", "stain", "other")

#: Where the packaged lexicon lives, relative to the `unipath_pipeline` package.
DEFAULT_RESOURCE: Tuple[str, str] = ("resources", "lexicon.json")

# Word separators inside a term: any run of whitespace and hyphens / dashes ("well-differentiated",
# "well differentiated", "well - differentiated" are one term).
_DASHES = "\\-\u2010\u2011\u2012\u2013\u2014"
_SEPARATOR_PATTERN = rf"[\s{_DASHES}]+"
_SEPARATOR_TEXT = re.compile(_SEPARATOR_PATTERN)
_PLURAL_SUFFIXES: Tuple[str, ...] = ("s", "es")


def canonical_form(phrase: str) -> str:
    """The key a phrase is compared by: lower case, stripped, every space/hyphen run turned into one space.

    Example: `canonical_form("  Well-Differentiated ")` is `"well differentiated"`.
    """
    return _SEPARATOR_TEXT.sub(" ", phrase.lower()).strip()


def _plural_forms(key: str) -> Tuple[str, ...]:
    """The plural variants `find` accepts for a canonical key that ends in a letter.

    English spelling decides the suffix: "es" after s, x, z, ch or sh ("abscess" -> "abscesses", "patch" ->
    "patches"), "s" after any other letter ("gland" -> "glands", "TIL" -> "TILs"; not "TILes").
    """
    if not key or not key[-1].isalpha():
        return ()
    if key.endswith(("ch", "sh")):
        return (key + "es", key + "s")  # "patches"; also "stomachs" (a hard "ch")
    if key.endswith(("s", "x", "z")):
        return (key + "es",)
    return (key + "s",)


@dataclass(frozen=True)
class Concept:
    """One pathology concept.

    Attributes:
        id: stable identifier (unique in its lexicon), e.g. `"hyperchromasia"`.
        category: one of `CATEGORIES`.
        name: the canonical name, e.g. `"hyperchromatic nuclei"`; it also counts as a synonym.
        synonyms: other ways to write the concept (paraphrases, spellings, abbreviations).
    """

    id: str
    category: str
    name: str
    synonyms: Tuple[str, ...] = ()

    @property
    def terms(self) -> Tuple[str, ...]:
        """The name followed by the synonyms, without duplicates (compared by `canonical_form`)."""
        seen: Dict[str, str] = {}
        for term in (self.name, *self.synonyms):
            seen.setdefault(canonical_form(term), term)
        return tuple(seen.values())


@dataclass(frozen=True)
class ConceptMatch:
    """A concept found in a text: `text == source[start:end]` (the words as written there)."""

    concept: Concept
    start: int
    end: int
    text: str


class _TrieNode:
    """A node of the character trie the matching regex is built from."""

    __slots__ = ("children", "terminal")

    def __init__(self) -> None:
        self.children: Dict[str, "_TrieNode"] = {}
        self.terminal = False


def _trie_pattern(node: _TrieNode) -> str:
    """The regex for everything below `node`: longer continuations first, then ending here (with a plural)."""
    branches = []
    for char in sorted(node.children):
        chunk = [char]
        child = node.children[char]
        # Collapse chains of single-child, non-terminal nodes into one literal run.
        while len(child.children) == 1 and not child.terminal:
            (next_char, next_child), = child.children.items()
            chunk.append(next_char)
            child = next_child
        literal = "".join(_SEPARATOR_PATTERN if c == " " else re.escape(c) for c in chunk)
        branches.append(literal + _trie_pattern(child))
    if node.terminal:
        # Ending here (a term or one of its plural forms), then a word boundary. Listed after the continuations
        # so that, with backtracking, the longest term that fits wins.
        branches.append("(?!\\w)")
    if not branches:
        return ""
    if len(branches) == 1:
        return branches[0]
    return "(?:" + "|".join(branches) + ")"


def _build_regex(keys: Sequence[str]) -> "re.Pattern[str]":
    """One compiled, case-insensitive regex matching any of `keys` (canonical forms) as whole words."""
    root = _TrieNode()
    for key in keys:
        node = root
        for char in key:
            node = node.children.setdefault(char, _TrieNode())
        node.terminal = True
        # The plural variants are extra trie paths, so that the same longest-first ordering covers them.
        for plural in _plural_forms(key):
            pnode = root
            for char in plural:
                pnode = pnode.children.setdefault(char, _TrieNode())
            pnode.terminal = True
    return re.compile("(?<!\\w)" + _trie_pattern(root), re.IGNORECASE)


class Lexicon:
    """A set of pathology concepts with synonym matching.

    Every term (a concept's name or one of its synonyms) maps to exactly one concept: two concepts sharing a
    term, or a term of one concept being a plural ("s"/"es") of another concept's term, is an error.

    Args:
        concepts: the concepts (`Concept` objects or mappings with `id`, `category`, `name`, `synonyms`).
        name: the lexicon's name.
        version: the lexicon's version string.

    Raises:
        ValueError: the concepts are empty or inconsistent (the message names the problem).
    """

    def __init__(
        self,
        concepts: Sequence[Union[Concept, Mapping[str, Any]]],
        name: str = "custom",
        version: str = "0",
    ) -> None:
        self.name: str = name
        self.version: str = version
        self.concepts: Tuple[Concept, ...] = tuple(_as_concept(c, i) for i, c in enumerate(concepts))
        if not self.concepts:
            raise ValueError(f"Lexicon {name!r} has no concepts.")
        self._by_id: Dict[str, Concept] = {}
        for concept in self.concepts:
            if concept.id in self._by_id:
                raise ValueError(f"Lexicon {name!r}: duplicate concept id {concept.id!r}.")
            self._by_id[concept.id] = concept
        self._by_key: Dict[str, Concept] = {}
        for concept in self.concepts:
            for term in concept.terms:
                key = canonical_form(term)
                other = self._by_key.get(key)
                if other is not None and other.id != concept.id:
                    raise ValueError(
                        f"Lexicon {name!r}: synonym {term!r} is shared by concepts {other.id!r} and {concept.id!r}; "
                        "every synonym (names included) must map to exactly one concept."
                    )
                self._by_key[key] = concept
        # Plural variants must not make a form ambiguous either ("gland" in one concept, "glands" in another).
        forms: Dict[str, Concept] = dict(self._by_key)
        for key, concept in self._by_key.items():
            for plural in _plural_forms(key):
                other = forms.get(plural)
                if other is not None and other.id != concept.id:
                    raise ValueError(
                        f"Lexicon {name!r}: {plural!r} is a synonym (or plural of one) of concept {other.id!r} and "
                        f"also the plural of {key!r} of concept {concept.id!r}; make the synonyms unambiguous."
                    )
                forms.setdefault(plural, concept)
        logger.debug("Built lexicon %r v%s: %d concepts, %d terms.", name, version, len(self.concepts), len(self._by_key))

    # ----------------------------------------------------------------------------------------------- loading
    @classmethod
    def default(cls) -> "Lexicon":
        """The lexicon packaged with unipath (`unipath_pipeline/resources/lexicon.json`), loaded once per process."""
        return _load_default()

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "<dict>") -> "Lexicon":
        """Build a lexicon from its JSON structure (`name`, `version`, optional `categories`, `concepts`).

        Raises:
            ValueError: the structure is malformed or inconsistent; the message names `source` and the problem.
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"{source}: a lexicon must be a JSON object, got {type(data).__name__}.")
        concepts = data.get("concepts")
        if not isinstance(concepts, list) or not concepts:
            raise ValueError(f"{source}: `concepts` must be a non-empty list.")
        declared = data.get("categories", list(CATEGORIES))
        if not isinstance(declared, list) or not all(isinstance(c, str) for c in declared):
            raise ValueError(f"{source}: `categories` must be a list of strings.")
        unknown = [c for c in declared if c not in CATEGORIES]
        if unknown:
            raise ValueError(f"{source}: unknown categories {unknown}; the known categories are {list(CATEGORIES)}.")
        name = data.get("name", os.path.basename(source))
        version = data.get("version", "0")
        if not isinstance(name, str) or not isinstance(version, str):
            raise ValueError(f"{source}: `name` and `version` must be strings.")
        try:
            return cls(concepts, name=name, version=version)
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None

    @classmethod
    def from_file(cls, path: Union[str, "os.PathLike[str]"]) -> "Lexicon":
        """Load and validate a lexicon JSON file.

        Checks: every category is known, concept ids are unique, no synonym is shared by two concepts (the name
        counts as a synonym), and nothing required is empty.

        Raises:
            ValueError: the file is not valid JSON or fails a check (the message names the file and the problem).
            FileNotFoundError: there is no such file.
        """
        path = os.fspath(path)
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
        return cls._from_text(text, path)

    @classmethod
    def _from_text(cls, text: str, source: str) -> "Lexicon":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ValueError(f"{source}: not valid JSON ({error}).") from None
        return cls.from_dict(data, source=source)

    # ---------------------------------------------------------------------------------------------- lookups
    def __len__(self) -> int:
        """The number of concepts."""
        return len(self.concepts)

    def __iter__(self) -> Iterator[Concept]:
        """The concepts, in file order."""
        return iter(self.concepts)

    def __repr__(self) -> str:
        return f"Lexicon(name={self.name!r}, version={self.version!r}, concepts={len(self.concepts)})"

    def concept(self, concept_id: str) -> Concept:
        """The concept with this id.

        Raises:
            KeyError: no such concept (the message suggests close ids, or a concept whose synonym it is).
        """
        found = self._by_id.get(concept_id)
        if found is not None:
            return found
        hint = ""
        by_term = self.lookup(concept_id) if isinstance(concept_id, str) else None
        if by_term is not None:
            hint = f" {concept_id!r} is a synonym of concept {by_term.id!r}."
        else:
            close = difflib.get_close_matches(str(concept_id), list(self._by_id), n=3)
            if close:
                hint = f" Did you mean {', '.join(repr(c) for c in close)}?"
        raise KeyError(f"No concept with id {concept_id!r} in lexicon {self.name!r} v{self.version}.{hint}")

    def by_category(self, category: str) -> Tuple[Concept, ...]:
        """The concepts of one category, in file order.

        Raises:
            KeyError: `category` is not one of `CATEGORIES`.
        """
        if category not in CATEGORIES:
            raise KeyError(f"Unknown category {category!r}; the categories are {list(CATEGORIES)}.")
        return tuple(c for c in self.concepts if c.category == category)

    def lookup(self, phrase: str) -> Optional[Concept]:
        """The concept whose name or synonym is exactly `phrase` (same tolerance as `find`), else `None`."""
        key = canonical_form(phrase)
        found = self._by_key.get(key)
        if found is not None:
            return found
        # Plural variants: try the longer stem first, as the matching regex does.
        for suffix in _PLURAL_SUFFIXES:
            stem = key[: -len(suffix)]
            if key.endswith(suffix) and stem in self._by_key and key in _plural_forms(stem):
                return self._by_key[stem]
        return None

    def is_term(self, phrase: str) -> bool:
        """True when the whole `phrase` is a name or synonym of some concept (for vocabulary filters)."""
        return self.lookup(phrase) is not None

    # --------------------------------------------------------------------------------------------- matching
    @cached_property
    def _regex(self) -> "re.Pattern[str]":
        """The one matching regex of this lexicon, built on first use (about 0.3 s for the packaged data)."""
        return _build_regex(sorted(self._by_key))

    def find(self, text: str) -> List[ConceptMatch]:
        """All concept mentions in `text`, in text order.

        Case-insensitive and whole-word (no match inside another word); the longest term wins at each position
        and matches never overlap; a hyphen and a space between words are interchangeable, and the last word may
        carry a plural "s"/"es".
        """
        matches: List[ConceptMatch] = []
        for m in self._regex.finditer(text):
            concept = self.lookup(m.group(0))
            if concept is None:  # only possible with exotic Unicode case folding; never for the packaged data
                logger.debug("Lexicon match %r has no concept; skipped.", m.group(0))
                continue
            matches.append(ConceptMatch(concept=concept, start=m.start(), end=m.end(), text=m.group(0)))
        return matches

    def normalize(self, text: str) -> List[Concept]:
        """The distinct concepts mentioned in `text`, in order of first appearance."""
        return list(dict.fromkeys(match.concept for match in self.find(text)))

    def bundle(self, text: str) -> Dict[str, List[str]]:
        """The canonical names of the concepts in `text`, grouped by category.

        Every category in `CATEGORIES` is a key (in that order), with an empty list when nothing was found.
        """
        grouped: Dict[str, List[str]] = {category: [] for category in CATEGORIES}
        for concept in self.normalize(text):
            grouped[concept.category].append(concept.name)
        return grouped


def _as_concept(item: Union[Concept, Mapping[str, Any]], index: int) -> Concept:
    """Validate one concept entry (a `Concept` or a JSON mapping) and return it as a `Concept`."""
    if isinstance(item, Concept):
        raw: Mapping[str, Any] = {"id": item.id, "category": item.category, "name": item.name, "synonyms": item.synonyms}
    elif isinstance(item, Mapping):
        raw = item
    else:
        raise ValueError(f"concept #{index} must be an object, got {type(item).__name__}.")
    where = f"concept #{index}"
    concept_id = raw.get("id")
    if not isinstance(concept_id, str) or not concept_id.strip():
        raise ValueError(f"{where} has an empty or missing `id`.")
    where = f"concept {concept_id!r}"
    category = raw.get("category")
    if category not in CATEGORIES:
        raise ValueError(f"{where} has unknown category {category!r}; the known categories are {list(CATEGORIES)}.")
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{where} has an empty or missing `name`.")
    synonyms = raw.get("synonyms", ())
    if isinstance(synonyms, str) or not isinstance(synonyms, (list, tuple)):
        raise ValueError(f"{where}: `synonyms` must be a list of strings.")
    for term in (name, *synonyms):
        if not isinstance(term, str) or not term.strip():
            raise ValueError(f"{where} has an empty synonym.")
        if not any(ch.isalnum() for ch in term):
            raise ValueError(f"{where}: synonym {term!r} has no letters or digits.")
    unknown_keys = set(raw) - {"id", "category", "name", "synonyms"}
    if unknown_keys:
        logger.debug("%s: ignoring unknown keys %s.", where, sorted(unknown_keys))
    return Concept(id=concept_id, category=category, name=name.strip(), synonyms=tuple(s.strip() for s in synonyms))


@lru_cache(maxsize=1)
def _load_default() -> Lexicon:
    """Read and validate the packaged lexicon (once per process)."""
    package = __name__.rpartition(".")[0]
    resource = resources.files(package)
    for part in DEFAULT_RESOURCE:
        resource = resource.joinpath(part)
    text = resource.read_text(encoding="utf-8")
    lexicon = Lexicon._from_text(text, f"{package}/{'/'.join(DEFAULT_RESOURCE)}")
    logger.debug("Loaded the packaged lexicon %r v%s (%d concepts).", lexicon.name, lexicon.version, len(lexicon))
    return lexicon


__all__ = ["CATEGORIES", "Concept", "ConceptMatch", "Lexicon", "canonical_form"]
