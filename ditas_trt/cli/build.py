"""Build a TensorRT engine (engines/NAME.plan + NAME.plan.json) from an exported ONNX file.

Uses enterprise TensorRT when `import tensorrt` works (needs a GPU; NGC image, docker/Dockerfile.build), else
TensorRT-RTX, which builds on a CPU-only machine for sm_80/86/89/120 (no Hopper).

Examples:
  ditas-trt build engines/digits_fp16.onnx --name digits_fp16 --batch 1 16 128
  ditas-trt build engines/digits_w4a8.onnx --name digits_w4a8 --plugin-lib plugins/build/libditas_trt_plugin.so
  ditas-trt build engines/digits_w4a8.onnx --targets sm86 sm89           # TensorRT-RTX targets

--batch MIN OPT MAX is the engine's batch, i.e. the DiT forward batch: with classifier-free guidance
(cfg scale > 1) sampling n images at once runs batch 2n.
"""
from __future__ import annotations


def add_arguments(parser):
    parser.add_argument("onnx", help="ONNX file written by `ditas-trt export`")
    parser.add_argument("--name", default=None, help="engine name (default: the ONNX file's stem)")
    parser.add_argument("--batch", type=int, nargs=3, default=[1, 16, 128], metavar=("MIN", "OPT", "MAX"),
                        help="optimization profile of the batch dimension (default 1 16 128)")
    parser.add_argument("--plugin-lib", default=None, metavar="PATH",
                        help="libditas_trt_plugin.so (default: $DITAS_TRT_PLUGIN_LIB or plugins/build/)")
    parser.add_argument("--targets", nargs="+", default=None, metavar="CC",
                        help="TensorRT-RTX: compute capabilities (sm80 sm86 sm89 sm120; default: its portable set); "
                             "TensorRT: current (default) or ampere+")
    parser.add_argument("--out-dir", default="engines", help="where NAME.plan goes (default engines/)")
    parser.add_argument("--flavour", choices=("auto", "tensorrt", "tensorrt-rtx"), default="auto")
    embed = parser.add_mutually_exclusive_group()
    embed.add_argument("--embed-plugin", dest="embed_plugin", action="store_true", default=None,
                       help="serialize the plugin library into the plan (TensorRT-RTX default)")
    embed.add_argument("--no-embed-plugin", dest="embed_plugin", action="store_false",
                       help="record the plugin path and hash instead (enterprise TensorRT default)")
    parser.add_argument("--timing-cache", default="auto", help="TensorRT timing cache file ('none' to disable)")
    parser.add_argument("--verbose", action="store_true", help="print TensorRT's log")


def run(args):
    from ditas_trt.engine.builder import build_engine

    result = build_engine(args.onnx, args.name, batch=args.batch, plugin_lib=args.plugin_lib, targets=args.targets,
                          out_dir=args.out_dir, flavour=args.flavour, embed_plugin=args.embed_plugin,
                          timing_cache=None if args.timing_cache == "none" else args.timing_cache,
                          verbose=args.verbose, allow_reexec=True)
    side = result.sidecar
    batch = side["profile"]["batch"]
    plugin = side["plugin"]
    plug = "" if plugin is None else (f", {len(side['plugin_layers'])} plugin layers, plugin "
                                      + ("embedded" if plugin["embedded"] else f"at {plugin['library']}"))
    print(f"wrote {result.plan} ({side['bytes'] / 1e6:.2f} MB, {side['tensorrt']['flavour']} {side['tensorrt']['version']}, "
          f"built in {side['build_seconds']:.1f} s, batch {batch['min']}/{batch['opt']}/{batch['max']}, "
          f"targets {' '.join(side['targets']['compute_capabilities'])}{plug})")
    return 0
