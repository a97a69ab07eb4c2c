"""Quality metrics of generated digits: class accuracy, Fréchet distance of classifier features, PSNR vs FP.

Examples:
  ditas-trt eval runs/sample/samples.npz
  ditas-trt eval runs/q/samples.npz --reference runs/fp/samples.npz   # + PSNR/MSE against FP from the same seeds
"""
from __future__ import annotations

import json


def add_arguments(parser):
    parser.add_argument("samples", help=".npz written by `ditas-trt sample`")
    parser.add_argument("--reference", default=None, help="FP samples from the same seeds, for PSNR/MSE")
    parser.add_argument("--json", default=None, help="also write the metrics to this JSON file")


def digit_metrics(samples, reference=None, hint: str = "") -> dict:
    """Offline metrics of a samples .npz of 16x16 digits, with PSNR/MSE against ``reference`` samples (same labels)."""
    from ditas_trt.errors import DitasError
    from ditas_trt.eval import evaluate_samples
    from ditas_trt.runs import load_samples

    images, labels, _ = load_samples(samples)
    if tuple(images.shape[1:]) != (1, 16, 16):
        raise DitasError(f"{samples}: the offline metrics need 16x16 digit images, got {tuple(images.shape[1:])}{hint}")
    ref_images = None
    if reference:
        ref_images, ref_labels, _ = load_samples(reference)
        if ref_images.shape != images.shape or not (ref_labels == labels).all():
            raise DitasError(f"{reference}: reference samples do not match {samples} (shape or labels)")
    return evaluate_samples(images, labels, ref_images)


def run(args):
    from ditas_trt.artifacts import write_json_atomic

    metrics = digit_metrics(args.samples, args.reference)
    print(json.dumps(metrics, indent=2))
    if args.json:
        write_json_atomic(args.json, metrics)
    return 0
