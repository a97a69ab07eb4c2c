"""Quantize a DiT with DiTAS (W4A8 + LoRA by default) calibrated on its own sampling trajectories.

Writes CALIB_DIR/NAME/: modelopt.pth (ModelOpt checkpoint), quantized.safetensors + .json (the packed model that
`sample --quantized`, the ONNX exporter and the engines read) and ditas.json (recipe, alpha per layer, timings).
Trajectories are cached under CALIB_DIR/trajectories/ and reused by a rerun with the same model and settings.
The sampling flags below describe the calibration trajectories (defaults after DiTAS: CFG 1.5, DDPM; use the
step count you will sample with).

Examples:
  ditas-trt quantize --name digits                       # the embedded model, DiTAS W4A8 + LoRA r=32
  ditas-trt quantize DiT-XL-2-256x256.pt --name xl --steps 50 --per-class 1
  ditas-trt quantize --name naive --no-smooth --lowrank 0  # round-to-nearest W4A8
  ditas-trt quantize --name w8a8 --preset w8a8 --act-mode dynamic
  ditas-trt sample --quantized calib/digits
"""
from __future__ import annotations

import re
from pathlib import Path

from ditas_trt.cli.common import add_checkpoint_args, add_sampling_args
from ditas_trt.errors import DitasError

TRAJECTORY_DIR = "trajectories"  # CALIB_DIR/trajectories/: the cache shared by every NAME


def add_arguments(parser):
    from ditas_trt.quant.config import ACT_MODES, PRESETS, SEARCH_LORA, TIMESTEP_STATS

    add_checkpoint_args(parser)
    parser.add_argument("--name", required=True, help="output folder name under --calib-dir")
    parser.add_argument("--calib-dir", default="calib", help="where calibration folders and the trajectory cache live")
    parser.add_argument("--force", action="store_true", help="replace an existing CALIB_DIR/NAME")
    fmt = parser.add_argument_group("quantizer format")
    fmt.add_argument("--preset", choices=sorted(PRESETS), default="w4a8", help="starting recipe (default w4a8)")
    fmt.add_argument("--group-size", type=int, default=None, help="weight group size along K (0 = per output channel)")
    fmt.add_argument("--act-mode", choices=ACT_MODES, default=None, help="INT8 activations: static per-tensor or dynamic per-token")
    fmt.add_argument("--layers", nargs="+", default=None, metavar="PATTERN",
                     help="fnmatch patterns of the linears to quantize (default: qkv, proj, fc1, fc2 of every block)")
    algo = parser.add_argument_group("DiTAS algorithm")
    grid = algo.add_mutually_exclusive_group()
    grid.add_argument("--alpha-step", type=float, default=None, help="alpha grid 0, step, ..., 1 (default 0.05)")
    grid.add_argument("--alpha", type=float, nargs="+", default=None, help="explicit alpha values (one = no search)")
    algo.add_argument("--no-smooth", action="store_true", help="no smoothing (round-to-nearest baseline)")
    algo.add_argument("--timestep-stats", choices=TIMESTEP_STATS, default=None,
                      help="'all' = TAS (max over every timestep, default); 'single' = one timestep's statistics")
    algo.add_argument("--stats-step", type=int, default=None, help="timestep index for --timestep-stats single (-1 = middle)")
    algo.add_argument("--lowrank", type=int, default=None, help="LoRA rank (0 = off; default 32 for w4a8)")
    algo.add_argument("--lora-iters", type=int, default=None, help="LoRA alternations (default 10)")
    algo.add_argument("--search-lora", choices=SEARCH_LORA, default=None, help="LoRA inside the alpha search (default cheap)")
    algo.add_argument("--tokens-per-step", type=int, default=None, help="activation rows per layer and timestep for the search")
    algo.add_argument("--cache-mb", type=int, default=None, help="memory budget of cached layer inputs (more -> fewer replays)")
    add_sampling_args(parser, per_class_default=2)
    run = parser.add_argument_group("run")
    run.add_argument("--device", default="cpu",
                     help="where the FP passes run (trajectory sampling, replays): cpu, cuda, cuda:N; the per-layer "
                          "alpha search and LoRA run on the CPU")
    run.add_argument("--batch-size", type=int, default=64, help="samples per trajectory sampling pass")
    run.add_argument("--no-cache", action="store_true", help="record trajectories again instead of reusing the cache")
    run.add_argument("--quiet", action="store_true", help="no progress bars")


def recipe_from_args(args):
    from ditas_trt.quant.config import alpha_grid, preset

    changes = {}
    for key in ("group_size", "act_mode", "timestep_stats", "stats_step", "lowrank", "lora_iters", "search_lora",
                "tokens_per_step", "cache_mb"):
        value = getattr(args, key)
        if value is not None:
            changes[key] = value
    if args.layers is not None:
        changes["layers"] = tuple(args.layers)
    if args.alpha_step is not None:
        changes["alpha_grid"] = alpha_grid(args.alpha_step)
    if args.alpha is not None:
        changes["alpha_grid"] = tuple(args.alpha)
    if args.no_smooth:
        changes["smooth"] = False
    return preset(args.preset, **changes)


def settings_from_args(args):
    from ditas_trt.quant.calibration import CalibrationSettings

    return CalibrationSettings(classes=args.classes, per_class=args.per_class, steps=args.steps, sampler=args.sampler,
                               cfg_scale=args.cfg_scale, eta=args.eta, seed=args.seed)


def run(args):
    from ditas_trt.backends import resolve_device
    from ditas_trt.quant.output import check_destination

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", args.name):
        raise DitasError(f"--name must be a plain folder name (letters, digits, . _ -), not {args.name!r}")
    if args.name == TRAJECTORY_DIR:
        raise DitasError(f"--name {TRAJECTORY_DIR!r} is where the trajectory cache lives; choose another name")
    if args.batch_size < 1:
        raise DitasError(f"--batch-size must be >= 1, got {args.batch_size}")
    device = resolve_device(args.device)
    recipe = recipe_from_args(args)
    settings = settings_from_args(args)
    settings.validate()
    calib_dir = Path(args.calib_dir)
    if calib_dir.exists() and not calib_dir.is_dir():
        raise DitasError(f"{calib_dir}: exists and is not a folder")
    out = calib_dir / args.name
    check_destination(out, args.force)

    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint

    model = load_dit(resolve_checkpoint(args.checkpoint), args.model).to(device)

    from ditas_trt.quant.ditas import quantize_dit
    from ditas_trt.quant.output import write_calibration_dir

    result = quantize_dit(model, recipe, settings, cache_dir=None if args.no_cache else calib_dir / TRAJECTORY_DIR,
                          batch_size=args.batch_size, progress=not args.quiet)
    write_calibration_dir(result, out, force=args.force)
    t = result.report["timings"]
    alphas = [a for a in result.report["alpha"].values() if a is not None]
    mean_alpha = f", mean alpha {sum(alphas) / len(alphas):.2f}" if alphas else ""
    reuse = " (cached)" if result.trajectories.reused else ""
    print(f"wrote {out}: {recipe.label}, {len(result.report['layers'])} layers{mean_alpha}; "
          f"trajectories {t['trajectories_s']:.1f} s{reuse}, calibration {t['calibration_s']:.1f} s")
    return 0
