"""Torch custom ops of the quantized linear (``torch.ops.ditas_trt.*``) and thin keyword-only wrappers.

Notation
--------
M rows (batch x tokens), K input features, N output features, G weight group size, r LoRA rank.
The tensor layout and the arithmetic are defined in :mod:`ditas_trt.quant.format`.

Ops
---
``ditas_trt::quantize_act(x, act_scale?, act_prescale?, lora_down?) -> (x_q, x_scale, lora_act)``
    x fp16/fp32 [M, K] -> x_q int8 [M, K], x_scale fp32 [1] (static) or [M] (per-token), lora_act fp32 [M, r] (r = 0
    without ``lora_down``).
``ditas_trt::w4a8_gemm(x_q, x_scale, qweight, w_scale, bias?, lora_act?, lora_up?, out_dtype) -> y``
    qweight uint8 [N, K/2] packed INT4; y ``out_dtype`` [M, N].
``ditas_trt::w8a8_gemm(...)``
    The same with qweight int8 [N, K].

The CPU implementations are the exact reference (:mod:`ditas_trt.ops.reference`); CUDA implementations register
under the same names when the compiled extension is present.
"""
from __future__ import annotations

from typing import Optional

import torch

from ditas_trt.errors import DitasError
from ditas_trt.ops import reference
from ditas_trt.quant import format as fmt

__all__ = ["quantize_activation", "w4a8_gemm", "w8a8_gemm", "quantized_linear"]


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise DitasError(message)


def _check_quantize_args(x, act_scale, act_prescale, lora_down) -> None:
    _check(x.dim() == 2, f"quantize_act: x must be 2-D [M, K], got shape {tuple(x.shape)}")
    _check(x.is_floating_point(), f"quantize_act: x must be a float tensor, got {x.dtype}")
    k = x.shape[1]
    if act_scale is not None:
        _check(act_scale.numel() == 1, f"quantize_act: act_scale must hold one value, got shape {tuple(act_scale.shape)}")
    if act_prescale is not None:
        _check(tuple(act_prescale.shape) == (k,), f"quantize_act: act_prescale must be [{k}], got {tuple(act_prescale.shape)}")
    if lora_down is not None:
        _check(lora_down.dim() == 2 and lora_down.shape[0] == k, f"quantize_act: lora_down must be [{k}, r], got {tuple(lora_down.shape)}")


def _check_gemm_args(name, bits, x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up) -> None:
    _check(x_q.dim() == 2 and x_q.dtype == torch.int8, f"{name}: x_q must be int8 [M, K], got {x_q.dtype} {tuple(x_q.shape)}")
    m, k = x_q.shape
    packed_k = k // 2 if bits == 4 else k
    want_dtype = torch.uint8 if bits == 4 else torch.int8
    _check(qweight.dim() == 2 and qweight.dtype == want_dtype and qweight.shape[1] == packed_k,
           f"{name}: qweight must be {want_dtype} [N, {packed_k}] for K={k}, got {qweight.dtype} {tuple(qweight.shape)}")
    n = qweight.shape[0]
    _check(x_scale.numel() in (1, m), f"{name}: x_scale must hold 1 or M={m} values, got {x_scale.numel()}")
    _check(w_scale.dim() == 2 and w_scale.shape[0] == n and w_scale.shape[1] >= 1 and k % w_scale.shape[1] == 0,
           f"{name}: w_scale must be [{n}, K/G] with G dividing K={k}, got {tuple(w_scale.shape)}")
    if bias is not None:
        _check(tuple(bias.shape) == (n,), f"{name}: bias must be [{n}], got {tuple(bias.shape)}")
    if lora_up is not None:
        _check(lora_act is not None, f"{name}: lora_up given without lora_act")
        _check(lora_up.dim() == 2 and lora_up.shape[1] == n, f"{name}: lora_up must be [r, {n}], got {tuple(lora_up.shape)}")
        _check(tuple(lora_act.shape) == (m, lora_up.shape[0]),
               f"{name}: lora_act must be [{m}, {lora_up.shape[0]}], got {tuple(lora_act.shape)}")


# ---------------------------------------------------------------------------------------------------------------
# Op definitions (CPU = exact reference) and fake kernels for tracing
# ---------------------------------------------------------------------------------------------------------------
@torch.library.custom_op("ditas_trt::quantize_act", mutates_args=(), device_types="cpu")
def _quantize_act(
    x: torch.Tensor,
    act_scale: Optional[torch.Tensor],
    act_prescale: Optional[torch.Tensor],
    lora_down: Optional[torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    _check_quantize_args(x, act_scale, act_prescale, lora_down)
    return reference.quantize_act(x, act_scale, act_prescale, lora_down)


@_quantize_act.register_fake
def _(x, act_scale, act_prescale, lora_down):
    m = x.shape[0]
    rank = 0 if lora_down is None else lora_down.shape[1]
    scale_len = 1 if act_scale is not None else m
    return (x.new_empty(x.shape, dtype=torch.int8), x.new_empty((scale_len,), dtype=torch.float32),
            x.new_empty((m, rank), dtype=torch.float32))


def _define_gemm(bits: int):
    name = f"w{bits}a8_gemm"

    @torch.library.custom_op(f"ditas_trt::{name}", mutates_args=(), device_types="cpu")
    def op(
        x_q: torch.Tensor,
        x_scale: torch.Tensor,
        qweight: torch.Tensor,
        w_scale: torch.Tensor,
        bias: Optional[torch.Tensor],
        lora_act: Optional[torch.Tensor],
        lora_up: Optional[torch.Tensor],
        out_dtype: torch.dtype,
    ) -> torch.Tensor:
        _check_gemm_args(name, bits, x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up)
        codes = fmt.weight_codes(qweight, bits)
        return reference.gemm(x_q, x_scale, codes, w_scale, bias, lora_act, lora_up, out_dtype)

    @op.register_fake
    def _(x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype):
        return x_q.new_empty((x_q.shape[0], qweight.shape[0]), dtype=out_dtype)

    return op


_w4a8_gemm = _define_gemm(4)
_w8a8_gemm = _define_gemm(8)


# ---------------------------------------------------------------------------------------------------------------
# Keyword-only wrappers
# ---------------------------------------------------------------------------------------------------------------
def quantize_activation(
    x: torch.Tensor,
    *,
    act_scale: Optional[torch.Tensor] = None,
    act_prescale: Optional[torch.Tensor] = None,
    lora_down: Optional[torch.Tensor] = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Quantize activations to INT8 and, when ``lora_down`` is given, compute ``x @ lora_down`` in the same pass.

    Parameters
    ----------
    x : fp16/fp32 [M, K]
    act_scale : fp32 [1], optional
        Static per-tensor scale; ``None`` quantizes each row with its own scale.
    act_prescale : fp32 [K], optional
        Multiplies ``x`` before quantization (the LoRA branch sees the raw ``x``).
    lora_down : fp16 [K, r], optional

    Returns
    -------
    x_q : int8 [M, K]
    x_scale : fp32 [1] or [M]
    lora_act : fp32 [M, r] (r = 0 without ``lora_down``)
    """
    return torch.ops.ditas_trt.quantize_act(x, act_scale, act_prescale, lora_down)


def w4a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    lora_act: Optional[torch.Tensor] = None,
    lora_up: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """INT8 activations x packed INT4 weights with INT32 accumulation, scales, bias and the LoRA-up add.

    Parameters
    ----------
    x_q : int8 [M, K]
    x_scale : fp32 [1] or [M]
    qweight : uint8 [N, K/2]
        Two INT4 codes per byte along K, low nibble first.
    w_scale : fp32 [N, K/G]
    bias : fp32 [N], optional
    lora_act : fp32 [M, r], optional
    lora_up : fp16 [r, N], optional
    out_dtype : torch.dtype

    Returns
    -------
    y : ``out_dtype`` [M, N]
    """
    return torch.ops.ditas_trt.w4a8_gemm(x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype)


def w8a8_gemm(
    x_q: torch.Tensor,
    x_scale: torch.Tensor,
    qweight: torch.Tensor,
    w_scale: torch.Tensor,
    *,
    bias: Optional[torch.Tensor] = None,
    lora_act: Optional[torch.Tensor] = None,
    lora_up: Optional[torch.Tensor] = None,
    out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """As :func:`w4a8_gemm` with int8 [N, K] weights (the W8A8 comparison point)."""
    return torch.ops.ditas_trt.w8a8_gemm(x_q, x_scale, qweight, w_scale, bias, lora_act, lora_up, out_dtype)


def quantized_linear(x: torch.Tensor, layer) -> torch.Tensor:
    """Apply one quantized linear (a :class:`QuantLinearTensors` or a :class:`QuantLinear`) to ``x`` [..., K]."""
    k = layer.config.in_features
    if x.shape[-1] != k:
        raise DitasError(f"quantized linear: input has {x.shape[-1]} features, expected {k}")
    rows = x.reshape(-1, k)
    x_q, x_scale, lora_act = quantize_activation(
        rows, act_scale=layer.act_scale, act_prescale=layer.act_prescale, lora_down=layer.lora_down
    )
    gemm = w4a8_gemm if layer.config.weight_bits == 4 else w8a8_gemm
    y = gemm(x_q, x_scale, layer.qweight, layer.w_scale, bias=layer.bias,
             lora_act=lora_act if layer.lora_up is not None else None, lora_up=layer.lora_up, out_dtype=x.dtype)
    return y.reshape(*x.shape[:-1], layer.config.out_features)


from ditas_trt.ops import cuda as _cuda  # noqa: E402,F401  registers the CUDA kernels; loads no library until a CUDA call
