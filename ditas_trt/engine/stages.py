"""The pipeline's TensorRT stages: export the three ONNX graphs (and check the Q/DQ one in onnxruntime), then build
the FP16 and W4A8+LoRA engines with whatever TensorRT is here (TensorRT-RTX on a CPU-only machine)."""
from __future__ import annotations

import time
from pathlib import Path

from ditas_trt.pipeline import PipelineContext, StageSkipped, generate_and_score, markdown_table, quality_table

QUANTIZED_DEFAULT = Path("calib") / "ditas_w4a8"  # where the quantize stage writes, under the run folder


def _quantized_dir(ctx: PipelineContext) -> Path:
    quantized = ctx.artifacts.get("quantized_dir")
    if quantized is None and (ctx.out / QUANTIZED_DEFAULT).is_dir():
        quantized = ctx.out / QUANTIZED_DEFAULT
    if quantized is None:
        raise StageSkipped("no quantized model: run the 'quantize' stage first")
    return Path(quantized)


def _max_output_difference(onnx_path: Path, quantized_dir: Path, batch: int = 8) -> float:
    """max |ORT Q/DQ - torch quantized| / max |torch quantized| on one fixed random batch."""
    import torch

    from ditas_trt.export.ort import OnnxRunner
    from ditas_trt.quant.packed import load_quantized

    model = load_quantized(quantized_dir)
    cfg = model.config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(batch, cfg.in_channels, cfg.input_size, cfg.input_size, generator=gen)
    t = torch.randint(0, 1000, (batch,), generator=gen)
    y = torch.randint(0, cfg.num_classes + 1, (batch,), generator=gen)
    with torch.no_grad():
        ref = model(x, t, y)
    got = OnnxRunner(onnx_path)(x, t, y)
    return float((got - ref).abs().max() / ref.abs().max())


def export_stage(ctx: PipelineContext) -> None:
    from ditas_trt.export import export_onnx
    from ditas_trt.export.ort import onnx_denoiser

    quantized = _quantized_dir(ctx)
    cfg = ctx.config
    out = ctx.out / "engines"
    rows, files = [], {}
    for kind, source, stem in (("fp16", cfg.checkpoint, f"{cfg.name}_fp16"), ("plugin", quantized, f"{cfg.name}_w4a8"),
                               ("qdq", quantized, f"{cfg.name}_qdq")):
        start = time.perf_counter()
        result = export_onnx(source, kind, out / f"{stem}.onnx", model=cfg.model if kind == "fp16" else None)
        files[kind] = result.path
        side = result.sidecar
        rows.append({"graph": f"`{result.path.name}`", "kind": kind, "dtype": side["dtype"],
                     "nodes": sum(side["node_counts"].values()),
                     "plugin nodes": (side["plugin"] or {}).get("nodes", 0),
                     "MB": result.path.stat().st_size / 1e6, "seconds": time.perf_counter() - start})
    ctx.artifacts["onnx"] = files

    difference = _max_output_difference(files["qdq"], quantized)
    denoiser = onnx_denoiser(files["qdq"])
    denoiser.name = "ditas-w4a8 (Q/DQ ONNX, onnxruntime)"
    result = generate_and_score(ctx, denoiser, "qdq_onnx_samples", reference=ctx.artifacts.get("fp_images"))
    result.pop("images")
    sec = ctx.section("ONNX export")
    sec.data = {"graphs": rows, "qdq_vs_torch_max_rel_diff": difference, "qdq_onnxruntime": result}
    sec.lines += markdown_table(rows, ["graph", "kind", "dtype", "nodes", "plugin nodes", "MB", "seconds"],
                                {"MB": ".2f", "seconds": ".2f"})
    sec.lines.append(f"\nQ/DQ graph in onnxruntime vs the torch quantized model, one random batch: max |diff| = "
                     f"{difference:.2e} of max |output|.")
    sec.lines += ["", *quality_table([{"model": "DiTAS W4A8 + LoRA, Q/DQ ONNX (onnxruntime)", **result}])]
    sec.lines.append("\nSame evaluation noise as the FP and torch-quantized samples above; compare the rows.")
    sec.lines.append(f"\n![Q/DQ ONNX samples]({result['grid']})")


def engines_stage(ctx: PipelineContext) -> None:
    from ditas_trt.engine.builder import PLUGIN_BUILD_HINT, build_engine, default_plugin_library
    from ditas_trt.engine.inspect import inspect_plan
    from ditas_trt.engine.tensorrt import import_tensorrt
    from ditas_trt.errors import DitasError

    files = ctx.artifacts.get("onnx")
    if not files:
        raise StageSkipped("no ONNX graphs: run the 'export' stage first")
    try:
        trt = import_tensorrt()
    except DitasError as exc:
        raise StageSkipped(str(exc)) from None
    engine_batch = 2 * ctx.config.batch_size if ctx.config.cfg_scale > 1 else ctx.config.batch_size
    batch = (1, engine_batch, engine_batch)
    out = ctx.out / "engines"
    plugin = default_plugin_library()
    rows, notes = [], []
    for kind, stem in (("fp16", f"{ctx.config.name}_fp16"), ("plugin", f"{ctx.config.name}_w4a8")):
        if kind == "plugin" and plugin is None:
            notes.append(f"W4A8 engine not built: the plugin library is missing ({PLUGIN_BUILD_HINT})")
            continue
        result = build_engine(files[kind], stem, batch=batch, plugin_lib=plugin if kind == "plugin" else None,
                              out_dir=out, flavour=trt.flavour)
        report = inspect_plan(result.plan)
        rows.append({"engine": f"`{result.plan.name}`", "precision": "FP16" if kind == "fp16" else "W4A8 + LoRA (plugin)",
                     "MB": report["bytes"] / 1e6, "build s": report["build_seconds"],
                     "targets": " ".join(f"sm{c.replace('.', '')}" for c in report["targets"]),
                     "plugin layers": report["plugin_layers"],
                     "plugin in plan": {True: "embedded", False: "no", None: "by path"}[report["plugin_embedded"]]
                     if report["plugin_layers"] else "-"})
    sec = ctx.section(f"Engines ({trt.flavour} {trt.version})")
    sec.data = {"engines": rows, "batch_profile": batch, "notes": notes}
    sec.lines += markdown_table(rows, ["engine", "precision", "MB", "build s", "targets", "plugin layers", "plugin in plan"],
                                {"MB": ".2f", "build s": ".1f"})
    sec.lines.append(f"\nBatch profile min/opt/max = {batch[0]}/{batch[1]}/{batch[2]} (the DiT forward batch; with CFG "
                     "it is twice the images per step). Built without a GPU; they run with `ditas-trt sample --engine`.")
    if trt.is_rtx:
        sec.lines.append("TensorRT-RTX has no Hopper target: H100 engines come from `docker/Dockerfile.build`.")
    sec.lines += [f"- {n}" for n in notes]
    if not rows:
        raise StageSkipped("; ".join(notes))
