"""Diagnosis-aware attribute bundles: a prompt expanded into tissue, architecture, cytology, stroma, inflammation,
stain and other attributes, from the MLLM's own generation when it can generate, else from the lexicon."""

from __future__ import annotations

import json
import logging
import re
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

logger = logging.getLogger(__name__)

CATEGORIES = ("tissue", "architecture", "cytology", "stroma", "inflammation", "stain", "other")

EXPANSION_REQUEST = (
    "Describe the H&E histology image of: {prompt}\n"
    "Answer only with a JSON object with the keys tissue, architecture, cytology, stroma, inflammation, stain and "
    "other; each value is a list of short pathology terms."
)


@dataclass
class AttributeBundle:
    """An explicit, structured reading of a prompt. `source` says where it came from (`"mllm"` or `"lexicon"`)."""

    tissue: List[str] = field(default_factory=list)
    architecture: List[str] = field(default_factory=list)
    cytology: List[str] = field(default_factory=list)
    stroma: List[str] = field(default_factory=list)
    inflammation: List[str] = field(default_factory=list)
    stain: List[str] = field(default_factory=list)
    other: List[str] = field(default_factory=list)
    source: str = "lexicon"

    def as_dict(self) -> Dict[str, object]:
        return asdict(self)

    def as_text(self) -> str:
        """`"tissue: colon; architecture: glands"` (empty categories left out)."""
        return "; ".join(f"{c}: {', '.join(getattr(self, c))}" for c in CATEGORIES if getattr(self, c))

    @classmethod
    def from_lexicon(cls, text: str) -> "AttributeBundle":
        """The concepts the pathology lexicon finds in `text`, by category, in canonical names."""
        from .lexicon import Lexicon

        return cls(**Lexicon.default().bundle(text), source="lexicon")

    @classmethod
    def parse(cls, generated: str) -> Optional["AttributeBundle"]:
        """Reads a generated answer: the first JSON object in it, or `key: value` lines; `None` if neither parses.

        Values may be strings or lists; terms are harmonised to the lexicon's canonical names where recognised;
        unknown keys go to `other`.
        """
        fields = _json_object(generated) or _key_value_lines(generated)
        if not fields:
            return None
        bundle = cls(source="mllm")
        for key, value in fields.items():
            category = key.strip().lower() if key.strip().lower() in CATEGORIES else "other"
            terms = value if isinstance(value, list) else re.split(r"[;,]", str(value))
            getattr(bundle, category).extend(_harmonize(str(t)) for t in terms if str(t).strip())
        for category in CATEGORIES:
            setattr(bundle, category, list(dict.fromkeys(getattr(bundle, category))))
        return bundle if any(getattr(bundle, c) for c in CATEGORIES) else None


def _json_object(text: str) -> Optional[dict]:
    start = text.find("{")
    while start != -1:
        depth = 0
        for end in range(start, len(text)):
            depth += {"{": 1, "}": -1}.get(text[end], 0)
            if depth == 0:
                try:
                    value = json.loads(text[start : end + 1])
                    return value if isinstance(value, dict) else None
                except json.JSONDecodeError:
                    break
        start = text.find("{", start + 1)
    return None


def _key_value_lines(text: str) -> Dict[str, str]:
    pairs = (re.match(r"^\s*[-*]?\s*([A-Za-z]+)\s*:\s*(.+)$", line) for line in text.splitlines())
    return {m.group(1): m.group(2) for m in pairs if m and m.group(1).lower() in CATEGORIES}


def _harmonize(term: str) -> str:
    from .lexicon import Lexicon

    term = term.strip().strip("\"'").strip()
    concepts = Lexicon.default().normalize(term)
    return concepts[0].name if len(concepts) == 1 else term


def generate_bundle(mllm, tokenizer, prompt: str, system_prompt: str, max_new_tokens: int = 160) -> Optional[AttributeBundle]:
    """Asks a generative chat MLLM for the bundle (greedy decoding) and parses its answer; `None` if unparseable."""
    messages = [{"role": "system", "content": system_prompt}, {"role": "user", "content": EXPANSION_REQUEST.format(prompt=prompt)}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    inputs = tokenizer(text, return_tensors="pt", add_special_tokens=False).to(mllm.device)
    output = mllm.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, pad_token_id=tokenizer.pad_token_id)
    answer = tokenizer.decode(output[0, inputs.input_ids.shape[1]:], skip_special_tokens=True)
    bundle = AttributeBundle.parse(answer)
    if bundle is None:
        logger.warning("The MLLM's attribute answer could not be parsed: %r", answer[:200])
    return bundle


def can_generate(mllm, tokenizer) -> bool:
    """Whether `mllm` is a generative chat model (it has `generate` and the tokenizer a chat template)."""
    check = getattr(mllm, "can_generate", None)
    return bool(check and check()) and getattr(tokenizer, "chat_template", None) is not None
