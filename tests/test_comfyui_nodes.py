"""The ComfyUI node pack (comfyui_nodes/) without ComfyUI: `comfy_api` and `comfy` are stubbed here.

The stub mirrors the V3 API of ComfyUI 0.3.64 (`comfy_api.latest`: `io.ComfyNode`, `io.Schema`, the socket types with
their keyword arguments, `io.Custom`, `io.NodeOutput`, `ComfyExtension`) and the two `comfy` functions the pack
calls (`comfy.utils.ProgressBar`, `comfy.model_management.throw_exception_if_processing_interrupted`). The pack is
loaded the way ComfyUI's `load_custom_node` loads a folder in `custom_nodes`.
"""

from __future__ import annotations

import asyncio
import importlib.util
import inspect
import json
import sys
import types
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np
import PIL.Image
import pytest
import torch

from unipath_pipeline import PrototypeBank, PrototypeEntry
from unipath_pipeline.default_model import default_model_available
from unipath_pipeline.encoders import DEFAULT_ENCODER_NAME
from unipath_pipeline.presets import TINY_BANK_KEYWORDS

REPO = Path(__file__).resolve().parents[1]
PACK_DIR = REPO / "comfyui_nodes"
EXAMPLES = REPO / "examples" / "comfyui"
API_WORKFLOWS = sorted(EXAMPLES.glob("*_api.json"))
PROMPT = "colon adenocarcinoma, irregular glands with necrosis in desmoplastic stroma"
NODE_IDS = {"UniPathLoader", "UniPathEncode", "UniPathPrototypeBankLoader", "UniPathPrototypeRetrieve",
            "UniPathPrototypeSelect", "UniPathSampler", "UniPathDecode"}


# ------------------------------------------------------------------------------------------------------------------
# A stub of ComfyUI's V3 API (comfy_api.latest) and of the comfy functions the pack calls
# ------------------------------------------------------------------------------------------------------------------

def _input_class(io_type: str, *keywords: str, positional: tuple = ()) -> type:
    """An `Input` accepting exactly the keywords its V3 counterpart accepts (a typo or a removed option fails)."""
    allowed = {"display_name", "optional", "tooltip", "lazy", *keywords}

    def __init__(self, id: str, *args: Any, **kwargs: Any) -> None:
        if len(args) > len(positional):
            raise TypeError(f"{io_type}.Input takes at most {len(positional)} positional options")
        kwargs.update(zip(positional, args))
        unknown = set(kwargs) - allowed
        if unknown:
            raise TypeError(f"{io_type}.Input got unexpected keyword(s) {sorted(unknown)}")
        self.id, self.io_type, self.options = id, io_type, kwargs
        self.optional = kwargs.get("optional", False)

    return type("Input", (), {"__init__": __init__})


class _Output:
    def __init__(self, id: Optional[str] = None, display_name: Optional[str] = None, tooltip: Optional[str] = None,
                 is_output_list: bool = False) -> None:
        self.id, self.display_name, self.tooltip = id, display_name, tooltip
        self.io_type = type(self).io_type


def _socket_type(io_type: str, *keywords: str, positional: tuple = ()) -> type:
    widget = ("default", "socketless", "force_input") if keywords else ()
    return type(io_type, (), {
        "io_type": io_type,
        "Input": _input_class(io_type, *widget, *keywords, positional=positional),
        "Output": type("Output", (_Output,), {"io_type": io_type}),
    })


@dataclass
class _Schema:
    """The fields of ComfyUI 0.3.64's `io.Schema`."""

    node_id: str
    display_name: Optional[str] = None
    category: str = "sd"
    inputs: Optional[list] = None
    outputs: Optional[list] = None
    hidden: Optional[list] = None
    description: str = ""
    is_input_list: bool = False
    is_output_node: bool = False
    is_deprecated: bool = False
    is_experimental: bool = False
    is_api_node: bool = False
    not_idempotent: bool = False
    enable_expand: bool = False

    def validate(self) -> None:
        """As ComfyUI: ids unique among inputs, among outputs, and between the two."""
        inputs = [i.id for i in self.inputs or []]
        outputs = [o.id for o in self.outputs or []]
        duplicated = [k for k, n in (Counter(inputs) + Counter(outputs)).items() if n > 1]
        if duplicated:
            raise ValueError(f"ids must be unique: {duplicated}")


class _NodeOutput:
    def __init__(self, *args: Any, ui: Any = None, expand: Any = None, block_execution: Any = None) -> None:
        self.args, self.ui = args, ui


class _ComfyNode:
    @classmethod
    def define_schema(cls) -> _Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> _NodeOutput:
        raise NotImplementedError

    @classmethod
    def GET_SCHEMA(cls) -> _Schema:  # noqa: N802 (ComfyUI's name)
        schema = cls.define_schema()
        schema.validate()
        return schema


class _ComfyExtension(ABC):
    async def on_load(self) -> None:
        pass

    @abstractmethod
    async def get_node_list(self) -> list:
        ...


def comfy_api_stub() -> Dict[str, types.ModuleType]:
    io = types.ModuleType("comfy_api.latest._io")
    io.Schema, io.NodeOutput, io.ComfyNode = _Schema, _NodeOutput, _ComfyNode
    io.Int = _socket_type("INT", "min", "max", "step", "control_after_generate", "display_mode")
    io.Float = _socket_type("FLOAT", "min", "max", "step", "round", "display_mode")
    io.String = _socket_type("STRING", "multiline", "placeholder", "dynamic_prompts")
    io.Boolean = _socket_type("BOOLEAN", "label_on", "label_off")
    io.Combo = _socket_type("COMBO", "options", "control_after_generate", "upload", "image_folder", "remote",
                            positional=("options",))
    io.Image, io.Latent, io.Mask = _socket_type("IMAGE"), _socket_type("LATENT"), _socket_type("MASK")
    io.Custom = lambda io_type: _socket_type(io_type)
    latest = types.ModuleType("comfy_api.latest")
    latest.io, latest.ComfyExtension = io, _ComfyExtension
    package = types.ModuleType("comfy_api")
    package.latest = latest
    return {"comfy_api": package, "comfy_api.latest": latest}


class InterruptProcessingException(Exception):
    """ComfyUI's exception for the Cancel button."""


class ComfyRuntime:
    """Stubs of `comfy.utils` and `comfy.model_management`, recording progress and raising interrupts on demand."""

    def __init__(self) -> None:
        self.progress: List[tuple] = []
        self.interrupt_after: Optional[int] = None  # interrupt checks before the Cancel button is "pressed"
        self.checks = 0
        runtime = self

        class ProgressBar:
            def __init__(self, total: int, node_id: Optional[str] = None) -> None:
                self.total, self.current = total, 0

            def update_absolute(self, value: int, total: Optional[int] = None, preview: Any = None) -> None:
                self.total = total or self.total
                self.current = min(value, self.total)
                runtime.progress.append((self.current, self.total))

            def update(self, value: int) -> None:
                self.update_absolute(self.current + value)

        def throw_exception_if_processing_interrupted() -> None:
            runtime.checks += 1
            if runtime.interrupt_after is not None and runtime.checks > runtime.interrupt_after:
                raise InterruptProcessingException()

        self.utils = types.ModuleType("comfy.utils")
        self.utils.ProgressBar = ProgressBar
        self.model_management = types.ModuleType("comfy.model_management")
        self.model_management.InterruptProcessingException = InterruptProcessingException
        self.model_management.throw_exception_if_processing_interrupted = throw_exception_if_processing_interrupted
        self.model_management.get_torch_device = lambda: torch.device("cpu")
        self.package = types.ModuleType("comfy")
        self.package.utils, self.package.model_management = self.utils, self.model_management

    def modules(self) -> Dict[str, types.ModuleType]:
        return {"comfy": self.package, "comfy.utils": self.utils, "comfy.model_management": self.model_management}

    def reset(self) -> None:
        self.progress.clear()
        self.interrupt_after, self.checks = None, 0


def load_pack_like_comfyui(module_name: str) -> types.ModuleType:
    """As ComfyUI's `load_custom_node`: the folder's `__init__.py` as a package named after its path."""
    spec = importlib.util.spec_from_file_location(module_name, PACK_DIR / "__init__.py",
                                                  submodule_search_locations=[str(PACK_DIR)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    spec.loader.exec_module(module)
    return module


def _forget(prefix: str) -> None:
    for name in [n for n in sys.modules if n == prefix or n.startswith(prefix + ".")]:
        del sys.modules[name]


@pytest.fixture(scope="module")
def comfy() -> ComfyRuntime:
    return ComfyRuntime()


@pytest.fixture(scope="module")
def pack(comfy):
    """The pack loaded under the stubbed V3 API, with its node classes by node id."""
    name = str(PACK_DIR).replace(".", "_x_") + "_v3"
    with pytest.MonkeyPatch.context() as mp:
        for key, module in {**comfy_api_stub(), **comfy.modules()}.items():
            mp.setitem(sys.modules, key, module)
        module = load_pack_like_comfyui(name)
        extension = asyncio.run(module.comfy_entrypoint())
        nodes = {node.GET_SCHEMA().node_id: node for node in asyncio.run(extension.get_node_list())}
        yield types.SimpleNamespace(module=module, extension=extension, nodes=nodes)
    _forget(name)


@pytest.fixture(autouse=True)
def _fresh_runtime(comfy):
    comfy.reset()


@pytest.fixture(scope="module")
def fake_encoder():
    """Stands in for the offline default retrieval encoder (MiniLM + Inception), so no weights load in these tests."""

    class FakeEncoder:
        name, joint_space, dim = DEFAULT_ENCODER_NAME, False, 16

        def encode_text(self, texts):
            rows = [torch.Generator().manual_seed(sum(map(ord, t)) % 10_000) for t in texts]
            return torch.nn.functional.normalize(torch.stack([torch.randn(self.dim, generator=g) for g in rows]), dim=-1)

        def encode_image(self, images):
            means = [torch.tensor(np.asarray(im.convert("RGB"), dtype=np.float32).mean((0, 1)) / 255) for im in images]
            return torch.nn.functional.normalize(torch.stack([m.repeat(6)[: self.dim] + 0.01 for m in means]), dim=-1)

    encoder = FakeEncoder()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("unipath_pipeline.encoders.default_encoder", lambda: encoder)
        yield encoder


@pytest.fixture(scope="module")
def bank_dir(tmp_path_factory, fake_encoder) -> Path:
    """A saved 12-entry bank with retrieval features, attachable to the tiny preset (feature_dim 2048)."""
    generator = torch.Generator().manual_seed(0)
    keywords = [TINY_BANK_KEYWORDS[i % len(TINY_BANK_KEYWORDS)] for i in range(12)]
    entries = [PrototypeEntry(i, [k], f"tile {i} with {k}") for i, k in enumerate(keywords)]
    bank = PrototypeBank(
        entries, torch.randn(12, 2048, generator=generator),
        text_features=fake_encoder.encode_text([e.description for e in entries]),
        image_features=torch.nn.functional.normalize(torch.rand(12, fake_encoder.dim, generator=generator), dim=-1),
        encoder=DEFAULT_ENCODER_NAME,
    )
    path = tmp_path_factory.mktemp("comfy") / "bank"
    bank.save_pretrained(str(path))
    return path


@pytest.fixture(scope="module")
def pipe(pack):
    pipeline, info = pack.nodes["UniPathLoader"].execute(source="preset:tiny", device="cpu", dtype="float32").args
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@pytest.fixture(scope="module")
def bank(pack, bank_dir):
    return pack.nodes["UniPathPrototypeBankLoader"].execute(source=str(bank_dir)).args[0]


def run(pack, node_id: str, **inputs):
    """Executes one node as ComfyUI does (keyword inputs) and returns its outputs."""
    output = pack.nodes[node_id].execute(**inputs)
    assert type(output).__name__ == "_NodeOutput", f"{node_id}.execute must return io.NodeOutput"
    return output.args


def comfy_image(batch: int = 1, size: int = 64, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, size, size, 3, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------------------------------------------
# Loading: V3 entry point, V1 fallback, schemas
# ------------------------------------------------------------------------------------------------------------------

def test_pack_exports_the_v3_entrypoint_and_no_v1_mappings_when_comfy_api_exists(pack):
    # ComfyUI checks NODE_CLASS_MAPPINGS first and would then ignore comfy_entrypoint.
    assert not hasattr(pack.module, "NODE_CLASS_MAPPINGS")
    assert inspect.iscoroutinefunction(pack.module.comfy_entrypoint)
    assert isinstance(pack.extension, _ComfyExtension)
    assert set(pack.nodes) == NODE_IDS


def test_every_schema_builds_with_display_name_category_description_and_typed_sockets(pack):
    custom = {"UNIPATH_PIPELINE", "UNIPATH_CONDITIONING", "UNIPATH_PROTOTYPE_BANK", "UNIPATH_PROTOTYPES"}
    core = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO", "IMAGE", "LATENT"}
    for node_id, node in pack.nodes.items():
        schema = node.GET_SCHEMA()
        assert issubclass(node, _ComfyNode)
        assert schema.display_name.startswith("UniPath ") and schema.category.startswith("UniPath")
        assert schema.description and node.__doc__
        assert {s.io_type for s in schema.inputs + schema.outputs} <= custom | core, node_id
        assert all(o.display_name for o in schema.outputs)
        execute = inspect.signature(node.execute).parameters
        assert [i.id for i in schema.inputs] == list(execute), f"{node_id}: execute takes the inputs in schema order"
        for item in schema.inputs:
            if item.optional:
                assert execute[item.id].default is None, f"{node_id}.{item.id}: optional inputs default to None"
    outputs = {n: [o.io_type for o in node.GET_SCHEMA().outputs] for n, node in pack.nodes.items()}
    assert outputs["UniPathLoader"] == ["UNIPATH_PIPELINE", "STRING"]
    assert outputs["UniPathEncode"] == ["UNIPATH_CONDITIONING", "STRING", "STRING"]
    assert outputs["UniPathPrototypeBankLoader"] == ["UNIPATH_PROTOTYPE_BANK", "STRING"]
    assert outputs["UniPathPrototypeSelect"] == outputs["UniPathPrototypeRetrieve"] == ["UNIPATH_PROTOTYPES", "STRING"]
    assert outputs["UniPathSampler"] == ["IMAGE", "LATENT"]
    assert outputs["UniPathDecode"] == ["IMAGE"]


def test_pack_falls_back_to_v1_mappings_without_comfy_api(monkeypatch):
    for key in ("comfy_api", "comfy_api.latest", "comfy", "comfy.utils", "comfy.model_management"):
        monkeypatch.setitem(sys.modules, key, None)  # `import comfy_api` now raises ImportError
    name = str(PACK_DIR).replace(".", "_x_") + "_v1"
    try:
        module = load_pack_like_comfyui(name)
        mappings, names = module.NODE_CLASS_MAPPINGS, module.NODE_DISPLAY_NAME_MAPPINGS
        assert not hasattr(module, "comfy_entrypoint")
        assert set(mappings) == set(names) == NODE_IDS
        sampler = mappings["UniPathSampler"]
        spec = sampler.INPUT_TYPES()
        assert spec["required"]["pipeline"] == ("UNIPATH_PIPELINE", {})
        assert spec["required"]["seed"][1]["control_after_generate"] is True
        assert sampler.RETURN_TYPES == ("IMAGE", "LATENT") and sampler.FUNCTION == "run"
        select = mappings["UniPathPrototypeSelect"].INPUT_TYPES()
        assert set(select["optional"]) == {"reference_image", "bank"}
        assert mappings["UniPathLoader"].INPUT_TYPES()["required"]["device"][0] == ["auto", "cpu", "cuda", "mps"]
        pipeline, info = mappings["UniPathLoader"]().run(source="preset:tiny", device="auto", dtype="auto")
        assert type(pipeline).__name__ == "UniPathPipeline" and "multiples of 4" in info
    finally:
        _forget(name)


# ------------------------------------------------------------------------------------------------------------------
# Loaders
# ------------------------------------------------------------------------------------------------------------------

def test_loader_caches_pipelines_by_source_device_and_dtype(pack, pipe):
    again, info = run(pack, "UniPathLoader", source=" preset:tiny ", device="cpu", dtype="auto")
    assert again is pipe  # auto = float32 on the CPU: the same cache key
    assert "32 x 32 px" in info and "prototype slots: 4" in info

    loading = sys.modules[pack.module.__name__ + ".loading"]
    cache = loading.LruCache(max_entries=2)
    loads = []
    for key in ("a", "b", "a", "c", "b"):
        cache.get_or_load(key, lambda key=key: loads.append(key) or key)
    assert loads == ["a", "b", "c", "b"] and len(cache) == 2  # "b" was evicted by "c", "a" was reused
    assert loading.PIPELINES.max_entries <= 4


@pytest.mark.parametrize("inputs, message", [
    ({"source": ""}, "`source` is empty"),
    ({"source": "./no/such/folder"}, "`source`"),
    ({"source": "preset:tiny", "device": "tpu"}, "`device` must be one of"),
    ({"source": "preset:tiny", "dtype": "float8"}, "`dtype` must be one of"),
])
def test_loader_rejects_bad_inputs_with_the_argument_name(pack, inputs, message):
    with pytest.raises(ValueError, match=message):
        run(pack, "UniPathLoader", **{"device": "cpu", "dtype": "auto", **inputs})


@pytest.mark.skipif(default_model_available(), reason="the bundled default model is present")
def test_loader_explains_a_missing_default_model(pack):
    with pytest.raises(ValueError, match="preset:tiny"):
        run(pack, "UniPathLoader", source="default", device="cpu", dtype="auto")


def test_bank_loader_loads_a_bank_folder_and_describes_it(pack, bank, bank_dir):
    again, info = run(pack, "UniPathPrototypeBankLoader", source=str(bank_dir), subfolder="")
    assert again is bank and len(bank) == 12
    assert "ids 0..11" in info and "text, image" in info and "gland" in info
    with pytest.raises(ValueError, match="cannot be a preset"):
        run(pack, "UniPathPrototypeBankLoader", source="preset:tiny")


# ------------------------------------------------------------------------------------------------------------------
# Encode and prototypes
# ------------------------------------------------------------------------------------------------------------------

def test_encode_returns_conditioning_attribute_bundle_and_prototype_report(pack, pipe):
    conditioning, attributes, report = run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT)
    assert conditioning.streams == ("text", "dst", "prototype")
    assert conditioning.embeds.shape[0] == 1 and conditioning.embeds.shape[-1] == pipe.transformer.config.caption_channels
    assert conditioning.mask.shape == conditioning.embeds.shape[:2]
    assert "tissue: colon" in attributes and "necrosis" in attributes and "[source: lexicon]" in attributes
    assert conditioning.prototype_ids[0] and "keyword" in report  # 'auto' retrieves from the prompt


def test_encode_switches_streams_off_and_appends_the_attribute_bundle(pack, pipe):
    text_only, *_ = run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, dst_stream=False, prototype_stream=False)
    assert text_only.streams == ("text",) and text_only.prototype_ids == [[]]
    appended, *_ = run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, dst_stream=False, prototype_stream=False,
                       append_attributes=True)
    assert appended.mask.sum() > text_only.mask.sum()  # the bundle adds raw-text tokens
    with pytest.raises(ValueError, match="text_stream`, `dst_stream` and `prototype_stream"):
        run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, text_stream=False, dst_stream=False,
            prototype_stream=False)
    with pytest.raises(ValueError, match="`prompt` is empty"):
        run(pack, "UniPathEncode", pipeline=pipe, prompt="  ")
    with pytest.raises(ValueError, match="`retrieve` must be one of"):
        run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, retrieve="sometimes")


def test_prototype_select_chooses_by_ids_keywords_and_reference_image(pack, pipe, bank):
    by_id, report = run(pack, "UniPathPrototypeSelect", pipeline=pipe, ids="3, 1", keywords="", seed=0, bank=bank)
    assert by_id.ids == [3, 1] and by_id.bank is bank and "explicit id" in report
    by_keyword, report = run(pack, "UniPathPrototypeSelect", pipeline=pipe, keywords="mucin", bank=bank)
    assert by_keyword.ids and all("mucin" in bank.entries[i].keywords for i in by_keyword.ids)
    by_image, report = run(pack, "UniPathPrototypeSelect", pipeline=pipe, reference_image=comfy_image(2), bank=bank)
    assert by_image.ids and "reference image" in report
    from_model_bank, _ = run(pack, "UniPathPrototypeSelect", pipeline=pipe, ids="0")
    assert from_model_bank.bank is pipe.prototype_bank


@pytest.mark.parametrize("inputs, message", [
    ({"ids": "1, x"}, "`ids` must be bank ids"),
    ({"ids": "12"}, r"`ids` has id\(s\) \[12\] outside the bank's range 0..11"),
    ({"ids": "0,1,2,3,4"}, "`ids` takes at most 4 ids"),
    ({"keywords": "no such thing"}, "`keywords` \\['no such thing'\\] are not keywords"),
    ({}, "give `ids`, `keywords` or a `reference_image`"),
])
def test_prototype_select_rejects_bad_choices_with_the_argument_name(pack, pipe, bank, inputs, message):
    with pytest.raises(ValueError, match=message):
        run(pack, "UniPathPrototypeSelect", pipeline=pipe, bank=bank, **inputs)


def test_prototype_select_needs_image_features_for_a_reference_image(pack, pipe):
    with pytest.raises(ValueError, match="`reference_image` needs a bank with image retrieval features"):
        run(pack, "UniPathPrototypeSelect", pipeline=pipe, reference_image=comfy_image())  # the tiny bank has none


def test_prototype_retrieve_uses_the_prompt_and_is_seeded(pack, pipe, bank):
    first, report = run(pack, "UniPathPrototypeRetrieve", pipeline=pipe, prompt=PROMPT, seed=1, bank=bank)
    again, _ = run(pack, "UniPathPrototypeRetrieve", pipeline=pipe, prompt=PROMPT, seed=1, bank=bank)
    assert first.ids == again.ids and 0 < len(first.ids) <= pipe.prototype_adapter.config.max_prototypes
    assert "text->text" in report or "keyword" in report


def test_encode_uses_prototypes_from_another_bank_without_changing_the_cached_pipeline(pack, pipe, bank):
    model_bank, model_config = pipe.prototype_bank, dict(pipe.config)
    selection, _ = run(pack, "UniPathPrototypeSelect", pipeline=pipe, ids="9, 10", keywords="necrosis", bank=bank)
    conditioning, _, report = run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, retrieve="never",
                                  prototypes=selection)
    assert conditioning.prototype_ids == [selection.ids]
    assert conditioning.prototype_reasons == [selection.reasons]  # why each was chosen survives encoding
    expected = pipe.prototype_adapter([bank.select(selection.ids)])[0][0]
    a, b = conditioning.spans["prototype"]
    torch.testing.assert_close(conditioning.embeds[0, a:b], expected.to(conditioning.embeds))
    assert pipe.prototype_bank is model_bank and dict(pipe.config) == model_config
    assert "requested keyword 'necrosis'" in report
    with pytest.raises(ValueError, match="`prototypes` is connected but `prototype_stream` is off"):
        run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, prototype_stream=False, prototypes=selection)


# ------------------------------------------------------------------------------------------------------------------
# Sampler and decode
# ------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def conditioning(pack, pipe):
    return run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT)[0]


def test_sampler_returns_comfy_image_and_latent_and_reports_progress(pack, pipe, conditioning, comfy):
    image, latent = run(pack, "UniPathSampler", pipeline=pipe, conditioning=conditioning, seed=5, steps=3,
                        guidance_scale=3.0, dst_guidance=1.0, width=48, height=32, batch_size=2)
    assert image.shape == (2, 32, 48, 3) and image.dtype == torch.float32 and image.device.type == "cpu"
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert set(latent) == {"samples"}
    assert latent["samples"].shape == (2, pipe.transformer.config.in_channels, 16, 24)
    assert comfy.progress == [(1, 3), (2, 3), (3, 3)]
    again, _ = run(pack, "UniPathSampler", pipeline=pipe, conditioning=conditioning, seed=5, steps=3,
                   dst_guidance=1.0, width=48, height=32, batch_size=2)
    torch.testing.assert_close(again, image)  # the seed fixes the noise
    decoded, = run(pack, "UniPathDecode", pipeline=pipe, latent=latent)
    torch.testing.assert_close(decoded, image, atol=1e-5, rtol=0)


@pytest.mark.parametrize("inputs, message", [
    ({"width": 30}, "`width` must be a positive multiple of 4 for this UniPath model; got 30 \\(nearest valid: 28 or 32\\)"),
    ({"height": 2}, "`height` must be a positive multiple of 4"),
    ({"steps": 0}, "`steps` must be in 1..1000"),
    ({"batch_size": 0}, "`batch_size` must be in 1..64"),
])
def test_sampler_rejects_bad_inputs_before_the_model_runs(pack, pipe, conditioning, inputs, message):
    calls = []
    handle = pipe.transformer.register_forward_hook(lambda *_: calls.append(1))
    try:
        with pytest.raises(ValueError, match=message):
            run(pack, "UniPathSampler", pipeline=pipe, conditioning=conditioning, **{"steps": 2, **inputs})
    finally:
        handle.remove()
    assert not calls


def test_sampler_rejects_guidance_for_a_stream_that_is_off(pack, pipe):
    text_only = run(pack, "UniPathEncode", pipeline=pipe, prompt=PROMPT, dst_stream=False, prototype_stream=False)[0]
    with pytest.raises(ValueError, match="`prototype_guidance` is 2.0 but the conditioning has no 'prototype' stream"):
        run(pack, "UniPathSampler", pipeline=pipe, conditioning=text_only, steps=2, prototype_guidance=2.0)


def test_sampler_stops_when_comfyui_interrupts(pack, pipe, conditioning, comfy):
    comfy.interrupt_after = 2  # the check before sampling and the one after step 1 pass; step 2's raises
    with pytest.raises(InterruptProcessingException):
        run(pack, "UniPathSampler", pipeline=pipe, conditioning=conditioning, steps=10, width=32, height=32)
    assert comfy.progress == [(1, 10), (2, 10)]


def test_decode_rejects_latents_of_another_model(pack, pipe):
    with pytest.raises(ValueError, match="`latent` has 16 channels but this UniPath model's latents have 4"):
        run(pack, "UniPathDecode", pipeline=pipe, latent={"samples": torch.zeros(1, 16, 8, 8)})
    with pytest.raises(ValueError, match="ComfyUI LATENT"):
        run(pack, "UniPathDecode", pipeline=pipe, latent={"samples": torch.zeros(8, 8)})


def test_comfy_images_convert_to_pil_for_the_pipeline(pack):
    tensors = sys.modules[pack.module.__name__ + ".tensors"]
    image = torch.zeros(2, 5, 7, 3)
    image[1, ..., 0] = 1.0
    pil = tensors.pil_from_comfy_image(image, index=1)
    assert pil.size == (7, 5) and pil.mode == "RGB" and pil.getpixel((0, 0)) == (255, 0, 0)
    assert tensors.pil_from_comfy_image(torch.ones(1, 4, 4, 1)).getpixel((1, 1)) == (255, 255, 255)
    with pytest.raises(ValueError, match="`reference_image` must be a ComfyUI IMAGE"):
        tensors.pil_from_comfy_image(torch.zeros(1, 3, 8, 8), "reference_image")


# ------------------------------------------------------------------------------------------------------------------
# Example workflows
# ------------------------------------------------------------------------------------------------------------------

#: The core nodes the examples use, as ComfyUI 0.3.64's /object_info declares them.
CORE_NODES = {
    "SaveImage": {"inputs": {"images": "IMAGE", "filename_prefix": "STRING"}, "outputs": [], "widgets": ["filename_prefix"]},
    "LoadImage": {"inputs": {"image": "COMBO"}, "outputs": ["IMAGE", "MASK"], "widgets": ["image", "upload"]},
    "PreviewAny": {"inputs": {"source": "*"}, "outputs": [], "widgets": []},
}
SOCKET_TYPES = {"UNIPATH_PIPELINE", "UNIPATH_CONDITIONING", "UNIPATH_PROTOTYPE_BANK", "UNIPATH_PROTOTYPES", "IMAGE",
                "LATENT", "*"}


def accepts(input_type: str, output_type: str) -> bool:
    """Whether a link from an output of `output_type` into an input of `input_type` is valid ("*" takes anything)."""
    return input_type in ("*", output_type)


def node_interface(pack, class_type: str) -> Dict[str, Any]:
    """Inputs (name -> type), required inputs, output types and widget values per node, ours or core."""
    if class_type in CORE_NODES:
        core = CORE_NODES[class_type]
        return {**core, "required": set(core["inputs"])}
    schema = pack.nodes[class_type].GET_SCHEMA()
    widgets = []
    for item in schema.inputs:
        if item.io_type not in SOCKET_TYPES:
            widgets.append(item.id)
            if item.options.get("control_after_generate") or (item.id == "seed" and
                                                               item.options.get("control_after_generate") is None):
                widgets.append("control_after_generate")  # the frontend adds a control widget
    return {"inputs": {i.id: i.io_type for i in schema.inputs}, "required": {i.id for i in schema.inputs if not i.optional},
            "outputs": [o.io_type for o in schema.outputs], "widgets": widgets}


def load_workflow(path: Path) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def test_there_is_an_api_and_a_ui_workflow_for_each_example():
    names = {p.name for p in EXAMPLES.glob("*.json")}
    assert {"text_to_image_api.json", "prototype_control_api.json", "reference_image_prototypes_api.json"} <= names
    for path in API_WORKFLOWS:
        assert path.name.replace("_api.json", ".json") in names


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_references_only_existing_nodes_inputs_and_output_slots(pack, path):
    workflow = load_workflow(path)
    used = set()
    for node_id, node in workflow.items():
        interface = node_interface(pack, node["class_type"])
        used.add(node["class_type"])
        assert set(node["inputs"]) <= set(interface["inputs"]), f"{path.name} node {node_id}: unknown input"
        assert interface["required"] <= set(node["inputs"]), f"{path.name} node {node_id}: missing required input"
        for name, value in node["inputs"].items():
            if isinstance(value, list):
                source, slot = value
                assert str(source) in workflow, f"{path.name} node {node_id}.{name}: no node {source}"
                outputs = node_interface(pack, workflow[str(source)]["class_type"])["outputs"]
                assert 0 <= slot < len(outputs), f"{path.name} node {node_id}.{name}: no output slot {slot}"
                assert accepts(interface["inputs"][name], outputs[slot]), f"{path.name} node {node_id}.{name}: type"
            else:
                assert interface["inputs"][name] not in SOCKET_TYPES, f"{path.name} node {node_id}.{name} needs a link"
    assert "SaveImage" in used
    loaders = [n for n in workflow.values() if n["class_type"] == "UniPathLoader"]
    assert len(loaders) == 1 and loaders[0]["inputs"]["source"] == "default"  # the bundled default model


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_ui_workflow_is_a_valid_graph_matching_its_api_twin(pack, path):
    api, ui = load_workflow(path), load_workflow(path.with_name(path.name.replace("_api.json", ".json")))
    assert ui["version"] == 0.4 and isinstance(ui["links"], list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert {str(i) for i in nodes} == set(api) and ui["last_node_id"] >= max(nodes)
    links = {link[0]: link for link in ui["links"]}
    assert len(links) == len(ui["links"]) and ui["last_link_id"] >= max(links, default=0)
    for link_id, origin, origin_slot, target, target_slot, kind in ui["links"]:
        assert link_id in (nodes[origin]["outputs"][origin_slot]["links"] or [])
        assert nodes[target]["inputs"][target_slot]["link"] == link_id
        assert nodes[origin]["outputs"][origin_slot]["type"] == kind
        assert accepts(nodes[target]["inputs"][target_slot]["type"], kind)
        assert api[str(target)]["inputs"][nodes[target]["inputs"][target_slot]["name"]] == [str(origin), origin_slot]
    for node_id, node in nodes.items():
        twin, interface = api[str(node_id)], node_interface(pack, node["type"])
        assert node["type"] == twin["class_type"]
        assert [o["type"] for o in node.get("outputs", [])] == interface["outputs"]
        linked = {i["name"] for i in node.get("inputs", []) if i["link"] is not None}
        assert linked == {k for k, v in twin["inputs"].items() if isinstance(v, list)}
        values = dict(zip(interface["widgets"], node.get("widgets_values", [])))
        assert len(node.get("widgets_values", [])) == len(interface["widgets"]), f"node {node_id}: widget count"
        for name, value in twin["inputs"].items():
            if not isinstance(value, list):
                assert values[name] == value, f"{path.name} node {node_id}: widget {name}"


class SaveImageStub:
    """ComfyUI's SaveImage, reduced to writing PNGs into a folder."""

    folder: Path = Path(".")
    saved: List[Path] = []

    @classmethod
    def execute(cls, images: torch.Tensor, filename_prefix: str = "ComfyUI"):
        assert images.ndim == 4 and images.shape[-1] == 3 and images.dtype == torch.float32
        for i, image in enumerate(images):
            path = cls.folder / f"{filename_prefix.replace('/', '_')}_{i:05d}_.png"
            PIL.Image.fromarray((image.numpy() * 255).round().astype(np.uint8)).save(path)
            cls.saved.append(path)
        return _NodeOutput()


class LoadImageStub:
    """ComfyUI's LoadImage, returning a pink tile instead of reading input/example.png."""

    @classmethod
    def execute(cls, image: str):
        tile = torch.tensor([0.85, 0.55, 0.75]).expand(1, 64, 64, 3).clone()
        return _NodeOutput(tile, torch.zeros(1, 64, 64))


class PreviewAnyStub:
    """ComfyUI's Preview Any, reduced to keeping what it would show."""

    shown: List[Any] = []

    @classmethod
    def execute(cls, source: Any):
        cls.shown.append(source)
        return _NodeOutput()


def execute_api_workflow(pack, workflow: dict, core: Dict[str, Any]) -> Dict[str, tuple]:
    """A small executor: every node once, inputs resolved through their links (as ComfyUI, minus caching)."""
    results: Dict[str, tuple] = {}

    def evaluate(node_id: str) -> tuple:
        if node_id not in results:
            node = workflow[node_id]
            inputs = {k: evaluate(str(v[0]))[v[1]] if isinstance(v, list) else v for k, v in node["inputs"].items()}
            node_class = core.get(node["class_type"]) or pack.nodes[node["class_type"]]
            results[node_id] = tuple(node_class.execute(**inputs).args)
        return results[node_id]

    for node_id in workflow:
        evaluate(node_id)
    return results


@pytest.mark.parametrize("path", API_WORKFLOWS, ids=lambda p: p.name)
def test_api_workflow_runs_end_to_end_on_the_tiny_preset(pack, path, bank_dir, tmp_path, comfy):
    """The examples name the bundled default model; here the tiny preset, the test bank and 2 steps stand in."""
    workflow = load_workflow(path)
    for node in workflow.values():
        inputs = node["inputs"]
        if node["class_type"] == "UniPathLoader":
            inputs.update(source="preset:tiny")
        elif node["class_type"] == "UniPathPrototypeBankLoader":
            inputs.update(source=str(bank_dir))
        elif node["class_type"] == "UniPathSampler":
            inputs.update(steps=2, width=32, height=32)
    SaveImageStub.folder, SaveImageStub.saved, PreviewAnyStub.shown = tmp_path, [], []
    core = {"SaveImage": SaveImageStub, "LoadImage": LoadImageStub, "PreviewAny": PreviewAnyStub}
    results = execute_api_workflow(pack, workflow, core)
    samplers = {k: n for k, n in workflow.items() if n["class_type"] == "UniPathSampler"}
    # every example saves each sampler's images once (directly, or through UniPath Decode)
    assert len(SaveImageStub.saved) == sum(n["inputs"]["batch_size"] for n in samplers.values())
    assert all(PIL.Image.open(p).size == (32, 32) for p in SaveImageStub.saved)
    previews = [n for n in workflow.values() if n["class_type"] == "PreviewAny"]
    assert len(PreviewAnyStub.shown) == len(previews) and all(isinstance(t, str) and t for t in PreviewAnyStub.shown)
    for node_id, node in samplers.items():
        image, latent = results[node_id]
        assert image.shape == (node["inputs"]["batch_size"], 32, 32, 3) and latent["samples"].shape[0] == image.shape[0]
