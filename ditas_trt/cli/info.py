"""Show what a checkpoint, quantized folder, exported graph or engine holds: DiT config, parameters, quantization.

Examples:
  ditas-trt info                     # the embedded digits model
  ditas-trt info DiT-XL-2-256x256.pt
  ditas-trt info calib/digits        # a quantized model folder
  ditas-trt info engines/digits_w4a8.onnx engines/digits_w4a8.plan
"""
from __future__ import annotations

import json
from pathlib import Path

from ditas_trt.cli.common import add_checkpoint_args
from ditas_trt.errors import DitasError


def add_arguments(parser):
    add_checkpoint_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def _count_parameters(config) -> int:
    import torch

    from ditas_trt.models.loading import build_dit

    with torch.device("meta"):  # shapes only: no memory for DiT-XL
        return sum(p.numel() for p in build_dit(config).parameters())


def _describe_artifact(path: Path) -> dict:
    """An exported ONNX graph (its metadata) or a TensorRT plan (its sidecar); neither is loaded."""
    from ditas_trt.models.dit import DiTConfig

    if path.suffix == ".onnx":
        from ditas_trt.export import read_onnx_metadata

        meta = read_onnx_metadata(path)
        if "dit_config" not in meta:
            raise DitasError(f"{path}: an ONNX file without ditas-trt metadata (not written by `ditas-trt export`)")
        config, layers = meta["dit_config"], meta.get("quant_layers") or {}
        extra = {"graph": f"{meta.get('kind')} ({meta.get('dtype')})"}
        kind = "onnx"
    else:
        from ditas_trt.engine.metadata import read_engine_sidecar

        meta = read_engine_sidecar(path)
        config, layers = meta["model_config"], meta.get("quant_layer_configs") or {}
        trt = meta["tensorrt"]
        extra = {"graph": f"{meta['onnx'].get('kind')} ({meta['onnx'].get('dtype')})",
                 "tensorrt": f"{trt['flavour']} {trt['version']}",
                 "batch profile": "/".join(str(meta["profile"]["batch"][k]) for k in ("min", "opt", "max")),
                 "targets": " ".join(meta["targets"]["compute_capabilities"]),
                 "plugin layers": len(meta.get("plugin_layers", []))}
        kind = "plan"
    config = DiTConfig(**config)
    info = {"path": str(path), "kind": kind, "config": config.to_dict(), "parameters": _count_parameters(config),
            "tokens": (config.input_size // config.patch_size) ** 2, **extra}
    if layers:
        info["quantized_layers"] = len(layers)
    return info


def describe(checkpoint: str, model=None) -> dict:
    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint
    from ditas_trt.quant.linear import quant_layer_configs
    from ditas_trt.quant.packed import QUANTIZED_FILE, load_quantized

    path = resolve_checkpoint(checkpoint)
    if path.suffix in (".onnx", ".plan") and path.is_file():
        return _describe_artifact(path)
    if (path.is_dir() and (path / QUANTIZED_FILE).is_file()) or path.name == QUANTIZED_FILE:
        net = load_quantized(path)
        layers = quant_layer_configs(net)
        kind = "quantized"
    else:
        net = load_dit(path, model)
        layers = {}
        kind = "fp"
    info = {
        "path": str(path),
        "kind": kind,
        "config": net.config.to_dict(),
        "parameters": sum(p.numel() for p in net.parameters()),
        "tokens": (net.config.input_size // net.config.patch_size) ** 2,
    }
    if layers:
        info["quantized_layers"] = len(layers)
        info["recipe"] = getattr(net, "ditas_recipe", {})
    return info


def run(args):
    info = describe(args.checkpoint, args.model)
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    print(f"{info['path']} ({info['kind']})")
    for key, value in info["config"].items():
        print(f"  {key:20s} {value}")
    print(f"  {'parameters':20s} {info['parameters']:,}")
    print(f"  {'tokens':20s} {info['tokens']}")
    for key in ("quantized_layers", "graph", "tensorrt", "batch profile", "targets", "plugin layers"):
        if key in info:
            print(f"  {key.replace('_', ' '):20s} {info[key]}")
    return 0
