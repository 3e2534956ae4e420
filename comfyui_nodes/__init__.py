"""UniPath nodes for ComfyUI: load a model, encode a pathology prompt, choose prototypes, sample and decode.

Put this folder (or a clone of the repository) into `ComfyUI/custom_nodes` with `unipath_pipeline` installed in
ComfyUI's Python. On ComfyUI with the V3 node API (`comfy_api`, 0.3.48 and later) the pack exports only
`comfy_entrypoint`; ComfyUI reads `NODE_CLASS_MAPPINGS` first and would then ignore the entry point, so the V1
mappings exist only as a fallback for ComfyUI versions without `comfy_api`.
"""

from __future__ import annotations

try:
    import unipath_pipeline  # noqa: F401
except ImportError as error:  # say what to install instead of a bare traceback in ComfyUI's log
    raise ImportError(
        "The UniPath ComfyUI nodes need the `unipath_pipeline` package in ComfyUI's Python environment: "
        "pip install -e <path to the unipath repository>."
    ) from error

from .comfy_compat import HAS_V3_API
from .extension import NODES, UniPathExtension

if HAS_V3_API:
    from .extension import comfy_entrypoint

    __all__ = ["NODES", "UniPathExtension", "comfy_entrypoint"]
else:
    from .legacy_io import v1_mappings

    NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS = v1_mappings(NODES)
    __all__ = ["NODES", "NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
