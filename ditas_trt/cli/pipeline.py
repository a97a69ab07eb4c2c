"""Run the whole job on one model (the embedded digits DiT by default) and write runs/<name>/report.md.

Stages, in order: model, fp (FP samples + quality), and every later stage of the installed version
(quantize, export, engines, benchmark, Triton repository). Stages that need a missing optional package or a GPU
are listed in the report as skipped, with the reason.

Examples:
  ditas-trt pipeline
  ditas-trt pipeline --per-class 5 --steps 20 --name quick
"""
from __future__ import annotations

from ditas_trt.cli.common import add_checkpoint_args


def add_arguments(parser):
    from ditas_trt.pipeline import STAGES

    add_checkpoint_args(parser, positional=False)
    parser.add_argument("--name", default="digits", help="run name: outputs go to RUNS_DIR/NAME")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--per-class", type=int, default=20, help="evaluation samples per class")
    parser.add_argument("--seed", type=int, default=10_000, help="first evaluation seed")
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--sampler", choices=["ddpm", "ddim"], default="ddpm")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--stages", nargs="+", default=None, choices=[name for name, _ in STAGES],
                        help="run only these stages")


def run(args):
    from ditas_trt.pipeline import PipelineConfig, run_pipeline

    config = PipelineConfig(checkpoint=args.checkpoint, model=args.model, name=args.name, runs_dir=args.runs_dir,
                            per_class=args.per_class, seed=args.seed, steps=args.steps, sampler=args.sampler,
                            cfg_scale=args.cfg_scale, batch_size=args.batch_size, stages=args.stages)
    report = run_pipeline(config)
    print(f"report: {report}")
    return 0
