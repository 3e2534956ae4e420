"""The pack's own socket types and the value that travels on `UNIPATH_PROTOTYPES`.

| socket | value |
|---|---|
| `UNIPATH_PIPELINE` | a `unipath_pipeline.UniPathPipeline` |
| `UNIPATH_CONDITIONING` | a `unipath_pipeline.UniPathConditioning` (condition tokens, mask, attribute bundle, prototype ids) |
| `UNIPATH_PROTOTYPE_BANK` | a `unipath_pipeline.PrototypeBank` |
| `UNIPATH_PROTOTYPES` | a `PrototypeSelection`: chosen bank entries, each with the reasons it was chosen |
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from unipath_pipeline import PrototypeBank, RetrievedPrototype

from .comfy_compat import io

UniPathPipelineSocket = io.Custom("UNIPATH_PIPELINE")
UniPathConditioningSocket = io.Custom("UNIPATH_CONDITIONING")
PrototypeBankSocket = io.Custom("UNIPATH_PROTOTYPE_BANK")
PrototypesSocket = io.Custom("UNIPATH_PROTOTYPES")


@dataclass(frozen=True)
class PrototypeSelection:
    """Prototype bank entries chosen for the prototype stream, and the bank they index."""

    bank: PrototypeBank
    prototypes: Tuple[RetrievedPrototype, ...]

    @property
    def ids(self) -> List[int]:
        return [p.id for p in self.prototypes]

    @property
    def reasons(self) -> List[List[str]]:
        return [list(p.reasons) for p in self.prototypes]

    def describe(self) -> str:
        """One line per prototype: `12 [gland, stroma] (keyword 'gland'; text->text 0.812)`."""
        return describe_prototypes(self.bank, self.ids, self.reasons)


def describe_prototypes(bank: PrototypeBank | None, ids: List[int], reasons: List[List[str]]) -> str:
    """A readable report of chosen prototypes (what each entry is and why it was chosen)."""
    if not ids:
        return "no prototypes"
    lines = []
    for index, why in zip(ids, reasons):
        keywords = ", ".join(bank.entries[index].keywords) if bank is not None and index < len(bank) else ""
        lines.append(f"{index} [{keywords}] ({'; '.join(why) or 'chosen'})")
    return "\n".join(lines)
