"""Test isolation: offline, and every library cache under a temporary folder (set before anything imports them)."""

import os
import tempfile

_HOME = tempfile.mkdtemp(prefix="unipath-tests-home-")
for key, value in {
    "HOME": _HOME,
    "XDG_CACHE_HOME": os.path.join(_HOME, ".cache"),
    "HF_HOME": os.path.join(_HOME, "hf"),
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_HUB_DISABLE_TELEMETRY": "1",
    "TOKENIZERS_PARALLELISM": "false",
}.items():
    os.environ[key] = value

import pytest  # noqa: E402
import torch  # noqa: E402

from unipath_pipeline import UniPathPipeline  # noqa: E402

PROMPT = "colon adenocarcinoma, irregular glands in desmoplastic stroma"


@pytest.fixture(scope="session")
def tiny_pipe() -> UniPathPipeline:
    """The random tiny preset, built once. Tests must not modify its weights."""
    pipe = UniPathPipeline.from_preset("tiny", seed=0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe: UniPathPipeline, prompt=PROMPT, seed=0, steps=2, **kwargs):
    """Runs `pipe` with a fixed seed and returns the images as a float numpy array."""
    kwargs.setdefault("generator", torch.Generator().manual_seed(seed))
    kwargs.setdefault("output_type", "np")
    return pipe(prompt, num_inference_steps=steps, **kwargs).images


class ForwardCounter:
    """Counts forward calls of a module (a context manager)."""

    def __init__(self, module: torch.nn.Module):
        self.module, self.calls = module, 0

    def __enter__(self):
        self.handle = self.module.register_forward_hook(lambda *_: setattr(self, "calls", self.calls + 1))
        return self

    def __exit__(self, *exc):
        self.handle.remove()
