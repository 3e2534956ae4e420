"""Choosing prototype bank entries for the prototype stream: by id, keyword, reference image or prompt retrieval.

All choosing goes through the pipeline's own `prototype_choices` (validation: id range, slot count, known keywords,
retrieval features, feature width) and `choose_prototypes` (the bank's retrieval), so the nodes behave exactly like
`UniPathPipeline.__call__`. A bank other than the pipeline's is used through `pipeline_with_bank`.
"""

from __future__ import annotations

import copy
import re
from typing import List, Optional

import PIL.Image
import torch

from unipath_pipeline import PrototypeBank, UniPathPipeline

from .sockets import PrototypeSelection


def parse_ids(text: str, argument: str = "ids") -> List[int]:
    """`"0, 3 7"` -> `[0, 3, 7]`; raises `ValueError` naming `argument` on anything but integers."""
    items = [item for item in re.split(r"[,\s;]+", text.strip()) if item]
    bad = [item for item in items if not re.fullmatch(r"\d+", item)]
    if bad:
        raise ValueError(f"`{argument}` must be bank ids (integers >= 0) separated by commas, e.g. '0, 3'; got {bad}.")
    return list(dict.fromkeys(int(item) for item in items))


def parse_keywords(text: str) -> List[str]:
    """`"necrosis, gland"` -> `["necrosis", "gland"]` (comma or newline separated, blanks dropped)."""
    return list(dict.fromkeys(k.strip() for k in re.split(r"[,\n;]+", text) if k.strip()))


def pipeline_with_bank(pipe: UniPathPipeline, bank: Optional[PrototypeBank]) -> UniPathPipeline:
    """`pipe` itself, or a shallow view of it that uses `bank` (the cached pipeline is never modified)."""
    if bank is None or bank is pipe.prototype_bank:
        return pipe
    view = copy.copy(pipe)
    view.register_modules(prototype_bank=bank)
    return view


def _check_bank(pipe: UniPathPipeline) -> PrototypeBank:
    if pipe.prototype_bank is None:
        raise ValueError("This UniPath model has no prototype bank: connect `bank` (a UniPath Prototype Bank Loader).")
    return pipe.prototype_bank


def select_prototypes(
    pipe: UniPathPipeline,
    bank: Optional[PrototypeBank] = None,
    ids: str = "",
    keywords: str = "",
    reference_image: Optional[PIL.Image.Image] = None,
    seed: int = 0,
) -> PrototypeSelection:
    """Entries chosen explicitly: `ids`, entries carrying `keywords` (sampled with `seed`), and the entries nearest
    to `reference_image`; at most the pipeline's prototype slot count, in that order of priority."""
    view = pipeline_with_bank(pipe, bank)
    chosen_bank = _check_bank(view)
    id_list, keyword_list = parse_ids(ids), parse_keywords(keywords)
    if not id_list and not keyword_list and reference_image is None:
        raise ValueError("Choose prototypes: give `ids`, `keywords` or a `reference_image` (or use UniPath Prototype Retrieve).")
    chosen_bank.check_ids(id_list, "ids")
    slots = view.prototype_adapter.config.max_prototypes
    if len(id_list) > slots:
        raise ValueError(f"`ids` takes at most {slots} ids (this model's prototype slots); got {len(id_list)}.")
    unknown = [k for k in keyword_list if k.lower() not in chosen_bank.keyword_index]
    if unknown:
        known = sorted(chosen_bank.keyword_index)
        raise ValueError(f"`keywords` {unknown} are not keywords of this bank; it has {len(known)}, e.g. {known[:8]}.")
    if reference_image is not None and chosen_bank.image_features is None:
        raise ValueError("`reference_image` needs a bank with image retrieval features; this bank has none "
                         "(build one with `unipath bank build`).")
    choices = view.prototype_choices([""], [id_list], [keyword_list], reference_image, retrieve=False)
    chosen = view.choose_prototypes([""], choices, torch.Generator().manual_seed(seed))[0]
    return PrototypeSelection(chosen_bank, tuple(chosen))


def retrieve_prototypes(
    pipe: UniPathPipeline, prompt: str, bank: Optional[PrototypeBank] = None, seed: int = 0
) -> PrototypeSelection:
    """The original UniPath retrieval from a prompt (text->text, text->image, keyword recall), capped at the
    pipeline's prototype slot count; keyword sampling is seeded by `seed`."""
    if not prompt.strip():
        raise ValueError("`prompt` is empty; retrieval needs a description of the tissue.")
    view = pipeline_with_bank(pipe, bank)
    chosen_bank = _check_bank(view)
    choices = view.prototype_choices([prompt], retrieve=True)
    chosen = view.choose_prototypes([prompt], choices, torch.Generator().manual_seed(seed))[0]
    return PrototypeSelection(chosen_bank, tuple(chosen))
