"""The main job: every stage that exists, end to end on one model, written up in ``runs/<name>/report.md``.

Stages run in order and share a :class:`PipelineContext`; each one adds a section to the report. A stage whose
optional dependency is missing on this machine records why it was skipped instead of failing the run.
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

from ditas_trt.artifacts import write_bytes_atomic, write_json_atomic
from ditas_trt.diffusion.sampling import SamplingOptions
from ditas_trt.errors import DitasError


class StageSkipped(Exception):
    """Raised by a stage that cannot run here (missing optional package, no GPU); the message says why."""


@dataclass
class PipelineConfig:
    checkpoint: str = "embedded"
    model: Optional[str] = None
    name: str = "digits"
    runs_dir: str = "runs"
    per_class: int = 20
    seed: int = 10_000  # evaluation seeds; calibration uses its own
    steps: int = 50
    sampler: str = "ddpm"
    cfg_scale: float = 1.5
    batch_size: int = 100
    stages: Optional[list[str]] = None  # None = all

    def validate(self) -> "PipelineConfig":
        self.sampling.validate()
        if self.per_class < 1:
            raise DitasError(f"per-class must be >= 1, got {self.per_class}")
        if not self.name or "/" in self.name:
            raise DitasError(f"run name must be a plain folder name, got {self.name!r}")
        unknown = sorted(set(self.stages or []) - {name for name, _ in STAGES})
        if unknown:
            raise DitasError(f"unknown stages {unknown}; choose from {[name for name, _ in STAGES]}")
        return self

    @property
    def sampling(self) -> SamplingOptions:
        return SamplingOptions(steps=self.steps, sampler=self.sampler, cfg_scale=self.cfg_scale)

    @property
    def out(self) -> Path:
        return Path(self.runs_dir) / self.name


@dataclass
class Section:
    title: str
    lines: list[str] = field(default_factory=list)
    data: dict = field(default_factory=dict)


@dataclass
class PipelineContext:
    config: PipelineConfig
    sections: list[Section] = field(default_factory=list)
    artifacts: dict = field(default_factory=dict)  # what stages hand to later stages

    def section(self, title: str) -> Section:
        self.sections.append(Section(title))
        return self.sections[-1]

    @property
    def out(self) -> Path:
        return self.config.out


def markdown_table(rows: list[dict], columns: list[str], formats: Optional[dict] = None) -> list[str]:
    formats = formats or {}

    def cell(row, col):
        value = row.get(col, "")
        if isinstance(value, float):
            return format(value, formats.get(col, ".4g"))
        return str(value)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(row, c) for c in columns) + " |" for row in rows]
    return lines


# ---------------------------------------------------------------------------------------------------------------
# Stages
# ---------------------------------------------------------------------------------------------------------------
def stage_model(ctx: PipelineContext) -> None:
    from ditas_trt.cli.info import describe

    info = describe(ctx.config.checkpoint, ctx.config.model)
    ctx.artifacts["model_info"] = info
    sec = ctx.section("Model")
    sec.data = info
    sec.lines += [f"- checkpoint: `{info['path']}`", f"- parameters: {info['parameters']:,}, tokens: {info['tokens']}",
                  "- config: `" + json.dumps(info["config"]) + "`"]


def evaluation_labels(ctx: PipelineContext, num_classes: int):
    import torch

    labels = torch.arange(num_classes).repeat_interleave(ctx.config.per_class)
    seeds = [ctx.config.seed + i for i in range(len(labels))]
    return labels, seeds


QUALITY_COLUMNS = {"frechet_distance": ".3f", "class_accuracy": ".3f", "psnr_vs_fp": ".2f", "sampling_seconds": ".1f"}


def quality_table(rows: list[dict]) -> list[str]:
    """Markdown rows of sample quality: the metrics the rows have (digits: all; other models: PSNR vs FP)."""
    columns = ["model"] + [c for c in QUALITY_COLUMNS if any(c in row for row in rows)]
    return markdown_table(rows, columns, QUALITY_COLUMNS)


def generate_and_score(ctx: PipelineContext, denoiser, stem: str, reference=None) -> dict:
    """Sample the evaluation set with a backend, save it, and return timing plus quality metrics (the classifier's
    for the digits model; PSNR/MSE against ``reference``, FP samples from the same noise, for any model)."""
    from ditas_trt.eval import evaluate_samples, reference_metrics
    from ditas_trt.runs import save_samples

    labels, seeds = evaluation_labels(ctx, denoiser.config.num_classes)
    start = time.perf_counter()
    images = denoiser.generate(labels, seeds, ctx.config.sampling, batch_size=ctx.config.batch_size, progress=True)
    seconds = time.perf_counter() - start
    png, _ = save_samples(ctx.out, stem, images, labels, seeds, nrow=ctx.config.per_class,
                          meta={"backend": denoiser.name, **asdict(ctx.config.sampling)})
    result = {"backend": denoiser.name, "samples": len(images), "sampling_seconds": seconds, "grid": png.name,
              "images": images}
    if tuple(images.shape[1:]) == (1, 16, 16):
        result.update(evaluate_samples(images, labels, reference))
    elif reference is not None:
        result.update(reference_metrics(images, reference))
    return result


def stage_fp_samples(ctx: PipelineContext) -> None:
    from ditas_trt.backends import load_denoiser

    denoiser = load_denoiser(ctx.config.checkpoint, ctx.config.model)
    result = generate_and_score(ctx, denoiser, "fp_samples")
    ctx.artifacts["fp_images"] = result.pop("images")
    ctx.artifacts["fp_metrics"] = result
    opts = ctx.config.sampling
    sec = ctx.section("FP samples")
    sec.data = result
    sec.lines.append(f"{result['samples']} samples, {opts.steps} {opts.sampler} steps, "
                     f"cfg {opts.cfg_scale}, seeds from {ctx.config.seed}; {result['sampling_seconds']:.1f} s on the CPU.")
    if "class_accuracy" in result:
        sec.lines.append(f"- class accuracy: {result['class_accuracy']:.4f}")
        sec.lines.append(f"- Fréchet distance (classifier features vs real digits): {result['frechet_distance']:.3f}")
    sec.lines.append(f"\n![FP samples]({result['grid']})")


def stage_quantize(ctx: PipelineContext) -> None:
    from ditas_trt.quant.stages import quantize_stage

    quantize_stage(ctx)


def stage_quantized_samples(ctx: PipelineContext) -> None:
    from ditas_trt.quant.stages import quantized_samples_stage

    quantized_samples_stage(ctx)


def stage_export(ctx: PipelineContext) -> None:
    from ditas_trt.engine.stages import export_stage

    export_stage(ctx)


def stage_engines(ctx: PipelineContext) -> None:
    from ditas_trt.engine.stages import engines_stage

    engines_stage(ctx)


def stage_bench(ctx: PipelineContext) -> None:
    from ditas_trt.serve.stages import bench_stage

    bench_stage(ctx)


def stage_triton(ctx: PipelineContext) -> None:
    from ditas_trt.serve.stages import triton_stage

    triton_stage(ctx)


# Stages in order; later issues append theirs (quantize, export, engines, benchmark, Triton repository).
STAGES: list[tuple[str, Callable[[PipelineContext], None]]] = [
    ("model", stage_model),
    ("fp", stage_fp_samples),
    ("quantize", stage_quantize),
    ("quantized", stage_quantized_samples),
    ("export", stage_export),
    ("engines", stage_engines),
    ("bench", stage_bench),
    ("triton", stage_triton),
]


def write_report(ctx: PipelineContext, seconds: float) -> Path:
    cfg = ctx.config
    lines = [f"# ditas-trt pipeline report: {cfg.name}", "",
             f"Checkpoint `{cfg.checkpoint}`; total time {seconds:.1f} s.", ""]
    for sec in ctx.sections:
        lines += [f"## {sec.title}", "", *sec.lines, ""]
    path = ctx.out / "report.md"
    write_bytes_atomic(path, "\n".join(lines).encode())
    write_json_atomic(ctx.out / "report.json", {"config": asdict(cfg), "seconds": seconds,
                                               "sections": {s.title: s.data for s in ctx.sections}})
    return path


def run_pipeline(config: PipelineConfig) -> Path:
    config.validate()
    ctx = PipelineContext(config)
    config.out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for name, stage in STAGES:
        if config.stages is not None and name not in config.stages:
            continue
        print(f"[pipeline] {name}", flush=True)
        try:
            stage(ctx)
        except StageSkipped as why:
            ctx.section(f"{name} (skipped)").lines.append(f"Skipped on this machine: {why}")
            print(f"[pipeline] {name} skipped: {why}", flush=True)
    return write_report(ctx, time.perf_counter() - start)
