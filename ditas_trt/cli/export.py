"""Export a DiT to ONNX: the plugin graph (TensorRT), the Q/DQ graph (onnxruntime) or the FP16 graph.

Examples:
  ditas-trt export calib/digits --kind plugin --out engines/digits_w4a8.onnx   # one W4A8LoraGemm node per linear
  ditas-trt export calib/digits --kind qdq --out engines/digits_qdq.onnx      # INT8/INT4 Q/DQ, runs in onnxruntime
  ditas-trt export embedded --kind fp16 --out engines/digits_fp16.onnx

Inputs x float32 [batch, C, H, W], t float32 [batch], y int32 [batch]; output `out`; opset 21, dynamic batch.
Writes OUT and OUT.json (model and quantization config, node counts, hashes).
"""
from __future__ import annotations


def add_arguments(parser):
    from ditas_trt.export import KINDS

    parser.add_argument("source", help="quantized model folder (plugin, qdq) or FP checkpoint / 'embedded' (fp16)")
    parser.add_argument("--kind", choices=KINDS, required=True, help="which graph to write")
    parser.add_argument("--out", required=True, help="output .onnx file (e.g. engines/<name>.onnx)")
    parser.add_argument("--dtype", choices=("fp16", "fp32"), default=None,
                        help="compute dtype of the graph (default: fp16 for plugin/fp16, fp32 for qdq)")
    parser.add_argument("--model", default=None, help="DiT config name when it cannot be inferred (fp16 only)")


def run(args):
    from ditas_trt.export import export_onnx

    result = export_onnx(args.source, args.kind, args.out, model=args.model, dtype=args.dtype)
    side = result.sidecar
    extra = f", {side['plugin']['nodes']} plugin nodes" if side.get("plugin") else ""
    print(f"wrote {result.path} ({side['kind']}, {side['dtype']}, {sum(side['node_counts'].values())} nodes{extra}) "
          f"and {result.path.name}.json")
    return 0
