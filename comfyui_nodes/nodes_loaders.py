"""Nodes that load models: UniPath Loader and UniPath Prototype Bank Loader."""

from __future__ import annotations

from .comfy_compat import io
from .loading import (
    DEFAULT_SOURCE,
    DEVICES,
    DTYPES,
    describe_bank,
    describe_pipeline,
    load_prototype_bank,
    load_unipath_pipeline,
)
from .sockets import PrototypeBankSocket, UniPathPipelineSocket

CATEGORY = "UniPath"


class UniPathLoader(io.ComfyNode):
    """Loads a UniPath pipeline (the bundled default model, a diffusers folder or a Hub repo id)."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathLoader",
            display_name="UniPath Loader",
            category=CATEGORY,
            description="Loads a UniPath pathology image generator. Recently used models stay cached in memory.",
            inputs=[
                io.String.Input(
                    "source", default=DEFAULT_SOURCE,
                    tooltip="'default': the bundled CPU-sized model; a diffusers folder (also looked for in "
                            "models/diffusers and models/unipath); a Hub repo id (owner/name); 'preset:tiny': random "
                            "weights, for trying the nodes.",
                ),
                io.Combo.Input("device", options=list(DEVICES), default="auto",
                               tooltip="'auto' uses ComfyUI's device (it honours --cpu)."),
                io.Combo.Input("dtype", options=list(DTYPES), default="auto",
                               tooltip="'auto': float32 on CPU and MPS, bfloat16 (or float16) on CUDA."),
            ],
            outputs=[
                UniPathPipelineSocket.Output("pipeline", display_name="pipeline"),
                io.String.Output("info", display_name="info",
                                 tooltip="Native size, size multiple, prototype slots and bank of the model."),
            ],
        )

    @classmethod
    def execute(cls, source: str, device: str = "auto", dtype: str = "auto") -> io.NodeOutput:
        pipe = load_unipath_pipeline(source, device, dtype)
        return io.NodeOutput(pipe, describe_pipeline(pipe, source.strip()))


class UniPathPrototypeBankLoader(io.ComfyNode):
    """Loads a prototype bank (morphology components with keywords and features) to choose prototypes from."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="UniPathPrototypeBankLoader",
            display_name="UniPath Prototype Bank Loader",
            category=CATEGORY,
            description="Loads a UniPath prototype bank, e.g. one built with `unipath bank build`.",
            inputs=[
                io.String.Input(
                    "source", default=DEFAULT_SOURCE,
                    tooltip="'default': the bundled default model's bank; a bank folder; a pipeline folder with a "
                            "prototype_bank subfolder; or a Hub repo id (owner/name).",
                ),
                io.String.Input("subfolder", default="", tooltip="A folder inside `source` holding the bank (optional)."),
            ],
            outputs=[
                PrototypeBankSocket.Output("bank", display_name="bank"),
                io.String.Output("info", display_name="info", tooltip="Size, retrieval features and keywords of the bank."),
            ],
        )

    @classmethod
    def execute(cls, source: str, subfolder: str = "") -> io.NodeOutput:
        bank = load_prototype_bank(source, subfolder)
        return io.NodeOutput(bank, describe_bank(bank))
