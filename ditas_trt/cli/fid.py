"""FID of generated samples against a reference, with LOCAL Inception weights; offline proxy metrics otherwise.

FID uses the Inception-v3 pool features of the standard FID network: pass the weight file you have
(pytorch-fid's pt_inception-2015-12-05-6726825d.pth, a plain state dict; loaded with weights_only=True, never
downloaded) and a reference: an .npz with mu/sigma (precomputed statistics, e.g. ADM's reference batches), arr_0
(uint8 N,H,W,C images) or images (ditas-trt samples). Statistics and distance come from torchmetrics.
Without --inception-weights the offline proxies run instead (digits: class accuracy, Fréchet distance of the
digit classifier's features, PSNR vs --reference samples).

Examples:
  ditas-trt fid runs/q/samples.npz --reference VIRTUAL_imagenet256_labeled.npz --inception-weights pt_inception.pth
  ditas-trt fid runs/q/samples.npz --reference runs/fp/samples.npz --inception-weights pt_inception.pth
  ditas-trt fid runs/digits/w4a8_samples.npz                      # no weights: offline proxy metrics
"""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("samples", help=".npz written by `ditas-trt sample` (images in [-1, 1])")
    parser.add_argument("--reference", default=None, help=".npz: mu/sigma, arr_0 (uint8 NHWC) or ditas-trt samples")
    parser.add_argument("--inception-weights", default=None, metavar="PTH", help="local FID Inception-v3 state dict")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--json", default=None, help="also write the result to this JSON file")


def run(args):
    from ditas_trt.artifacts import write_json_atomic
    from ditas_trt.errors import DitasError

    if args.batch_size < 1:
        raise DitasError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.inception_weights:
        from ditas_trt.backends import resolve_device
        from ditas_trt.eval.fid import fid_from_files

        resolve_device(args.device)
        if not args.reference:
            raise DitasError("FID needs --reference (mu/sigma statistics or reference images)")
        result = fid_from_files(args.samples, args.reference, args.inception_weights, args.batch_size, args.device)
    else:
        from ditas_trt.cli.evaluate import digit_metrics

        result = {"fid": None, "note": "no --inception-weights: offline proxy metrics instead of FID",
                  **digit_metrics(args.samples, args.reference, hint="; for FID pass --inception-weights")}
    print(json.dumps(result, indent=2))
    if args.json:
        write_json_atomic(args.json, result)
    return 0
