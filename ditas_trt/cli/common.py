"""Argument groups shared by subcommands: one flag, one meaning everywhere."""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from ditas_trt.errors import DitasError


def add_checkpoint_args(parser: argparse.ArgumentParser, positional: bool = True) -> None:
    group = parser.add_argument_group("checkpoint")
    help_text = "DiT checkpoint (.pt, .safetensors or a diffusers folder); 'embedded' = the built-in digits model"
    if positional:
        group.add_argument("checkpoint", nargs="?", default="embedded", help=help_text + " (default)")
    else:
        group.add_argument("--checkpoint", default="embedded", help=help_text)
    group.add_argument("--model", default=None, help="DiT config name (e.g. DiT-XL/2) when it cannot be inferred")


def add_sampling_args(parser: argparse.ArgumentParser, per_class_default: int = 4) -> None:
    from ditas_trt.diffusion.sampling import SAMPLERS

    group = parser.add_argument_group("sampling")
    group.add_argument("--classes", type=int, nargs="+", default=None, help="class labels (default: every class)")
    group.add_argument("--per-class", type=int, default=per_class_default, help="samples per class")
    group.add_argument("--seed", type=int, default=0, help="seed of the first sample; sample i uses seed + i")
    group.add_argument("--steps", type=int, default=50, help="denoising steps")
    group.add_argument("--sampler", choices=SAMPLERS, default="ddpm")
    group.add_argument("--cfg-scale", type=float, default=1.5, help="classifier-free guidance scale (1 = off)")
    group.add_argument("--eta", type=float, default=0.0, help="DDIM eta")


def sampling_options(args):
    from ditas_trt.diffusion.sampling import SamplingOptions

    return SamplingOptions(steps=args.steps, sampler=args.sampler, cfg_scale=args.cfg_scale, eta=args.eta).validate()


def sample_labels(args, num_classes: int) -> torch.Tensor:
    classes = list(range(num_classes)) if args.classes is None else args.classes
    bad = [c for c in classes if not 0 <= c < num_classes]
    if bad:
        raise DitasError(f"--classes {bad} outside [0, {num_classes - 1}]")
    if args.per_class < 1:
        raise DitasError(f"--per-class must be >= 1, got {args.per_class}")
    return torch.tensor(classes).repeat_interleave(args.per_class)


def output_dir(path: str) -> Path:
    """The output folder, refused before any work when it is a file or lies under one."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise DitasError(f"{out}: exists and is not a folder")
    existing = next(p for p in out.absolute().parents if p.exists())
    if not out.exists() and not existing.is_dir():
        raise DitasError(f"{out}: cannot be created ({existing} is not a folder)")
    return out
