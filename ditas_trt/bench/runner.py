"""Run the benchmark: every variant at every batch, then (optionally) a Triton concurrency sweep.

Per variant and batch B (images; with classifier-free guidance the DiT forward runs 2B rows):

- **step**: one guided forward on random inputs — ``warmup`` untimed calls, then ``reps`` timed ones (p50/p90);
- **loop**: the whole sampling loop (``steps`` DDPM/DDIM steps, ``ditas_trt.diffusion``) for B images —
  ``loop_warmup`` untimed loops, ``loop_reps`` timed ones; images/s = B / p50 loop time; the loop time is the
  latency of a request for B images, ``ms_per_image`` = p50 / B;
- **memory**: peak during the variant's measurements (GPU: allocator peak, plus for an engine the plan and the
  activation memory TensorRT holds outside torch; CPU: the process's peak RSS) and the increase over the memory
  held before it; **size**: weights (module tensors) or the engine/ONNX file.
"""
from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch

from ditas_trt.backends import resolve_device
from ditas_trt.errors import DitasError


@dataclass
class BenchConfig:
    checkpoint: str = "embedded"
    model: Optional[str] = None  # DiT config name (needed with random_weights)
    random_weights: bool = False
    variants: Sequence[str] = ("fp32", "fp16", "compile", "ort_qdq", "trt_fp16", "trt_w4a8", "w8a8", "w4a8",
                               "w4a8_lora", "quantized")
    batches: Sequence[int] = (1, 8, 32)
    steps: int = 50
    sampler: str = "ddpm"
    cfg_scale: float = 1.5
    warmup: int = 3
    reps: int = 10
    loop_warmup: int = 1
    loop_reps: int = 3
    device: str = "auto"
    cuda_graphs: bool = True
    threads: int = 0
    engine_fp16: Optional[str] = None
    engine_w4a8: Optional[str] = None
    onnx: Optional[str] = None
    quantized: Optional[str] = None
    time_limit_s: float = 1800.0  # whole variant sweep; later measurements are skipped (and said so) past it
    # Triton sweep: URL of a running server, or "auto" = write a repository and start pytriton's server
    triton: Optional[str] = None
    triton_protocol: str = "http"
    triton_concurrency: Sequence[int] = (1, 8, 32)
    triton_requests: int = 4  # per client
    triton_steps: Optional[int] = None  # default: steps
    triton_source: str = "fp32"  # what an auto repository serves: fp32 checkpoint or the --quantized folder
    name: Optional[str] = None
    out: str = "bench/results"
    seed: int = 0

    def validate(self) -> "BenchConfig":
        from ditas_trt.bench.variants import VARIANTS
        from ditas_trt.diffusion.sampling import SamplingOptions

        SamplingOptions(steps=self.steps, sampler=self.sampler, cfg_scale=self.cfg_scale).validate()
        unknown = sorted(set(self.variants) - set(VARIANTS))
        if unknown:
            raise DitasError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
        if not self.batches or min(self.batches) < 1:
            raise DitasError(f"batches must be >= 1, got {list(self.batches)}")
        for name in ("reps", "loop_reps"):
            if getattr(self, name) < 1:
                raise DitasError(f"{name.replace('_', '-')} must be >= 1")
        if self.warmup < 0 or self.loop_warmup < 0:
            raise DitasError("warm-up counts must be >= 0")
        if self.threads < 0:
            raise DitasError(f"--threads must be >= 0 (0 = torch's default), got {self.threads}")
        if self.random_weights and not self.model:
            raise DitasError("--random-weights needs --model (e.g. DiT-XL/2)")
        for option, path in (("--engine-fp16", self.engine_fp16), ("--engine-w4a8", self.engine_w4a8),
                             ("--onnx", self.onnx), ("--quantized", self.quantized)):
            if path is not None and not Path(path).exists():  # refused here, not reported as n/a after the sweep
                raise DitasError(f"{option} {path}: not found")
        if self.triton_concurrency and min(self.triton_concurrency) < 1:
            raise DitasError("Triton concurrency levels must be >= 1")
        if self.triton_requests < 1:
            raise DitasError("--triton-requests must be >= 1")
        if self.triton_source not in ("fp32", "quantized"):
            raise DitasError("--triton-source is fp32 or quantized")
        if self.triton_source == "quantized" and not self.quantized:
            raise DitasError("--triton-source quantized needs --quantized DIR")
        if self.triton == "auto" and self.random_weights and self.triton_source != "quantized":
            raise DitasError("--triton auto serves the checkpoint or a --quantized folder (--triton-source quantized), "
                             "not --random-weights")
        return self


@dataclass
class BenchResult:
    config: dict
    device: dict
    model: dict
    variants: list = field(default_factory=list)
    triton: Optional[dict] = None
    seconds: float = 0.0


def load_model(cfg: BenchConfig):
    from ditas_trt.models import DiT_models, load_dit
    from ditas_trt.models.embedded import resolve_checkpoint

    if cfg.random_weights:
        if cfg.model not in DiT_models:
            raise DitasError(f"unknown --model {cfg.model!r}; choose from {', '.join(DiT_models)}")
        torch.manual_seed(cfg.seed)
        model = DiT_models[cfg.model]()  # input 32, 4 channels, 1000 classes: DiT-XL/2 at 256 px is 32x32 latents
        with torch.no_grad():  # DiT zero-initializes adaLN and the final layer; random values keep every path busy
            for p in model.parameters():
                if p.requires_grad:
                    p.add_(torch.randn_like(p) * 0.02)
        return model.eval(), f"{cfg.model} (random weights)"
    path = resolve_checkpoint(cfg.checkpoint)
    return load_dit(path, cfg.model).eval(), ("embedded digits DiT" if cfg.checkpoint in (None, "", "embedded")
                                              else str(path))


def _inputs(config, rows: int, device, seed: int):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(rows, config.in_channels, config.input_size, config.input_size, generator=g).to(device)
    t = torch.randint(0, 1000, (rows,), generator=g).to(device)
    y = torch.randint(0, config.num_classes, (rows,), generator=g).to(device)
    return x, t, y


def measure_variant(prep, model_config, cfg: BenchConfig, device: torch.device, deadline: float) -> dict:
    from ditas_trt.bench.measure import Timer, current_memory_mb, peak_memory_mb, percentiles, reset_peak_memory
    from ditas_trt.diffusion.sampling import SamplingOptions, guided, sample, seeded_noise

    timer = Timer(device)
    options = SamplingOptions(steps=cfg.steps, sampler=cfg.sampler, cfg_scale=cfg.cfg_scale)
    guided_forward = guided(prep.forward, min(3, model_config.in_channels), cfg.cfg_scale) if cfg.cfg_scale > 1 \
        else prep.forward
    results = {}
    base_mb = current_memory_mb(device)
    reset_peak_memory(device)
    for batch in cfg.batches:
        if time.monotonic() > deadline:
            results[batch] = {"skipped": "benchmark time limit reached"}
            continue
        rows = 2 * batch if cfg.cfg_scale > 1 else batch
        x, t, y = _inputs(model_config, rows, device, cfg.seed + batch)
        try:
            with torch.no_grad():
                for _ in range(cfg.warmup):
                    guided_forward(x, t, y)
                step_ms = [timer(lambda: guided_forward(x, t, y)) for _ in range(cfg.reps)]
                labels = torch.arange(batch) % model_config.num_classes
                seeds = list(range(cfg.seed, cfg.seed + batch))
                shape = (model_config.in_channels, model_config.input_size, model_config.input_size)

                def loop():
                    noise, generators = seeded_noise(seeds, shape, device=device)
                    return sample(prep.forward, labels.to(device), in_channels=model_config.in_channels,
                                  input_size=model_config.input_size, num_classes=model_config.num_classes,
                                  options=options, noise=noise, generator=generators,
                                  learn_sigma=model_config.learn_sigma)

                for _ in range(cfg.loop_warmup):
                    loop()
                loop_ms = [timer(loop) for _ in range(cfg.loop_reps)]
        except (RuntimeError, DitasError) as exc:
            results[batch] = {"error": str(exc).strip().splitlines()[0][:300]}
            continue
        step_p, loop_p = percentiles(step_ms), percentiles(loop_ms)
        results[batch] = {"rows": rows, "step_ms": step_p, "loop_ms": loop_p,
                          "images_per_s": batch / (loop_p["p50"] / 1000), "ms_per_image": loop_p["p50"] / batch,
                          "step_ms_per_image": step_p["p50"] / batch}
    outside_mb = prep.outside_torch_bytes / 2**20 if device.type == "cuda" else 0.0
    peak = peak_memory_mb(device)
    return {"batches": results, "peak_memory_mb": peak + outside_mb,
            "memory_increase_mb": max(peak - base_mb, 0.0) + outside_mb}


def run_variants(cfg: BenchConfig, model, device: torch.device, progress=print) -> list:
    from ditas_trt.bench.variants import LABELS, Unavailable, VariantContext, prepare

    ctx = VariantContext(model=model, device=device, cuda_graphs=cfg.cuda_graphs, engine_fp16=cfg.engine_fp16,
                         engine_w4a8=cfg.engine_w4a8, onnx=cfg.onnx, quantized=cfg.quantized, threads=cfg.threads)
    deadline = time.monotonic() + cfg.time_limit_s
    out = []
    for name in cfg.variants:
        entry = {"name": name, "label": LABELS[name]}
        start = time.perf_counter()
        try:
            prep = prepare(name, ctx)
        except Unavailable as why:
            entry.update(status="n/a", reason=str(why))
            progress(f"[bench] {name}: n/a ({why})")
            out.append(entry)
            continue
        progress(f"[bench] {name}: {prep.path}")
        entry.update(status="ok", path=prep.path, weights_mb=prep.weights_bytes / 2**20, notes=prep.notes)
        entry.update(measure_variant(prep, model.config, cfg, device, deadline))
        entry["seconds"] = round(time.perf_counter() - start, 2)
        for batch, r in entry["batches"].items():
            if "images_per_s" in r:
                progress(f"[bench]   batch {batch}: {r['images_per_s']:.2f} images/s, step p50 {r['step_ms']['p50']:.2f} ms")
            else:
                progress(f"[bench]   batch {batch}: {r}")
        out.append(entry)
        del prep
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return out


def run_triton(cfg: BenchConfig, model_label: str, num_classes: int, progress=print) -> dict:
    """Concurrency sweep with the tritonclient load generator against ``cfg.triton`` (a URL, or "auto")."""
    import tempfile

    from ditas_trt.serve.client import run_load

    steps = cfg.triton_steps or cfg.steps
    server = None
    info = {"protocol": cfg.triton_protocol, "steps": steps, "requests_per_client": cfg.triton_requests}
    url = cfg.triton
    workdir = tempfile.TemporaryDirectory(prefix="ditas_bench_repo_")
    try:
        if cfg.triton == "auto":
            from ditas_trt.serve.repository import RepoOptions, write_repository
            from ditas_trt.serve.server import TritonServer

            repo = Path(workdir.name) / "repo"
            source = {"quantized": cfg.quantized} if cfg.triton_source == "quantized" else {"checkpoint": cfg.checkpoint}
            write_repository(RepoOptions(out=str(repo), model=cfg.model, threads=cfg.threads, **source))
            server = TritonServer(repo)
            progress(f"[bench] starting tritonserver on {server.http_url} ({cfg.triton_source}; log {server.log_path})")
            server.start()
            url = server.http_url if cfg.triton_protocol == "http" else server.grpc_url
            info["server"] = f"pytriton tritonserver, repository from {cfg.triton_source} ({model_label})"
        levels = []
        for concurrency in cfg.triton_concurrency:
            report = run_load(url, cfg.triton_protocol, concurrency=concurrency, requests_per_client=cfg.triton_requests,
                              steps=steps, cfg_scale=cfg.cfg_scale, sampler=cfg.sampler, num_classes=num_classes,
                              seed=cfg.seed, time_limit_s=600)
            levels.append(report)
            progress(f"[bench] triton concurrency {concurrency}: {report['images_per_s']:.2f} images/s, "
                     f"p50 {report['latency_ms']['p50']:.0f} ms, {report['failed']} failed, denoiser mean batch "
                     f"{report['server']['denoiser']['mean_batch']:.1f} rows")
        info["levels"] = levels
        info["url"] = url
    finally:
        if server is not None:
            server.stop()
        workdir.cleanup()
    return info


def _load_average() -> Optional[list]:
    """1/5/15-minute load averages: on a shared machine they say how much the CPU numbers can be trusted."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def run_bench(cfg: BenchConfig, progress=print) -> tuple[BenchResult, dict]:
    """Measure, then write JSON + markdown + PNG plots under ``cfg.out``; returns (result, written paths)."""
    from ditas_trt.artifacts import environment_versions
    from ditas_trt.bench.measure import describe_device, slug
    from ditas_trt.bench.report import write_outputs

    cfg.validate()
    if cfg.triton and cfg.triton != "auto":  # a server given by URL must answer now, not after the sweep
        from ditas_trt.serve.client import check_server

        check_server(cfg.triton, cfg.triton_protocol)
    device = resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    start = time.perf_counter()
    model, label = load_model(cfg)
    if cfg.quantized and "quantized" in cfg.variants:  # a folder of another model fails now, not after the sweep
        from ditas_trt.models.dit import DiTConfig
        from ditas_trt.quant.packed import read_quantized_sidecar

        made_from = DiTConfig(**read_quantized_sidecar(cfg.quantized)["model_config"])
        if made_from != model.config:
            raise DitasError(f"--quantized {cfg.quantized}: quantized from another model ({made_from}) than the one "
                             f"benchmarked ({model.config})")
    params = sum(p.numel() for p in model.parameters())
    model_info = {"label": label, "config": model.config.to_dict(), "parameters": params}
    device_info = describe_device(device)
    device_info["versions"] = environment_versions()
    load_start = _load_average()
    result = BenchResult(config=asdict(cfg), device=device_info, model=model_info)
    progress(f"[bench] {label}, {params / 1e6:.2f} M parameters, on {device_info['name']}")
    result.variants = run_variants(cfg, model, device, progress)
    if cfg.triton:
        result.triton = run_triton(cfg, label, model.config.num_classes, progress)
    result.seconds = round(time.perf_counter() - start, 1)
    device_info["load_average"] = {"start": load_start, "end": _load_average()}
    name = cfg.name or f"dit_{slug(cfg.model if cfg.random_weights else Path(label).stem)}_{slug(device_info['name'])[:48]}"
    paths = write_outputs(result, Path(cfg.out), name)
    return result, paths
