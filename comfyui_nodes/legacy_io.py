"""A stand-in for the part of ComfyUI's V3 `io` module that this pack uses, for ComfyUI versions without `comfy_api`.

The nodes are written once, against the V3 API (`io.Schema`, `io.Int.Input`, `io.NodeOutput`, ...). When
`comfy_api.latest` cannot be imported, `comfy_compat` hands the nodes this module instead, and `v1_mappings` turns
each node into a classic V1 node class (`INPUT_TYPES`, `RETURN_TYPES`, `FUNCTION`) for `NODE_CLASS_MAPPINGS`.
Only what the pack's schemas use is implemented; keyword names follow the V3 API so the two stay interchangeable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple, Type


class _Input:
    """A node input; every keyword besides the common ones is passed to the frontend as a widget option."""

    io_type = "*"

    def __init__(self, id: str, display_name: Optional[str] = None, optional: bool = False,
                 tooltip: Optional[str] = None, **widget_options: Any):
        self.id = id
        self.display_name = display_name
        self.optional = optional
        self.tooltip = tooltip
        self.widget_options = {k: v for k, v in widget_options.items() if v is not None}

    def v1_options(self) -> Dict[str, Any]:
        options = dict(self.widget_options)
        if self.tooltip:
            options["tooltip"] = self.tooltip
        if self.display_name:
            options["display_name"] = self.display_name
        return options

    def v1_spec(self) -> Tuple[Any, Dict[str, Any]]:
        """The `(type, options)` pair of a V1 `INPUT_TYPES` entry."""
        return self.io_type, self.v1_options()


class _ComboInput(_Input):
    """A drop-down: V1 declares it by its list of options instead of a type name."""

    def __init__(self, id: str, options: Sequence[str], display_name: Optional[str] = None, optional: bool = False,
                 tooltip: Optional[str] = None, **widget_options: Any):
        super().__init__(id, display_name, optional, tooltip, **widget_options)
        self.options = list(options)

    def v1_spec(self) -> Tuple[Any, Dict[str, Any]]:
        return list(self.options), self.v1_options()


class _Output:
    """A node output."""

    io_type = "*"

    def __init__(self, id: Optional[str] = None, display_name: Optional[str] = None, tooltip: Optional[str] = None):
        self.id = id
        self.display_name = display_name
        self.tooltip = tooltip


def _socket_type(io_type: str, input_base: type = _Input) -> type:
    """A socket type with nested `Input` / `Output` classes, as `io.Int`, `io.Image`, ... are in the V3 API."""
    return type(io_type.title(), (), {
        "io_type": io_type,
        "Input": type("Input", (input_base,), {"io_type": io_type}),
        "Output": type("Output", (_Output,), {"io_type": io_type}),
    })


Int = _socket_type("INT")
Float = _socket_type("FLOAT")
String = _socket_type("STRING")
Boolean = _socket_type("BOOLEAN")
Combo = _socket_type("COMBO", _ComboInput)
Image = _socket_type("IMAGE")
Mask = _socket_type("MASK")
Latent = _socket_type("LATENT")


def Custom(io_type: str) -> type:  # noqa: N802 (the V3 API's name)
    """A socket type of the pack's own (e.g. `UNIPATH_PIPELINE`)."""
    return _socket_type(io_type)


@dataclass
class Schema:
    """The fields of the V3 `io.Schema` that the pack sets."""

    node_id: str
    display_name: Optional[str] = None
    category: str = "sd"
    inputs: List[_Input] = field(default_factory=list)
    outputs: List[_Output] = field(default_factory=list)
    description: str = ""
    is_output_node: bool = False


class NodeOutput:
    """What `execute` returns: the output values in schema order."""

    def __init__(self, *args: Any, ui: Optional[dict] = None):
        self.args = args
        self.ui = ui


class ComfyNode:
    """Base class of a node: a `define_schema` and a stateless `execute` classmethod."""

    @classmethod
    def define_schema(cls) -> Schema:
        raise NotImplementedError

    @classmethod
    def execute(cls, **kwargs: Any) -> NodeOutput:
        raise NotImplementedError


def as_v1_node(node: Type[ComfyNode]) -> type:
    """A classic ComfyUI node class that runs `node.execute`."""
    schema = node.define_schema()

    def input_types(cls) -> Dict[str, Dict[str, Any]]:
        sections: Dict[str, Dict[str, Any]] = {"required": {}}
        for item in schema.inputs:
            sections.setdefault("optional" if item.optional else "required", {})[item.id] = item.v1_spec()
        return sections

    def run(self, **kwargs: Any) -> tuple:
        return tuple(node.execute(**kwargs).args)

    return type(schema.node_id, (), {
        "__doc__": node.__doc__,
        "__module__": node.__module__,
        "INPUT_TYPES": classmethod(input_types),
        "RETURN_TYPES": tuple(o.io_type for o in schema.outputs),
        "RETURN_NAMES": tuple(o.display_name or o.id or o.io_type for o in schema.outputs),
        "OUTPUT_TOOLTIPS": tuple(o.tooltip or "" for o in schema.outputs),
        "FUNCTION": "run",
        "CATEGORY": schema.category,
        "DESCRIPTION": schema.description,
        "OUTPUT_NODE": schema.is_output_node,
        "run": run,
    })


def v1_mappings(nodes: Sequence[Type[ComfyNode]]) -> Tuple[Dict[str, type], Dict[str, str]]:
    """`(NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS)` for `nodes`."""
    classes, names = {}, {}
    for node in nodes:
        schema = node.define_schema()
        classes[schema.node_id] = as_v1_node(node)
        names[schema.node_id] = schema.display_name or schema.node_id
    return classes, names
