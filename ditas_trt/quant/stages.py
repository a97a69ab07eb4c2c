"""The pipeline's quantization stages: DiTAS W4A8 + LoRA on the run's model, then its samples next to FP."""
from __future__ import annotations

from pathlib import Path

from ditas_trt.pipeline import PipelineContext, StageSkipped, generate_and_score, quality_table

QUANTIZED_NAME = "ditas_w4a8"


def quantize_stage(ctx: PipelineContext) -> None:
    from ditas_trt.models import load_dit
    from ditas_trt.models.embedded import resolve_checkpoint
    from ditas_trt.quant.calibration import CalibrationSettings
    from ditas_trt.quant.config import preset
    from ditas_trt.quant.ditas import quantize_dit
    from ditas_trt.quant.output import write_calibration_dir

    cfg = ctx.config
    recipe = preset("w4a8")
    # DiTAS: calibrate with the sampler, step count and CFG scale the model will be sampled with.
    settings = CalibrationSettings(steps=cfg.steps, sampler=cfg.sampler, cfg_scale=cfg.cfg_scale)
    calib = ctx.out / "calib"
    model = load_dit(resolve_checkpoint(cfg.checkpoint), cfg.model)
    result = quantize_dit(model, recipe, settings, cache_dir=calib / "trajectories", progress=True)
    out = write_calibration_dir(result, calib / QUANTIZED_NAME, force=True)
    ctx.artifacts["quantized_dir"] = out
    ctx.artifacts["quantize_report"] = result.report
    t = result.report["timings"]
    alphas = [a for a in result.report["alpha"].values() if a is not None]
    sec = ctx.section("Quantize (DiTAS W4A8)")
    sec.data = {"quantized_dir": str(out), "recipe": result.report["recipe"], "timings": t,
                "calibration": result.report["calibration"], "alpha": result.report["alpha"]}
    sec.lines += [
        f"- recipe: {recipe.label}, alpha grid {len(recipe.alpha_grid)} values, {recipe.lora_iters} LoRA iterations",
        f"- calibration data: the FP model's own trajectories, {result.report['calibration']['samples']} samples x "
        f"{result.trajectories.steps} steps (cfg {settings.cfg_scale}, {settings.sampler})"
        + (" (cached)" if result.trajectories.reused else ""),
        f"- {len(alphas)} layers, alpha per layer: min {min(alphas):.2f} / mean {sum(alphas) / len(alphas):.2f} / "
        f"max {max(alphas):.2f}" if alphas else "- no smoothing",
        f"- time: trajectories {t['trajectories_s']:.1f} s, calibration {t['calibration_s']:.1f} s "
        f"(replay {t.get('calib_replay', 0):.1f}, alpha search {t.get('calib_search', 0):.1f}, "
        f"LoRA {t.get('calib_lora', 0):.1f}), export {t['export_s']:.1f} s",
        f"- written to `{out}` (ModelOpt checkpoint, packed `quantized.safetensors`, `ditas.json`)",
    ]


def quantized_samples_stage(ctx: PipelineContext) -> None:
    from ditas_trt.backends import torch_denoiser
    from ditas_trt.models.dit import DiTConfig
    from ditas_trt.quant.packed import load_quantized

    quantized = ctx.artifacts.get("quantized_dir")
    if quantized is None:
        default = ctx.out / "calib" / QUANTIZED_NAME
        if not default.is_dir():
            raise StageSkipped("no quantized model: run the 'quantize' stage first")
        quantized = default
    expect = ctx.artifacts.get("model_info", {}).get("config")
    model = load_quantized(Path(quantized), expect_config=DiTConfig(**expect) if expect else None)
    denoiser = torch_denoiser(model, "ditas-w4a8 (torch op)")
    result = generate_and_score(ctx, denoiser, "quantized_samples", reference=ctx.artifacts.get("fp_images"))
    result.pop("images")
    fp = ctx.artifacts.get("fp_metrics", {})
    sec = ctx.section("Quantized samples (DiTAS W4A8, torch op)")
    sec.data = {"quantized": result, "fp": {k: v for k, v in fp.items() if k != "images"}}
    rows = []
    if fp:
        rows.append({"model": "FP32", **fp})
    rows.append({"model": "DiTAS W4A8 + LoRA", **result})
    sec.lines += quality_table(rows)
    sec.lines.append("\nSame evaluation noise as the FP samples; PSNR is against them. The quantized linears run "
                     "through the `ditas_trt` torch op (exact CPU reference here).")
    sec.lines.append(f"\n![quantized samples]({result['grid']})")
