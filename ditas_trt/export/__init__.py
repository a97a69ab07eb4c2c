"""ONNX export of a DiT: the plugin graph for TensorRT, the Q/DQ graph for onnxruntime, the FP16 graph.

=========  ===========================  ======  ===============================================================
kind       source                       dtype   quantized linears become
=========  ===========================  ======  ===============================================================
plugin     quantized folder             fp16    one ``trt.plugins::W4A8LoraGemm`` node each (:mod:`.plugin_spec`)
qdq        quantized folder             fp32    INT8 Q/DQ activations, INT4 DequantizeLinear weights, LoRA MatMuls
fp16       FP checkpoint                fp16    (none: every linear is MatMul + Add)
=========  ===========================  ======  ===============================================================

All graphs: opset 21, inputs ``x`` float32 [batch, C, H, W], ``t`` float32 [batch], ``y`` int32 [batch], output
``out`` float32; ``batch`` is dynamic. ``<out>.json`` (sidecar) records the model and quantization config.
"""
from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Union

import numpy as np

from ditas_trt.artifacts import (artifact_mode, atomic_path, environment_versions, file_sha256, sidecar_path,
                                 write_json_atomic)
from ditas_trt.errors import DitasError

KINDS = ("plugin", "qdq", "fp16")
DEFAULT_DTYPE = {"plugin": "fp16", "qdq": "fp32", "fp16": "fp16"}
DTYPES = {"fp16": np.float16, "fp32": np.float32}
METADATA_PREFIX = "ditas_trt."
EXTERNAL_DATA_BYTES = 1_800_000_000  # protobuf's 2 GB limit, with margin


@dataclass
class ExportResult:
    path: Path
    sidecar: dict


def is_quantized_source(source: Union[str, Path]) -> bool:
    from ditas_trt.quant.packed import QUANTIZED_FILE

    path = Path(source)
    return (path.is_dir() and (path / QUANTIZED_FILE).is_file()) or path.name == QUANTIZED_FILE


def load_source(source: Union[str, Path], kind: str, model: Optional[str] = None):
    """The torch model to export: a quantized DiT for ``plugin``/``qdq``, the FP DiT for ``fp16``."""
    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint
    from ditas_trt.quant.packed import load_quantized

    quantized = is_quantized_source(source)
    if kind in ("plugin", "qdq"):
        if not quantized:
            raise DitasError(f"{source}: --kind {kind} needs a quantized model folder (written by `ditas-trt quantize`)")
        return load_quantized(source)
    if quantized:
        raise DitasError(f"{source}: is a quantized folder; --kind fp16 exports an FP checkpoint (use --kind plugin or qdq)")
    return load_dit(resolve_checkpoint(source), model)


def _structure(model_proto, kind: str, quantized_layers: int) -> dict:
    """Node counts and the structural invariants of each kind; a violation is a bug, reported as DitasError."""
    from ditas_trt.export import plugin_spec

    ops = Counter((n.domain or "") + ("::" if n.domain else "") + n.op_type for n in model_proto.graph.node)
    custom = {op: n for op, n in ops.items() if "::" in op}
    plugin_op = f"{plugin_spec.DOMAIN}::{plugin_spec.OP_TYPE}"
    problems = []
    if kind == "plugin":
        if custom.get(plugin_op, 0) != quantized_layers or len(custom) != 1:
            problems.append(f"{custom.get(plugin_op, 0)} plugin nodes for {quantized_layers} quantized linears")
        if ops.get("QuantizeLinear") or ops.get("DequantizeLinear"):
            problems.append("Q/DQ nodes in the plugin graph")
    elif kind == "qdq":
        if custom:
            problems.append(f"custom nodes {sorted(custom)} in the Q/DQ graph")
        if ops.get("QuantizeLinear", 0) != quantized_layers:
            problems.append(f"{ops.get('QuantizeLinear', 0)} QuantizeLinear nodes for {quantized_layers} quantized linears")
    elif custom or ops.get("QuantizeLinear") or ops.get("DequantizeLinear"):
        problems.append("quantization nodes in the FP graph")
    if problems:
        raise DitasError(f"exported {kind} graph is malformed: {'; '.join(problems)}")
    return dict(sorted(ops.items()))


def _check(model, kind: str) -> None:
    """onnx.checker on a ModelProto or, for one past protobuf's 2 GB limit, on its saved file."""
    import onnx

    try:
        onnx.checker.check_model(model, full_check=kind != "plugin")  # shape inference cannot see inside the plugin
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError) as exc:
        raise DitasError(f"exported {kind} graph fails onnx.checker: {str(exc).splitlines()[0]}") from None


def _save(model_proto, path: Path, kind: str) -> None:
    """Check, then write ``path`` atomically; past :data:`EXTERNAL_DATA_BYTES` of weights (DiT-XL in fp32) the
    weights go to ``<name>.onnx.data`` beside it, both written in a temporary folder and renamed into place."""
    import onnx

    size = sum(len(t.raw_data) for t in model_proto.graph.initializer)
    if size <= EXTERNAL_DATA_BYTES:
        _check(model_proto, kind)
        with atomic_path(path) as tmp:
            onnx.save_model(model_proto, str(tmp))
        return
    data = path.with_name(path.name + ".data")
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.", dir=path.parent) as folder:
        tmp = Path(folder) / path.name
        # written fresh in the temporary folder: onnx refuses to write over an existing data file
        onnx.save_model(model_proto, str(tmp), save_as_external_data=True, all_tensors_to_one_file=True,
                        location=data.name, size_threshold=1024)
        _check(str(tmp), kind)
        for written in (tmp.with_name(data.name), tmp):
            written.chmod(artifact_mode())  # onnx writes the data file 0600
        os.replace(tmp.with_name(data.name), data)
        os.replace(tmp, path)


def export_onnx(
    source: Union[str, Path],
    kind: str,
    out: Union[str, Path],
    *,
    model: Optional[str] = None,
    dtype: Optional[str] = None,
    torch_model=None,
) -> ExportResult:
    """Export ``source`` (a quantized folder or an FP checkpoint; or ``torch_model`` directly) to ``out``."""
    from ditas_trt.export import plugin_spec
    from ditas_trt.export.graph import IR_VERSION, OPSET, build_dit_graph, make_model
    from ditas_trt.export.linears import EMITTERS
    from ditas_trt.quant.linear import quant_layer_configs

    if kind not in KINDS:
        raise DitasError(f"unknown export kind {kind!r}; choose from {', '.join(KINDS)}")
    dtype = dtype or DEFAULT_DTYPE[kind]
    if dtype not in DTYPES:
        raise DitasError(f"unknown dtype {dtype!r}; choose fp16 or fp32")
    if kind == "plugin" and dtype != "fp16":
        raise DitasError("the plugin graph is fp16 (the plugin's kernels take fp16 activations)")
    out = Path(out)
    if out.suffix != ".onnx":
        raise DitasError(f"{out}: the output file must end in .onnx")
    net = torch_model if torch_model is not None else load_source(source, kind, model)
    layers = quant_layer_configs(net)
    if kind != "fp16" and not layers:
        raise DitasError(f"{source}: the model has no quantized linear layers")

    emitter = EMITTERS["fp16" if kind == "fp16" else kind]
    graph = build_dit_graph(net, emitter, DTYPES[dtype], name=f"ditas_{kind}")
    recipe = getattr(net, "ditas_recipe", {})
    metadata = {
        METADATA_PREFIX + "kind": kind,
        METADATA_PREFIX + "dtype": dtype,
        METADATA_PREFIX + "dit_config": json.dumps(net.config.to_dict(), sort_keys=True),
        METADATA_PREFIX + "quant_layers": json.dumps(layers, sort_keys=True),
        METADATA_PREFIX + "recipe": json.dumps(recipe, sort_keys=True, default=str),
    }
    extra = {plugin_spec.DOMAIN: 1} if kind == "plugin" else None
    proto = make_model(graph, extra, metadata)
    ops = _structure(proto, kind, len(layers))
    _save(proto, out, kind)

    source_file = None
    if torch_model is None and source is not None:
        from ditas_trt.models.embedded import resolve_checkpoint
        from ditas_trt.quant.packed import quantized_file

        source_file = quantized_file(source) if is_quantized_source(source) else resolve_checkpoint(source)
    sidecar = {
        "artifact": out.name,
        "sha256": file_sha256(out),
        "kind": kind,
        "dtype": dtype,
        "opset": OPSET,
        "ir_version": IR_VERSION,
        "inputs": {"x": ["batch", net.config.in_channels, net.config.input_size, net.config.input_size],
                   "t": ["batch"], "y": ["batch"]},
        "input_dtypes": {"x": "float32", "t": "float32", "y": "int32"},
        "outputs": {"out": ["batch", net.out_channels, net.config.input_size, net.config.input_size]},
        "model_config": net.config.to_dict(),
        "quantized_layers": len(layers),
        "quant_layer_configs": layers,
        "recipe": recipe,
        "source": None if source_file is None else str(source_file),
        "source_sha256": None if source_file is None or not Path(source_file).is_file() else file_sha256(source_file),
        "node_counts": ops,
        "plugin": ({"op_type": plugin_spec.OP_TYPE, "domain": plugin_spec.DOMAIN, "version": plugin_spec.VERSION,
                    "nodes": len(layers)} if kind == "plugin" else None),
        "versions": environment_versions(),
    }
    write_json_atomic(sidecar_path(out), sidecar)
    return ExportResult(out, sidecar)


def load_onnx_graph(path: Union[str, Path]):
    """The ModelProto of an ONNX file without its external weights; an unreadable file is a DitasError."""
    import onnx

    try:
        return onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 (protobuf raises several types)
        why = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DitasError(f"{path}: not a readable ONNX file ({why})") from None


def read_onnx_metadata(path: Union[str, Path]) -> dict:
    """The ``ditas_trt.*`` metadata of an exported ONNX file (JSON values decoded), without loading weights."""
    proto = load_onnx_graph(path)
    meta = {}
    for prop in proto.metadata_props:
        if prop.key.startswith(METADATA_PREFIX):
            key = prop.key[len(METADATA_PREFIX):]
            try:
                meta[key] = json.loads(prop.value)
            except json.JSONDecodeError:
                meta[key] = prop.value
    return meta
