"""Generate class-conditional samples and save a PNG grid plus an .npz (images, labels, seeds).

Examples:
  ditas-trt sample --classes 3 7 --per-class 8 --out runs/sample
  ditas-trt sample DiT-XL-2-256x256.pt --sampler ddim --steps 50 --cfg-scale 4
  ditas-trt sample --quantized calib/digits      # the quantized model through the W4A8 torch op
  ditas-trt sample --engine engines/digits_w4a8.plan --device cuda   # a TensorRT engine (GPU)
  ditas-trt sample --onnx engines/digits_qdq.onnx                     # the Q/DQ graph in onnxruntime
"""
from __future__ import annotations

from ditas_trt.cli.common import add_checkpoint_args, add_sampling_args, output_dir, sample_labels, sampling_options
from ditas_trt.errors import DitasError


def add_arguments(parser):
    add_checkpoint_args(parser)
    add_sampling_args(parser)
    backend = parser.add_argument_group("backend")
    backend.add_argument("--quantized", default=None, metavar="DIR", help="sample with a quantized model folder")
    backend.add_argument("--engine", default=None, metavar="PLAN", help="sample with a TensorRT engine (needs a GPU)")
    backend.add_argument("--onnx", default=None, metavar="ONNX", help="sample with an exported Q/DQ or FP graph "
                         "in onnxruntime (CPU)")
    backend.add_argument("--plugin-lib", default=None, metavar="PATH",
                         help="plugin library for an engine built without embedding it")
    backend.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    backend.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/sample", help="output folder (samples.png, samples.npz)")


def run(args):
    from ditas_trt.backends import load_denoiser, resolve_device
    from ditas_trt.runs import save_samples

    if args.engine is None:
        resolve_device(args.device)
    options = sampling_options(args)
    if args.batch_size < 1:
        raise DitasError(f"--batch-size must be >= 1, got {args.batch_size}")
    out = output_dir(args.out)
    if sum(a is not None for a in (args.quantized, args.engine, args.onnx)) > 1:
        raise DitasError("choose one of --quantized, --engine, --onnx")
    if args.engine is not None:  # refuse a batch outside the profile before loading anything
        from ditas_trt.engine.metadata import check_batch, read_engine_sidecar

        meta = read_engine_sidecar(args.engine)
        n = len(sample_labels(args, meta["model_config"]["num_classes"]))
        rows = 2 if options.cfg_scale > 1 else 1
        for chunk in {min(args.batch_size, n), n % args.batch_size or min(args.batch_size, n)}:
            check_batch(meta, chunk * rows)
    expect = None
    if args.quantized is not None and args.checkpoint != "embedded":  # a checkpoint named with --quantized
        from ditas_trt.models import load_dit

        expect = load_dit(args.checkpoint, args.model).config
    denoiser = load_denoiser(args.checkpoint, args.model, quantized=args.quantized, engine=args.engine,
                             onnx=args.onnx, plugin_lib=args.plugin_lib, device=args.device, expect_config=expect)
    labels = sample_labels(args, denoiser.config.num_classes)
    seeds = [args.seed + i for i in range(len(labels))]
    images = denoiser.generate(labels, seeds, options, batch_size=args.batch_size, progress=True)
    png, npz = save_samples(out, "samples", images, labels, seeds, nrow=args.per_class,
                            meta={"backend": denoiser.name, **vars(options)})
    print(f"wrote {png} and {npz}")
    return 0
