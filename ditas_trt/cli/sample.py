"""Generate class-conditional samples and save a PNG grid plus an .npz (images, labels, seeds).

Examples:
  ditas-trt sample --classes 3 7 --per-class 8 --out runs/sample
  ditas-trt sample DiT-XL-2-256x256.pt --sampler ddim --steps 50 --cfg-scale 4
  ditas-trt sample --quantized calib/digits      # the quantized model through the W4A8 torch op
"""
from __future__ import annotations

from ditas_trt.cli.common import add_checkpoint_args, add_sampling_args, output_dir, sample_labels, sampling_options


def add_arguments(parser):
    add_checkpoint_args(parser)
    add_sampling_args(parser)
    backend = parser.add_argument_group("backend")
    backend.add_argument("--quantized", default=None, metavar="DIR", help="sample with a quantized model folder")
    backend.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    backend.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", default="runs/sample", help="output folder (samples.png, samples.npz)")


def run(args):
    from ditas_trt.backends import load_denoiser
    from ditas_trt.runs import save_samples

    options = sampling_options(args)
    out = output_dir(args.out)
    denoiser = load_denoiser(args.checkpoint, args.model, quantized=args.quantized, device=args.device)
    labels = sample_labels(args, denoiser.config.num_classes)
    seeds = [args.seed + i for i in range(len(labels))]
    images = denoiser.generate(labels, seeds, options, batch_size=args.batch_size, progress=True)
    png, npz = save_samples(out, "samples", images, labels, seeds, nrow=args.per_class,
                            meta={"backend": denoiser.name, **vars(options)})
    print(f"wrote {png} and {npz}")
    return 0
