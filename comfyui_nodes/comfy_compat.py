"""Where the pack meets ComfyUI: the V3 node API when it exists, else the pack's own V1 stand-in.

Everything ComfyUI-specific that the nodes touch goes through this module: the `io` namespace (schemas, socket types,
`NodeOutput`), `ComfyExtension`, the execution device, the progress bar and the interrupt flag. Outside ComfyUI (or on
a ComfyUI without `comfy_api`) the nodes still import and run: progress and interrupts become no-ops.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch

try:  # ComfyUI 0.3.48 and later ship the V3 node API.
    from comfy_api.latest import ComfyExtension, io

    HAS_V3_API = True
except ImportError:  # Older ComfyUI, or no ComfyUI at all: the V1 stand-in builds NODE_CLASS_MAPPINGS.
    from . import legacy_io as io  # type: ignore[no-redef]  # noqa: F401 (re-exported)

    ComfyExtension = object  # type: ignore[assignment,misc]
    HAS_V3_API = False


def comfy_device() -> torch.device:
    """ComfyUI's compute device (it honours `--cpu`, `--directml`, ...); the CPU outside ComfyUI."""
    try:
        import comfy.model_management as model_management
    except ImportError:
        return torch.device("cpu")
    return torch.device(model_management.get_torch_device())


def raise_if_interrupted() -> None:
    """Raises ComfyUI's `InterruptProcessingException` when the user pressed Cancel (a no-op outside ComfyUI)."""
    try:
        import comfy.model_management as model_management
    except ImportError:
        return
    model_management.throw_exception_if_processing_interrupted()


class StepProgress:
    """ComfyUI's progress bar for a denoising loop, as a diffusers `callback_on_step_end`.

    Each finished step advances the bar by one and gives ComfyUI's Cancel button a chance to stop the run.
    """

    def __init__(self, total_steps: int):
        self.total_steps = total_steps
        self.bar = self._comfy_progress_bar(total_steps)

    @staticmethod
    def _comfy_progress_bar(total: int) -> Optional[Any]:
        try:
            import comfy.utils
        except ImportError:
            return None
        return comfy.utils.ProgressBar(total)

    def on_step_end(self, pipe: Any, step: int, timestep: Any, callback_kwargs: Dict[str, Any]) -> Dict[str, Any]:
        """The `callback_on_step_end` of `UniPathPipeline.__call__`."""
        if self.bar is not None:
            self.bar.update_absolute(step + 1, self.total_steps)
        raise_if_interrupted()
        return callback_kwargs
