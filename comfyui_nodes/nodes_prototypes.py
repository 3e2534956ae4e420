"""Nodes that choose prototypes: UniPath Prototype Retrieve (from a prompt) and UniPath Prototype Select (by id,
keyword or reference image)."""

from __future__ import annotations

import logging
from typing import Optional

import torch

from unipath_pipeline import PrototypeBank, UniPathPipeline

from .comfy_compat import io
from .prototype_choice import retrieve_prototypes, select_prototypes
from .sockets import PrototypeBankSocket, PrototypesSocket, UniPathPipelineSocket
from .tensors import pil_from_comfy_image

logger = logging.getLogger(__name__)

CATEGORY = "UniPath/prototypes"
SEED_MAX = 0xFFFFFFFFFFFFFFFF


def _bank_input() -> io.Input:
    return PrototypeBankSocket.Input("bank", optional=True,
                                     tooltip="A bank from UniPath Prototype Bank Loader; default: the model's own bank.")


def _seed_input() -> io.Input:
    # control_after_generate=False: the frontend would otherwise add a 'randomize' control to an input named
    # `seed`, and the chosen prototypes would change after every run.
    return io.Int.Input("seed", default=0, min=0, max=SEED_MAX, control_after_generate=False,
                        tooltip="Seeds the sampling of entries for each keyword.")


def _outputs() -> list:
    return [
        PrototypesSocket.Output("prototypes", display_name="prototypes"),
        io.String.Output("report", display_name="report", tooltip="The chosen bank entries and why each was chosen."),
    ]


class UniPathPrototypeRetrieve(io.ComfyNode):
    """Retrieves prototypes for a prompt as the original UniPath does (text->text, text->image, keyword recall)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathPrototypeRetrieve",
            display_name="UniPath Prototype Retrieve",
            category=CATEGORY,
            description="Retrieves prototype bank entries for a prompt (text->text, text->image and keyword recall), "
                        "capped at the model's prototype slots.",
            inputs=[
                UniPathPipelineSocket.Input("pipeline"),
                io.String.Input("prompt", multiline=True, default="tumour necrosis with dense lymphocytes"),
                _seed_input(),
                _bank_input(),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, pipeline: UniPathPipeline, prompt: str, seed: int = 0,
                bank: Optional[PrototypeBank] = None) -> io.NodeOutput:
        selection = retrieve_prototypes(pipeline, prompt, bank, seed)
        return io.NodeOutput(selection, selection.describe())


class UniPathPrototypeSelect(io.ComfyNode):
    """Chooses prototypes explicitly: bank ids, bank keywords, and/or the entries nearest to a reference image."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathPrototypeSelect",
            display_name="UniPath Prototype Select",
            category=CATEGORY,
            description="Chooses prototype bank entries by id, by keyword, and by similarity to a reference image "
                        "(in that order of priority), capped at the model's prototype slots.",
            inputs=[
                UniPathPipelineSocket.Input("pipeline"),
                io.String.Input("ids", default="", tooltip="Bank ids separated by commas, e.g. '0, 3'."),
                io.String.Input("keywords", default="",
                                tooltip="Bank keywords separated by commas, e.g. 'necrosis, gland'; entries carrying "
                                        "them are sampled with `seed`."),
                _seed_input(),
                io.Image.Input("reference_image", optional=True,
                               tooltip="Its nearest bank entries are chosen (the first image of a batch is used)."),
                _bank_input(),
            ],
            outputs=_outputs(),
        )

    @classmethod
    def execute(cls, pipeline: UniPathPipeline, ids: str = "", keywords: str = "", seed: int = 0,
                reference_image: Optional[torch.Tensor] = None,
                bank: Optional[PrototypeBank] = None) -> io.NodeOutput:
        reference = None
        if reference_image is not None:
            if reference_image.ndim == 4 and reference_image.shape[0] > 1:
                logger.warning("UniPath Prototype Select: `reference_image` is a batch of %d; the first image is used.",
                               reference_image.shape[0])
            reference = pil_from_comfy_image(reference_image, "reference_image")
        selection = select_prototypes(pipeline, bank, ids, keywords, reference, seed)
        return io.NodeOutput(selection, selection.describe())
