"""Writes the UI-format workflow (`NAME.json`) beside each API-format one (`NAME_api.json`) in this folder.

The API files are the source of truth; the UI files are derived from them and from a running ComfyUI's node
definitions, so that widget order, control widgets and socket types match what the frontend expects:

    python examples/comfyui/build_ui_workflows.py --object-info http://127.0.0.1:8188/object_info

`tests/test_comfyui_nodes.py` checks that each UI file still matches its API twin.
"""

from __future__ import annotations

import argparse
import json
import os
import urllib.request
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NODE_SIZES = {
    "UniPathLoader": [340, 130], "UniPathEncode": [420, 450], "UniPathPrototypeBankLoader": [340, 110],
    "UniPathPrototypeRetrieve": [400, 230], "UniPathPrototypeSelect": [360, 230], "UniPathSampler": [330, 390],
    "UniPathDecode": [220, 60], "SaveImage": [320, 360], "LoadImage": [320, 340], "PreviewAny": [360, 160],
}
COLUMN_WIDTH, ROW_GAP = 470, 110


def read_object_info(source: str) -> Dict[str, Any]:
    if source.startswith(("http://", "https://")):
        with urllib.request.urlopen(source) as response:
            return json.load(response)
    with open(source, encoding="utf-8") as f:
        return json.load(f)


def node_inputs(definition: Dict[str, Any]) -> List[Tuple[str, str, Dict[str, Any]]]:
    """`(name, type, options)` of every input in the order the frontend creates them (required, then optional)."""
    order = definition.get("input_order") or {k: list(v) for k, v in definition["input"].items() if k != "hidden"}
    inputs = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            spec = list(definition["input"][section][name]) + [{}]
            kind = "COMBO" if isinstance(spec[0], list) else spec[0]
            inputs.append((name, kind, spec[1] or {}))
    return inputs


def widget_values(name: str, value: Any, options: Dict[str, Any]) -> List[Any]:
    """The `widgets_values` entries of one widget input (control and upload widgets add a value)."""
    values = [value]
    control = options.get("control_after_generate")
    if control or (control is None and name in ("seed", "noise_seed")):  # the frontend's legacy convention
        values.append("fixed")
    if options.get("image_upload"):
        values.append("image")
    return values


def depth_of(api: Dict[str, Any]) -> Dict[str, int]:
    depth: Dict[str, int] = {}

    def visit(node_id: str) -> int:
        if node_id not in depth:
            sources = [str(v[0]) for v in api[node_id]["inputs"].values() if isinstance(v, list)]
            depth[node_id] = 1 + max((visit(s) for s in sources), default=-1)
        return depth[node_id]

    for node_id in api:
        visit(node_id)
    return depth


def ui_workflow(api: Dict[str, Any], info: Dict[str, Any]) -> Dict[str, Any]:
    """A UI graph (format version 0.4) with the API workflow's nodes, links and widget values, laid out by depth."""
    depth, column_fill, nodes = depth_of(api), {}, {}
    for order, node_id in enumerate(sorted(api, key=lambda n: (depth[n], int(n)))):
        class_type = api[node_id]["class_type"]
        definition, size = info[class_type], NODE_SIZES.get(class_type, [320, 200])
        column = depth[node_id]
        top = column_fill.get(column, 0)
        column_fill[column] = top + size[1] + ROW_GAP
        sockets, widgets = [], []
        for name, kind, options in node_inputs(definition):
            if kind in WIDGET_TYPES and not options.get("forceInput"):
                widgets += widget_values(name, api[node_id]["inputs"].get(name, options.get("default")), options)
            else:
                sockets.append({"name": name, "type": kind, "link": None})
        outputs = [{"name": name, "type": kind, "links": [], "slot_index": slot}
                   for slot, (kind, name) in enumerate(zip(definition["output"], definition["output_name"]))]
        node = {"id": int(node_id), "type": class_type, "pos": [60 + column * COLUMN_WIDTH, 60 + top], "size": size,
                "flags": {}, "order": order, "mode": 0, "inputs": sockets, "outputs": outputs,
                "properties": {"Node name for S&R": class_type}, "widgets_values": widgets}
        title = api[node_id].get("_meta", {}).get("title")
        if title and title != definition["display_name"]:
            node["title"] = title
        nodes[node_id] = node
    links = []
    for node_id in sorted(api, key=int):
        for name, value in api[node_id]["inputs"].items():
            if isinstance(value, list):
                source, slot = str(value[0]), value[1]
                target_slot = [i["name"] for i in nodes[node_id]["inputs"]].index(name)
                link_id = len(links) + 1
                links.append([link_id, int(source), slot, int(node_id), target_slot, nodes[source]["outputs"][slot]["type"]])
                nodes[node_id]["inputs"][target_slot]["link"] = link_id
                nodes[source]["outputs"][slot]["links"].append(link_id)
    for node in nodes.values():
        for output in node["outputs"]:
            output["links"] = output["links"] or None
    return {"last_node_id": max(int(n) for n in api), "last_link_id": len(links),
            "nodes": [nodes[n] for n in sorted(api, key=int)], "links": links, "groups": [], "config": {},
            "extra": {"ds": {"scale": 1.0, "offset": [0, 0]}}, "version": 0.4}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--object-info", required=True, help="a ComfyUI /object_info URL or a saved copy of it")
    args = parser.parse_args()
    info = read_object_info(args.object_info)
    for name in sorted(os.listdir(HERE)):
        if name.endswith("_api.json"):
            with open(os.path.join(HERE, name), encoding="utf-8") as f:
                api = json.load(f)
            out = os.path.join(HERE, name[: -len("_api.json")] + ".json")
            with open(out, "w", encoding="utf-8") as f:
                json.dump(ui_workflow(api, info), f, indent=2)
                f.write("\n")
            print(out)


if __name__ == "__main__":
    main()
