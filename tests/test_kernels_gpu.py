"""GPU tests of the W4A8 / W8A8 + LoRA CUDA kernels against the exact reference (``ditas_trt.ops.reference``).

Skipped without CUDA or without ``libditas_kernels.so`` (``scripts/build_plugins.sh``). What must hold:

* ``quantize_act``: x_q and x_scale bit-exact for fp16 and fp32 inputs, static and per-token scales, with and
  without pre-scale; lora_act within fp32-accumulation tolerance (tensor-core order differs from the CPU's).
* INT32 accumulators: bit-exact on every kernel path.
* ``w4a8_gemm`` / ``w8a8_gemm``: per-channel without LoRA bit-exact (fp16 and fp32 output: the epilogue repeats the
  reference's float operations in order); per-group within 1e-5 of the scaled magnitude (fmaf fold vs sum);
  LoRA within 1e-3 of |lora_act| @ |lora_up| (lora_act is rounded to fp16 for the tensor-core MMA); fp16 output
  additionally within one fp16 ulp.

The reference is evaluated on the GPU with the same code as the CPU op (integer sums in fp32/fp64 matmuls are exact
for these magnitudes); a few cases also run the CPU op itself.
"""
from __future__ import annotations

import types

import pytest
import torch

from ditas_trt import ops
from ditas_trt.errors import DitasError
from ditas_trt.ops import cuda as kcuda
from ditas_trt.ops import reference
from ditas_trt.quant import format as fmt


def _ready() -> tuple[bool, str]:
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    try:
        kcuda.load_library()
    except DitasError as exc:
        return False, str(exc)
    return True, ""


_OK, _WHY = _ready()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _OK, reason=_WHY)]

DIT_SHAPES = [(1152, 3456), (1152, 1152), (1152, 4608), (4608, 1152), (1152, 6912)]  # (K, N); last = adaLN
ROWS = [1, 7, 256, 4097]
DEV = "cuda"


def _capability() -> int:
    major, minor = torch.cuda.get_device_capability()
    return 10 * major + minor


def _paths(bits: int, m: int, k: int, n: int, groups: int, rank: int, out_dtype: torch.dtype, int32: bool = False):
    """Kernel paths that accept this call on this device (auto first)."""
    paths = ["auto"]
    g = k // groups
    if k % 64 == 0 and n % 8 == 0 and (int32 or (g % 64 == 0 and rank in (0, 16, 32, 48, 64))):
        paths += ["sm80-large", "sm80-small"]
    if (_capability() == 90 and not int32 and groups == 1 and rank == 0 and out_dtype == torch.float16
            and "sm90_cutlass=1" in kcuda.build_info()):
        paths.append("sm90-cutlass")
    if m * n * k <= 7 * 6912 * 1152:
        paths.append("generic")  # SIMT fallback: slow, only on the smaller problems
    return paths


def _gen(seed: int):
    return torch.Generator(device=DEV).manual_seed(seed)


def _random_problem(bits, m, k, n, groups, rank, seed, per_row=True, bias=True):
    g = _gen(seed)
    x_q = torch.randint(-128, 128, (m, k), generator=g, device=DEV, dtype=torch.int32).to(torch.int8)
    lo, hi = (-8, 8) if bits == 4 else (-128, 128)
    codes = torch.randint(lo, hi, (n, k), generator=g, device=DEV, dtype=torch.int32).to(torch.int8)
    qweight = fmt.pack_int4(codes) if bits == 4 else codes
    x_scale = (torch.rand((m if per_row else 1,), generator=g, device=DEV) * 0.05 + 1e-3).float()
    w_scale = (torch.rand((n, groups), generator=g, device=DEV) * 0.01 + 1e-4).float()
    b = torch.randn((n,), generator=g, device=DEV) if bias else None
    lora_act = lora_up = None
    if rank:
        lora_act = torch.randn((m, rank), generator=g, device=DEV) * 4.0
        lora_up = (torch.randn((rank, n), generator=g, device=DEV) * 0.05).half()
    return types.SimpleNamespace(x_q=x_q, codes=codes, qweight=qweight, x_scale=x_scale, w_scale=w_scale, bias=b,
                                 lora_act=lora_act, lora_up=lora_up)


def _reference_and_tolerance(p, out_dtype):
    """Reference output (same code as the CPU op, run on the GPU) and the elementwise tolerance for inexact cases."""
    ref = reference.gemm(p.x_q, p.x_scale, p.codes, p.w_scale, p.bias, p.lora_act, p.lora_up, out_dtype)
    groups = p.w_scale.shape[1]
    mag = (p.x_q.abs().double() @ p.codes.abs().double().T) * p.w_scale.double().amax(dim=1)
    mag = mag * p.x_scale.double().abs().reshape(-1, 1)
    tol = (1e-5 if groups > 1 else 1e-6) * mag + 1e-6
    if p.lora_act is not None:
        tol = tol + 1e-3 * (p.lora_act.abs().double() @ p.lora_up.abs().double())
    if out_dtype == torch.float16:
        tol = tol + ref.double().abs() * 2.0 ** -10 + 2.0 ** -24
    return ref, tol


def _assert_gemm_close(got, p, out_dtype, exact: bool, ref_tol=None):
    ref, tol = ref_tol if ref_tol is not None else _reference_and_tolerance(p, out_dtype)
    assert got.dtype == ref.dtype and got.shape == ref.shape
    if exact:
        assert torch.equal(got, ref), f"max |diff| {(got.float() - ref.float()).abs().max().item()}"
        return
    err = (got.double() - ref.double()).abs()
    worst = (err - tol).max().item()
    assert worst <= 0, f"error exceeds tolerance by {worst} (max |diff| {err.max().item()})"


# ---------------------------------------------------------------------------------------------------------------
# quantize_act
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1152, 4608])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("mode", ["dynamic", "static"])
@pytest.mark.parametrize("prescale", [False, True])
@pytest.mark.parametrize("rank", [0, 32])
def test_quantize_act_bit_exact(k, m, dtype, mode, prescale, rank):
    g = _gen(1000 + k + m)
    x = torch.randn((m, k), generator=g, device=DEV) * 3.0
    x[:, ::97] *= 40.0  # outlier channels
    x = x.to(dtype)
    act_scale = torch.tensor([0.07], device=DEV) if mode == "static" else None
    pre = (torch.rand((k,), generator=g, device=DEV) * 1.5 + 0.25) if prescale else None
    down = (torch.randn((k, rank), generator=g, device=DEV) * 0.03).half() if rank else None
    ref = reference.quantize_act(x.cpu(), None if act_scale is None else act_scale.cpu(),
                                 None if pre is None else pre.cpu(), None if down is None else down.cpu())
    for path in ["auto", "fast", "generic"] if m <= 256 else ["auto"]:
        x_q, x_scale, lora_act = kcuda.quantize_act(x, act_scale, pre, down, path=path)
        assert torch.equal(x_q.cpu(), ref[0]), path
        assert torch.equal(x_scale.cpu(), ref[1]), path
        assert lora_act.shape == ref[2].shape
        if rank:
            bound = 2e-4 * (x.float().abs().cpu() @ down.float().abs().cpu()) + 1e-5
            assert ((lora_act.cpu() - ref[2]).abs() <= bound).all(), path
    assert kcuda.last_path() in ("fast", "generic")


def test_quantize_act_through_the_op_and_odd_shapes():
    x = torch.randn((5, 72), device=DEV, dtype=torch.float16)  # K % 64 != 0 (fast path still: K % 8 == 0)
    got = torch.ops.ditas_trt.quantize_act(x, None, None, None)
    ref = torch.ops.ditas_trt.quantize_act(x.cpu(), None, None, None)
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    x = torch.randn((3, 70), device=DEV)  # K % 8 != 0: generic
    down = torch.randn((70, 8), device=DEV).half()  # rank 8: generic
    got = kcuda.quantize_act(x, None, None, down)
    assert kcuda.last_path() == "generic"
    ref = reference.quantize_act(x.cpu(), None, None, down.cpu())
    assert torch.equal(got[0].cpu(), ref[0]) and torch.equal(got[1].cpu(), ref[1])
    torch.testing.assert_close(got[2].cpu(), ref[2], rtol=1e-4, atol=1e-4)
    empty = kcuda.quantize_act(torch.empty((0, 64), device=DEV), torch.tensor([0.5], device=DEV))
    assert empty[0].shape == (0, 64) and empty[1].item() == 0.5


# ---------------------------------------------------------------------------------------------------------------
# INT32 accumulators
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("kn", DIT_SHAPES)
def test_accumulators_bit_exact(bits, m, kn):
    k, n = kn
    p = _random_problem(bits, m, k, n, 1, 0, seed=k + n + m + bits, bias=False)
    want = (p.x_q.double() @ p.codes.double().T).to(torch.int32)  # exact: |sum| < 2**53
    for path in _paths(bits, m, k, n, 1, 0, torch.float16, int32=True):
        got = kcuda.gemm_accumulators(bits, p.x_q, p.qweight, path=path)
        assert torch.equal(got, want), f"path {path} ({kcuda.last_path()})"


def test_accumulators_match_the_cpu_op():
    p = _random_problem(4, 7, 1152, 1152, 1, 0, seed=5, bias=False)
    got = kcuda.gemm_accumulators(4, p.x_q, p.qweight)
    want = reference.group_sums(p.x_q.cpu(), fmt.unpack_int4(p.qweight.cpu()), 1)[..., 0]
    assert torch.equal(got.cpu(), want)


# ---------------------------------------------------------------------------------------------------------------
# Full GEMM
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("rank", [0, 32])
@pytest.mark.parametrize("group", [0, 64, 128])
@pytest.mark.parametrize("m", ROWS)
@pytest.mark.parametrize("kn", DIT_SHAPES)
def test_gemm_dit_shapes(bits, rank, group, m, kn):
    k, n = kn
    groups = 1 if group == 0 else k // group
    p = _random_problem(bits, m, k, n, groups, rank, seed=7 * k + n + m + group + rank + bits, per_row=(m % 2 == 1))
    for out_dtype in (torch.float16, torch.float32):
        exact = groups == 1 and rank == 0
        ref_tol = _reference_and_tolerance(p, out_dtype)
        for path in _paths(bits, m, k, n, groups, rank, out_dtype):
            got = kcuda.gemm(bits, p.x_q, p.x_scale, p.qweight, p.w_scale, p.bias, p.lora_act, p.lora_up, out_dtype,
                             path=path)
            assert kcuda.last_path() == path or path == "auto"
            _assert_gemm_close(got, p, out_dtype, exact, ref_tol)


@pytest.mark.parametrize("bits", [4, 8])
def test_gemm_op_matches_cpu_op(bits):
    p = _random_problem(bits, 7, 1152, 1152, 1, 32, seed=11 + bits)
    name = f"w{bits}a8_gemm"
    args = (p.x_q, p.x_scale, p.qweight, p.w_scale, p.bias, p.lora_act, p.lora_up, torch.float16)
    got = getattr(torch.ops.ditas_trt, name)(*args)
    ref = getattr(torch.ops.ditas_trt, name)(*(a.cpu() if isinstance(a, torch.Tensor) else a for a in args))
    assert got.device.type == "cuda"
    _assert_gemm_close(got, p, torch.float16, exact=False)
    torch.testing.assert_close(got.cpu().float(), ref.float(), rtol=2e-3, atol=2e-3)


@pytest.mark.parametrize("bits", [4, 8])
def test_gemm_awkward_shapes_use_the_fallback(bits):
    # K % 64 != 0, N % 8 != 0, G = 32, rank 8: the SIMT fallback, same arithmetic
    p = _random_problem(bits, 9, 96, 20, 3, 8, seed=3)
    got = kcuda.gemm(bits, p.x_q, p.x_scale, p.qweight, p.w_scale, p.bias, p.lora_act, p.lora_up, torch.float32)
    assert kcuda.last_path() == "generic"
    _assert_gemm_close(got, p, torch.float32, exact=False)
    # misaligned x_q (a view 1 byte in): auto falls back, forced mma.sync refuses
    p = _random_problem(bits, 8, 1152, 1152, 1, 0, seed=4)
    base = torch.zeros((8 * 1152 + 1,), dtype=torch.int8, device=DEV)
    base[1:] = p.x_q.reshape(-1)
    p.x_q = base[1:].view(8, 1152)
    got = kcuda.gemm(bits, p.x_q, p.x_scale, p.qweight, p.w_scale, p.bias, None, None, torch.float32)
    assert kcuda.last_path() == "generic"
    _assert_gemm_close(got, p, torch.float32, exact=True)
    with pytest.raises(DitasError, match="aligned"):
        kcuda.gemm(bits, p.x_q, p.x_scale, p.qweight, p.w_scale, path="sm80-large")


def test_forced_paths_refuse_what_they_cannot_do():
    p = _random_problem(4, 64, 1152, 1152, 18, 32, seed=9)
    with pytest.raises(DitasError, match="sm90-cutlass"):
        kcuda.gemm(4, p.x_q, p.x_scale, p.qweight, p.w_scale, p.bias, p.lora_act, p.lora_up, path="sm90-cutlass")
    with pytest.raises(DitasError, match="no INT32 output"):
        kcuda.gemm_accumulators(4, p.x_q, p.qweight, path="sm90-cutlass")


def test_empty_batch():
    # [0, ...] tensors have data_ptr() == 0: the C API must not require their pointers when M == 0
    p = _random_problem(4, 1, 1152, 1152, 1, 32, seed=1)
    y = kcuda.gemm(4, p.x_q[:0], p.x_scale[:0], p.qweight, p.w_scale)
    assert y.shape == (0, 1152)
    y = kcuda.gemm(4, p.x_q[:0], p.x_scale[:0], p.qweight, p.w_scale, p.bias, p.lora_act[:0], p.lora_up)
    assert y.shape == (0, 1152)
    down = torch.randn((1152, 32), device=DEV).half()
    x_q, x_scale, lora_act = kcuda.quantize_act(torch.empty((0, 1152), device=DEV), None, None, down)
    assert x_q.shape == (0, 1152) and x_scale.shape == (0,) and lora_act.shape == (0, 32)


# ---------------------------------------------------------------------------------------------------------------
# End to end: quantized_linear on CUDA vs CPU, CUDA graphs
# ---------------------------------------------------------------------------------------------------------------
def _layer(k, n, bits, group, rank, static, prescale, seed):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn((n, k), generator=g) * 0.05
    layer = fmt.QuantLinearTensors.from_float(
        w, torch.randn((n,), generator=g), weight_bits=bits, group_size=group,
        act_amax=torch.tensor([8.0]) if static else None,
        act_prescale=(torch.rand((k,), generator=g) + 0.5) if prescale else None,
        lora_down=(torch.randn((k, rank), generator=g) * 0.02) if rank else None,
        lora_up=(torch.randn((rank, n), generator=g) * 0.02) if rank else None)
    on_gpu = types.SimpleNamespace(config=layer.config, **{key: v.to(DEV) for key, v in layer.tensors().items()})
    for key in fmt.TENSOR_NAMES:
        if not hasattr(on_gpu, key):
            setattr(on_gpu, key, None)
    return layer, on_gpu


@pytest.mark.parametrize("bits", [4, 8])
@pytest.mark.parametrize("dtype", [torch.float16, torch.float32])
@pytest.mark.parametrize("static", [False, True])
@pytest.mark.parametrize("rank", [0, 32])
def test_quantized_linear_cuda_matches_cpu(bits, dtype, static, rank):
    k, n = 1152, 3456
    layer, layer_gpu = _layer(k, n, bits, 0, rank, static, prescale=True, seed=bits + rank)
    x = (torch.randn((2, 37, k)) * 2.0).to(dtype)
    ref = ops.quantized_linear(x, layer)
    got = ops.quantized_linear(x.to(DEV), layer_gpu)
    assert got.dtype == dtype and got.shape == ref.shape
    if rank == 0:
        assert torch.equal(got.cpu(), ref)  # quantize bit-exact, per-channel epilogue bit-exact
    else:
        torch.testing.assert_close(got.cpu().float(), ref.float(), rtol=2e-3, atol=2e-3)


def test_cuda_graph_capture_and_replay():
    k, n = 1152, 4608
    _, layer = _layer(k, n, 4, 0, 32, static=False, prescale=False, seed=3)
    x = torch.randn((256, k), device=DEV, dtype=torch.float16)
    eager = ops.quantized_linear(x, layer)  # first call outside capture (kernel attributes)
    graph = torch.cuda.CUDAGraph()
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        ops.quantized_linear(x, layer)
        with torch.cuda.graph(graph, stream=stream):
            captured = ops.quantized_linear(x, layer)
    torch.cuda.current_stream().wait_stream(stream)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(captured, eager)
