"""UniPath Encode: a prompt -> condition tokens (raw text, diagnostic semantic tokens, prototypes)."""

from __future__ import annotations

from typing import Dict, List, Optional

import torch

from unipath_pipeline import AttributeBundle, UniPathConditioning, UniPathPipeline

from .comfy_compat import io
from .prototype_choice import pipeline_with_bank
from .sockets import (
    PrototypeSelection,
    PrototypesSocket,
    UniPathConditioningSocket,
    UniPathPipelineSocket,
    describe_prototypes,
)

CATEGORY = "UniPath"
#: The `retrieve` widget -> `UniPathPipeline.encode_prompt(retrieve=...)`.
RETRIEVE_MODES: Dict[str, Optional[bool]] = {"auto": None, "always": True, "never": False}


def chosen_streams(text_stream: bool, dst_stream: bool, prototype_stream: bool) -> List[str]:
    """The streams switched on, or a `ValueError` naming the three switches when none is."""
    streams = [name for name, on in (("text", text_stream), ("dst", dst_stream), ("prototype", prototype_stream)) if on]
    if not streams:
        raise ValueError("Turn on at least one of `text_stream`, `dst_stream` and `prototype_stream`.")
    return streams


def attributes_text(conditioning: UniPathConditioning) -> str:
    """The prompt's attribute bundle as one readable line, with where it came from."""
    attributes = dict(conditioning.attributes[0]) if conditioning.attributes else {}
    if not attributes:
        return ""
    bundle = AttributeBundle(**attributes)
    return f"{bundle.as_text() or '(no pathology attributes recognised)'}  [source: {bundle.source}]"


def encode(
    pipe: UniPathPipeline,
    prompt: str,
    streams: List[str],
    selection: Optional[PrototypeSelection],
    retrieve: str,
    append_attributes: bool,
    generate_attributes: bool,
    retrieval_seed: int,
) -> UniPathConditioning:
    """`pipe.encode_prompt` for one prompt, with the prototypes of `selection` (from its bank) when given."""
    if not prompt.strip():
        raise ValueError("`prompt` is empty; describe the tissue to generate.")
    if retrieve not in RETRIEVE_MODES:
        raise ValueError(f"`retrieve` must be one of {list(RETRIEVE_MODES)}; got {retrieve!r}.")
    if selection is not None and "prototype" not in streams:
        raise ValueError("`prototypes` is connected but `prototype_stream` is off; turn it on or disconnect `prototypes`.")
    mllm_streams = [s for s in streams if s in ("text", "dst")]
    if mllm_streams and (pipe.mllm is None or pipe.tokenizer is None):
        raise ValueError(
            f"This UniPath model has no understanding model, so {', '.join(f'`{s}_stream`' for s in mllm_streams)} "
            "cannot be encoded; turn them off or load a model with its MLLM."
        )
    view = pipeline_with_bank(pipe, selection.bank if selection is not None else None)
    conditioning = view.encode_prompt(
        prompt,
        streams=streams,
        prototype_ids=[selection.ids] if selection is not None else None,
        retrieve=RETRIEVE_MODES[retrieve],
        append_attributes=append_attributes,
        generate_attributes=generate_attributes,
        generator=torch.Generator().manual_seed(retrieval_seed),
    )
    if selection is not None:  # keep why each prototype was chosen upstream (by keyword, image, retrieval...)
        why = dict(zip(selection.ids, selection.reasons))
        conditioning.prototype_reasons = [
            [why.get(i, reasons) for i, reasons in zip(ids, row)]
            for ids, row in zip(conditioning.prototype_ids, conditioning.prototype_reasons)
        ]
    return conditioning


class UniPathEncode(io.ComfyNode):
    """Encodes a prompt into UniPath's condition tokens; the understanding model runs once here, not per step."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathEncode",
            display_name="UniPath Encode",
            category=CATEGORY,
            description="Encodes a pathology prompt into condition tokens: raw text, diagnostic semantic tokens (DSTs) "
                        "and prototypes. Streams can be switched off; the attribute bundle is returned as text.",
            inputs=[
                UniPathPipelineSocket.Input("pipeline"),
                io.String.Input("prompt", multiline=True,
                                default="H&E breast, carcinoma, pleomorphic nuclei, prominent nucleoli, 40x"),
                io.Boolean.Input("text_stream", default=True, tooltip="Condition on the prompt's token embeddings."),
                io.Boolean.Input("dst_stream", default=True, tooltip="Condition on the diagnostic semantic tokens."),
                io.Boolean.Input("prototype_stream", default=True, tooltip="Condition on prototype bank entries."),
                io.Boolean.Input("append_attributes", default=False,
                                 tooltip="Append the prompt's attribute bundle (tissue, architecture, cytology, ...) "
                                         "to the raw-text stream."),
                io.Boolean.Input("generate_attributes", default=False,
                                 tooltip="Let a generative MLLM write the attribute bundle (else the pathology lexicon)."),
                io.Combo.Input("retrieve", options=list(RETRIEVE_MODES), default="auto",
                               tooltip="Prototype retrieval from the prompt: 'auto' only when no prototypes are "
                                       "connected (as the original UniPath), 'always' in addition to them, 'never'."),
                io.Int.Input("retrieval_seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF,
                             tooltip="Seeds the keyword sampling of prompt retrieval."),
                PrototypesSocket.Input("prototypes", optional=True,
                                       tooltip="Prototypes from UniPath Prototype Select or Retrieve."),
            ],
            outputs=[
                UniPathConditioningSocket.Output("conditioning", display_name="conditioning"),
                io.String.Output("attributes", display_name="attributes", tooltip="The prompt's attribute bundle."),
                io.String.Output("prototype_report", display_name="prototype_report",
                                 tooltip="The prototypes used and why each was chosen."),
            ],
        )

    @classmethod
    def execute(
        cls,
        pipeline: UniPathPipeline,
        prompt: str,
        text_stream: bool = True,
        dst_stream: bool = True,
        prototype_stream: bool = True,
        append_attributes: bool = False,
        generate_attributes: bool = False,
        retrieve: str = "auto",
        retrieval_seed: int = 0,
        prototypes: Optional[PrototypeSelection] = None,
    ) -> io.NodeOutput:
        streams = chosen_streams(text_stream, dst_stream, prototype_stream)
        conditioning = encode(pipeline, prompt, streams, prototypes, retrieve, append_attributes, generate_attributes,
                              retrieval_seed)
        bank = prototypes.bank if prototypes is not None else pipeline.prototype_bank
        report = describe_prototypes(bank, conditioning.prototype_ids[0], conditioning.prototype_reasons[0])
        return io.NodeOutput(conditioning, attributes_text(conditioning), report)
