"""ComfyUI entry point when this repository is cloned into ComfyUI/custom_nodes: the nodes live in comfyui_nodes/."""

import os
import sys

# A plain clone works without `pip install -e .` (its dependencies installed): the bundled library is importable.
_REPO = os.path.dirname(os.path.abspath(__file__))
if _REPO not in sys.path:
    sys.path.append(_REPO)

from .comfyui_nodes import *  # noqa: E402,F401,F403  (comfy_entrypoint, or the V1 mappings on old ComfyUI)
from .comfyui_nodes import __all__  # noqa: E402,F401
