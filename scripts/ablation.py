"""Ablation of DiTAS on the embedded model: every part against the row before it, from the same noise.

    python scripts/ablation.py                 # writes docs/ablation.md, docs/ablation.json, docs/ablation/*.png
    python scripts/ablation.py --per-class 4 --steps 10 --out /tmp/abl   # quick look

Rows: FP; naive W4A8 (round-to-nearest, no smoothing); + SmoothQuant (one global alpha 0.5, statistics of a
single timestep); + TAS (alpha 0.5, max over every timestep); + alpha grid; + LoRA (full DiTAS); W8A8; then the
investigations (group-wise weights, dynamic per-token activations, LoRA without smoothing). Every quantized row
is calibrated on the same cached trajectories and sampled through the packed model (the torch op) with the
evaluation seeds of the FP row. Columns: Fréchet distance of classifier features to real digits, class accuracy,
PSNR against the FP samples, calibration time (trajectories are recorded once and shared; their time is listed
separately).
"""
from __future__ import annotations

import argparse
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from ditas_trt.artifacts import write_bytes_atomic, write_json_atomic
from ditas_trt.backends import torch_denoiser
from ditas_trt.diffusion.sampling import SamplingOptions
from ditas_trt.eval import evaluate_samples
from ditas_trt.eval.images import save_grid
from ditas_trt.models import load_dit
from ditas_trt.models.embedded import resolve_checkpoint
from ditas_trt.quant.calibration import CalibrationSettings, load_or_record
from ditas_trt.quant.config import QuantRecipe, preset
from ditas_trt.quant.ditas import quantize_dit

REPO = Path(__file__).resolve().parents[1]


@dataclass
class Row:
    slug: str
    name: str
    recipe: QuantRecipe | None
    part: str  # "ladder" (each adds one part), "w8a8", "study"


def rows() -> list[Row]:
    naive = dict(smooth=False, lowrank=0, search_lora="none")
    one = dict(alpha_grid=(0.5,), lowrank=0, search_lora="none")
    return [
        Row("fp", "FP32", None, "ladder"),
        Row("naive_w4a8", "naive W4A8 (round-to-nearest, no smoothing)", preset("w4a8", **naive), "ladder"),
        Row("smoothquant", "+ SmoothQuant α=0.5, one timestep's statistics", preset("w4a8", **one, timestep_stats="single"), "ladder"),
        Row("tas", "+ TAS (α=0.5, max over all timesteps)", preset("w4a8", **one), "ladder"),
        Row("alpha_grid", "+ layer-wise α grid", preset("w4a8", lowrank=0, search_lora="none"), "ladder"),
        Row("ditas", "+ LoRA r=32 (full DiTAS W4A8)", preset("w4a8"), "ladder"),
        Row("w8a8", "W8A8 (TAS + α grid)", preset("w8a8"), "w8a8"),
        Row("naive_w8a8", "naive W8A8 (round-to-nearest, no smoothing)", preset("w8a8", smooth=False), "study"),
        Row("smoothquant_w8a8", "W8A8 + SmoothQuant α=0.5, one timestep's statistics",
            preset("w8a8", alpha_grid=(0.5,), timestep_stats="single"), "study"),
        Row("tas_w8a8", "W8A8 + TAS (α=0.5, max over all timesteps)", preset("w8a8", alpha_grid=(0.5,)), "study"),
        Row("smoothquant_lora", "W4A8 + SmoothQuant α=0.5 (one timestep) + LoRA",
            preset("w4a8", alpha_grid=(0.5,), timestep_stats="single"), "study"),
        Row("tas_lora", "W4A8 + TAS α=0.5 + LoRA", preset("w4a8", alpha_grid=(0.5,)), "study"),
        Row("smoothquant_g32", "W4A8 g32 + SmoothQuant α=0.5 (one timestep)", preset("w4a8", **one, group_size=32,
                                                                                     timestep_stats="single"), "study"),
        Row("tas_g32", "W4A8 g32 + TAS α=0.5", preset("w4a8", **one, group_size=32), "study"),
        Row("ditas_g64", "DiTAS W4A8, weight groups of 64", preset("w4a8", group_size=64), "study"),
        Row("ditas_g32", "DiTAS W4A8, weight groups of 32", preset("w4a8", group_size=32), "study"),
        Row("ditas_dynamic", "DiTAS W4A8, dynamic per-token activations", preset("w4a8", act_mode="dynamic"), "study"),
        Row("fixed_static", "W4A8 + TAS α=0.3 + LoRA, static activations", preset("w4a8", alpha_grid=(0.3,)), "study"),
        Row("fixed_dynamic", "W4A8 + TAS α=0.3 + LoRA, dynamic per-token activations",
            preset("w4a8", alpha_grid=(0.3,), act_mode="dynamic"), "study"),
        Row("lora_only", "LoRA r=32 without smoothing", preset("w4a8", smooth=False, search_lora="none"), "study"),
        Row("naive_w4a8_dynamic", "naive W4A8, dynamic per-token activations", preset("w4a8", **naive, act_mode="dynamic"), "study"),
    ]


def fmt(value, spec):
    return "" if value is None else format(value, spec)


def findings(by: dict) -> list[str]:
    """Comparisons between study rows, with their numbers (PSNR vs FP is the low-noise fidelity measure)."""
    def cmp(a: str, b: str, what: str) -> str:
        if a not in by or b not in by:
            return ""
        ra, rb = by[a], by[b]
        delta = rb["psnr_vs_fp"] - ra["psnr_vs_fp"]
        verdict = "equal" if abs(delta) < 0.05 else ("better" if delta > 0 else "worse")
        return (f"- {what}: {ra['name']} → {rb['name']}: PSNR {ra['psnr_vs_fp']:.2f} → {rb['psnr_vs_fp']:.2f} dB "
                f"({verdict}), Fréchet {ra['frechet_distance']:.2f} → {rb['frechet_distance']:.2f}.")

    items = [
        cmp("naive_w4a8", "naive_w4a8_dynamic", "Activation error at W4 (static → dynamic per-token, no smoothing)"),
        cmp("smoothquant", "tas", "TAS vs single-timestep statistics at W4 (α = 0.5)"),
        cmp("smoothquant_w8a8", "tas_w8a8", "TAS vs single-timestep statistics at W8, where weights are not the bottleneck"),
        cmp("naive_w8a8", "tas_w8a8", "Smoothing at W8 (α = 0.5, TAS)"),
        cmp("smoothquant_lora", "tas_lora", "TAS vs single-timestep statistics at W4 with the LoRA branch"),
        cmp("smoothquant_g32", "tas_g32", "TAS vs single-timestep statistics at W4 with weight groups of 32"),
        cmp("tas_w8a8", "w8a8", "α grid at W8"),
        cmp("ditas", "ditas_g64", "Weight groups of 64 instead of one scale per output channel"),
        cmp("ditas", "ditas_g32", "Weight groups of 32"),
        cmp("ditas", "ditas_dynamic", "Dynamic per-token instead of static per-tensor activations (each with its α search)"),
        cmp("fixed_static", "fixed_dynamic", "Dynamic per-token instead of static activations at one fixed α"),
        cmp("fixed_static", "ditas", "α grid instead of one fixed α (with LoRA)"),
        cmp("lora_only", "ditas", "Smoothing + α grid on top of LoRA"),
    ]
    return [i for i in items if i]


def reading(by: dict) -> list[str]:
    """What the study rows say, in words, with the numbers they rest on."""
    need = ("naive_w4a8", "smoothquant", "tas", "smoothquant_w8a8", "tas_w8a8", "smoothquant_g32", "tas_g32",
            "fixed_static", "fixed_dynamic", "ditas", "ditas_dynamic", "ditas_g32", "alpha_grid")
    if not all(k in by for k in need):
        return []
    p = {k: by[k]["psnr_vs_fp"] for k in need}
    lines = ["### Reading the numbers", ""]
    if p["tas"] < p["smoothquant"] and p["tas_w8a8"] > p["smoothquant_w8a8"] and p["tas_g32"] > p["smoothquant_g32"]:
        lines.append(
            f"- **TAS at a fixed α = 0.5 does not improve per-channel W4A8** ({p['smoothquant']:.2f} → {p['tas']:.2f} dB), "
            "and neither does plain smoothing over round-to-nearest. The max over all timesteps is larger than one "
            "timestep's maxima, so α = 0.5 moves more range into the weights, and with one INT4 scale per output "
            "channel the weight error, not the activation error, is this model's bottleneck (dynamic per-token "
            f"activations without smoothing gain only {by['naive_w4a8_dynamic']['psnr_vs_fp'] - p['naive_w4a8']:+.2f} dB). "
            f"Where the weights can take the range, TAS does what it is for: at W8 {p['smoothquant_w8a8']:.2f} → "
            f"{p['tas_w8a8']:.2f} dB, at W4 with groups of 32 {p['smoothquant_g32']:.2f} → {p['tas_g32']:.2f} dB.")
    alphas = sorted(a for a in by["alpha_grid"].get("alpha", {}).values() if a is not None)
    spread = f"α from {alphas[0]:.2f} to {alphas[-1]:.2f}, median {alphas[len(alphas) // 2]:.2f}" if alphas else "its own α"
    lines.append(
        f"- The **α grid** is what makes smoothing pay off at W4 ({p['tas']:.2f} → {p['alpha_grid']:.2f} dB): every "
        f"layer gets {spread}, each candidate scored with `W·diag(s)` re-quantized.")
    if abs(p["fixed_dynamic"] - p["fixed_static"]) < 0.3:
        lines.append(
            f"- **Static vs dynamic activations**: at the same α they are equal ({p['fixed_static']:.2f} vs "
            f"{p['fixed_dynamic']:.2f} dB); with its own α search the dynamic variant picks smaller α and ends "
            f"{p['ditas'] - p['ditas_dynamic']:.2f} dB lower — the layer-wise MSE is a proxy for the end result. "
            "Static per-tensor stays the default: constant scales are what TensorRT's INT8 paths need.")
    lines.append(
        f"- **Weight groups**: groups of 32 give {p['ditas_g32'] - p['ditas']:+.2f} dB PSNR and FP's class accuracy at "
        "one FP32 scale per 32 weights (+1 bit per weight to store and stream). The default stays one scale per "
        "output channel: it meets the targets and is the cheapest GEMM epilogue; `--group-size 32` (or 64/128) is "
        "the fidelity option.")
    lines.append(
        "- Fréchet distances within about 1–2 of FP are not distinguishable with 500 samples (LoRA without smoothing "
        f"scores {by.get('lora_only', {}).get('frechet_distance', float('nan')):.2f}, below FP's "
        f"{by['fp']['frechet_distance'] if 'fp' in by else float('nan'):.2f}); PSNR against the FP samples from the "
        "same noise measures fidelity to the FP model directly and is the finer signal here.")
    return lines


def write_markdown(out: Path, results: list[dict], meta: dict) -> Path:
    fp = results[0]
    naive = next(r for r in results if r["slug"] == "naive_w4a8")
    ditas = next(r for r in results if r["slug"] == "ditas")
    gap = lambda r: abs(r["frechet_distance"] - fp["frechet_distance"])  # noqa: E731
    ratio = gap(ditas) / gap(naive) if gap(naive) > 0 else float("nan")
    acc_drop = 100 * (fp["class_accuracy"] - ditas["class_accuracy"])
    calib = ditas["calibration_s"]
    lines = [
        "# DiTAS ablation on the embedded digits model",
        "",
        f"Generated by `python scripts/ablation.py` ({meta['date']}, {meta['machine']}, torch threads "
        f"{meta['threads']}). {meta['samples']} samples ({meta['per_class']} per class), {meta['steps']} DDPM steps, "
        f"CFG {meta['cfg_scale']}, evaluation seeds from {meta['seed']} — the same noise for every row. "
        f"Calibration: the FP model's own trajectories, {meta['calib_samples']} samples x {meta['steps']} steps "
        f"(recorded once in {meta['trajectories_s']:.1f} s, shared by every row). Quantized rows sample through the "
        "packed model (`QuantLinear`, the torch op's exact CPU reference).",
        "",
        "Fréchet distance: classifier features of the samples vs all real digits (lower is better). PSNR: against "
        "the FP samples from the same noise. Calibration: `mtq.quantize` with the `ditas` algorithm (replay, α "
        "search, LoRA), excluding the shared trajectories.",
        "",
        "| row | Fréchet distance | \\|gap\\| to FP | class accuracy | PSNR vs FP (dB) | calibration (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {'**' if r['slug'] == 'ditas' else ''}{r['name']}{'**' if r['slug'] == 'ditas' else ''} | "
                     f"{r['frechet_distance']:.2f} | {fmt(gap(r) if r['slug'] != 'fp' else None, '.2f')} | "
                     f"{r['class_accuracy']:.3f} | {fmt(r.get('psnr_vs_fp'), '.2f')} | {fmt(r.get('calibration_s'), '.1f')} |")
        if r["slug"] == "w8a8":
            lines.append("| *investigations* | | | | | |")
    lines += [
        "",
        "## Targets",
        "",
        f"- Fréchet gap of DiTAS W4A8+LoRA to FP = **{gap(ditas):.2f}**, naive W4A8 gap = {gap(naive):.2f}: ratio "
        f"**{ratio:.3f}** (target ≤ 0.2) — {'met' if ratio <= 0.2 else 'NOT met'}.",
        f"- Class accuracy: FP {fp['class_accuracy']:.3f}, DiTAS {ditas['class_accuracy']:.3f} "
        f"({acc_drop:.1f} points below FP; target within 2) — {'met' if acc_drop <= 2 else 'NOT met'}.",
        f"- Calibration of the embedded model: {calib:.1f} s + {meta['trajectories_s']:.1f} s trajectories "
        f"(target well under a minute) — {'met' if calib + meta['trajectories_s'] < 60 else 'NOT met'}.",
        "",
        "## Does each part improve on the row before?",
        "",
    ]
    ladder = [r for r in results if r["part"] == "ladder"][1:]
    for prev, cur in zip(ladder, ladder[1:]):
        better = cur["frechet_distance"] < prev["frechet_distance"]
        lines.append(f"- {cur['name']}: Fréchet {prev['frechet_distance']:.2f} → {cur['frechet_distance']:.2f}, "
                     f"PSNR {prev['psnr_vs_fp']:.2f} → {cur['psnr_vs_fp']:.2f} dB — "
                     f"{'improves' if better else '**does not improve**'}.")
    lines += ["", "## Investigations", "", *findings({r["slug"]: r for r in results}), "", *reading({r["slug"]: r for r in results})]
    lines += ["", "## Sample grids (rows = classes 0-9, the first 10 seeds of each; the same for every row)", ""]
    for r in results:
        lines.append(f"### {r['name']}\n\n![{r['slug']}](ablation/{r['slug']}.png)\n")
    path = out / "ablation.md"
    write_bytes_atomic(path, ("\n".join(lines) + "\n").encode())
    return path


def main(args):
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    (out / "ablation").mkdir(parents=True, exist_ok=True)
    checkpoint = resolve_checkpoint(args.checkpoint)
    fp_model = load_dit(checkpoint).eval()
    c = fp_model.config
    options = SamplingOptions(steps=args.steps, sampler="ddpm", cfg_scale=args.cfg_scale)
    labels = torch.arange(c.num_classes).repeat_interleave(args.per_class)
    seeds = [args.seed + i for i in range(len(labels))]
    settings = CalibrationSettings(per_class=args.calib_per_class, steps=args.steps, cfg_scale=args.cfg_scale,
                                   seed=args.calib_seed)
    t0 = time.perf_counter()
    traj = load_or_record(fp_model, settings, None, progress=True)
    trajectories_s = time.perf_counter() - t0
    wanted = set(args.rows) if args.rows else None
    results, fp_images = [], None
    for row in rows():
        if wanted is not None and row.slug not in wanted and row.slug not in ("fp", "naive_w4a8", "ditas"):
            continue
        print(f"[ablation] {row.slug}", flush=True)
        entry = {"slug": row.slug, "name": row.name, "part": row.part}
        if row.recipe is None:
            denoiser = torch_denoiser(fp_model, "fp32")
        else:
            result = quantize_dit(load_dit(checkpoint), row.recipe, settings, trajectories=traj, progress=True)
            entry.update(recipe=result.report["recipe"], calibration_s=result.report["timings"]["calibration_s"],
                         timings=result.report["timings"], alpha=result.report["alpha"])
            denoiser = torch_denoiser(result.packed, row.slug)
        t1 = time.perf_counter()
        images = denoiser.generate(labels, seeds, options, batch_size=args.batch_size, progress=True)
        entry["sampling_s"] = time.perf_counter() - t1
        if fp_images is None:
            fp_images = images
        entry.update(evaluate_samples(images, labels, None if row.recipe is None else fp_images))
        shown = min(args.per_class, 10)  # the first 10 samples of every class keep the PNGs small
        grid = images.reshape(c.num_classes, args.per_class, *images.shape[1:])[:, :shown].reshape(-1, *images.shape[1:])
        save_grid(grid, out / "ablation" / f"{row.slug}.png", nrow=shown)
        print(f"[ablation] {row.slug}: Fréchet {entry['frechet_distance']:.2f}, accuracy {entry['class_accuracy']:.3f}, "
              f"PSNR {entry.get('psnr_vs_fp', float('inf')):.2f}, calibration {entry.get('calibration_s', 0):.1f} s", flush=True)
        results.append(entry)
    meta = {"date": time.strftime("%Y-%m-%d"), "machine": f"{platform.machine()} CPU, 2 cores shared with other jobs",
            "threads": args.threads, "samples": len(labels), "per_class": args.per_class, "steps": args.steps,
            "cfg_scale": args.cfg_scale, "seed": args.seed, "calib_samples": len(settings.labels(c.num_classes)),
            "trajectories_s": trajectories_s, "checkpoint": str(checkpoint)}
    write_json_atomic(out / "ablation.json", {"meta": meta, "rows": results})
    print(f"wrote {write_markdown(out, results, meta)}")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="embedded")
    parser.add_argument("--per-class", type=int, default=20, help="evaluation samples per class")
    parser.add_argument("--steps", type=int, default=50, help="sampling (and calibration) steps")
    parser.add_argument("--cfg-scale", type=float, default=1.5)
    parser.add_argument("--seed", type=int, default=10_000, help="first evaluation seed")
    parser.add_argument("--calib-per-class", type=int, default=2)
    parser.add_argument("--calib-seed", type=int, default=0)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (1 is fastest on a shared 2-core box)")
    parser.add_argument("--rows", nargs="+", default=None, help="only these rows (fp, naive_w4a8, ditas always run)")
    parser.add_argument("--out", default=str(REPO / "docs"))
    return parser.parse_args(argv)


if __name__ == "__main__":
    main(parse_args())
