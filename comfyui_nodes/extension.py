"""The node list and the V3 entry point (`comfy_entrypoint`) that ComfyUI calls to load the pack."""

from __future__ import annotations

from typing import List, Type

from .comfy_compat import ComfyExtension, io
from .nodes_encode import UniPathEncode
from .nodes_loaders import UniPathLoader, UniPathPrototypeBankLoader
from .nodes_prototypes import UniPathPrototypeRetrieve, UniPathPrototypeSelect
from .nodes_sampling import UniPathDecode, UniPathSampler

#: Every node of the pack, in the order they appear in a typical graph.
NODES: List[Type[io.ComfyNode]] = [
    UniPathLoader,
    UniPathEncode,
    UniPathPrototypeBankLoader,
    UniPathPrototypeRetrieve,
    UniPathPrototypeSelect,
    UniPathSampler,
    UniPathDecode,
]


class UniPathExtension(ComfyExtension):
    """The UniPath node pack."""

    async def get_node_list(self) -> List[Type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> UniPathExtension:
    """Called by ComfyUI's loader (V3 API) when `NODE_CLASS_MAPPINGS` is absent."""
    return UniPathExtension()
