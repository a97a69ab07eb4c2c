"""The denoiser variants ``ditas-trt bench`` compares; each one is prepared on the device or reported n/a with why.

==============  =================================================================================================
name            what runs
==============  =================================================================================================
fp32            torch eager, FP32 (CUDA graphs on a GPU)
fp16            torch eager, FP16 (CUDA graphs on a GPU)
compile         ``torch.compile``: FP16 + mode "reduce-overhead" (CUDA graphs) on a GPU, FP32 inductor on a CPU
ort_qdq         onnxruntime (CPU) on the Q/DQ graph of the W4A8+LoRA model (``ditas-trt export --kind qdq``)
trt_fp16        TensorRT FP16 engine (``--engine-fp16 PLAN``; GPU)
trt_w4a8        TensorRT W4A8+LoRA engine with the plugin (``--engine-w4a8 PLAN``; GPU)
w8a8            W8A8 linears through the ditas_trt torch ops (CPU: exact reference; GPU: CUDA kernels)
w4a8            W4A8 linears, same ops
w4a8_lora       W4A8 + rank-32 LoRA linears, same ops
quantized       the quantized folder given with ``--quantized`` (e.g. DiTAS output), same ops
==============  =================================================================================================

For speed the w8a8 / w4a8 / w4a8_lora models are packed on the fly from the FP weights (round to nearest, a fixed
static activation scale, random LoRA factors): the arithmetic and memory traffic are those of a DiTAS model, the
outputs are not meant to be good images; quality is measured by ``ditas-trt eval`` / ``fid`` on real quantizations.
"""
from __future__ import annotations

import copy
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch

from ditas_trt.errors import DitasError

VARIANTS = ("fp32", "fp16", "compile", "ort_qdq", "trt_fp16", "trt_w4a8", "w8a8", "w4a8", "w4a8_lora", "quantized")
LABELS = {
    "fp32": "torch FP32 eager", "fp16": "torch FP16 eager", "compile": "torch.compile",
    "ort_qdq": "onnxruntime Q/DQ (W4A8+LoRA)", "trt_fp16": "TensorRT FP16 engine",
    "trt_w4a8": "TensorRT W4A8+LoRA engine", "w8a8": "W8A8 (ditas_trt ops)", "w4a8": "W4A8 (ditas_trt ops)",
    "w4a8_lora": "W4A8+LoRA (ditas_trt ops)", "quantized": "quantized folder (ditas_trt ops)",
}
QUANT_LAYERS = ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")  # DiTAS's default linears of every block
LORA_RANK = 32
STATIC_ACT_AMAX = 8.0
ORT_MAX_PARAMS = 200_000_000  # larger models on onnxruntime's CPU provider only with an explicit --onnx


class Unavailable(Exception):
    """This variant cannot run here; the message is the reason shown as n/a."""


@dataclass
class Prepared:
    name: str
    forward: Callable
    path: str  # how it runs, in words
    weights_bytes: int
    notes: list = field(default_factory=list)
    outside_torch_bytes: int = 0  # GPU memory held outside torch's allocator (a TensorRT engine), added to its peak


@dataclass
class VariantContext:
    model: torch.nn.Module  # FP32 DiT on the CPU
    device: torch.device
    cuda_graphs: bool = True
    engine_fp16: Optional[str] = None
    engine_w4a8: Optional[str] = None
    onnx: Optional[str] = None
    quantized: Optional[str] = None
    threads: int = 0
    workdir: Optional[Path] = None
    _cache: dict = field(default_factory=dict)


def module_bytes(model: torch.nn.Module) -> int:
    tensors = list(model.parameters()) + [b for b in model.buffers() if b is not None]
    return sum(t.numel() * t.element_size() for t in tensors)


def _cast_except_quant(model: torch.nn.Module, dtype: torch.dtype) -> torch.nn.Module:
    """Float params/buffers to ``dtype``, except the quantized linears' format tensors (scales stay fp32)."""
    from ditas_trt.quant.linear import QuantLinear

    for module in model.modules():
        if isinstance(module, QuantLinear):
            continue
        for name, p in list(module.named_parameters(recurse=False)):
            p.data = p.data.to(dtype)
        for name, b in list(module.named_buffers(recurse=False)):
            if b is not None and b.is_floating_point():
                module._buffers[name] = b.to(dtype)
    return model


def rtn_quantize(model: torch.nn.Module, bits: int, lora_rank: int = 0, seed: int = 0) -> torch.nn.Module:
    """A copy of ``model`` whose block linears are packed W{bits}A8 (static scale), with random LoRA if rank > 0."""
    from ditas_trt.quant.format import QuantLinearTensors
    from ditas_trt.quant.linear import QuantLinear, replace_module

    generator = torch.Generator().manual_seed(seed)
    q = copy.deepcopy(model).float().eval()
    for name, module in list(q.named_modules()):
        if isinstance(module, torch.nn.Linear) and name.endswith(QUANT_LAYERS):
            k, n = module.in_features, module.out_features
            lora = {}
            if lora_rank:
                lora = {"lora_down": torch.randn(k, lora_rank, generator=generator) * k**-0.5,
                        "lora_up": torch.randn(lora_rank, n, generator=generator) * 1e-3}
            layer = QuantLinearTensors.from_float(module.weight, module.bias, weight_bits=bits,
                                                  act_amax=torch.tensor(STATIC_ACT_AMAX), name=name, **lora)
            replace_module(q, name, QuantLinear.from_tensors(layer))
    return q


def _probe_inputs(ctx: VariantContext, n: int):
    c = ctx.model.config
    return (torch.zeros(n, c.in_channels, c.input_size, c.input_size, device=ctx.device),
            torch.zeros(n, device=ctx.device), torch.zeros(n, dtype=torch.long, device=ctx.device))


def _torch_forward(model, device, dtype, cuda_graphs: bool):
    model = model.to(device).eval()

    def forward(x, t, y):
        with torch.no_grad():
            return model(x.to(dtype), t, y).float()

    if device.type == "cuda" and cuda_graphs:
        from ditas_trt.bench.measure import CudaGraphForward

        return CudaGraphForward(forward), "CUDA graphs"
    return forward, "eager"


def _quantized(ctx: VariantContext, name: str, model: torch.nn.Module, what: str) -> Prepared:
    from ditas_trt.ops import quantized_linear  # noqa: F401 - registers the ops

    cuda = ctx.device.type == "cuda"
    if cuda:
        from ditas_trt.ops import cuda as ops_cuda

        if not ops_cuda.is_available():
            raise Unavailable(f"the CUDA kernels are not built (run {ops_cuda.BUILD_COMMAND}; {ops_cuda.ENV_VAR})")
    dtype = torch.float16 if cuda else torch.float32
    model = _cast_except_quant(copy.deepcopy(model), dtype)
    forward, how = _torch_forward(model, ctx.device, dtype, ctx.cuda_graphs)
    if cuda:
        path = f"{what}: CUDA kernels ({how}, fp16 activations)"
    else:
        path = f"{what}: exact CPU reference ops (integer arithmetic in torch, not a fast kernel)"
    return Prepared(name, forward, path, module_bytes(model))


def prepare(name: str, ctx: VariantContext) -> Prepared:
    """Build variant ``name`` on ``ctx.device`` or raise :class:`Unavailable` with the reason."""
    cuda = ctx.device.type == "cuda"
    if name == "fp32":
        forward, how = _torch_forward(copy.deepcopy(ctx.model), ctx.device, torch.float32, ctx.cuda_graphs)
        return Prepared(name, forward, f"torch FP32 {how}", module_bytes(ctx.model))
    if name == "fp16":
        model = copy.deepcopy(ctx.model).half()
        forward, how = _torch_forward(model, ctx.device, torch.float16, ctx.cuda_graphs)
        try:
            forward(*_probe_inputs(ctx, 2))
        except RuntimeError as exc:
            raise Unavailable(f"FP16 forward fails on {ctx.device.type}: {str(exc).splitlines()[0]}") from None
        return Prepared(name, forward, f"torch FP16 {how}" + ("" if cuda else " (CPU fp16 kernels)"), module_bytes(model))
    if name == "compile":
        return _compiled(ctx)
    if name in ("w8a8", "w4a8", "w4a8_lora"):
        key = name
        if key not in ctx._cache:
            bits, rank = (8, 0) if name == "w8a8" else (4, LORA_RANK if name == "w4a8_lora" else 0)
            ctx._cache[key] = rtn_quantize(ctx.model, bits, rank)
        return _quantized(ctx, name, ctx._cache[key], f"W{'8' if name == 'w8a8' else '4'}A8"
                          + (f"+LoRA r{LORA_RANK}" if name == "w4a8_lora" else "") + " (round-to-nearest pack)")
    if name == "quantized":
        if not ctx.quantized:
            raise Unavailable("no --quantized DIR given (a folder written by `ditas-trt quantize`)")
        from ditas_trt.quant.packed import load_quantized

        model = load_quantized(ctx.quantized, expect_config=ctx.model.config)
        recipe = getattr(model, "ditas_recipe", {}) or {}
        return _quantized(ctx, name, model, f"{Path(ctx.quantized).name} ({recipe.get('label', 'quantized folder')})")
    if name == "ort_qdq":
        return _onnxruntime(ctx)
    if name in ("trt_fp16", "trt_w4a8"):
        plan = ctx.engine_fp16 if name == "trt_fp16" else ctx.engine_w4a8
        if not cuda:
            raise Unavailable("needs a CUDA GPU (none here)" + ("" if plan else "; and a plan: "
                              + ("--engine-fp16 (ditas-trt export --kind fp16 + build)" if name == "trt_fp16"
                                 else "--engine-w4a8 (ditas-trt export --kind plugin + build)")))
        if not plan:
            raise Unavailable("no plan given: pass " + ("--engine-fp16 PLAN" if name == "trt_fp16" else "--engine-w4a8 PLAN"))
        from ditas_trt.engine.runtime import engine_denoiser

        try:
            denoiser = engine_denoiser(plan, device=str(ctx.device), cuda_graphs=ctx.cuda_graphs)
        except DitasError as exc:
            raise Unavailable(str(exc)) from None
        if denoiser.config != ctx.model.config:
            raise Unavailable(f"{plan} was built from another DiT config than the benchmarked model")
        meta = denoiser.engine.meta
        plan_bytes, activations = int(meta["bytes"]), denoiser.engine.device_memory_bytes
        note = (f"peak memory adds what TensorRT holds outside torch: the plan ({plan_bytes / 2**20:.0f} MB, about its "
                f"weights) and the context's activation memory ({activations / 2**20:.0f} MB)")
        return Prepared(name, denoiser.forward, f"{meta['tensorrt']['flavour']} {meta['tensorrt']['version']} "
                        f"({'CUDA graphs' if ctx.cuda_graphs else 'execute_async_v3'})", plan_bytes, notes=[note],
                        outside_torch_bytes=plan_bytes + activations)
    raise DitasError(f"unknown variant {name!r}; choose from {', '.join(VARIANTS)}")


def _compiled(ctx: VariantContext) -> Prepared:
    cuda = ctx.device.type == "cuda"
    dtype = torch.float16 if cuda else torch.float32
    model = copy.deepcopy(ctx.model).to(device=ctx.device, dtype=dtype).eval()
    mode = "reduce-overhead" if cuda else "default"
    try:
        compiled = torch.compile(model, mode=mode, dynamic=False)
    except Exception as exc:  # noqa: BLE001 - any compiler setup problem makes it n/a
        raise Unavailable(f"torch.compile unavailable: {str(exc).splitlines()[0]}") from None

    def forward(x, t, y):
        with torch.no_grad():
            return compiled(x.to(dtype), t, y).float()

    start = time.perf_counter()
    try:
        forward(*_probe_inputs(ctx, 2))
    except Exception as exc:  # noqa: BLE001 - e.g. no C++ compiler for inductor on this machine
        raise Unavailable(f"torch.compile failed: {str(exc).strip().splitlines()[0][:200]}") from None
    return Prepared("compile", forward, f"torch.compile {'FP16' if cuda else 'FP32'} mode={mode} (one graph per batch)",
                    module_bytes(model), notes=[f"first compile {time.perf_counter() - start:.1f} s (batch 2)"])


def _onnxruntime(ctx: VariantContext) -> Prepared:
    try:
        import onnxruntime  # noqa: F401

        from ditas_trt.export import export_onnx
        from ditas_trt.export.ort import OnnxRunner
    except ImportError as exc:
        raise Unavailable(f"onnxruntime / the ONNX exporter is not installed ({exc})") from None
    path = ctx.onnx
    notes = []
    if path is None:
        params = sum(p.numel() for p in ctx.model.parameters())
        if params > ORT_MAX_PARAMS:
            raise Unavailable(f"{params / 1e6:.0f} M parameters on onnxruntime's CPU provider: pass --onnx FILE to "
                              "include it")
        if "w4a8_lora" not in ctx._cache:
            ctx._cache["w4a8_lora"] = rtn_quantize(ctx.model, 4, LORA_RANK)
        workdir = ctx.workdir or Path(tempfile.mkdtemp(prefix="ditas_bench_"))
        path = str(workdir / "bench_w4a8_lora_qdq.onnx")
        start = time.perf_counter()
        try:
            export_onnx(None, "qdq", path, torch_model=ctx._cache["w4a8_lora"])
        except DitasError as exc:
            raise Unavailable(f"Q/DQ export failed: {exc}") from None
        notes.append(f"exported the W4A8+LoRA Q/DQ graph in {time.perf_counter() - start:.1f} s")
    runner = OnnxRunner(path, threads=ctx.threads)
    size = Path(path).stat().st_size
    data = Path(path + ".data")
    if data.is_file():
        size += data.stat().st_size

    def forward(x, t, y):
        return runner(x.cpu(), t.cpu(), y.cpu()).to(x.device)

    return Prepared("ort_qdq", forward, f"onnxruntime {onnxruntime.__version__} CPUExecutionProvider, Q/DQ graph "
                    f"({Path(path).name})", size, notes)
