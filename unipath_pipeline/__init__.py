"""unipath_pipeline: a diffusers-native implementation of UniPath (pathology image generation).

Importing this package also registers it with diffusers (see `diffusers_registration`), so that
`DiffusionPipeline.from_pretrained(...)` loads UniPath folders and Hub repos without `trust_remote_code`.
"""

from .attributes import AttributeBundle
from .conditioning import STREAMS, UniPathConditioning
from .dst_encoder import DSTEncoder, DSTTokens
from .latents import LATENT_CONVENTIONS, denormalize_latents, normalize_latents
from .pipeline_unipath import UniPathPipeline, UniPathPipelineOutput
from .prototype_adapter import PrototypeAdapter
from .prototype_bank import PrototypeBank, PrototypeEntry, RetrievedPrototype
from .diffusers_registration import register_with_diffusers

__version__ = "0.1.0.dev0"

register_with_diffusers()

__all__ = [
    "AttributeBundle",
    "RetrievedPrototype",
    "STREAMS",
    "LATENT_CONVENTIONS",
    "DSTEncoder",
    "DSTTokens",
    "PrototypeAdapter",
    "PrototypeBank",
    "PrototypeEntry",
    "UniPathConditioning",
    "UniPathPipeline",
    "UniPathPipelineOutput",
    "denormalize_latents",
    "normalize_latents",
    "register_with_diffusers",
]
