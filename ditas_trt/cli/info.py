"""Show a checkpoint's inferred DiT config and parameter count.

Examples:
  ditas-trt info                     # the embedded digits model
  ditas-trt info DiT-XL-2-256x256.pt
  ditas-trt info calib/digits        # a quantized model folder
"""
from __future__ import annotations

import json
from pathlib import Path

from ditas_trt.cli.common import add_checkpoint_args


def add_arguments(parser):
    add_checkpoint_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON instead of text")


def describe(checkpoint: str, model=None) -> dict:
    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint
    from ditas_trt.quant.packed import QUANTIZED_FILE, load_quantized
    from ditas_trt.quant.linear import quant_layer_configs

    path = resolve_checkpoint(checkpoint)
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
    if "quantized_layers" in info:
        print(f"  {'quantized layers':20s} {info['quantized_layers']}")
    return 0
