"""Makes diffusers' own loaders understand UniPath folders and Hub repos, without `trust_remote_code`.

diffusers 0.42 resolves a pipeline's `_class_name` with `getattr(diffusers, name)` and a component's library through
its `LOADABLE_CLASSES` table (which also decides, for Hub repos, whether a component needs remote code). We add
`UniPathPipeline` to the `diffusers` namespace and `unipath_pipeline` to that table, with the save/load methods of
our component classes. `save_pretrained` then records our components as `["unipath_pipeline", "<Class>"]`.
"""

from __future__ import annotations

_SAVE_LOAD = ["save_pretrained", "from_pretrained"]


def register_with_diffusers() -> None:
    """Registers `unipath_pipeline` with diffusers' pipeline loader (idempotent)."""
    import diffusers
    from diffusers.pipelines import pipeline_loading_utils as loading

    from .dst_encoder import DSTEncoder
    from .pipeline_unipath import UniPathPipeline
    from .prototype_adapter import PrototypeAdapter
    from .prototype_bank import PrototypeBank

    classes = {cls.__name__: _SAVE_LOAD for cls in (DSTEncoder, PrototypeAdapter, PrototypeBank)}
    loading.LOADABLE_CLASSES["unipath_pipeline"] = classes
    loading.ALL_IMPORTABLE_CLASSES.update(classes)
    setattr(diffusers, UniPathPipeline.__name__, UniPathPipeline)
