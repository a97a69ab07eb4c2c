"""The pipeline's last stages: a short benchmark of the run's variants and the Triton repository for its model."""
from __future__ import annotations

import time
from pathlib import Path

from ditas_trt.pipeline import PipelineContext, markdown_table

BENCH_BATCHES = (1, 8)
BENCH_STEPS = 10
SERVE_STEPS = 10
LOAD_CONCURRENCY = 8


def _plans(ctx: PipelineContext) -> dict:
    engines = ctx.out / "engines"
    found = {kind: engines / f"{ctx.config.name}_{suffix}.plan" for kind, suffix in (("fp16", "fp16"), ("w4a8", "w4a8"))}
    return {kind: str(p) for kind, p in found.items() if p.is_file()}


def bench_stage(ctx: PipelineContext) -> None:
    """images/s and step latency of every variant that runs here, at batches 1 and 8 (10 steps; a quick look —
    ``ditas-trt bench`` is the full measurement)."""
    from ditas_trt.bench import BenchConfig, run_bench

    cfg = ctx.config
    onnx = (ctx.artifacts.get("onnx") or {}).get("qdq")
    plans = _plans(ctx)
    bench = BenchConfig(checkpoint=cfg.checkpoint, model=cfg.model,
                        variants=("fp32", "fp16", "ort_qdq", "trt_fp16", "trt_w4a8", "w8a8", "w4a8", "w4a8_lora",
                                  "quantized"),
                        batches=BENCH_BATCHES, steps=BENCH_STEPS, sampler=cfg.sampler, cfg_scale=cfg.cfg_scale,
                        warmup=1, reps=5, loop_warmup=1, loop_reps=2, onnx=str(onnx) if onnx else None,
                        quantized=str(ctx.artifacts["quantized_dir"]) if ctx.artifacts.get("quantized_dir") else None,
                        engine_fp16=plans.get("fp16"), engine_w4a8=plans.get("w4a8"), time_limit_s=900,
                        out=str(ctx.out / "bench"), name="bench")
    result, paths = run_bench(bench, progress=lambda line: print(line, flush=True))
    rows = []
    for v in result.variants:
        if v["status"] != "ok":
            rows.append({"variant": v["label"], "batch": "—", "images/s": "n/a", "step p50 ms": "", "how": v["reason"]})
            continue
        for batch, r in v["batches"].items():
            if "images_per_s" in r:
                rows.append({"variant": v["label"], "batch": batch, "images/s": r["images_per_s"],
                             "step p50 ms": r["step_ms"]["p50"], "how": v["path"]})
    sec = ctx.section("Benchmark (short)")
    sec.data = {"json": paths["json"], "device": result.device["name"]}
    sec.lines += [f"{result.device['name']}; {BENCH_STEPS} {cfg.sampler} steps, CFG {cfg.cfg_scale}; batch = images. "
                  f"Full tables and plots: `bench/{Path(paths['markdown']).name}`. The CPU numbers of the quantized "
                  "variants are the exact reference ops, not fast kernels.", ""]
    sec.lines += markdown_table(rows, ["variant", "batch", "images/s", "step p50 ms", "how"],
                                {"images/s": ".2f", "step p50 ms": ".2f"})
    sec.lines += ["", f"![images/s](bench/{Path(paths['plots'][0]).name})"] if paths["plots"] else []


def triton_stage(ctx: PipelineContext) -> None:
    """Write the Triton repository for the run's model (the DiTAS folder when there is one); where nvidia-pytriton
    is installed, serve it on loopback, check one image against in-process sampling and run a small load."""
    from ditas_trt.serve.repository import RepoOptions, write_repository

    cfg = ctx.config
    quantized = ctx.artifacts.get("quantized_dir")
    source = {"quantized": str(quantized)} if quantized else {"checkpoint": cfg.checkpoint, "model": cfg.model}
    repo, side = write_repository(RepoOptions(out=str(ctx.out / "model_repo"), force=True, **source))
    sec = ctx.section("Triton model repository")
    sec.data = {"repo": str(repo), "source": side["source"], "denoiser_backend": side["denoiser_backend"]}
    sec.lines += [f"- `model_repo/`: `denoiser` ({side['denoiser_backend']} over the {side['source']['kind']} model, "
                  f"dynamic batching up to {side['max_batch']} rows) + `sampler` (BLS, DDPM/DDIM + CFG)",
                  "- serve it: `ditas-trt serve --repo " + str(repo) + "` (or `bash model_repo/launch.sh` where "
                  "tritonserver is on PATH)"]
    try:
        import pytriton  # noqa: F401
        import tritonclient.http  # noqa: F401
    except ImportError as exc:
        sec.lines.append(f"- not served here: {exc} (pip install 'ditas-trt[serve]')")
        return
    sec.data["serving"] = _serve_check(ctx, repo, sec)


def _serve_check(ctx: PipelineContext, repo: Path, sec) -> dict:
    import numpy as np
    import torch

    from ditas_trt.backends import load_denoiser
    from ditas_trt.diffusion.sampling import SamplingOptions
    from ditas_trt.serve.client import SamplerClient, run_load
    from ditas_trt.serve.server import TritonServer

    cfg = ctx.config
    quantized = ctx.artifacts.get("quantized_dir")
    server = TritonServer(repo, log_path=ctx.out / "model_repo_server.log")
    start = time.perf_counter()
    server.start(timeout=300)
    try:
        started = time.perf_counter() - start
        client = SamplerClient(server.http_url, "http")
        try:
            served = client.generate([1], [cfg.seed], steps=SERVE_STEPS, cfg_scale=cfg.cfg_scale, sampler=cfg.sampler)
        finally:
            client.close()
        denoiser = load_denoiser(cfg.checkpoint, cfg.model, quantized=str(quantized) if quantized else None)
        ref = denoiser.generate(torch.tensor([1]), [cfg.seed], SamplingOptions(steps=SERVE_STEPS, sampler=cfg.sampler,
                                                                                cfg_scale=cfg.cfg_scale)).numpy()
        diff = float(np.abs(served["latent"] - ref).max())
        load = run_load(server.http_url, "http", concurrency=LOAD_CONCURRENCY, requests_per_client=2,
                        steps=SERVE_STEPS, cfg_scale=cfg.cfg_scale, sampler=cfg.sampler,
                        num_classes=denoiser.config.num_classes, seed=cfg.seed, time_limit_s=300)
    finally:
        server.stop()
    den = load["server"]["denoiser"]
    sec.lines += [f"- served on 127.0.0.1 with nvidia-pytriton's tritonserver (models loaded in {started:.1f} s)",
                  f"- one image ({SERVE_STEPS} steps, seed {cfg.seed}) vs in-process `Denoiser.generate`: max |diff| "
                  f"= {diff:.2e}" + (" (bit-exact)" if diff == 0 else ""),
                  f"- {LOAD_CONCURRENCY} concurrent clients x 2 requests: {load['ok']} ok, {load['failed']} failed, "
                  f"{load['images_per_s']:.2f} images/s, p50 {load['latency_ms']['p50']:.0f} ms, p90 "
                  f"{load['latency_ms']['p90']:.0f} ms; denoiser batches (rows x count): "
                  + ", ".join(f"{b}x{n}" for b, n in sorted(den["batch_stats"].items()))]
    if load["failed"]:
        sec.lines.append(f"- **failed requests**: {load['errors'][:2]} (server log: `model_repo_server.log`)")
    return {"max_abs_diff_vs_in_process": diff, "load": load, "startup_s": started}
