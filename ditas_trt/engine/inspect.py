"""Look at a plan without running it.

On a CPU-only machine a plan cannot be deserialized (TensorRT needs a GPU for that), so :func:`inspect_plan`
checks what can be checked from the bytes and the sidecar: the sidecar's hash, the I/O tensors and the
optimization profile recorded from the built network, the plugin layers of the network, the plugin's type name in
the plan and — when the library was embedded — the library's bytes inside the plan. With a GPU and the TensorRT
that built the plan, :func:`inspect_engine` deserializes it and reads bindings, profile shapes and layers from
``IEngineInspector``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Union

from ditas_trt.engine import metadata as md
from ditas_trt.errors import DitasError


def inspect_plan(plan: Union[str, Path]) -> dict:
    from ditas_trt.export import plugin_spec

    plan = Path(plan)
    meta = md.read_engine_sidecar(plan)  # also verifies the sha256
    data = plan.read_bytes()
    plugin = meta.get("plugin")
    report = {
        "name": meta["name"],
        "bytes": len(data),
        "flavour": meta["tensorrt"]["flavour"],
        "version": meta["tensorrt"]["version"],
        "kind": meta["onnx"].get("kind"),
        "profile": meta["profile"]["batch"],
        "inputs": {k: v["shape"] for k, v in meta["inputs"].items()},
        "outputs": {k: v["shape"] for k, v in meta["outputs"].items()},
        "plugin_layers": len(meta.get("plugin_layers", [])),
        "plugin_type_in_plan": plugin_spec.OP_TYPE.encode() in data,
        "plugin_embedded": None,
        "targets": meta["targets"]["compute_capabilities"],
        "build_seconds": meta.get("build_seconds"),
    }
    for name in (*report["inputs"], *report["outputs"]):
        if name.encode() not in data:
            raise DitasError(f"{plan}: tensor '{name}' from the sidecar does not occur in the plan")
    if plugin:
        if not report["plugin_type_in_plan"]:
            raise DitasError(f"{plan}: the sidecar lists a plugin but the plan does not mention {plugin_spec.OP_TYPE}")
        if plugin.get("embedded"):
            lib = Path(plugin["library"])
            report["plugin_embedded"] = (lib.read_bytes() in data) if lib.is_file() else None
    return report


def inspect_engine(plan: Union[str, Path], plugin_lib=None) -> dict:
    """Deserialize on a GPU and read bindings, profile shapes and the layer list (``IEngineInspector``)."""
    from ditas_trt.engine.runtime import EngineRunner

    runner = EngineRunner(plan, plugin_lib=plugin_lib, cuda_graphs=False)
    engine = runner.engine
    mod = runner.trt.module
    tensors = {}
    for i in range(engine.num_io_tensors):
        name = engine.get_tensor_name(i)
        entry = {"mode": str(engine.get_tensor_mode(name)), "dtype": str(engine.get_tensor_dtype(name)),
                 "shape": list(engine.get_tensor_shape(name))}
        if engine.get_tensor_mode(name) == mod.TensorIOMode.INPUT:
            entry["profile"] = [list(s) for s in engine.get_tensor_profile_shape(name, 0)]
        tensors[name] = entry
    inspector = engine.create_engine_inspector()
    layers = json.loads(inspector.get_engine_information(mod.LayerInformationFormat.JSON))
    return {"tensors": tensors, "layers": layers.get("Layers", layers), "num_layers": engine.num_layers}
